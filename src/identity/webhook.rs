//! `POST /webhooks/clerk`: Clerk webhooks delivered by Svix.
//!
//! 1. No secret configured → **503** `unavailable` (fail closed; nothing is read or stored).
//!    503 rather than 401 because the fault is ours, and Svix keeps retrying a 5xx for about a
//!    day, so no event is lost while the secret is being configured.
//! 2. The Svix headers are verified on the raw body bytes before anything is parsed
//!    ([`SvixVerifier`], clock = now, ±5 minutes). Missing header, stale or future timestamp
//!    or no `v1` entry → **401** before the body is read; no matching signature → **401**
//!    once it is; nothing is recorded. The body is read under the webhook limits
//!    ([`crate::http::webhook_body`]: 413, 408, 503 + Retry-After).
//! 3. A body that is not JSON, or not a Clerk event envelope (`object: "event"`, string
//!    `type`) → **400**.
//! 4. The event is recorded in the inbox (source `clerk`, source id = `svix-id`, routing key
//!    [`super::sync::ROUTING_KEY`], kind = event type) and only then answered **200**
//!    (`{"status":"recorded","event_id":N}`). A redelivery with the same `svix-id` is answered
//!    200 (`"status":"duplicate"`) and changes nothing. Types we do not handle are recorded
//!    too and end `ignored`. Inbox down or shutting down → 503 (Svix retries).

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use infragpt_actors::inbox::{EventPayload, NewInboundEvent, RecordOutcome, StoreError};
use infragpt_actors::sources;
use infragpt_actors::{Cluster, IngestError, Secret};
use serde_json::{Value, json};

use super::svix::{
    HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, SvixError, SvixHeaders, SvixVerifier,
};
use crate::error::ApiError;
use crate::http::WebhookRoute;
use crate::http::webhook_body::{WebhookIntake, read_verified};

/// Path of the webhook.
pub const PATH: &str = "/webhooks/clerk";
/// Largest accepted body (Clerk events are a few kB).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What the webhook route needs: the verifier (absent when no secret is configured) and the
/// cluster that records events.
#[derive(Clone)]
pub struct ClerkWebhook {
    verifier: Option<Arc<SvixVerifier>>,
    cluster: Cluster,
}

impl std::fmt::Debug for ClerkWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClerkWebhook")
            .field("configured", &self.verifier.is_some())
            .finish_non_exhaustive()
    }
}

impl ClerkWebhook {
    /// A webhook verifying with `secret` (`whsec_...`). `None` (or empty) gives a webhook that
    /// refuses every request; a malformed secret is an error.
    pub fn new(secret: Option<&Secret>, cluster: Cluster) -> Result<Self, SvixError> {
        let verifier = match secret.filter(|s| !s.is_empty()) {
            Some(secret) => Some(Arc::new(SvixVerifier::new(secret)?)),
            None => None,
        };
        Ok(Self { verifier, cluster })
    }

    /// True when a secret is configured.
    pub fn is_configured(&self) -> bool {
        self.verifier.is_some()
    }
}

/// The Clerk webhook's part of the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(receive))]
pub struct ClerkWebhookApi;

/// Adds `POST /webhooks/clerk` (with its own state) to `cfg`. The body is streamed under
/// [`MAX_BODY_BYTES`] and the process's webhook limits ([`crate::http::webhook_body`]).
pub fn configure(cfg: &mut web::ServiceConfig, webhook: ClerkWebhook) {
    cfg.service(
        web::resource(PATH)
            .app_data(web::Data::new(webhook))
            .route(web::post().to(receive)),
    );
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Svix-signed Clerk events (users, organizations, memberships), recorded before the answer.
#[utoipa::path(post, path = "/webhooks/clerk", tag = "webhooks", security(("svix_signature" = [])),
    request_body(content = serde_json::Value, description = "A Clerk event `{object: \"event\", type, data}`", content_type = "application/json"),
    responses(
        (status = 200, description = "Recorded or a duplicate: `{status, event_id}`", body = serde_json::Value),
        crate::http::webhook_body::WebhookRefusals,
    ))]
async fn receive(
    req: HttpRequest,
    body: web::Payload,
    webhook: web::Data<ClerkWebhook>,
) -> Result<HttpResponse, ApiError> {
    let Some(verifier) = &webhook.verifier else {
        tracing::warn!("clerk webhook refused: identity.clerk.webhook_secret is not configured");
        return Err(ApiError::unavailable(
            "clerk webhook secret is not configured",
        ));
    };
    let headers = SvixHeaders {
        id: header(&req, HEADER_ID),
        timestamp: header(&req, HEADER_TIMESTAMP),
        signature: header(&req, HEADER_SIGNATURE),
    };
    let rejected = |e: SvixError| {
        tracing::warn!(reason = %e, svix_id = ?headers.id, "clerk webhook signature rejected");
        ApiError::unauthorized("invalid webhook signature")
    };
    // Headers and timestamp first: without them nothing of the body is read.
    let check = verifier.begin(&headers, Utc::now()).map_err(rejected)?;
    let intake = WebhookIntake::for_request(&req);
    let verified = read_verified(&intake, &req, body, MAX_BODY_BYTES, check)
        .await
        .map_err(|e| e.into_api(rejected))?;
    let (body, _reservation) = verified.into_parts();
    // begin() guarantees a non-empty id.
    let svix_id = headers.id.unwrap_or_default().trim().to_owned();

    let payload: Value = serde_json::from_slice(&body).map_err(|e| {
        tracing::warn!(svix_id = %svix_id, error = %e, "clerk webhook body is not JSON");
        ApiError::bad_request("body is not valid JSON")
    })?;
    let kind = match event_kind(&payload) {
        Some(kind) => kind.to_owned(),
        None => {
            tracing::warn!(svix_id = %svix_id, "clerk webhook body is not an event envelope");
            return Err(ApiError::bad_request(
                "body is not a Clerk event (needs \"object\": \"event\" and a \"type\")",
            ));
        }
    };

    // One source: the signing secret is one Clerk application. Before recording, so Svix
    // retries a refused message.
    intake.rate_limits().admit(WebhookRoute::Clerk, "clerk")?;
    drop(payload);
    // The body as received (UTF-8: it parsed): kept verbatim when the store has to clean it.
    let raw = String::from_utf8(body).map_err(|_| ApiError::bad_request("body is not UTF-8"))?;
    let outcome = webhook
        .cluster
        .ingest(NewInboundEvent {
            source: sources::CLERK,
            source_id: svix_id.clone(),
            routing_key: super::sync::routing_key(),
            kind: kind.clone(),
            payload: EventPayload::Raw(raw),
        })
        .await
        .map_err(|e| match e {
            IngestError::ShuttingDown => ApiError::unavailable("shutting down, retry later"),
            IngestError::Store(e @ StoreError::Rejected(_)) => {
                // Permanent: a retry would fail the same way (and the database is fine).
                tracing::error!(svix_id = %svix_id, error = %e, "the event store refused a clerk event");
                ApiError::unprocessable("event", "the event could not be stored")
            }
            IngestError::Store(e) => {
                tracing::error!(svix_id = %svix_id, error = %e, "recording clerk webhook failed");
                ApiError::unavailable("event store unavailable, retry later")
            }
            IngestError::NoStream(source) => {
                tracing::error!(
                    source,
                    "no stream handles clerk events (identity module not started?)"
                );
                ApiError::unavailable("clerk events are not being processed")
            }
            IngestError::EmptyRoutingKey => ApiError::internal("empty routing key for clerk event"),
        })?;
    let (status, event_id) = match &outcome {
        RecordOutcome::Recorded(e) => ("recorded", e.id),
        RecordOutcome::Duplicate(e) => ("duplicate", e.id),
    };
    tracing::info!(svix_id = %svix_id, kind = %kind, event_id = %event_id, status, "clerk webhook accepted");
    Ok(HttpResponse::Ok().json(json!({ "status": status, "event_id": event_id })))
}

/// The event type of a Clerk event envelope (`"object": "event"` and a non-empty `"type"`),
/// `None` for any other body.
pub fn event_kind(payload: &Value) -> Option<&str> {
    match (
        payload.get("object").and_then(Value::as_str),
        payload.get("type").and_then(Value::as_str),
    ) {
        (Some("event"), Some(kind)) if !kind.is_empty() => Some(kind),
        _ => None,
    }
}
