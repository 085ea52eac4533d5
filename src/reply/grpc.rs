//! SendReply over gRPC: `backend.BackendService/SendReply` and the legacy
//! `infragpt.InfraGPTService/SendReply` (same messages), both delegating to one
//! [`ReplyService`].
//!
//! Answers (the contract returns a `Status` message, so caller mistakes the agent can act on
//! are reported in it, while conditions gRPC has codes for use them):
//!
//! * posted, or the same text already posted for the current turn → OK, `success: true`;
//! * `conversation_id` not a UUID, or an empty message → OK, `success: false` with the reason
//!   in `error` (the HTTP endpoint answers 400);
//! * unknown conversation → `NOT_FOUND` (HTTP 404);
//! * `agent.reply_token` configured and `authorization: Bearer <token>` metadata missing or
//!   wrong → `UNAUTHENTICATED` (HTTP 401);
//! * store or Slack unavailable → `UNAVAILABLE` (HTTP 503; the agent may retry, SendReply is
//!   idempotent per turn).

use std::sync::Arc;

use infragpt_actors::conversation::{ReplyError, ReplyOutcome, ReplyService};

use crate::grpc::pb::backend::backend_service_server::{BackendService, BackendServiceServer};
use crate::grpc::pb::backend::{SendReplyCommand, Status};
use crate::grpc::pb::infragpt::infra_gpt_service_server::{InfraGptService, InfraGptServiceServer};
use crate::grpc::server::GrpcShell;
use crate::http::reply::{ReplyAuth, api_error};

/// The SendReply gRPC services (one value serves both paths).
#[derive(Debug, Clone)]
pub struct ReplyGrpc {
    service: Arc<ReplyService>,
    auth: ReplyAuth,
}

impl ReplyGrpc {
    /// Both services over `service`, requiring `auth`'s token when it has one.
    pub fn new(service: Arc<ReplyService>, auth: ReplyAuth) -> Self {
        Self { service, auth }
    }

    /// `backend.BackendService`.
    pub fn backend_server(&self) -> BackendServiceServer<ReplyGrpc> {
        BackendServiceServer::new(self.clone())
    }

    /// `infragpt.InfraGPTService` (legacy path).
    pub fn legacy_server(&self) -> InfraGptServiceServer<ReplyGrpc> {
        InfraGptServiceServer::new(self.clone())
    }

    /// Adds both services to the gRPC shell.
    pub fn add_to(&self, shell: &mut GrpcShell) {
        shell.add_service(self.backend_server());
        shell.add_service(self.legacy_server());
    }

    async fn handle(
        &self,
        request: tonic::Request<SendReplyCommand>,
        path: &'static str,
    ) -> Result<tonic::Response<Status>, tonic::Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|v| {
                v.to_str()
                    .map_err(|_| tonic::Status::unauthenticated("authorization is not ASCII"))
            })
            .transpose()?;
        self.auth
            .check(authorization)
            .map_err(tonic::Status::from)?;
        let command = request.into_inner();
        match self
            .service
            .send_reply(&command.conversation_id, &command.message)
            .await
        {
            Ok(outcome) => {
                tracing::info!(
                    conversation_id = %command.conversation_id.trim(),
                    already_posted = outcome == ReplyOutcome::AlreadyPosted,
                    transport = path,
                    "SendReply handled"
                );
                Ok(tonic::Response::new(Status {
                    success: true,
                    error: String::new(),
                }))
            }
            Err(e @ (ReplyError::InvalidConversationId(_) | ReplyError::EmptyMessage)) => {
                tracing::info!(transport = path, error = %e, "SendReply rejected");
                Ok(tonic::Response::new(Status {
                    success: false,
                    error: e.to_string(),
                }))
            }
            Err(e) => Err(api_error(e).into()),
        }
    }
}

#[tonic::async_trait]
impl BackendService for ReplyGrpc {
    async fn send_reply(
        &self,
        request: tonic::Request<SendReplyCommand>,
    ) -> Result<tonic::Response<Status>, tonic::Status> {
        self.handle(request, "grpc backend.BackendService").await
    }
}

#[tonic::async_trait]
impl InfraGptService for ReplyGrpc {
    async fn send_reply(
        &self,
        request: tonic::Request<SendReplyCommand>,
    ) -> Result<tonic::Response<Status>, tonic::Status> {
        self.handle(request, "grpc infragpt.InfraGPTService").await
    }
}

/// SendReply as a [`crate::server::Module`]: `POST /reply` on the HTTP listener and both gRPC
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
impl crate::server::Module for ReplyModule {
    fn name(&self) -> &str {
        "send_reply"
    }

    async fn start(
        &mut self,
        _state: &crate::server::AppState,
        http: &mut crate::http::HttpShell,
        grpc: &mut GrpcShell,
    ) -> anyhow::Result<()> {
        http.add_routes(Arc::new(crate::http::reply::configure(
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
