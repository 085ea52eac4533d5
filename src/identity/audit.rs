//! `GET /audit`: the caller's organization's audit log, for its admins.
//!
//! The organization is the verified token's ([`OrgPrincipal`]), never a parameter: an
//! `organization_id` in the query is refused (400) rather than ignored, so nobody mistakes
//! it for a filter that works. Members get 403 before anything is read. Parameters and
//! answer are [`AuditParams`]' and [`crate::db::audit::AuditPage`]'s, shared with the
//! operators' `GET /admin/audit`.

use actix_web::{HttpRequest, HttpResponse, web};

use crate::db::audit::{AuditParams, PgAudit};
use crate::error::ApiError;
use crate::identity::auth::OrgPrincipal;

/// `GET /audit` in the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(list))]
pub struct AuditApi;

/// Adds `GET /audit` reading from `audit`. Needs the app's
/// [`crate::identity::auth::Authenticator`] like the rest of the identity API.
pub fn configure(cfg: &mut web::ServiceConfig, audit: PgAudit) {
    cfg.service(
        web::resource("/audit")
            .app_data(web::Data::new(audit))
            .route(web::get().to(list)),
    );
}

/// The organization's audit log, newest first (`org:admin`).
#[utoipa::path(get, path = "/audit", tag = "identity", params(AuditParams), security(("clerk_session" = [])),
    responses(
        (status = 200, description = "A page of entries", body = crate::db::audit::AuditPage),
        (status = 400, description = "A parameter does not read (or `organization_id` was given)", body = crate::error::ErrorBody),
        crate::identity::auth::SessionRefusals,
    ))]
async fn list(
    req: HttpRequest,
    who: OrgPrincipal,
    audit: web::Data<PgAudit>,
    params: web::Query<AuditParams>,
) -> Result<HttpResponse, ApiError> {
    who.require_admin(&req)?;
    let params = params.into_inner();
    if params.organization_id.is_some() {
        return Err(ApiError::bad_request(
            "invalid organization_id: /audit answers the token's organization only",
        ));
    }
    let query = params
        .into_query(Some(who.organization_id.0))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let page = audit.query(&query).await.map_err(|e| {
        tracing::error!(error = %e, organization_id = %who.organization_id.0, "audit log read failed");
        ApiError::unavailable("audit log unavailable, retry later")
    })?;
    Ok(HttpResponse::Ok().json(page))
}
