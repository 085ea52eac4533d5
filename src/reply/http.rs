//! `POST /reply`: SendReply over HTTP (JSON `{"conversation_id": "...", "message": "..."}`).
//!
//! Answers: 200 `{"success":true,"error":""}`; 400 for a conversation id that is not a UUID,
//! an empty message or a malformed body; 404 for an unknown conversation; 401 when the caller
//! is not authenticated (see [`ReplyAuth`]; checked before the body is read); 503 when the
//! store or Slack is unavailable. Errors use the API's JSON error shape.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use infragpt_actors::conversation::{ReplyOutcome, ReplyService};
use serde::{Deserialize, Serialize};

use super::{ReplyAuth, ReplyCaller, api_error};
use crate::error::ApiError;

/// Body of `POST /reply` (the gRPC `SendReplyCommand`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyRequest {
    /// Our conversation UUID.
    pub conversation_id: String,
    /// The text to post.
    pub message: String,
}

/// Answer of `POST /reply` (the gRPC `Status`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplyStatus {
    /// Posted (or already posted for this turn).
    pub success: bool,
    /// Empty on success.
    pub error: String,
}

async fn post_reply(
    req: HttpRequest,
    body: web::Bytes,
    service: web::Data<Arc<ReplyService>>,
    auth: web::Data<ReplyAuth>,
) -> Result<HttpResponse, ApiError> {
    let authorization = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::unauthorized("authorization header is not ASCII"))
        })
        .transpose()?;
    // Authenticate before reading anything the caller sent. The peer is the TCP peer:
    // X-Forwarded-For is written by clients and proves nothing.
    let authenticated = auth.check(&ReplyCaller {
        authorization,
        peer: req.peer_addr().map(|a| a.ip()),
        client_certificate: false,
    })?;
    let request: ReplyRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let outcome = service
        .send_reply(&request.conversation_id, &request.message)
        .await
        .map_err(api_error)?;
    tracing::info!(
        conversation_id = %request.conversation_id.trim(),
        already_posted = outcome == ReplyOutcome::AlreadyPosted,
        authenticated_by = authenticated.as_str(),
        transport = "http",
        "SendReply handled"
    );
    Ok(HttpResponse::Ok().json(ReplyStatus {
        success: true,
        error: String::new(),
    }))
}

/// Adds `POST /reply`. Needs `web::Data<Arc<ReplyService>>` and `web::Data<ReplyAuth>` in the
/// app (see [`configure`]).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/reply", web::post().to(post_reply));
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
