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

use super::{ReplyAuth, ReplyCaller, api_error};
use crate::grpc::pb::backend::backend_service_server::{BackendService, BackendServiceServer};
use crate::grpc::pb::backend::{SendReplyCommand, Status};
use crate::grpc::pb::infragpt::infra_gpt_service_server::{InfraGptService, InfraGptServiceServer};
use crate::grpc::server::GrpcShell;

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
