//! `POST /webhooks/alertmanager/{source_id}` and `POST /webhooks/pagerduty/{source_id}`.
//!
//! In order: the source id must name a live source of that kind (else 404: nothing is read
//! or stored); its credentials are checked before a byte of the body is read (401 for a
//! missing or malformed `Authorization`/signature header); the body is read under the
//! webhook limits (bounded before the signature is known, [`crate::http::webhook_body`]),
//! its HMAC computed on the raw bytes as they stream and compared in constant time (401 on a
//! mismatch, nothing stored); only then is it parsed, recorded in the inbox (keyed by the
//! provider's id, routed per source so a source's events stay in order) and answered 202.
//! A source whose secret cannot be opened (vault key missing) refuses with 503: fail closed.
//!
//! Alertmanager: `auth: bearer` (Alertmanager's `http_config.authorization.credentials`) or
//! `auth: hmac` (`X-InfraGPT-Signature: sha256=<hex HMAC-SHA256 of the body>`, for a relay
//! that signs). PagerDuty: `X-PagerDuty-Signature: v1=<hex>[,v1=<hex>...]` (several during a
//! secret rotation; any may match).

use actix_web::{HttpRequest, HttpResponse, web};
use infragpt_actors::events::SourceKind;
use infragpt_actors::events::normalize::{
    alertmanager_dedup_material, pagerduty_event_id, pagerduty_event_type,
};
use infragpt_actors::inbox::{
    EventPayload, NewInboundEvent, RecordOutcome, RoutingKey, StoreError,
};
use infragpt_actors::{Cluster, IngestError, Secret, sources};
use ring::hmac;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::store::{PgEvents, SourceAuth, WebhookSource};
use crate::error::ApiError;
use crate::http::webhook_body::{BodyVerifier, WebhookIntake, read_verified};
use crate::http::{WebhookRoute, bearer_token};

/// Largest Alertmanager or PagerDuty body (Alertmanager groups can be large; PagerDuty's are
/// small).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// The signature header of an HMAC-authenticated Alertmanager source.
pub const INFRAGPT_SIGNATURE: &str = "X-InfraGPT-Signature";
/// PagerDuty's signature header.
pub const PAGERDUTY_SIGNATURE: &str = "X-PagerDuty-Signature";

/// What the routes need.
#[derive(Clone)]
pub struct SourceWebhooks {
    pub(crate) store: PgEvents,
    pub(crate) cluster: Cluster,
}

impl std::fmt::Debug for SourceWebhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceWebhooks").finish_non_exhaustive()
    }
}

/// Why a delivery's credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceAuthError {
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("{0} is not of the expected form")]
    Malformed(&'static str),
    #[error("the bearer token is wrong")]
    WrongToken,
    #[error("the signature does not match the body")]
    Mismatch,
}

/// HMAC-SHA256 of the body as it streams, compared at the end with every expected tag in
/// constant time.
pub struct HmacCheck {
    ctx: hmac::Context,
    expected: Vec<[u8; 32]>,
}

impl std::fmt::Debug for HmacCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacCheck").finish_non_exhaustive()
    }
}

impl HmacCheck {
    fn new(secret: &Secret, expected: Vec<[u8; 32]>) -> Self {
        Self {
            ctx: hmac::Context::with_key(&hmac::Key::new(
                hmac::HMAC_SHA256,
                secret.expose().as_bytes(),
            )),
            expected,
        }
    }
}

impl BodyVerifier for HmacCheck {
    type Error = SourceAuthError;
    fn update(&mut self, chunk: &[u8]) {
        self.ctx.update(chunk);
    }
    fn finish(self) -> Result<(), SourceAuthError> {
        let tag = self.ctx.sign();
        let mut ok = subtle::Choice::from(0);
        for e in &self.expected {
            ok |= tag.as_ref().ct_eq(e);
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err(SourceAuthError::Mismatch)
        }
    }
}

/// Accepts any body (a bearer token was checked before reading it).
#[derive(Debug)]
struct Checked;

impl BodyVerifier for Checked {
    type Error = SourceAuthError;
    fn update(&mut self, _chunk: &[u8]) {}
    fn finish(self) -> Result<(), SourceAuthError> {
        Ok(())
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(s.trim()).ok()?;
    bytes.try_into().ok()
}

/// `sha256=<64 hex>`.
fn parse_sha256(header: Option<&str>) -> Result<Vec<[u8; 32]>, SourceAuthError> {
    let value = header.ok_or(SourceAuthError::Missing(INFRAGPT_SIGNATURE))?;
    let hex = value
        .trim()
        .strip_prefix("sha256=")
        .ok_or(SourceAuthError::Malformed(INFRAGPT_SIGNATURE))?;
    hex32(hex)
        .map(|t| vec![t])
        .ok_or(SourceAuthError::Malformed(INFRAGPT_SIGNATURE))
}

/// `v1=<hex>[,v1=<hex>...]`; other versions are skipped; at least one `v1` must read.
pub fn parse_pagerduty_signatures(header: Option<&str>) -> Result<Vec<[u8; 32]>, SourceAuthError> {
    let value = header.ok_or(SourceAuthError::Missing(PAGERDUTY_SIGNATURE))?;
    let tags: Vec<[u8; 32]> = value
        .split(',')
        .filter_map(|part| part.trim().strip_prefix("v1="))
        .filter_map(hex32)
        .take(16)
        .collect();
    if tags.is_empty() {
        return Err(SourceAuthError::Malformed(PAGERDUTY_SIGNATURE));
    }
    Ok(tags)
}

/// `sha256=<hex>` of `body` (tests, the demo, relays).
pub fn sign_sha256(secret: &Secret, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes());
    format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()))
}

/// `v1=<hex>` of `body`, as PagerDuty signs (tests, the demo).
pub fn sign_pagerduty(secret: &Secret, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes());
    format!("v1={}", hex::encode(hmac::sign(&key, body).as_ref()))
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn refused(e: SourceAuthError) -> ApiError {
    tracing::warn!(error = %e, "event source webhook refused");
    ApiError::unauthorized(e.to_string())
}

fn unknown_source() -> ApiError {
    ApiError::not_found("no such event source")
}

/// The live source `raw` of `kind`; 404 for anything else.
async fn source(
    hooks: &SourceWebhooks,
    raw: &str,
    kind: SourceKind,
) -> Result<WebhookSource, ApiError> {
    let id = Uuid::parse_str(raw).map_err(|_| unknown_source())?;
    match hooks.store.webhook_source(id, kind).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(unknown_source()),
        Err(crate::db::StoreError::Corrupt { what, source }) => {
            // The secret cannot be opened (a vault key is missing): refuse, never accept
            // unverified.
            tracing::error!(source_id = %id, what, error = %source, "event source secret unusable; refusing its deliveries");
            Err(ApiError::unavailable(
                "this source's secret cannot be read; refusing",
            ))
        }
        Err(e) => {
            tracing::error!(source_id = %id, error = %e, "event source lookup failed");
            Err(ApiError::unavailable(
                "could not look the source up, retry later",
            ))
        }
    }
}

async fn record(hooks: &SourceWebhooks, event: NewInboundEvent) -> Result<HttpResponse, ApiError> {
    let source_id = event.source_id.clone();
    let kind = event.kind.clone();
    let outcome = hooks.cluster.ingest(event).await.map_err(|e| match e {
        IngestError::ShuttingDown => ApiError::unavailable("shutting down, retry later"),
        IngestError::NoStream(_) | IngestError::EmptyRoutingKey => ApiError::internal(e),
        IngestError::Store(s @ StoreError::Rejected(_)) => {
            tracing::error!(source_id, error = %s, "the event store refused a delivery");
            ApiError::unprocessable("payload", "the delivery could not be stored")
        }
        IngestError::Store(s) => {
            tracing::error!(error = %s, "recording a delivery failed");
            ApiError::unavailable("could not record the delivery, retry later")
        }
    })?;
    let status = match outcome {
        RecordOutcome::Recorded(_) => "recorded",
        RecordOutcome::Duplicate(_) => "duplicate",
    };
    tracing::info!(source_id, kind, status, "event source delivery");
    Ok(HttpResponse::Accepted().json(json!({ "status": status, "id": source_id })))
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("body must be a JSON object"));
    }
    Ok(value)
}

/// An Alertmanager notification.
#[utoipa::path(post, path = "/webhooks/alertmanager/{source_id}", tag = "webhooks",
    security(("alertmanager_token" = []), ("infragpt_signature" = [])),
    params(("source_id" = String, Path, description = "The source's id (from POST /event-sources)")),
    request_body(content = serde_json::Value, description = "Alertmanager webhook payload, version 4", content_type = "application/json"),
    responses(
        (status = 202, description = "Recorded or a duplicate: `{status, id}`", body = serde_json::Value),
        (status = 404, description = "No such Alertmanager source", body = crate::error::ErrorBody),
        (status = 429, description = "Over the source's rate limit (`webhooks.rate_limits.sources`): retry after `Retry-After`", body = crate::error::ErrorBody),
        crate::http::webhook_body::WebhookRefusals,
    ))]
pub async fn alertmanager(
    hooks: web::Data<SourceWebhooks>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let src = source(&hooks, &path, SourceKind::Alertmanager).await?;
    let intake = WebhookIntake::for_request(&req);
    let body = match src.auth {
        SourceAuth::Bearer => {
            let token = header(&req, "Authorization")
                .ok_or(SourceAuthError::Missing("Authorization"))
                .and_then(|h| bearer_token(h).ok_or(SourceAuthError::Malformed("Authorization")))
                .map_err(refused)?;
            if !bool::from(token.as_bytes().ct_eq(src.secret.expose().as_bytes())) {
                return Err(refused(SourceAuthError::WrongToken));
            }
            read_verified(&intake, &req, payload, MAX_BODY_BYTES, Checked)
                .await
                .map_err(|e| e.into_api(refused))?
        }
        SourceAuth::Hmac => {
            let tags = parse_sha256(header(&req, INFRAGPT_SIGNATURE)).map_err(refused)?;
            read_verified(
                &intake,
                &req,
                payload,
                MAX_BODY_BYTES,
                HmacCheck::new(&src.secret, tags),
            )
            .await
            .map_err(|e| e.into_api(refused))?
        }
    };
    let (body, _reservation) = body.into_parts();
    let value = parse_json(&body)?;
    // Per source, after verification, before recording: a refused delivery is retried by
    // Alertmanager.
    intake
        .rate_limits()
        .admit(WebhookRoute::Sources, &src.id.to_string())?;
    let material =
        alertmanager_dedup_material(&value).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, material.as_bytes());
    let status = value["status"].as_str().unwrap_or("firing").to_owned();
    record(
        &hooks,
        NewInboundEvent {
            source: sources::ALERTMANAGER,
            source_id: format!("{}:{}", src.id, hex::encode(digest.as_ref())),
            routing_key: RoutingKey(format!("alertmanager:{}", src.id)),
            kind: format!("alert.{status}"),
            payload: EventPayload::Json(value),
        },
    )
    .await
}

/// A PagerDuty v3 webhook.
#[utoipa::path(post, path = "/webhooks/pagerduty/{source_id}", tag = "webhooks",
    security(("pagerduty_signature" = [])),
    params(("source_id" = String, Path, description = "The source's id (from POST /event-sources)"),
           ("X-PagerDuty-Signature" = String, Header, description = "v1=<hex HMAC-SHA256>, comma-separated during rotation")),
    request_body(content = serde_json::Value, description = "PagerDuty v3 webhook payload (`{event: {...}}`)", content_type = "application/json"),
    responses(
        (status = 202, description = "Recorded or a duplicate: `{status, id}`", body = serde_json::Value),
        (status = 404, description = "No such PagerDuty source", body = crate::error::ErrorBody),
        (status = 429, description = "Over the source's rate limit (`webhooks.rate_limits.sources`): retry after `Retry-After`", body = crate::error::ErrorBody),
        crate::http::webhook_body::WebhookRefusals,
    ))]
pub async fn pagerduty(
    hooks: web::Data<SourceWebhooks>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let src = source(&hooks, &path, SourceKind::Pagerduty).await?;
    let tags = parse_pagerduty_signatures(header(&req, PAGERDUTY_SIGNATURE)).map_err(refused)?;
    let intake = WebhookIntake::for_request(&req);
    let body = read_verified(
        &intake,
        &req,
        payload,
        MAX_BODY_BYTES,
        HmacCheck::new(&src.secret, tags),
    )
    .await
    .map_err(|e| e.into_api(refused))?;
    let (body, _reservation) = body.into_parts();
    let value = parse_json(&body)?;
    intake
        .rate_limits()
        .admit(WebhookRoute::Sources, &src.id.to_string())?;
    let event_id = pagerduty_event_id(&value)
        .map_err(|e| ApiError::bad_request(e.to_string()))?
        .to_owned();
    if event_id.len() > 200 {
        return Err(ApiError::bad_request("event.id is too long"));
    }
    let kind = pagerduty_event_type(&value)
        .map_err(|e| ApiError::bad_request(e.to_string()))?
        .to_owned();
    record(
        &hooks,
        NewInboundEvent {
            source: sources::PAGERDUTY,
            source_id: format!("{}:{event_id}", src.id),
            routing_key: RoutingKey(format!("pagerduty:{}", src.id)),
            kind,
            payload: EventPayload::Json(value),
        },
    )
    .await
}

/// The webhooks' part of the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(alertmanager, pagerduty))]
pub struct SourceWebhooksApi;

/// Adds the two routes.
pub fn configure(cfg: &mut web::ServiceConfig, hooks: SourceWebhooks) {
    // Resources, not a `/webhooks` scope: a scope would swallow `/webhooks/github`.
    let data = web::Data::new(hooks);
    cfg.service(
        web::resource("/webhooks/alertmanager/{source_id}")
            .app_data(data.clone())
            .route(web::post().to(alertmanager)),
    )
    .service(
        web::resource("/webhooks/pagerduty/{source_id}")
            .app_data(data)
            .route(web::post().to(pagerduty)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagerduty_signatures_parse_lists() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let tags = parse_pagerduty_signatures(Some(&format!("v1={a},v2=zz, v1={b}"))).unwrap();
        assert_eq!(tags.len(), 2);
        assert_eq!(
            parse_pagerduty_signatures(None),
            Err(SourceAuthError::Missing(PAGERDUTY_SIGNATURE))
        );
        assert_eq!(
            parse_pagerduty_signatures(Some("v1=zz")),
            Err(SourceAuthError::Malformed(PAGERDUTY_SIGNATURE))
        );
    }

    #[test]
    fn hmac_check_accepts_any_listed_tag_only() {
        let secret = Secret::new("s3cret");
        let body = b"{\"event\":{}}";
        let good = sign_pagerduty(&secret, body);
        let tags =
            parse_pagerduty_signatures(Some(&format!("v1={},{good}", "0".repeat(64)))).unwrap();
        let mut check = HmacCheck::new(&secret, tags.clone());
        check.update(&body[..3]);
        check.update(&body[3..]);
        assert_eq!(check.finish(), Ok(()));
        let mut check = HmacCheck::new(&secret, tags);
        check.update(b"{}");
        assert_eq!(check.finish(), Err(SourceAuthError::Mismatch));
    }
}
