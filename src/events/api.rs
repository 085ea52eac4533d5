//! REST routes of event routing, scoped to the session token's organization
//! ([`OrgPrincipal`]): members read, `org:admin` changes (checked before the target is looked
//! up); every change is audited in its own transaction. Another organization's rule or
//! source answers 404, as an unknown one does.
//!
//! | Route | who | |
//! |---|---|---|
//! | `GET /event-rules`, `GET /event-rules/{id}` | member | the rules |
//! | `POST /event-rules`, `PUT /event-rules/{id}`, `DELETE /event-rules/{id}` | admin | change them |
//! | `GET /event-sources` | member | Alertmanager and PagerDuty sources (never their secrets) |
//! | `POST /event-sources`, `DELETE /event-sources/{id}` | admin | create one (its secret is shown once), delete one |

use actix_web::{HttpRequest, HttpResponse, web};
use infragpt_actors::Secret;
use infragpt_actors::events::{RuleSpec, SourceKind};
use rand::RngCore as _;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::store::{PgEvents, RuleWriteError, SourceAuth};
use crate::db::StoreError;
use crate::error::ApiError;
use crate::identity::auth::OrgPrincipal;

/// Longest source name.
const MAX_SOURCE_NAME: usize = 200;

fn store_error(e: StoreError, who: &OrgPrincipal) -> ApiError {
    match e {
        StoreError::Corrupt { .. } => ApiError::internal(e),
        _ => {
            tracing::error!(error = %e, organization_id = %who.organization_id.0, "event store failed");
            ApiError::unavailable("event store unavailable, retry later")
        }
    }
}

fn rule_not_found() -> ApiError {
    ApiError::not_found("event rule not found")
}

fn source_not_found() -> ApiError {
    ApiError::not_found("event source not found")
}

/// Reads a body as `T`, naming the field that does not read (422).
fn read_body<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // A missing field is reported at its parent: name the field itself.
        let missing = inner
            .strip_prefix("missing field `")
            .or_else(|| inner.strip_prefix("unknown field `"))
            .and_then(|rest| rest.split('`').next())
            .filter(|name| !path.ends_with(name));
        let field = match (path.as_str(), missing) {
            (".", Some(name)) => name.to_owned(),
            (".", None) => "body".to_owned(),
            (parent, Some(name)) => format!("{parent}.{name}"),
            (parent, None) => parent.to_owned(),
        };
        ApiError::unprocessable(field, inner)
    })
}

fn read_spec(body: Value) -> Result<RuleSpec, ApiError> {
    let spec: RuleSpec = read_body(body)?;
    spec.validate()
        .map_err(|e| ApiError::unprocessable(e.field, e.reason))?;
    Ok(spec)
}

fn write_error(e: RuleWriteError, who: &OrgPrincipal) -> ApiError {
    match e {
        RuleWriteError::Invalid { field, reason } => ApiError::unprocessable(field, reason),
        RuleWriteError::Store(e) => store_error(e, who),
    }
}

/// The organization's rules.
#[utoipa::path(get, path = "/event-rules", tag = "events", security(("clerk_session" = [])),
    responses(
        (status = 200, description = "`{rules: [...]}`", body = serde_json::Value),
        crate::identity::auth::SessionRefusals,
    ))]
async fn list_rules(
    who: OrgPrincipal,
    store: web::Data<PgEvents>,
) -> Result<HttpResponse, ApiError> {
    let rules = store
        .list_rules(who.organization_id.0)
        .await
        .map_err(|e| store_error(e, &who))?;
    Ok(HttpResponse::Ok().json(json!({ "rules": rules })))
}

/// One rule.
#[utoipa::path(get, path = "/event-rules/{id}", tag = "events", security(("clerk_session" = [])),
    params(("id" = String, Path, description = "The rule's UUID")),
    responses(
        (status = 200, description = "The rule", body = serde_json::Value),
        (status = 404, description = "Not one of the organization's rules", body = crate::error::ErrorBody),
        crate::identity::auth::SessionRefusals,
    ))]
async fn get_rule(
    who: OrgPrincipal,
    store: web::Data<PgEvents>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| rule_not_found())?;
    let rule = store
        .get_rule(who.organization_id.0, id)
        .await
        .map_err(|e| store_error(e, &who))?
        .ok_or_else(rule_not_found)?;
    Ok(HttpResponse::Ok().json(rule))
}

/// Creates a rule (`org:admin`).
#[utoipa::path(post, path = "/event-rules", tag = "events", security(("clerk_session" = [])),
    request_body(content = serde_json::Value, description = "`{name, enabled, source: {kind, source_id?}, events: [\"workflow_run.completed/failure\", ...], matchers: [{label, op: \"=\"|\"!=\", value}], repositories, services, slack: {team_id, channel_id}, triage}`", content_type = "application/json"),
    responses(
        (status = 201, description = "The rule", body = serde_json::Value),
        (status = 400, description = "The body is not JSON", body = crate::error::ErrorBody),
        (status = 415, description = "Not `application/json`", body = crate::error::ErrorBody),
        (status = 422, description = "A field does not validate (`field` names it)", body = crate::error::ErrorBody),
        crate::identity::auth::SessionRefusals,
    ))]
async fn create_rule(
    req: HttpRequest,
    who: OrgPrincipal,
    store: web::Data<PgEvents>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    who.require_admin(&req)?;
    let spec = read_spec(body.into_inner())?;
    let rule = store
        .create_rule(who.organization_id.0, spec, &who.audit_actor())
        .await
        .map_err(|e| write_error(e, &who))?;
    tracing::info!(organization_id = %who.organization_id.0, rule_id = %rule.rule.id, user = %who.user_id(), "event rule created");
    Ok(HttpResponse::Created().json(rule))
}

/// Replaces a rule (`org:admin`).
#[utoipa::path(put, path = "/event-rules/{id}", tag = "events", security(("clerk_session" = [])),
    params(("id" = String, Path, description = "The rule's UUID")),
    request_body(content = serde_json::Value, description = "The whole rule, as for POST", content_type = "application/json"),
    responses(
        (status = 200, description = "The rule", body = serde_json::Value),
        (status = 404, description = "Not one of the organization's rules", body = crate::error::ErrorBody),
        (status = 400, description = "The body is not JSON", body = crate::error::ErrorBody),
        (status = 415, description = "Not `application/json`", body = crate::error::ErrorBody),
        (status = 422, description = "A field does not validate (`field` names it)", body = crate::error::ErrorBody),
        crate::identity::auth::SessionRefusals,
    ))]
async fn update_rule(
    req: HttpRequest,
    who: OrgPrincipal,
    store: web::Data<PgEvents>,
    id: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    who.require_admin(&req)?;
    let id = Uuid::parse_str(&id).map_err(|_| rule_not_found())?;
    let spec = read_spec(body.into_inner())?;
    let rule = store
        .update_rule(who.organization_id.0, id, spec, &who.audit_actor())
        .await
        .map_err(|e| write_error(e, &who))?
        .ok_or_else(rule_not_found)?;
    Ok(HttpResponse::Ok().json(rule))
}

/// Deletes a rule (`org:admin`).
#[utoipa::path(delete, path = "/event-rules/{id}", tag = "events", security(("clerk_session" = [])),
    params(("id" = String, Path, description = "The rule's UUID")),
    responses(
        (status = 200, description = "`{deleted: true}`", body = serde_json::Value),
        (status = 404, description = "Not one of the organization's rules", body = crate::error::ErrorBody),
        crate::identity::auth::SessionRefusals,
    ))]
async fn delete_rule(
    req: HttpRequest,
    who: OrgPrincipal,
    store: web::Data<PgEvents>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    who.require_admin(&req)?;
    let id = Uuid::parse_str(&id).map_err(|_| rule_not_found())?;
    if !store
        .delete_rule(who.organization_id.0, id, &who.audit_actor())
        .await
        .map_err(|e| store_error(e, &who))?
    {
        return Err(rule_not_found());
    }
    Ok(HttpResponse::Ok().json(json!({ "deleted": true })))
}

/// The organization's sources.
#[utoipa::path(get, path = "/event-sources", tag = "events", security(("clerk_session" = [])),
    responses(
        (status = 200, description = "`{sources: [...]}` (never the secrets)", body = serde_json::Value),
        crate::identity::auth::SessionRefusals,
    ))]
async fn list_sources(
    who: OrgPrincipal,
    store: web::Data<PgEvents>,
) -> Result<HttpResponse, ApiError> {
    let sources = store
        .list_sources(who.organization_id.0)
        .await
        .map_err(|e| store_error(e, &who))?;
    Ok(HttpResponse::Ok().json(json!({ "sources": sources })))
}

/// `POST /event-sources`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSource {
    /// `alertmanager` or `pagerduty`.
    kind: String,
    name: String,
    /// Alertmanager: `bearer` (default) or `hmac`. PagerDuty: `hmac` (the only one).
    #[serde(default)]
    auth: Option<String>,
    /// The secret to verify with (PagerDuty generates its subscription's); absent: one is
    /// generated and answered once.
    #[serde(default)]
    secret: Option<String>,
}

fn generated_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("igs_{}", hex::encode(bytes))
}

/// Creates a source (`org:admin`). The secret is in this answer only.
#[utoipa::path(post, path = "/event-sources", tag = "events", security(("clerk_session" = [])),
    request_body(content = serde_json::Value, description = "`{kind: \"alertmanager\"|\"pagerduty\", name, auth?: \"bearer\"|\"hmac\", secret?}`", content_type = "application/json"),
    responses(
        (status = 201, description = "`{source, secret}`: the secret is shown once", body = serde_json::Value),
        (status = 400, description = "The body is not JSON", body = crate::error::ErrorBody),
        (status = 415, description = "Not `application/json`", body = crate::error::ErrorBody),
        (status = 422, description = "A field does not validate (`field` names it)", body = crate::error::ErrorBody),
        crate::identity::auth::SessionRefusals,
    ))]
async fn create_source(
    req: HttpRequest,
    who: OrgPrincipal,
    store: web::Data<PgEvents>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    who.require_admin(&req)?;
    let new: NewSource = read_body(body.into_inner())?;
    let kind = match SourceKind::parse(&new.kind) {
        Some(k @ (SourceKind::Alertmanager | SourceKind::Pagerduty)) => k,
        _ => {
            return Err(ApiError::unprocessable(
                "kind",
                "must be alertmanager or pagerduty",
            ));
        }
    };
    let name = new.name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_SOURCE_NAME
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::unprocessable(
            "name",
            format!("1 to {MAX_SOURCE_NAME} characters, no control characters"),
        ));
    }
    let auth = match (kind, new.auth.as_deref()) {
        (SourceKind::Alertmanager, None | Some("bearer")) => SourceAuth::Bearer,
        (_, Some("hmac")) | (SourceKind::Pagerduty, None) => SourceAuth::Hmac,
        (SourceKind::Pagerduty, Some(_)) => {
            return Err(ApiError::unprocessable(
                "auth",
                "PagerDuty signs its webhooks: hmac only",
            ));
        }
        _ => return Err(ApiError::unprocessable("auth", "must be bearer or hmac")),
    };
    let secret = match new.secret {
        Some(s) => {
            if s.len() < 16
                || s.len() > 512
                || s.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(ApiError::unprocessable(
                    "secret",
                    "16 to 512 characters, no spaces or control characters",
                ));
            }
            s
        }
        None => generated_secret(),
    };
    let secret = Secret::new(secret);
    let source = store
        .create_source(
            who.organization_id.0,
            kind,
            name,
            auth,
            &secret,
            &who.audit_actor(),
        )
        .await
        .map_err(|e| store_error(e, &who))?;
    tracing::info!(organization_id = %who.organization_id.0, source_id = %source.id, kind = kind.as_str(), "event source created");
    Ok(HttpResponse::Created().json(json!({
        "source": source,
        "secret": secret.expose(),
        "note": "the secret is shown once; store it in the sender's configuration now",
    })))
}

/// Deletes a source (`org:admin`); its webhook answers 404 from then on.
#[utoipa::path(delete, path = "/event-sources/{id}", tag = "events", security(("clerk_session" = [])),
    params(("id" = String, Path, description = "The source's UUID")),
    responses(
        (status = 200, description = "`{deleted: true}`", body = serde_json::Value),
        (status = 404, description = "Not one of the organization's sources", body = crate::error::ErrorBody),
        crate::identity::auth::SessionRefusals,
    ))]
async fn delete_source(
    req: HttpRequest,
    who: OrgPrincipal,
    store: web::Data<PgEvents>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    who.require_admin(&req)?;
    let id = Uuid::parse_str(&id).map_err(|_| source_not_found())?;
    if !store
        .delete_source(who.organization_id.0, id, &who.audit_actor())
        .await
        .map_err(|e| store_error(e, &who))?
    {
        return Err(source_not_found());
    }
    Ok(HttpResponse::Ok().json(json!({ "deleted": true })))
}

/// The routes' part of the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(
    list_rules,
    get_rule,
    create_rule,
    update_rule,
    delete_rule,
    list_sources,
    create_source,
    delete_source
))]
pub struct EventsApi;

/// Adds the routes and the store as app data. Needs the app's authenticator (identity).
pub fn configure(cfg: &mut web::ServiceConfig, store: PgEvents) {
    cfg.app_data(web::Data::new(store))
        .route("/event-rules", web::get().to(list_rules))
        .route("/event-rules", web::post().to(create_rule))
        .route("/event-rules/{id}", web::get().to(get_rule))
        .route("/event-rules/{id}", web::put().to(update_rule))
        .route("/event-rules/{id}", web::delete().to(delete_rule))
        .route("/event-sources", web::get().to(list_sources))
        .route("/event-sources", web::post().to(create_source))
        .route("/event-sources/{id}", web::delete().to(delete_source));
}
