//! `POST /webhooks/github`: verify `X-Hub-Signature-256` on the raw body (constant time,
//! before parsing; no secret configured → refused; a missing or malformed header → 401 before
//! the body is read, which is streamed under the webhook limits of
//! [`crate::http::webhook_body`]), then record the delivery in the inbox keyed by
//! `X-GitHub-Delivery` and answer 202. A redelivery (same id) changes nothing.
//!
//! Memory: the body is held once. Only the installation and repository ids and the action are
//! extracted (no
//! JSON tree is built); the text goes to PostgreSQL, which builds the jsonb.
//!
//! The inbox row: `source = github`, `source_id` = delivery id, `routing_key` per repository
//! (see [`super::routing`]), `kind` = `event.action` (or `event`),
//! `payload` = the body as received.

use std::borrow::Cow;
use std::sync::Arc;

use super::routing::routing_key;
use actix_web::{HttpRequest, HttpResponse, web};
use infragpt_actors::Cluster;
use infragpt_actors::inbox::{EventPayload, NewInboundEvent, RecordOutcome, StoreError};
use infragpt_actors::sources;
use infragpt_actors::{IngestError, Secret};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Value, json};

use super::signature::{GithubSignatureError, GithubSignatureVerifier, SIGNATURE_HEADER};
use crate::error::ApiError;
use crate::http::WebhookRoute;
use crate::http::webhook_body::{WebhookIntake, read_verified};

/// GitHub's maximum webhook payload.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;
pub use super::routing::NO_INSTALLATION_KEY;
const EVENT_HEADER: &str = "X-GitHub-Event";
const DELIVERY_HEADER: &str = "X-GitHub-Delivery";

/// What the webhook route needs.
#[derive(Clone)]
pub struct GithubWebhook {
    verifier: Option<Arc<GithubSignatureVerifier>>,
    cluster: Cluster,
}

impl std::fmt::Debug for GithubWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubWebhook")
            .field("secret_configured", &self.verifier.is_some())
            .finish_non_exhaustive()
    }
}

impl GithubWebhook {
    /// A webhook endpoint recording into `cluster`. `secret` `None` or empty: every delivery is
    /// refused (fail closed).
    pub fn new(secret: Option<&Secret>, cluster: Cluster) -> Self {
        let verifier = secret
            .and_then(|s| GithubSignatureVerifier::new(s).ok())
            .map(Arc::new);
        if verifier.is_none() {
            tracing::warn!(
                "integrations.github.webhook_secret is not set; GitHub webhooks will be refused"
            );
        }
        Self { verifier, cluster }
    }
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// What the route reads from a delivery: the installation and repository ids and the action.
/// Everything else
/// is skipped (still checked to be JSON) without building a tree; a repeated key keeps its
/// last value, as a parsed object would.
#[derive(Debug, Default)]
pub struct Delivery {
    /// `installation.id`
    pub installation_id: Option<i64>,
    /// `repository.id`
    pub repository_id: Option<i64>,
    /// `action`
    pub action: Option<String>,
}

impl Delivery {
    /// Reads the fields from a raw body (a JSON object; the rest is only checked to be JSON).
    pub fn parse(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

impl<'de> Deserialize<'de> for Delivery {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = Delivery;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Delivery, A::Error> {
                let mut delivery = Delivery::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match key.as_ref() {
                        // Small objects and strings: a Value keeps the old leniency (a
                        // non-numeric id or non-string action counts as absent).
                        "installation" => {
                            let installation: Value = map.next_value()?;
                            delivery.installation_id =
                                installation.get("id").and_then(Value::as_i64);
                        }
                        "repository" => {
                            let repository: Value = map.next_value()?;
                            delivery.repository_id = repository.get("id").and_then(Value::as_i64);
                        }
                        "action" => {
                            let action: Value = map.next_value()?;
                            delivery.action = action.as_str().map(str::to_owned);
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(delivery)
            }
        }
        d.deserialize_map(Fields)
    }
}

fn rejected(e: GithubSignatureError) -> ApiError {
    match e {
        GithubSignatureError::SecretNotConfigured => ApiError::unavailable(e.to_string()),
        e => {
            tracing::warn!(error = %e, "github webhook signature rejected");
            ApiError::unauthorized(e.to_string())
        }
    }
}

/// The handler.
#[utoipa::path(post, path = "/webhooks/github", tag = "webhooks", security(("github_signature" = [])),
    params(
        ("X-GitHub-Event" = String, Header, description = "The event name"),
        ("X-GitHub-Delivery" = String, Header, description = "The delivery id (deduplicates)"),
    ),
    request_body(content = serde_json::Value, description = "A GitHub App webhook payload", content_type = "application/json"),
    responses(
        (status = 202, description = "Recorded or a duplicate: `{status, delivery_id}`", body = serde_json::Value),
        crate::http::webhook_body::WebhookRefusals,
    ))]
pub async fn receive(
    hook: web::Data<GithubWebhook>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let Some(verifier) = &hook.verifier else {
        return Err(ApiError::unavailable(
            "github webhooks are not configured (no webhook secret)",
        ));
    };
    // The signature header first: without a well-formed one nothing of the body is read.
    let check = verifier
        .begin(header(&req, SIGNATURE_HEADER))
        .map_err(rejected)?;
    let intake = WebhookIntake::for_request(&req);
    let verified = read_verified(&intake, &req, payload, MAX_BODY_BYTES, check)
        .await
        .map_err(|e| e.into_api(rejected))?;
    // One copy of the body from here on: it goes to PostgreSQL as text (which builds the
    // jsonb); the reservation is held until the delivery is recorded.
    let (body, _reservation) = verified.into_parts();
    let event = header(&req, EVENT_HEADER)
        .ok_or_else(|| ApiError::bad_request("missing X-GitHub-Event header"))?
        .to_owned();
    let delivery = header(&req, DELIVERY_HEADER)
        .ok_or_else(|| ApiError::bad_request("missing X-GitHub-Delivery header"))?
        .to_owned();
    if delivery.len() > 200 {
        return Err(ApiError::bad_request("X-GitHub-Delivery is too long"));
    }
    let fields = Delivery::parse(&body).map_err(|e| {
        if e.is_data() {
            ApiError::bad_request("body must be a JSON object")
        } else {
            ApiError::bad_request(format!("body is not valid JSON: {e}"))
        }
    })?;
    // Skipped strings are not checked for UTF-8 by the parse above; the text column needs it.
    let body = String::from_utf8(body)
        .map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}")))?;
    // Per installation, before recording: a refused delivery is not lost, it shows failed in
    // the app's recent deliveries and can be redelivered (GitHub does not retry by itself).
    let source = fields
        .installation_id
        .map_or_else(|| "app".to_owned(), |id| id.to_string());
    intake.rate_limits().admit(WebhookRoute::Github, &source)?;
    let kind = match fields.action {
        Some(action) => format!("{event}.{action}"),
        None => event.clone(),
    };
    let outcome = hook
        .cluster
        .ingest(NewInboundEvent {
            source: sources::GITHUB,
            source_id: delivery.clone(),
            routing_key: routing_key(fields.installation_id, fields.repository_id),
            kind: kind.clone(),
            payload: EventPayload::Raw(body),
        })
        .await
        .map_err(|e| match e {
            IngestError::ShuttingDown => ApiError::unavailable("shutting down, retry later"),
            IngestError::NoStream(_) => ApiError::internal(e),
            IngestError::EmptyRoutingKey => ApiError::internal(e),
            IngestError::Store(s @ StoreError::Rejected(_)) => {
                // Permanent: a redelivery would fail the same way (and the database is fine).
                tracing::error!(delivery_id = %delivery, error = %s, "the event store refused a github delivery");
                ApiError::unprocessable("payload", "the delivery could not be stored")
            }
            IngestError::Store(s) => {
                tracing::error!(error = %s, "recording a github delivery failed");
                ApiError::unavailable("could not record the delivery, retry later")
            }
        })?;
    let status = match outcome {
        RecordOutcome::Recorded(_) => "recorded",
        RecordOutcome::Duplicate(_) => "duplicate",
    };
    tracing::info!(delivery_id = %delivery, kind = %kind, status, "github delivery");
    Ok(HttpResponse::Accepted().json(json!({ "status": status, "delivery_id": delivery })))
}

/// The GitHub webhook's part of the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(receive))]
pub struct GithubWebhookApi;

/// Adds `POST /webhooks/github` and its data. The body is streamed under [`MAX_BODY_BYTES`]
/// and the process's webhook limits ([`crate::http::webhook_body`]).
pub fn configure(cfg: &mut web::ServiceConfig, hook: GithubWebhook) {
    cfg.service(
        web::resource("/webhooks/github")
            .app_data(web::Data::new(hook))
            .route(web::post().to(receive)),
    );
}
