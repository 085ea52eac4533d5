//! Approvals, agent side (issue 14): `RequestApproval` and `GetApproval` on both gRPC paths
//! (`backend.BackendService`, legacy `infragpt.InfraGPTService`) and `POST /approvals`,
//! authenticated exactly like SendReply ([`ReplyAuth`]: token, mutual TLS or an allowed
//! network; fail closed), over one [`ApprovalService`].
//!
//! Answers: OK with the approval (`success: true`); `INVALID_ARGUMENT` / 400 for a bad
//! field (the message names it); `NOT_FOUND` / 404 for an unknown conversation or approval;
//! `UNAUTHENTICATED` / 401; `FAILED_PRECONDITION` / 409 when Slack refused the request's
//! message for good; `UNAVAILABLE` / 503 when a retry may work (the same action key returns
//! the same approval and finishes posting its message); `UNIMPLEMENTED` / 501 when the
//! service runs without approvals.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use infragpt_actors::approvals::ports::ApprovalStoreError;
use infragpt_actors::approvals::{Approval, ApprovalError, ApprovalRequest, ApprovalService};
use serde::Serialize;

use super::ReplyAuth;
use super::http::ReplyHttpError;
use crate::error::{ApiError, echo};
use crate::grpc::pb::backend::{
    Approval as PbApproval, ApprovalReply, GetApprovalQuery, RequestApprovalCommand,
};

/// The approval error as the API answers it (both gRPC paths and `POST /approvals`).
pub fn approval_api_error(e: ApprovalError) -> ApiError {
    match e {
        ApprovalError::InvalidConversationId(raw) => ApiError::bad_request(format!(
            "conversation_id {:?} is not a valid UUID",
            echo(&raw)
        )),
        ApprovalError::InvalidApprovalId(raw) => {
            ApiError::bad_request(format!("approval_id {:?} is not a valid UUID", echo(&raw)))
        }
        ApprovalError::Invalid(msg) => ApiError::bad_request(msg),
        ApprovalError::ConversationNotFound(_) | ApprovalError::NotFound(_) => {
            ApiError::not_found(e.to_string())
        }
        ApprovalError::Store(ApprovalStoreError::Corrupt(_)) => ApiError::internal(e),
        ApprovalError::Store(_) | ApprovalError::Conversations(_) => {
            tracing::warn!(error = %e, "approvals: store unavailable");
            ApiError::unavailable("the approval store is unavailable; retry later")
        }
        ApprovalError::Slack(slack) if slack.is_transient() => {
            ApiError::unavailable(format!("slack is unavailable; retry later ({slack})"))
        }
        ApprovalError::Slack(slack) => {
            ApiError::failed_precondition(format!("slack refused the approval request: {slack}"))
        }
        ApprovalError::Busy => ApiError::unavailable(e.to_string()),
    }
}

/// The wire form of an approval.
pub fn to_pb(a: &Approval) -> PbApproval {
    let rfc3339 =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    PbApproval {
        approval_id: a.id.to_string(),
        conversation_id: a.conversation_id.to_string(),
        action_key: a.action_key.clone(),
        status: a.status.as_str().to_owned(),
        decided_by: a
            .decided_by
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        reason: a.reason.clone().unwrap_or_default(),
        expires_at: rfc3339(a.expires_at),
        decided_at: a.decided_at.map(rfc3339).unwrap_or_default(),
        message_ts: a
            .message_ts
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        summary: a.summary.clone(),
        risk: a.risk.as_str().to_owned(),
    }
}

fn reply(a: &Approval) -> ApprovalReply {
    ApprovalReply {
        success: true,
        error: String::new(),
        approval: Some(to_pb(a)),
    }
}

fn unimplemented() -> tonic::Status {
    tonic::Status::unimplemented("approvals are not enabled on this service")
}

/// `RequestApproval` over gRPC.
pub async fn grpc_request(
    service: Option<&Arc<ApprovalService>>,
    auth: &ReplyAuth,
    request: tonic::Request<RequestApprovalCommand>,
    path: &'static str,
) -> Result<tonic::Response<ApprovalReply>, tonic::Status> {
    auth.check_grpc(&request, "RequestApproval", path)?;
    let service = service.ok_or_else(unimplemented)?;
    let c = request.into_inner();
    let raw = ApprovalRequest {
        conversation_id: c.conversation_id,
        action_key: c.action_key,
        summary: c.summary,
        details: c.details,
        risk: c.risk,
        approvers: c.approvers,
        expires_in_secs: c.expires_in_secs,
    };
    let service = service.clone();
    // Like SendReply: the post runs to its end even when the caller goes away.
    let outcome = tokio::spawn(async move { service.request(&raw).await })
        .await
        .map_err(|e| tonic::Status::internal(format!("RequestApproval: {e}")))?;
    match outcome {
        Ok(a) => Ok(tonic::Response::new(reply(&a))),
        Err(e) => {
            let e = approval_api_error(e);
            tracing::info!(transport = path, code = e.code(), error = %e.message(), "RequestApproval failed");
            Err(e.into())
        }
    }
}

/// `GetApproval` over gRPC.
pub async fn grpc_get(
    service: Option<&Arc<ApprovalService>>,
    auth: &ReplyAuth,
    request: tonic::Request<GetApprovalQuery>,
    path: &'static str,
) -> Result<tonic::Response<ApprovalReply>, tonic::Status> {
    auth.check_grpc(&request, "GetApproval", path)?;
    let service = service.ok_or_else(unimplemented)?;
    let q = request.into_inner();
    match service.get(&q.approval_id).await {
        Ok(a) => Ok(tonic::Response::new(reply(&a))),
        Err(e) => Err(approval_api_error(e).into()),
    }
}

/// The answer of `POST /approvals`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApprovalAnswer {
    pub success: bool,
    pub error: String,
    /// The approval (see `GET /approvals/{id}` for the fields).
    #[schema(value_type = Object)]
    pub approval: Approval,
}

/// RequestApproval over HTTP (JSON: `conversation_id`, `action_key`, `summary`, `details`,
/// `risk`, `approvers`, `expires_in_secs`), authenticated like `POST /reply`.
#[utoipa::path(post, path = "/approvals", tag = "reply", security(("reply_token" = []), ()),
    request_body = Object,
    responses(
        (status = 200, description = "Recorded (or the same action key's approval) and posted", body = ApprovalAnswer),
        (status = 400, description = "A field is invalid (`success: false` added)", body = crate::error::ErrorBody),
        (status = 401, description = "Not authenticated", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown conversation", body = crate::error::ErrorBody),
        (status = 409, description = "Slack refused the message for good", body = crate::error::ErrorBody),
        (status = 503, description = "Slack or the database is unavailable: retry with the same action key", body = crate::error::ErrorBody),
    ))]
async fn post_approval(
    req: HttpRequest,
    body: web::Bytes,
    service: web::Data<Arc<ApprovalService>>,
    auth: web::Data<ReplyAuth>,
) -> Result<HttpResponse, ReplyHttpError> {
    super::http::authenticate(&req, &auth)?;
    let raw: ApprovalRequest = super::http::agent_body(&body)?;
    let service = service.get_ref().clone();
    let approval = tokio::spawn(async move { service.request(&raw).await })
        .await
        .map_err(|e| ApiError::internal(format!("RequestApproval: {e}")))?
        .map_err(approval_api_error)?;
    Ok(HttpResponse::Ok().json(ApprovalAnswer {
        success: true,
        error: String::new(),
        approval,
    }))
}

/// `POST /approvals` in the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(post_approval))]
pub struct ApprovalsAgentApi;

/// Registers the service, the auth and `POST /approvals`.
pub fn configure(
    service: Arc<ApprovalService>,
    auth: ReplyAuth,
) -> impl Fn(&mut web::ServiceConfig) + Clone + Send + Sync + 'static {
    let service = web::Data::new(service);
    let auth = web::Data::new(auth);
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(service.clone())
            .app_data(auth.clone())
            .route("/approvals", web::post().to(post_approval));
    }
}
