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
//! * the caller has neither the reply token (`authorization: Bearer <token>` metadata), nor a
//!   verified client certificate, nor a source address in `agent.reply_allowed_networks`, or
//!   presents a wrong token → `UNAUTHENTICATED` (HTTP 401; see [`ReplyAuth`]);
//! * store or Slack unavailable → `UNAVAILABLE` (HTTP 503; the agent may retry, SendReply is
//!   idempotent per turn).

use std::sync::Arc;

use infragpt_actors::conversation::{ReplyError, ReplyOutcome, ReplyService};

use crate::grpc::pb::backend::backend_service_server::{BackendService, BackendServiceServer};
use crate::grpc::pb::backend::{SendReplyCommand, Status};
use crate::grpc::pb::infragpt::infra_gpt_service_server::{InfraGptService, InfraGptServiceServer};
use crate::grpc::server::GrpcShell;
use crate::http::reply::{ReplyAuth, ReplyCaller, api_error};

/// The SendReply gRPC services (one value serves both paths).
#[derive(Debug, Clone)]
pub struct ReplyGrpc {
    service: Arc<ReplyService>,
    auth: ReplyAuth,
}

impl ReplyGrpc {
    /// Both services over `service`, accepting the callers `auth` accepts.
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
        // The TCP peer (also under TLS), and whether mutual TLS verified a client certificate.
        let caller = ReplyCaller {
            authorization,
            peer: request.remote_addr().map(|a| a.ip()),
            client_certificate: request.peer_certs().is_some_and(|certs| !certs.is_empty()),
        };
        let authenticated = self.auth.check(&caller).map_err(|e| {
            tracing::info!(transport = path, peer = ?caller.peer, error = %e.message(), "SendReply refused");
            tonic::Status::from(e)
        })?;
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
                    authenticated_by = authenticated.as_str(),
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
            .field("allowed_networks", &self.auth.networks().to_string())
            .finish_non_exhaustive()
    }
}

impl ReplyModule {
    /// The module; `auth` usually comes from [`ReplyAuth::from_config`].
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
        if self.auth.accepts_nobody() {
            tracing::warn!(
                "SendReply accepts nobody: agent.reply_token is not set, agent.reply_allowed_networks is empty and grpc_tls.client_ca_file is not set; agent answers arrive only through response_text"
            );
        } else {
            tracing::info!(
                token = self.auth.is_required(),
                allowed_networks = %self.auth.networks(),
                "SendReply authentication"
            );
        }
        Ok(())
    }
}
