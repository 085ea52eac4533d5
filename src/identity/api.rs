//! The identity REST API. Every route needs a Clerk session token; the organization is only
//! ever the one in the verified token ([`OrgPrincipal`]), never one named in the request.
//!
//! | route | who | answer |
//! |---|---|---|
//! | `GET /identity/me` | any session | `{"user": {...}, "organization": {...} \| null, "role": "org:admin" \| null}`; when the token names an organization it must be one the user is a live member of (else 403) |
//! | `GET /identity/organization` | any member | `{"organization": {...}, "role": "...", "metadata": {...}}` |
//! | `PUT /identity/organization/metadata` | `org:admin` (else 403, [`crate::identity::roles`]) | replaces the metadata, answers it; audited as `organization.metadata_updated` by `user/{clerk id}` |
//!
//! ## Organization metadata
//!
//! The body is a JSON object with these keys (all optional; a missing key or `null` clears
//! the value, an array key defaults to `[]`). Any other key, a wrong type, a value outside the
//! allowed set or a repeated array value is answered **422** with `error.field` naming the
//! key (e.g. `use_cases[1]`).
//!
//! | key | type | allowed values |
//! |---|---|---|
//! | `company_size` | string | `1-10`, `11-50`, `51-200`, `201-500`, `501-1000`, `1001-5000`, `5000+` |
//! | `team_size` | string | `1-5`, `6-10`, `11-25`, `26-50`, `51-100`, `100+` |
//! | `use_cases` | array of strings | `incident_response`, `alert_triage`, `root_cause_analysis`, `monitoring`, `deployment_automation`, `infrastructure_management`, `cost_optimization`, `security_compliance`, `log_analysis`, `on_call_support`, `documentation`, `other` |
//! | `observability_stack` | array of strings | `datadog`, `prometheus`, `grafana`, `new_relic`, `splunk`, `elastic`, `cloudwatch`, `azure_monitor`, `google_cloud_monitoring`, `honeycomb`, `sentry`, `opentelemetry`, `loki`, `jaeger`, `pagerduty`, `opsgenie`, `other` |

use actix_web::{HttpRequest, HttpResponse, web};
use infragpt_actors::audit::AuditEntry;
use serde_json::{Map, Value, json};

use super::store::{IdentityStore, MetadataUpdate, OrganizationMetadata};
use crate::error::{ApiError, echo};
use crate::identity::auth::{OrgPrincipal, Principal};

/// Allowed `company_size` values.
pub(crate) const COMPANY_SIZES: &[&str] = &[
    "1-10",
    "11-50",
    "51-200",
    "201-500",
    "501-1000",
    "1001-5000",
    "5000+",
];
/// Allowed `team_size` values.
pub(crate) const TEAM_SIZES: &[&str] = &["1-5", "6-10", "11-25", "26-50", "51-100", "100+"];
/// Allowed `use_cases` values.
pub(crate) const USE_CASES: &[&str] = &[
    "incident_response",
    "alert_triage",
    "root_cause_analysis",
    "monitoring",
    "deployment_automation",
    "infrastructure_management",
    "cost_optimization",
    "security_compliance",
    "log_analysis",
    "on_call_support",
    "documentation",
    "other",
];
/// Allowed `observability_stack` values.
pub(crate) const OBSERVABILITY_STACK: &[&str] = &[
    "datadog",
    "prometheus",
    "grafana",
    "new_relic",
    "splunk",
    "elastic",
    "cloudwatch",
    "azure_monitor",
    "google_cloud_monitoring",
    "honeycomb",
    "sentry",
    "opentelemetry",
    "loki",
    "jaeger",
    "pagerduty",
    "opsgenie",
    "other",
];

/// What the API handlers share.
#[derive(Debug, Clone)]
pub struct IdentityApi {
    store: IdentityStore,
}

impl IdentityApi {
    /// The API on `store` (which audits the changes it makes).
    pub fn new(store: IdentityStore) -> Self {
        Self { store }
    }
}

/// The identity routes' part of the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(me, organization, put_metadata))]
pub struct IdentityRestApi;

/// Adds the `/identity` routes. The [`crate::identity::auth::Authenticator`] must be registered
/// in the app too (else every route answers 503).
pub fn configure(cfg: &mut web::ServiceConfig, api: IdentityApi) {
    cfg.service(
        web::scope("/identity")
            .app_data(web::Data::new(api))
            .route("/me", web::get().to(me))
            .route("/organization", web::get().to(organization))
            .route("/organization/metadata", web::put().to(put_metadata)),
    );
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "identity store failed");
    ApiError::unavailable("identity store unavailable, retry later")
}

/// The caller, with the token's organization and role when it names one.
#[utoipa::path(get, path = "/identity/me", tag = "identity", security(("clerk_session" = [])),
    responses(
        (status = 200, description = "`{user, organization, role}`", body = serde_json::Value),
        (status = 404, description = "The user is not known (yet)", body = crate::error::ErrorBody),
        crate::identity::auth::SessionRefusals,
    ))]
async fn me(
    principal: Principal,
    api: web::Data<IdentityApi>,
    auth: web::Data<crate::identity::auth::Authenticator>,
) -> Result<HttpResponse, ApiError> {
    // A token that names an organization must name one the user belongs to.
    let org = match principal.org {
        Some(_) => Some(auth.authorize_org(principal.clone()).await?),
        None => None,
    };
    let user = api
        .store
        .user(&principal.user_id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found("user is not known (yet)"))?;
    Ok(HttpResponse::Ok().json(json!({
        "user": user,
        "organization": org.as_ref().map(|o| &o.organization),
        "role": org.as_ref().map(|o| &o.role),
    })))
}

/// The token's organization with the caller's role and its metadata.
#[utoipa::path(get, path = "/identity/organization", tag = "identity", security(("clerk_session" = [])),
    responses(
        (status = 200, description = "`{organization, role, metadata}`", body = serde_json::Value),
        crate::identity::auth::SessionRefusals,
    ))]
async fn organization(
    who: OrgPrincipal,
    api: web::Data<IdentityApi>,
) -> Result<HttpResponse, ApiError> {
    let metadata = api
        .store
        .metadata(who.organization_id)
        .await
        .map_err(store_error)?;
    Ok(HttpResponse::Ok().json(json!({
        "organization": who.organization,
        "role": who.role,
        "metadata": metadata,
    })))
}

/// Replaces the organization's metadata (`org:admin`).
#[utoipa::path(put, path = "/identity/organization/metadata", tag = "identity", security(("clerk_session" = [])),
    request_body(content = serde_json::Value, description = "`{company_size, team_size, use_cases, observability_stack}` (all optional)", content_type = "application/json"),
    responses(
        (status = 200, description = "`{metadata}`", body = serde_json::Value),
        (status = 400, description = "The body is not JSON", body = crate::error::ErrorBody),
        (status = 413, description = "The body is too large", body = crate::error::ErrorBody),
        (status = 415, description = "Not `application/json`", body = crate::error::ErrorBody),
        (status = 422, description = "A key or value is not allowed (`error.field` names it)", body = crate::error::ErrorBody),
        crate::identity::auth::SessionRefusals,
    ))]
async fn put_metadata(
    req: HttpRequest,
    who: OrgPrincipal,
    body: web::Json<Value>,
    api: web::Data<IdentityApi>,
) -> Result<HttpResponse, ApiError> {
    // Before validation: a member learns nothing about the body's fate.
    who.require_admin(&req)?;
    let update = validate_metadata(&body)?;
    let actor = who.audit_actor();
    // Recorded in the write's transaction; a write that leaves the answers as they were
    // (and had been written before) records nothing.
    let (_, after) = api
        .store
        .put_metadata(who.organization_id, &update, |before, after| {
            let first = before.updated_at.is_none();
            let (before, after) = (summary(before), summary(after));
            (first || before != after).then(|| AuditEntry {
                organization_id: Some(who.organization_id.0),
                actor,
                action: "organization.metadata_updated".to_owned(),
                target: Some(who.organization_id.to_string()),
                details: json!({ "before": before, "after": after }),
            })
        })
        .await
        .map_err(store_error)?;
    tracing::info!(org = %who.organization_id, user = %who.user_id(), "organization metadata updated");
    Ok(HttpResponse::Ok().json(json!({ "metadata": after })))
}

fn summary(m: &OrganizationMetadata) -> Value {
    json!({
        "company_size": m.company_size,
        "team_size": m.team_size,
        "use_cases": m.use_cases,
        "observability_stack": m.observability_stack,
    })
}

fn one_of(field: &str, value: &Value, allowed: &[&str]) -> Result<Option<String>, ApiError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) if allowed.contains(&s.as_str()) => Ok(Some(s.clone())),
        Value::String(s) => Err(ApiError::unprocessable(
            field,
            format!("{:?} is not one of {}", echo(s), allowed.join(", ")),
        )),
        _ => Err(ApiError::unprocessable(field, "must be a string or null")),
    }
}

fn many_of(field: &str, value: &Value, allowed: &[&str]) -> Result<Vec<String>, ApiError> {
    let items = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => {
            return Err(ApiError::unprocessable(
                field,
                "must be an array of strings",
            ));
        }
    };
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let name = format!("{field}[{i}]");
        let Some(value) = one_of(&name, item, allowed)? else {
            return Err(ApiError::unprocessable(name, "must be a string"));
        };
        if out.contains(&value) {
            return Err(ApiError::unprocessable(
                name,
                format!("{value:?} is repeated"),
            ));
        }
        out.push(value);
    }
    Ok(out)
}

/// Checks a metadata body against the allowed values (see the module docs).
pub(crate) fn validate_metadata(body: &Value) -> Result<MetadataUpdate, ApiError> {
    let Some(object) = body.as_object() else {
        return Err(ApiError::unprocessable("body", "must be a JSON object"));
    };
    const KEYS: [&str; 4] = [
        "company_size",
        "team_size",
        "use_cases",
        "observability_stack",
    ];
    if let Some(unknown) = object.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(ApiError::unprocessable(unknown.clone(), "unknown field"));
    }
    let get = |k: &str, o: &Map<String, Value>| o.get(k).cloned().unwrap_or(Value::Null);
    Ok(MetadataUpdate {
        company_size: one_of("company_size", &get("company_size", object), COMPANY_SIZES)?,
        team_size: one_of("team_size", &get("team_size", object), TEAM_SIZES)?,
        use_cases: many_of("use_cases", &get("use_cases", object), USE_CASES)?,
        observability_stack: many_of(
            "observability_stack",
            &get("observability_stack", object),
            OBSERVABILITY_STACK,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: ApiError) -> String {
        let v: Value = serde_json::from_str(&e.to_json()).unwrap();
        v["error"]["field"].as_str().unwrap().to_owned()
    }

    #[test]
    fn valid_metadata() {
        let m = validate_metadata(&json!({
            "company_size": "11-50",
            "team_size": null,
            "use_cases": ["incident_response", "monitoring"],
        }))
        .unwrap();
        assert_eq!(m.company_size.as_deref(), Some("11-50"));
        assert_eq!(m.team_size, None);
        assert_eq!(m.use_cases, vec!["incident_response", "monitoring"]);
        assert!(m.observability_stack.is_empty());
    }

    #[test]
    fn invalid_metadata_names_the_field() {
        let cases = [
            (json!({"company_size": "huge"}), "company_size"),
            (json!({"company_size": 5}), "company_size"),
            (json!({"team_size": "7"}), "team_size"),
            (json!({"use_cases": "monitoring"}), "use_cases"),
            (json!({"use_cases": ["monitoring", "golf"]}), "use_cases[1]"),
            (
                json!({"use_cases": ["monitoring", "monitoring"]}),
                "use_cases[1]",
            ),
            (
                json!({"observability_stack": [null]}),
                "observability_stack[0]",
            ),
            (json!({"organization_id": "x"}), "organization_id"),
            (json!([1]), "body"),
        ];
        for (body, field) in cases {
            let e = validate_metadata(&body).unwrap_err();
            assert_eq!(
                e.status(),
                actix_web::http::StatusCode::UNPROCESSABLE_ENTITY
            );
            assert_eq!(field_of(e), field, "{body}");
        }
    }
}
