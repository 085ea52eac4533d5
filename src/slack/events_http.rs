//! `POST /slack/events`: the HTTP Events API, the alternative to Socket Mode.
//!
//! The signature (`X-Slack-Signature` over `v0:{ts}:{raw body}`, ±5 minutes, constant time)
//! is checked on the raw bytes before anything is parsed; its headers and the timestamp are
//! checked before the body is read, and the MAC while it streams
//! ([`crate::http::webhook_body`]); without a signing secret every request is refused (fail
//! closed). Then: `url_verification` → the challenge;
//! `event_callback` → recorded with [`Cluster::ingest`] (deduplicated on `event_id`, so a
//! redelivery with `X-Slack-Retry-Num` records nothing new) and answered 200 right after;
//! other body types → 200 and ignored. Not JSON → 400.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use infragpt_actors::Secret;
use infragpt_actors::cluster::{Cluster, IngestError};
use infragpt_actors::inbox::{EventPayload, RecordOutcome, StoreError};
use serde_json::{Value, json};

use super::signature::{
    SIGNATURE_HEADER, SignatureError, SlackBodyCheck, SlackSignatureVerifier, TIMESTAMP_HEADER,
};
use super::socket::{InboundClass, inbound_event};
use crate::error::ApiError;
use crate::http::WebhookRoute;
use crate::http::webhook_body::{WebhookIntake, read_verified};

/// The route path.
pub const EVENTS_PATH: &str = "/slack/events";
/// Largest accepted body (actix's default limit, which applied before bodies were streamed).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Header Slack sets on redeliveries.
pub const RETRY_NUM_HEADER: &str = "x-slack-retry-num";

/// State of the endpoint.
pub struct EventsEndpoint {
    verifier: SlackSignatureVerifier,
    cluster: Cluster,
}

impl std::fmt::Debug for EventsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsEndpoint")
            .field("verifier", &self.verifier)
            .finish_non_exhaustive()
    }
}

impl EventsEndpoint {
    /// An endpoint verifying with `signing_secret`; `None` refuses every request (and logs a
    /// warning now).
    pub fn new(signing_secret: Option<&Secret>, cluster: Cluster) -> Self {
        if signing_secret.is_none_or(|s| s.is_empty()) {
            tracing::warn!(
                path = EVENTS_PATH,
                "slack.signing_secret is not set: the HTTP Events API refuses every request"
            );
        }
        let secret = signing_secret.cloned().unwrap_or_default();
        Self::with_verifier(SlackSignatureVerifier::new(&secret), cluster)
    }

    /// Where verified requests are recorded (`POST /slack/interactions` and
    /// `POST /slack/commands` share the endpoint).
    pub(super) fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// An endpoint with a ready verifier (tests pin its clock).
    pub fn with_verifier(verifier: SlackSignatureVerifier, cluster: Cluster) -> Self {
        Self { verifier, cluster }
    }
}

/// The Events API's part of the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(slack_events_handler))]
pub struct SlackEventsApi;

/// Adds `POST /slack/events`.
pub fn configure(cfg: &mut web::ServiceConfig, endpoint: Arc<EventsEndpoint>) {
    cfg.app_data(web::Data::from(endpoint))
        .route(EVENTS_PATH, web::post().to(slack_events_handler));
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Result<Option<&'a str>, SignatureError> {
    match req.headers().get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| {
            if name == SIGNATURE_HEADER {
                SignatureError::BadSignatureFormat
            } else {
                SignatureError::BadTimestamp("<non-ascii>".into())
            }
        }),
    }
}

/// Everything but the MAC, before the body is read (see [`SlackSignatureVerifier::begin`]).
pub(super) fn begin(
    ep: &EventsEndpoint,
    req: &HttpRequest,
) -> Result<SlackBodyCheck, SignatureError> {
    let ts = header(req, TIMESTAMP_HEADER)?;
    let sig = header(req, SIGNATURE_HEADER)?;
    ep.verifier.begin(ts, sig)
}

pub(super) fn rejected(e: SignatureError) -> ApiError {
    rejected_as("events", e)
}

/// The 401 of a signed Slack route refusing `what` (`events`, `commands`).
pub(super) fn rejected_as(what: &str, e: SignatureError) -> ApiError {
    tracing::warn!(error = %e, route = what, "slack request rejected");
    ApiError::unauthorized(match e {
        SignatureError::NotConfigured => {
            format!("slack {what} are not accepted: no signing secret is configured")
        }
        other => format!("invalid slack signature: {other}"),
    })
}

/// The Slack Events API over HTTP: a signed event is recorded before the answer;
/// `url_verification` is answered with its challenge.
#[utoipa::path(post, path = "/slack/events", tag = "webhooks", security(("slack_signature" = [])),
    request_body(content = serde_json::Value, description = "An Events API body (`event_callback`, `url_verification`, ...)", content_type = "application/json"),
    responses(
        (status = 200, description = "`{ok: true}`, or `{challenge}` for `url_verification`", body = serde_json::Value),
        crate::http::webhook_body::WebhookRefusals,
    ))]
async fn slack_events_handler(
    req: HttpRequest,
    payload: web::Payload,
    ep: web::Data<EventsEndpoint>,
) -> Result<HttpResponse, ApiError> {
    // Headers and timestamp first: without a fresh, well-formed signature nothing is read.
    let check = begin(&ep, &req).map_err(rejected)?;
    let intake = WebhookIntake::for_request(&req);
    let verified = read_verified(&intake, &req, payload, MAX_BODY_BYTES, check)
        .await
        .map_err(|e| e.into_api(rejected))?;
    let (body, _reservation) = verified.into_parts();
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("body is not JSON: {e}")))?;
    let retry_num = req
        .headers()
        .get(RETRY_NUM_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0")
        .to_owned();
    // One parse classifies the body: challenge, ignored type, or an event to record.
    let mut event = match inbound_event(&value, None).map_err(ApiError::bad_request)? {
        InboundClass::UrlVerification(challenge) => {
            tracing::info!("slack url_verification answered");
            return Ok(HttpResponse::Ok().json(json!({ "challenge": challenge })));
        }
        InboundClass::Ignore(kind) => {
            tracing::info!(kind = %kind, "slack events body ignored");
            return Ok(HttpResponse::Ok().json(json!({ "ok": true })));
        }
        InboundClass::Event(event) => event,
    };
    // Per workspace, before recording: a refused event was not acknowledged, Slack retries.
    let team = value["team_id"]
        .as_str()
        .or_else(|| value["enterprise_id"].as_str())
        .unwrap_or("unknown");
    intake.rate_limits().admit(WebhookRoute::Slack, team)?;
    drop(value);
    // The body as received (valid UTF-8: it parsed): the store keeps it verbatim when it has
    // to clean the value (a "\u0000" in a message).
    event.payload = match String::from_utf8(body) {
        Ok(text) => EventPayload::Raw(text),
        Err(_) => return Err(ApiError::bad_request("body is not UTF-8")),
    };
    let event_id = event.source_id.clone();
    match ep.cluster.ingest(event).await {
        Ok(outcome) => {
            let duplicate = matches!(outcome, RecordOutcome::Duplicate(_));
            tracing::debug!(event_id = %event_id, retry_num = %retry_num, duplicate, "slack event recorded");
            Ok(HttpResponse::Ok().json(json!({ "ok": true })))
        }
        Err(IngestError::Store(e @ StoreError::Rejected(_))) => {
            // Permanent: the store refuses this event's data; a retry would fail the same way.
            tracing::error!(event_id = %event_id, error = %e, "the event store refused a slack event");
            Err(ApiError::unprocessable(
                "event",
                "the event could not be stored",
            ))
        }
        Err(e @ (IngestError::ShuttingDown | IngestError::Store(_))) => {
            // Not recorded: a 5xx makes Slack retry later.
            tracing::error!(event_id = %event_id, error = %e, "recording a slack event failed");
            Err(ApiError::unavailable(
                "the event could not be recorded; retry later",
            ))
        }
        Err(e) => Err(ApiError::internal(e)),
    }
}
