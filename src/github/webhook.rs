//! `POST /webhooks/github`: verify `X-Hub-Signature-256` on the raw body (constant time,
//! before parsing; no secret configured → refused), then record the delivery in the inbox
//! keyed by `X-GitHub-Delivery` and answer 202. A redelivery (same id) changes nothing.
//!
//! The inbox row: `source = github`, `source_id` = delivery id, `routing_key` =
//! `installation:{id}` (or [`NO_INSTALLATION_KEY`]), `kind` = `event.action` (or `event`),
//! `payload` = the body as received.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use infragpt_actors::Cluster;
use infragpt_actors::ids::InstallationId;
use infragpt_actors::inbox::{NewInboundEvent, RecordOutcome, RoutingKey};
use infragpt_actors::sources;
use infragpt_actors::{IngestError, Secret};
use serde_json::{Value, json};

use super::signature::{GithubSignatureError, GithubSignatureVerifier, SIGNATURE_HEADER};
use crate::error::ApiError;

/// GitHub's maximum webhook payload.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;
/// Routing key of deliveries without an installation (app-level `ping`, ...).
pub const NO_INSTALLATION_KEY: &str = "github:no-installation";
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

/// The handler.
pub async fn receive(
    hook: web::Data<GithubWebhook>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let Some(verifier) = &hook.verifier else {
        return Err(ApiError::unavailable(
            "github webhooks are not configured (no webhook secret)",
        ));
    };
    match verifier.verify(header(&req, SIGNATURE_HEADER), &body) {
        Ok(()) => {}
        Err(e @ GithubSignatureError::SecretNotConfigured) => {
            return Err(ApiError::unavailable(e.to_string()));
        }
        Err(e) => {
            tracing::warn!(error = %e, "github webhook signature rejected");
            return Err(ApiError::unauthorized(e.to_string()));
        }
    }
    let event = header(&req, EVENT_HEADER)
        .ok_or_else(|| ApiError::bad_request("missing X-GitHub-Event header"))?
        .to_owned();
    let delivery = header(&req, DELIVERY_HEADER)
        .ok_or_else(|| ApiError::bad_request("missing X-GitHub-Delivery header"))?
        .to_owned();
    if delivery.len() > 200 {
        return Err(ApiError::bad_request("X-GitHub-Delivery is too long"));
    }
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}")))?;
    if !payload.is_object() {
        return Err(ApiError::bad_request("body must be a JSON object"));
    }
    let routing_key = payload
        .pointer("/installation/id")
        .and_then(Value::as_i64)
        .map(|id| InstallationId(id).to_routing_key())
        .unwrap_or_else(|| RoutingKey(NO_INSTALLATION_KEY.to_owned()));
    let kind = match payload.get("action").and_then(Value::as_str) {
        Some(action) => format!("{event}.{action}"),
        None => event.clone(),
    };
    let outcome = hook
        .cluster
        .ingest(NewInboundEvent {
            source: sources::GITHUB,
            source_id: delivery.clone(),
            routing_key,
            kind: kind.clone(),
            payload,
        })
        .await
        .map_err(|e| match e {
            IngestError::ShuttingDown => ApiError::unavailable("shutting down, retry later"),
            IngestError::NoStream(_) => ApiError::internal(e),
            IngestError::EmptyRoutingKey => ApiError::internal(e),
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

/// Adds `POST /webhooks/github` (with its 25 MB body limit) and its data.
pub fn configure(cfg: &mut web::ServiceConfig, hook: GithubWebhook) {
    cfg.service(
        web::resource("/webhooks/github")
            .app_data(web::Data::new(hook))
            .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
            .route(web::post().to(receive)),
    );
}
