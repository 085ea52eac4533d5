//! SendReply, the agent's way to post into a conversation, over both transports: gRPC
//! ([`grpc`]: `backend.BackendService/SendReply` and the legacy
//! `infragpt.InfraGPTService/SendReply`) and HTTP ([`http`]: `POST /reply`). Both delegate to one
//! [`ReplyService`] and share the bearer check ([`ReplyAuth`]) and the error mapping
//! ([`api_error`]); [`ReplyModule`] plugs them into the server.

pub mod grpc;
pub mod http;

use std::sync::Arc;

use infragpt_actors::Secret;
use infragpt_actors::conversation::{ReplyError, ReplyService, SlackApiError};

use self::grpc::ReplyGrpc;
use crate::error::ApiError;
use crate::grpc::server::GrpcShell;
use crate::http::HttpShell;
use crate::server::{AppState, Module};

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

/// SendReply as a [`Module`]: `POST /reply` on the HTTP listener and both gRPC
/// services on the gRPC listener, sharing one [`ReplyService`] and one [`ReplyAuth`].
pub struct ReplyModule {
    service: Arc<ReplyService>,
    auth: ReplyAuth,
}

impl std::fmt::Debug for ReplyModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyModule")
            .field("token_required", &self.auth.is_required())
            .finish_non_exhaustive()
    }
}

impl ReplyModule {
    /// The module; `auth` usually comes from `ReplyAuth::new(config.agent.reply_token.clone())`.
    pub fn new(service: Arc<ReplyService>, auth: ReplyAuth) -> Self {
        Self { service, auth }
    }
}

#[async_trait::async_trait]
impl Module for ReplyModule {
    fn name(&self) -> &str {
        "send_reply"
    }

    async fn start(
        &mut self,
        _state: &AppState,
        http: &mut HttpShell,
        grpc: &mut GrpcShell,
    ) -> anyhow::Result<()> {
        http.add_routes(Arc::new(self::http::configure(
            self.service.clone(),
            self.auth.clone(),
        )));
        ReplyGrpc::new(self.service.clone(), self.auth.clone()).add_to(grpc);
        if !self.auth.is_required() {
            tracing::warn!("agent.reply_token is not set: SendReply accepts unauthenticated calls");
        }
        Ok(())
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
