//! SendReply over gRPC: `backend.BackendService/SendReply` and the legacy
//! `infragpt.InfraGPTService/SendReply` (same messages), both delegating to one
//! [`ReplyService`].
//!
//! Answers: posted, or the same text already posted for the current turn → OK,
//! `success: true`. Every failure is a gRPC status whose code says what to do (the same
//! mapping as `POST /reply`, see [`api_error`]): `INVALID_ARGUMENT` for malformed input,
//! `NOT_FOUND` for an unknown conversation, `FAILED_PRECONDITION` when Slack refused for good,
//! `UNAVAILABLE` when a retry may work, `UNAUTHENTICATED` when the caller has neither the
//! reply token (`authorization: Bearer <token>` metadata), nor a verified client certificate,
//! nor a source address in `agent.reply_allowed_networks` (see [`ReplyAuth`]). Caller values
//! are echoed clipped.

use std::sync::Arc;
use tracing::Instrument as _;

use infragpt_actors::conversation::{ReplyOutcome, ReplyService};

use super::{ReplyAuth, api_error, progress_error, progress_outcome};
use crate::grpc::pb::backend::backend_service_server::{BackendService, BackendServiceServer};
use crate::grpc::pb::backend::{
    ApprovalReply, GetApprovalQuery, RequestApprovalCommand, SendProgressCommand, SendReplyCommand,
    Status,
};
use crate::grpc::pb::infragpt::infra_gpt_service_server::{InfraGptService, InfraGptServiceServer};
use crate::grpc::server::GrpcShell;

/// The SendReply gRPC services (one value serves both paths).
#[derive(Debug, Clone)]
pub struct ReplyGrpc {
    service: Arc<ReplyService>,
    auth: ReplyAuth,
    /// RequestApproval / GetApproval (issue 14); `UNIMPLEMENTED` without.
    approvals: Option<Arc<infragpt_actors::approvals::ApprovalService>>,
}

impl ReplyGrpc {
    /// Both services over `service`, accepting the callers `auth` accepts.
    pub fn new(service: Arc<ReplyService>, auth: ReplyAuth) -> Self {
        Self {
            service,
            auth,
            approvals: None,
        }
    }

    /// Serves RequestApproval and GetApproval with `approvals`.
    pub fn with_approvals(
        mut self,
        approvals: Option<Arc<infragpt_actors::approvals::ApprovalService>>,
    ) -> Self {
        self.approvals = approvals;
        self
    }

    /// `backend.BackendService`.
    pub fn backend_server(&self) -> BackendServiceServer<ReplyGrpc> {
        BackendServiceServer::new(self.clone())
    }

    /// `infragpt.InfraGPTService` (legacy path).
    pub fn legacy_server(&self) -> InfraGptServiceServer<ReplyGrpc> {
        InfraGptServiceServer::new(self.clone())
    }

    /// Adds both services to the gRPC shell, with its message size limit.
    pub fn add_to(&self, shell: &mut GrpcShell) {
        let max = shell.limits().max_message_bytes;
        shell.add_service(
            self.backend_server()
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        );
        shell.add_service(
            self.legacy_server()
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        );
    }

    async fn handle(
        &self,
        request: tonic::Request<SendReplyCommand>,
        path: &'static str,
    ) -> Result<tonic::Response<Status>, tonic::Status> {
        let authenticated = self.auth.check_grpc(&request, "SendReply", path)?;
        let command = request.into_inner();
        let span = tracing::info_span!(
            "send_reply",
            conversation_id = %command.conversation_id.trim(),
            transport = path
        );
        let conversation_id = command.conversation_id.clone();
        match self
            .service
            .send_reply_detached(
                command.conversation_id,
                command.message,
                Some(command.turn_ts),
            )
            .instrument(span)
            .await
        {
            Ok(outcome) => {
                tracing::info!(
                    conversation_id = %conversation_id.trim(),
                    already_posted = outcome == ReplyOutcome::AlreadyPosted,
                    superseded = outcome == ReplyOutcome::Superseded,
                    authenticated_by = authenticated.as_str(),
                    transport = path,
                    "SendReply handled"
                );
                Ok(tonic::Response::new(Status {
                    success: true,
                    error: String::new(),
                }))
            }
            Err(e) => {
                let e = api_error(e);
                tracing::info!(transport = path, code = e.code(), error = %e.message(), "SendReply failed");
                Err(e.into())
            }
        }
    }

    async fn progress(
        &self,
        request: tonic::Request<SendProgressCommand>,
        path: &'static str,
    ) -> Result<tonic::Response<Status>, tonic::Status> {
        let authenticated = self.auth.check_grpc(&request, "SendProgress", path)?;
        let command = request.into_inner();
        let span = tracing::info_span!(
            "send_progress",
            conversation_id = %command.conversation_id.trim(),
            transport = path
        );
        match self
            .service
            .send_progress(&command.conversation_id, &command.text)
            .instrument(span)
            .await
        {
            Ok(outcome) => {
                tracing::info!(
                    conversation_id = %command.conversation_id.trim(),
                    outcome = progress_outcome(outcome),
                    authenticated_by = authenticated.as_str(),
                    transport = path,
                    "SendProgress handled"
                );
                Ok(tonic::Response::new(Status {
                    success: true,
                    error: String::new(),
                }))
            }
            Err(e) => {
                let e = progress_error(e);
                tracing::info!(transport = path, code = e.code(), error = %e.message(), "SendProgress failed");
                Err(e.into())
            }
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

    async fn send_progress(
        &self,
        request: tonic::Request<SendProgressCommand>,
    ) -> Result<tonic::Response<Status>, tonic::Status> {
        self.progress(request, "grpc backend.BackendService").await
    }

    async fn request_approval(
        &self,
        request: tonic::Request<RequestApprovalCommand>,
    ) -> Result<tonic::Response<ApprovalReply>, tonic::Status> {
        super::approvals::grpc_request(
            self.approvals.as_ref(),
            &self.auth,
            request,
            "grpc backend.BackendService",
        )
        .await
    }

    async fn get_approval(
        &self,
        request: tonic::Request<GetApprovalQuery>,
    ) -> Result<tonic::Response<ApprovalReply>, tonic::Status> {
        super::approvals::grpc_get(
            self.approvals.as_ref(),
            &self.auth,
            request,
            "grpc backend.BackendService",
        )
        .await
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

    async fn send_progress(
        &self,
        request: tonic::Request<SendProgressCommand>,
    ) -> Result<tonic::Response<Status>, tonic::Status> {
        self.progress(request, "grpc infragpt.InfraGPTService")
            .await
    }

    async fn request_approval(
        &self,
        request: tonic::Request<RequestApprovalCommand>,
    ) -> Result<tonic::Response<ApprovalReply>, tonic::Status> {
        super::approvals::grpc_request(
            self.approvals.as_ref(),
            &self.auth,
            request,
            "grpc infragpt.InfraGPTService",
        )
        .await
    }

    async fn get_approval(
        &self,
        request: tonic::Request<GetApprovalQuery>,
    ) -> Result<tonic::Response<ApprovalReply>, tonic::Status> {
        super::approvals::grpc_get(
            self.approvals.as_ref(),
            &self.auth,
            request,
            "grpc infragpt.InfraGPTService",
        )
        .await
    }
}
