//! `POST /slack/interactions`: Slack's interactivity Request URL (button clicks, modal
//! submissions) for apps that do not use Socket Mode (issue 14).
//!
//! Signed exactly like `POST /slack/events` (the same verifier and signing secret:
//! `X-Slack-Signature` over `v0:{ts}:{raw body}`, ±5 minutes, constant time, headers and
//! timestamp checked before the body is read and the MAC while it streams; no secret → every
//! request refused). Only then is the body parsed: form-encoded, its `payload` field the
//! interaction's JSON. An interaction of ours is recorded in the inbox (deduplicated and
//! routed like the Socket Mode `interactive` envelope, see
//! `infragpt_actors::approvals::interaction`) and answered 200 with an empty body, which
//! Slack takes as the acknowledgement (within its 3 s); others are answered 200 and dropped.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use infragpt_actors::approvals::interaction::{InteractionError, inbox_event};
use infragpt_actors::cluster::IngestError;
use infragpt_actors::inbox::{RecordOutcome, StoreError};
use serde_json::Value;

use super::events_http::{EventsEndpoint, MAX_BODY_BYTES, begin, rejected};
use crate::error::ApiError;
use crate::http::WebhookRoute;
use crate::http::webhook_body::{WebhookIntake, read_verified};

/// The route path.
pub const INTERACTIONS_PATH: &str = "/slack/interactions";

/// The interaction JSON in a form body (`payload=...`).
pub fn payload_of(body: &[u8]) -> Result<Value, String> {
    let text = url::form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| "the form has no payload field".to_owned())?;
    serde_json::from_str(&text).map_err(|e| format!("payload is not JSON: {e}"))
}

/// Slack's interactivity over HTTP: a signed interaction of ours is recorded before the
/// answer.
#[utoipa::path(post, path = "/slack/interactions", tag = "webhooks", security(("slack_signature" = [])),
    request_body(content = String, description = "`payload=<interaction JSON>` (block_actions, view_submission)", content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Recorded (or not ours): the acknowledgement"),
        (status = 400, description = "Not a form with a JSON payload, or a malformed interaction", body = crate::error::ErrorBody),
        crate::http::webhook_body::WebhookRefusals,
    ))]
async fn slack_interactions_handler(
    req: HttpRequest,
    payload: web::Payload,
    ep: web::Data<EventsEndpoint>,
) -> Result<HttpResponse, ApiError> {
    let check = begin(&ep, &req).map_err(rejected)?;
    let intake = WebhookIntake::for_request(&req);
    let verified = read_verified(&intake, &req, payload, MAX_BODY_BYTES, check)
        .await
        .map_err(|e| e.into_api(rejected))?;
    let (body, _reservation) = verified.into_parts();
    let value = payload_of(&body).map_err(ApiError::bad_request)?;
    let event = match inbox_event(&value) {
        Ok(Some(event)) => event,
        Ok(None) => return Ok(HttpResponse::Ok().finish()),
        Err(e @ InteractionError::Malformed(_)) => {
            return Err(ApiError::bad_request(e.to_string()));
        }
        Err(e) => return Err(ApiError::bad_request(e.to_string())),
    };
    let team = event
        .routing_key
        .0
        .split('/')
        .next()
        .unwrap_or("unknown")
        .to_owned();
    intake.rate_limits().admit(WebhookRoute::Slack, &team)?;
    let source_id = event.source_id.clone();
    match ep.cluster().ingest(event).await {
        Ok(outcome) => {
            let duplicate = matches!(outcome, RecordOutcome::Duplicate(_));
            tracing::debug!(source_id = %source_id, duplicate, "slack interaction recorded");
            Ok(HttpResponse::Ok().finish())
        }
        Err(IngestError::Store(e @ StoreError::Rejected(_))) => {
            tracing::error!(source_id = %source_id, error = %e, "the event store refused a slack interaction");
            Err(ApiError::unprocessable(
                "payload",
                "the interaction could not be stored",
            ))
        }
        Err(e @ (IngestError::ShuttingDown | IngestError::Store(_))) => {
            tracing::error!(source_id = %source_id, error = %e, "recording a slack interaction failed");
            Err(ApiError::unavailable(
                "the interaction could not be recorded; retry",
            ))
        }
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// The interactions endpoint in the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(slack_interactions_handler))]
pub struct SlackInteractionsApi;

/// Adds `POST /slack/interactions` over the events endpoint's verifier and cluster.
pub fn configure(cfg: &mut web::ServiceConfig, endpoint: Arc<EventsEndpoint>) {
    cfg.app_data(web::Data::from(endpoint)).route(
        INTERACTIONS_PATH,
        web::post().to(slack_interactions_handler),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_field_is_read() {
        let body = b"payload=%7B%22type%22%3A%22block_actions%22%7D&other=1";
        assert_eq!(payload_of(body).unwrap()["type"], "block_actions");
        assert!(payload_of(b"nothing=here").is_err());
        assert!(payload_of(b"payload=not-json").is_err());
    }
}
