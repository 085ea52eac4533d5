//! REST routes of the integrations API. Everything except the provider callbacks needs a
//! [`Principal`] (organization from the verified token); callbacks are authenticated by the
//! signed single-use `state` instead, because the provider's browser redirect carries no token.
//!
//! | Route | who | |
//! |---|---|---|
//! | `POST /integrations` `{connector_type}` | admin | `{type, url, integration_id}`; 409 if one exists |
//! | `GET /integrations/callback/{connector}` | holder of a `state` | `code` or `installation_id`, `state` |
//! | `GET /slack/oauth/callback` | holder of a `state` | the Slack callback under its historic path |
//! | `GET /integrations?connector_type=` | member | list |
//! | `GET /integrations/{id}` | member | one |
//! | `GET /integrations/{id}/status` | member | live validation |
//! | `POST /integrations/{id}/refresh` | admin | refresh now |
//! | `DELETE /integrations/{id}` | admin | revoke at the provider, delete credentials |
//! | `GET /integrations/{id}/events?before=&limit=` | member | normalized GitHub events |
//!
//! "admin" is `org:admin` (or the legacy `admin`) in the membership mirror; anyone else gets
//! 403 `forbidden` ([`crate::identity::roles`]) before the integration is looked up, so the
//! answer is the same whether the id exists or belongs to another organization. An admin
//! naming another organization's id gets 404, like any member reading it.
//!
//! **Why the callbacks check no role.** They carry no session token; what authorizes them is
//! the `state`: HMAC-signed, bound to the organization, user and connector, valid 10 minutes,
//! consumed on use. The only way to obtain one is `POST /integrations`, which is admin-only,
//! so completing an authorization is an admin's act too. (The role is checked when the state
//! is issued, not again when it comes back.)

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::connector::{CallbackParams, ConnectorError};
use super::principal::Principal;
use super::providers::SLACK;
use super::service::{IntegrationService, ServiceError};
use super::vault::CredentialError;
use crate::error::{ApiError, echo};

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::UnknownConnector(t) => ApiError::unprocessable(
                "connector_type",
                format!("unknown connector {:?}", echo(&t)),
            ),
            ServiceError::NotFound => ApiError::not_found("integration not found"),
            ServiceError::Exists { connector_type, .. } => ApiError::conflict(format!(
                "a {connector_type} integration already exists for this organization"
            )),
            ServiceError::BadState(m) => ApiError::bad_request(format!("invalid state: {m}")),
            ServiceError::InvalidState(e) => ApiError::bad_request(format!("invalid state: {e}")),
            ServiceError::Conflict(m) => ApiError::conflict(m),
            ServiceError::BadRequest(m) => ApiError::bad_request(m),
            ServiceError::Provider(ConnectorError::NotConfigured { connector, reason }) => {
                ApiError::unavailable(format!("{connector} is not configured: {reason}"))
            }
            ServiceError::Provider(ConnectorError::Unavailable { connector, source }) => {
                tracing::warn!(connector, reason = %source, "provider unavailable");
                ApiError::unavailable(format!("{connector} is unavailable, try again later"))
            }
            ServiceError::Provider(other) => ApiError::bad_request(other.to_string()),
            ServiceError::Credential(CredentialError::RefreshLock(e)) => {
                // Another replica's refresh of this integration is still running.
                tracing::warn!(error = %e, "credential refresh lock unavailable");
                ApiError::unavailable("the credential is being refreshed, try again later")
            }
            ServiceError::Credential(c) => ApiError::internal(c),
            ServiceError::State(e) => ApiError::internal(e),
            ServiceError::Store(s) => ApiError::internal(s),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct CreateBody {
    /// `slack` or `github`.
    connector_type: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this connector.
    connector_type: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct CallbackQuery {
    code: Option<String>,
    installation_id: Option<String>,
    setup_action: Option<String>,
    state: Option<String>,
    /// Slack puts `error=access_denied` here when the user cancels.
    error: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Only events with a smaller id (the previous page's last).
    before: Option<i64>,
    limit: Option<i64>,
}

/// Starts an install (`org:admin`): the provider URL to send the browser to.
#[utoipa::path(post, path = "/integrations", tag = "integrations", security(("clerk_session" = [])),
    request_body = CreateBody,
    responses(
        (status = 201, description = "`{type, url, integration_id}`", body = serde_json::Value),
        (status = 400, description = "The body does not read", body = crate::error::ErrorBody),
        (status = 409, description = "One exists already", body = crate::error::ErrorBody),
        (status = 413, description = "The body is too large", body = crate::error::ErrorBody),
        (status = 415, description = "Not `application/json`", body = crate::error::ErrorBody),
        (status = 422, description = "Unknown connector", body = crate::error::ErrorBody),
        crate::identity::auth::SessionRefusals,
    ))]
async fn create(
    req: HttpRequest,
    service: web::Data<IntegrationService>,
    principal: Principal,
    body: web::Json<CreateBody>,
) -> Result<HttpResponse, ApiError> {
    // The state issued here is what later authorizes the callback: only admins get one.
    principal.require_admin(&req)?;
    let initiated = service.initiate(&principal, &body.connector_type).await?;
    Ok(HttpResponse::Created().json(initiated))
}

async fn callback_inner(
    service: &IntegrationService,
    connector: &str,
    query: CallbackQuery,
) -> Result<HttpResponse, ApiError> {
    if let Some(error) = query.error {
        return Err(ApiError::bad_request(format!(
            "the provider reported an error: {error}"
        )));
    }
    let params = CallbackParams {
        code: query.code,
        installation_id: query.installation_id,
        setup_action: query.setup_action,
    };
    let integration = service
        .complete(connector, query.state.as_deref(), &params)
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "integration": integration })))
}

/// How a provider callback is refused (the two callback routes share them).
#[derive(Debug, utoipa::IntoResponses)]
pub enum CallbackRefusals {
    /// Missing, invalid, expired or used `state`, or the provider reported an error
    #[response(status = 400)]
    BadState(crate::error::ErrorBody),
    /// No such connector
    #[response(status = 404)]
    NoConnector(crate::error::ErrorBody),
    /// Conflicts with the integration's current state
    #[response(status = 409)]
    Conflict(crate::error::ErrorBody),
    /// Unknown connector
    #[response(status = 422)]
    UnknownConnector(crate::error::ErrorBody),
    /// The provider or the store is unavailable
    #[response(status = 503)]
    Unavailable(crate::error::ErrorBody),
}

/// The provider's redirect back (authorized by the signed single-use `state`, no token).
#[utoipa::path(get, path = "/integrations/callback/{connector}", tag = "integrations", params(("connector" = String, Path, description = "`slack` or `github`"), CallbackQuery),
    responses(
        (status = 200, description = "`{integration}`", body = serde_json::Value),
        CallbackRefusals,
    ))]
async fn callback(
    service: web::Data<IntegrationService>,
    path: web::Path<String>,
    query: web::Query<CallbackQuery>,
) -> Result<HttpResponse, ApiError> {
    callback_inner(&service, &path.into_inner(), query.into_inner()).await
}

/// The Slack OAuth redirect under its historic path.
#[utoipa::path(get, path = "/slack/oauth/callback", tag = "integrations", params(CallbackQuery),
    responses(
        (status = 200, description = "`{integration}`", body = serde_json::Value),
        CallbackRefusals,
    ))]
async fn slack_callback(
    service: web::Data<IntegrationService>,
    query: web::Query<CallbackQuery>,
) -> Result<HttpResponse, ApiError> {
    callback_inner(&service, SLACK, query.into_inner()).await
}

/// The organization's integrations.
#[utoipa::path(get, path = "/integrations", tag = "integrations", params(ListQuery), security(("clerk_session" = [])),
    responses(
        (status = 200, description = "`{integrations: [...]}`", body = serde_json::Value),
        (status = 400, description = "A parameter does not read", body = crate::error::ErrorBody),
        (status = 422, description = "Unknown connector", body = crate::error::ErrorBody),
        crate::identity::auth::SessionRefusals,
    ))]
async fn list(
    service: web::Data<IntegrationService>,
    principal: Principal,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let items = service
        .list(&principal, query.connector_type.as_deref())
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "integrations": items })))
}

/// One integration.
#[utoipa::path(get, path = "/integrations/{id}", tag = "integrations", params(("id" = uuid::Uuid, Path, description = "The integration's id")), security(("clerk_session" = [])),
    responses(
        (status = 200, description = "The integration", body = serde_json::Value),
        (status = 404, description = "Not one of the organization's integrations", body = crate::error::ErrorBody),
        crate::identity::auth::SessionRefusals,
    ))]
async fn get_one(
    service: web::Data<IntegrationService>,
    principal: Principal,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(service.get(&principal, *id).await?))
}

/// Validates the integration's credentials at the provider now.
#[utoipa::path(get, path = "/integrations/{id}/status", tag = "integrations", params(("id" = uuid::Uuid, Path, description = "The integration's id")), security(("clerk_session" = [])),
    responses(
        (status = 200, description = "The live status", body = serde_json::Value),
        (status = 404, description = "Not one of the organization's integrations", body = crate::error::ErrorBody),
        crate::identity::auth::SessionRefusals,
    ))]
async fn status(
    service: web::Data<IntegrationService>,
    principal: Principal,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(service.status(&principal, *id).await?))
}

/// Refreshes the credentials now (`org:admin`).
#[utoipa::path(post, path = "/integrations/{id}/refresh", tag = "integrations", params(("id" = uuid::Uuid, Path, description = "The integration's id")), security(("clerk_session" = [])),
    responses(
        (status = 200, description = "The integration after the refresh", body = serde_json::Value),
        (status = 400, description = "The provider refused", body = crate::error::ErrorBody),
        (status = 404, description = "Not one of the organization's integrations", body = crate::error::ErrorBody),
        (status = 409, description = "Conflicts with the integration's state", body = crate::error::ErrorBody),
        crate::identity::auth::SessionRefusals,
    ))]
async fn refresh(
    req: HttpRequest,
    service: web::Data<IntegrationService>,
    principal: Principal,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin(&req)?;
    Ok(HttpResponse::Ok().json(service.refresh(&principal, *id).await?))
}

/// Revokes at the provider and deletes the credentials (`org:admin`).
#[utoipa::path(delete, path = "/integrations/{id}", tag = "integrations", params(("id" = uuid::Uuid, Path, description = "The integration's id")), security(("clerk_session" = [])),
    responses(
        (status = 200, description = "What was revoked", body = serde_json::Value),
        (status = 400, description = "The provider refused", body = crate::error::ErrorBody),
        (status = 404, description = "Not one of the organization's integrations", body = crate::error::ErrorBody),
        (status = 409, description = "Conflicts with the integration's state", body = crate::error::ErrorBody),
        crate::identity::auth::SessionRefusals,
    ))]
async fn delete(
    req: HttpRequest,
    service: web::Data<IntegrationService>,
    principal: Principal,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    principal.require_admin(&req)?;
    Ok(HttpResponse::Ok().json(service.delete(&principal, *id).await?))
}

/// Normalized GitHub events of the integration, newest first.
#[utoipa::path(get, path = "/integrations/{id}/events", tag = "integrations", params(("id" = uuid::Uuid, Path, description = "The integration's id"), EventsQuery), security(("clerk_session" = [])),
    responses(
        (status = 200, description = "A page of events", body = serde_json::Value),
        (status = 400, description = "A parameter does not read", body = crate::error::ErrorBody),
        (status = 404, description = "Not one of the organization's integrations", body = crate::error::ErrorBody),
        crate::identity::auth::SessionRefusals,
    ))]
async fn events(
    service: web::Data<IntegrationService>,
    principal: Principal,
    id: web::Path<Uuid>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(
        service
            .events(&principal, *id, query.before, query.limit)
            .await?,
    ))
}

/// The integration routes' part of the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(
    create,
    callback,
    slack_callback,
    list,
    get_one,
    status,
    refresh,
    delete,
    events
))]
pub struct IntegrationsApi;

/// Adds the integration routes and the service as app data.
pub fn configure(cfg: &mut web::ServiceConfig, service: IntegrationService) {
    cfg.app_data(web::Data::new(service))
        .route("/slack/oauth/callback", web::get().to(slack_callback))
        .route("/integrations", web::post().to(create))
        .route("/integrations", web::get().to(list))
        .route(
            "/integrations/callback/{connector}",
            web::get().to(callback),
        )
        .route("/integrations/{id}", web::get().to(get_one))
        .route("/integrations/{id}", web::delete().to(delete))
        .route("/integrations/{id}/status", web::get().to(status))
        .route("/integrations/{id}/refresh", web::post().to(refresh))
        .route("/integrations/{id}/events", web::get().to(events));
}
