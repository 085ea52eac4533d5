//! `POST /reply`: SendReply over HTTP (JSON `{"conversation_id": "...", "message": "..."}`,
//! optionally `"turn_ts"`).
//!
//! Answers: 200 `{"success":true,"error":""}`; 400 for a conversation id that is not a UUID,
//! an empty message or a malformed body; 404 for an unknown conversation; 409
//! (`failed_precondition`) when Slack refused the reply for good; 401 when the caller is not
//! authenticated (see [`ReplyAuth`]; checked before the body is read); 503 when the store or
//! Slack is unavailable and a retry may work (see [`api_error`]). Errors use the API's JSON
//! error shape plus `"success": false`, so a client reading the `Status` fields still sees the
//! failure: `{"success":false,"error":{"code":"...","message":"..."}}`.

use std::sync::Arc;
use tracing::Instrument as _;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use infragpt_actors::conversation::{ReplyOutcome, ReplyService};
use serde::{Deserialize, Serialize};

use super::{
    ReplyAuth, ReplyAuthenticated, ReplyCaller, api_error, progress_error, progress_outcome,
};
use crate::error::{ApiError, clip};

/// Body of `POST /reply` (the gRPC `SendReplyCommand`).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyRequest {
    /// Our conversation UUID.
    pub conversation_id: String,
    /// The text to post.
    pub message: String,
    /// The turn it answers (optional; see `SendReplyCommand.turn_ts`).
    #[serde(default)]
    pub turn_ts: Option<String>,
}

/// Answer of `POST /reply` (the gRPC `Status`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ReplyStatus {
    /// Posted (or already posted for this turn).
    pub success: bool,
    /// Empty on success.
    pub error: String,
}

/// An error of `POST /reply`: the API's error shape with `"success": false` added.
#[derive(Debug)]
pub struct ReplyHttpError(pub ApiError);

impl From<ApiError> for ReplyHttpError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl std::fmt::Display for ReplyHttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ResponseError for ReplyHttpError {
    fn status_code(&self) -> StatusCode {
        self.0.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut body: serde_json::Value =
            serde_json::from_str(&self.0.to_json()).unwrap_or_default();
        if let Some(object) = body.as_object_mut() {
            object.insert("success".into(), serde_json::Value::Bool(false));
        }
        HttpResponse::build(self.0.status()).json(body)
    }
}

/// The JSON body of an agent's call, or a 400 (serde's message may quote the caller's text,
/// an unknown field say: clipped).
pub(crate) fn agent_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("invalid JSON body: {}", clip(&e.to_string(), 256)))
    })
}

/// SendReply over HTTP: the agent posts its answer into the conversation's thread (idempotent
/// per turn). Accepted with the reply token, from `agent.reply_allowed_networks`, or both.
#[utoipa::path(post, path = "/reply", tag = "reply", security(("reply_token" = []), ()),
    request_body = ReplyRequest,
    responses(
        (status = 200, description = "Posted, or already posted for this turn", body = ReplyStatus),
        (status = 400, description = "The body does not read (`success: false` added)", body = crate::error::ErrorBody),
        (status = 401, description = "Not authenticated: wrong token, or no token from outside the allowed networks", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown conversation", body = crate::error::ErrorBody),
        (status = 409, description = "Slack refused for good (no token for the workspace, channel not found, archived)", body = crate::error::ErrorBody),
        (status = 503, description = "Slack or the database is unavailable: retry later", body = crate::error::ErrorBody),
    ))]
async fn post_reply(
    req: HttpRequest,
    body: web::Bytes,
    service: web::Data<Arc<ReplyService>>,
    auth: web::Data<ReplyAuth>,
) -> Result<HttpResponse, ReplyHttpError> {
    let authenticated = authenticate(&req, &auth)?;
    let request: ReplyRequest = agent_body(&body)?;
    let span = tracing::info_span!(
        "send_reply",
        conversation_id = %request.conversation_id.trim(),
        transport = "http"
    );
    let outcome = service
        .send_reply_detached(
            request.conversation_id.clone(),
            request.message,
            request.turn_ts,
        )
        .instrument(span)
        .await
        .map_err(api_error)?;
    tracing::info!(
        conversation_id = %request.conversation_id.trim(),
        already_posted = outcome == ReplyOutcome::AlreadyPosted,
        superseded = outcome == ReplyOutcome::Superseded,
        authenticated_by = authenticated.as_str(),
        transport = "http",
        "SendReply handled"
    );
    Ok(HttpResponse::Ok().json(ReplyStatus {
        success: true,
        error: String::new(),
    }))
}

/// Body of `POST /progress` (the gRPC `SendProgressCommand`).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgressRequest {
    /// Our conversation UUID.
    pub conversation_id: String,
    /// What the agent is doing now, one short line (cut at 150 characters).
    pub text: String,
}

/// SendProgress over HTTP: what the agent is doing now, shown in the thread's status or
/// placeholder until the answer comes (at most one change a second per thread; a report
/// after the answer is ignored). Authenticated like `POST /reply`.
#[utoipa::path(post, path = "/progress", tag = "reply", security(("reply_token" = []), ()),
    request_body = ProgressRequest,
    responses(
        (status = 200, description = "Shown, coalesced with the next change, or ignored (the turn is answered)", body = ReplyStatus),
        (status = 400, description = "The body does not read, the id is not a UUID or the text is empty", body = crate::error::ErrorBody),
        (status = 401, description = "Not authenticated: wrong token, or no token from outside the allowed networks", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown conversation", body = crate::error::ErrorBody),
        (status = 503, description = "The database is unavailable: retry later", body = crate::error::ErrorBody),
    ))]
async fn post_progress(
    req: HttpRequest,
    body: web::Bytes,
    service: web::Data<Arc<ReplyService>>,
    auth: web::Data<ReplyAuth>,
) -> Result<HttpResponse, ReplyHttpError> {
    let authenticated = authenticate(&req, &auth)?;
    let request: ProgressRequest = agent_body(&body)?;
    let span = tracing::info_span!(
        "send_progress",
        conversation_id = %request.conversation_id.trim(),
        transport = "http"
    );
    let outcome = service
        .send_progress(&request.conversation_id, &request.text)
        .instrument(span)
        .await
        .map_err(progress_error)?;
    tracing::info!(
        conversation_id = %request.conversation_id.trim(),
        outcome = progress_outcome(outcome),
        authenticated_by = authenticated.as_str(),
        transport = "http",
        "SendProgress handled"
    );
    Ok(HttpResponse::Ok().json(ReplyStatus {
        success: true,
        error: String::new(),
    }))
}

/// Who the caller is, checked before anything it sent is read. The peer is the TCP peer:
/// X-Forwarded-For is written by clients and proves nothing.
pub(crate) fn authenticate(
    req: &HttpRequest,
    auth: &ReplyAuth,
) -> Result<ReplyAuthenticated, ApiError> {
    let authorization = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::unauthorized("authorization header is not ASCII"))
        })
        .transpose()?;
    auth.check(&ReplyCaller {
        authorization,
        peer: req.peer_addr().map(|a| a.ip()),
        client_certificate: false,
    })
}

/// `POST /reply` and `POST /progress` in the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(post_reply, post_progress))]
pub struct ReplyApi;

/// Adds `POST /reply`. Needs `web::Data<Arc<ReplyService>>` and `web::Data<ReplyAuth>` in the
/// app (see [`configure`]).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/reply", web::post().to(post_reply))
        .route("/progress", web::post().to(post_progress));
}

/// A route hook that registers the service, the auth and `POST /reply` (for
/// `HttpShell::with_routes` / `add_routes`).
pub fn configure(
    service: Arc<ReplyService>,
    auth: ReplyAuth,
) -> impl Fn(&mut web::ServiceConfig) + Clone + Send + Sync + 'static {
    let service = web::Data::new(service);
    let auth = web::Data::new(auth);
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(service.clone()).app_data(auth.clone());
        routes(cfg);
    }
}
