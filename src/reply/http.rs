//! `POST /reply`: SendReply over HTTP (JSON `{"conversation_id": "...", "message": "..."}`),
//! plus the pieces the gRPC SendReply shares with it: the bearer check and the error mapping.
//!
//! Answers: 200 `{"success":true,"error":""}`; 400 for a conversation id that is not a UUID,
//! an empty message or a malformed body; 404 for an unknown conversation; 401 when
//! `agent.reply_token` is configured and the `Authorization: Bearer <token>` header is missing
//! or wrong (checked before the body is read); 503 when the store or Slack is unavailable.
//! Errors use the API's JSON error shape.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use infragpt_actors::Secret;
use infragpt_actors::conversation::{ReplyError, ReplyOutcome, ReplyService, SlackApiError};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Who may call SendReply.
#[derive(Debug, Clone, Default)]
pub struct ReplyAuth {
    token: Option<Secret>,
}

impl ReplyAuth {
    /// Requires `Authorization: Bearer <token>` when a token is given; open otherwise.
    pub fn new(token: Option<Secret>) -> Self {
        Self {
            token: token.filter(|t| !t.is_empty()),
        }
    }

    /// True when a token is required.
    pub fn is_required(&self) -> bool {
        self.token.is_some()
    }

    /// Checks an `authorization` header value (constant-time comparison of the token).
    pub fn check(&self, authorization: Option<&str>) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let Some(value) = authorization else {
            return Err(ApiError::unauthorized(
                "missing authorization: Bearer <reply token>",
            ));
        };
        let presented = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, rest)| rest.trim());
        match presented {
            Some(presented) if token.ct_eq(presented) => Ok(()),
            Some(_) => Err(ApiError::unauthorized("invalid reply token")),
            None => Err(ApiError::unauthorized(
                "authorization must be Bearer <reply token>",
            )),
        }
    }
}

/// The SendReply error as the API answers it.
pub fn api_error(e: ReplyError) -> ApiError {
    match e {
        ReplyError::InvalidConversationId(_) | ReplyError::EmptyMessage => {
            ApiError::bad_request(e.to_string())
        }
        ReplyError::NotFound(_) => ApiError::not_found(e.to_string()),
        ReplyError::Store(store) => {
            tracing::warn!(error = %store, "SendReply: conversation store unavailable");
            ApiError::unavailable("the conversation store is unavailable; retry later")
        }
        ReplyError::Slack(slack) => {
            tracing::warn!(error = %slack, "SendReply: posting to Slack failed");
            match slack {
                SlackApiError::RateLimited { .. } | SlackApiError::Transport(_) => {
                    ApiError::unavailable(format!("slack is unavailable; retry later ({slack})"))
                }
                // Slack refused (inactive workspace, unknown token, API error): retrying will
                // not help, but the caller should know why.
                other => ApiError::unavailable(format!("slack refused the reply: {other}")),
            }
        }
    }
}

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
    // Authenticate before reading anything the caller sent.
    auth.check(authorization)?;
    let request: ReplyRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let outcome = service
        .send_reply(&request.conversation_id, &request.message)
        .await
        .map_err(api_error)?;
    tracing::info!(
        conversation_id = %request.conversation_id.trim(),
        already_posted = outcome == ReplyOutcome::AlreadyPosted,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_check() {
        let open = ReplyAuth::new(None);
        assert!(open.check(None).is_ok());
        assert!(!ReplyAuth::new(Some(Secret::new(""))).is_required());
        let auth = ReplyAuth::new(Some(Secret::new("s3cret")));
        assert!(auth.is_required());
        assert!(auth.check(Some("Bearer s3cret")).is_ok());
        assert!(auth.check(Some("bearer s3cret")).is_ok());
        for bad in [
            None,
            Some("Bearer nope"),
            Some("s3cret"),
            Some("Basic s3cret"),
            Some("Bearer "),
        ] {
            let e = auth.check(bad).unwrap_err();
            assert_eq!(
                e.status(),
                actix_web::http::StatusCode::UNAUTHORIZED,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn error_mapping() {
        use actix_web::http::StatusCode;
        let e = api_error(ReplyError::InvalidConversationId("nope".into()));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.message().contains("not a valid UUID"));
        let id = infragpt_actors::ids::ConversationId::new_random();
        assert_eq!(
            api_error(ReplyError::NotFound(id)).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            api_error(ReplyError::Slack(SlackApiError::Transport("x".into()))).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
