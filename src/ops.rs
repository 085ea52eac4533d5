//! Operations endpoints: the actor supervision tree (`/actors`), Prometheus metrics
//! (`/metrics`), the admin API for dead letters (`/admin/events`) and the audit log of every
//! organization (`/admin/audit`).
//!
//! The tree and the metrics name Slack teams, channels and threads, installation ids and
//! error texts, so on the public port they need the admin token like `/admin`; the internal
//! ops listener (`ops.port`) serves them without one ([`ReadAccess`]).

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use infragpt_actors::inbox::EventRowId;
use infragpt_actors::{ActorKind, Cluster, Secret};
use serde::Deserialize;
use serde_json::json;

pub mod page;

use crate::db::audit::{AuditParams, PgAudit};
use crate::error::{ApiError, echo};

/// Children listed per supervisor in `/actors` (counts always cover every actor); a
/// thousand live threads would otherwise make the tree unreadable.
const DEFAULT_TREE_LIMIT: usize = 200;

/// Who may read `/actors` and `/metrics` on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAccess {
    /// The admin token is required (the public port).
    AdminToken,
    /// Anyone who reaches the listener (the internal ops listener).
    Open,
}

/// What the ops routes need.
#[derive(Clone)]
pub struct OpsState {
    /// The actor system.
    pub cluster: Cluster,
    /// Who may read the tree and the metrics here.
    pub read_access: ReadAccess,
    /// Admin token; `None` disables the admin API (fail closed).
    pub admin_token: Option<Secret>,
    /// The audit log `/admin/audit` reads.
    pub audit: Arc<PgAudit>,
}

impl std::fmt::Debug for OpsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsState")
            .field("admin_token", &self.admin_token)
            .field("read_access", &self.read_access)
            .finish_non_exhaustive()
    }
}

/// Adds the routes; `state` becomes app data.
pub fn routes(state: OpsState) -> impl Fn(&mut web::ServiceConfig) + Send + Sync + 'static {
    move |cfg| {
        cfg.app_data(web::Data::new(state.clone()))
            .configure(page::routes)
            .route("/actors", web::get().to(actors_tree))
            .route("/actors/{kind}", web::get().to(actors_group))
            .route("/actors/{kind}/{key:.*}", web::get().to(actor_one))
            .route("/metrics", web::get().to(metrics))
            .route("/cluster", web::get().to(cluster_view))
            .route("/admin/events", web::get().to(list_dead_letters))
            .route("/admin/events/{id}", web::get().to(get_event))
            .route("/admin/events/{id}/retry", web::post().to(retry_event))
            .route("/admin/events/{id}", web::delete().to(discard_event))
            .route("/admin/audit", web::get().to(list_audit));
    }
}

/// The ops routes' part of the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(
    actors_tree,
    actors_group,
    actor_one,
    metrics,
    cluster_view,
    list_dead_letters,
    get_event,
    retry_event,
    discard_event,
    list_audit,
    page::page,
    page::css,
    page::js,
))]
pub struct OpsApi;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct TreeQuery {
    /// Children listed per supervisor (default 200; counts always cover every actor).
    limit: Option<usize>,
}

/// The supervision tree with counts per kind and state, and this replica's cluster status.
/// Open on the ops listener; the admin token on the public port.
#[utoipa::path(get, path = "/actors", tag = "ops", params(TreeQuery), security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{total, counts: {kind: {state: n}}, roots: [actor with children], cluster}`", body = serde_json::Value),
        (status = 400, description = "A query parameter does not read", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or wrong admin token (public port)", body = crate::error::ErrorBody),
    ))]
async fn actors_tree(
    state: web::Data<OpsState>,
    req: HttpRequest,
    q: web::Query<TreeQuery>,
) -> Result<HttpResponse, ApiError> {
    require_read(&state, &req)?;
    let tree = state
        .cluster
        .health()
        .tree_limited(q.limit.unwrap_or(DEFAULT_TREE_LIMIT));
    let mut body = serde_json::to_value(tree).map_err(ApiError::internal)?;
    // This replica's side of the cluster (what it holds, whom it sees); `/cluster` has the
    // database's view of every replica.
    if let Some(obj) = body.as_object_mut() {
        obj.insert("cluster".to_owned(), json!(state.cluster.replica_status()));
    }
    Ok(HttpResponse::Ok().json(body))
}

/// `GET /cluster`: every replica with its heartbeat and partitions, every partition with its
/// owner, lease and backlog (from the database), and this replica's own status.
#[utoipa::path(get, path = "/cluster", tag = "ops", security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{this_replica, view: {now, replicas, partitions}}`", body = serde_json::Value),
        (status = 401, description = "Missing or wrong admin token (public port)", body = crate::error::ErrorBody),
        (status = 503, description = "The database could not be read", body = crate::error::ErrorBody),
    ))]
async fn cluster_view(
    state: web::Data<OpsState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    require_read(&state, &req)?;
    let view = state.cluster.cluster_view().await.map_err(|e| {
        tracing::warn!(error = %e, "reading the cluster view failed");
        ApiError::unavailable("the cluster view could not be read from the database")
    })?;
    Ok(HttpResponse::Ok().json(json!({
        "this_replica": state.cluster.replica_status(),
        "view": view,
    })))
}

fn parse_kind(kind: &str) -> Result<ActorKind, ApiError> {
    infragpt_actors::kinds::parse(kind)
        .map_err(|_| ApiError::not_found(format!("no actor kind {:?}", echo(kind))))
}

/// The actors of one kind.
#[utoipa::path(get, path = "/actors/{kind}", tag = "ops", security(("admin_token" = [])),
    params(("kind" = String, Path, description = "An actor kind (`slack_connection`, `conversation_thread`, ...)")),
    responses(
        (status = 200, description = "`{kind, count, actors}`", body = serde_json::Value),
        (status = 401, description = "Missing or wrong admin token (public port)", body = crate::error::ErrorBody),
        (status = 404, description = "No such kind", body = crate::error::ErrorBody),
    ))]
async fn actors_group(
    state: web::Data<OpsState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require_read(&state, &req)?;
    let kind = parse_kind(&path)?;
    let actors = state.cluster.health().group(kind);
    Ok(HttpResponse::Ok().json(json!({
        "kind": kind.as_str(),
        "count": actors.len(),
        "actors": actors,
    })))
}

/// One actor.
#[utoipa::path(get, path = "/actors/{kind}/{key}", tag = "ops", security(("admin_token" = [])),
    params(
        ("kind" = String, Path, description = "An actor kind"),
        ("key" = String, Path, description = "The actor's key (may contain `/`)"),
    ),
    responses(
        (status = 200, description = "The actor's snapshot", body = serde_json::Value),
        (status = 401, description = "Missing or wrong admin token (public port)", body = crate::error::ErrorBody),
        (status = 404, description = "No such kind or actor", body = crate::error::ErrorBody),
    ))]
async fn actor_one(
    state: web::Data<OpsState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    require_read(&state, &req)?;
    let (kind, key) = path.into_inner();
    let kind = parse_kind(&kind)?;
    let actor = state.cluster.health().get(kind, &key).ok_or_else(|| {
        ApiError::not_found(format!("no {} actor {:?}", kind.as_str(), echo(&key)))
    })?;
    Ok(HttpResponse::Ok().json(actor))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "ops", security(("admin_token" = [])),
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 401, description = "Missing or wrong admin token (public port)", body = crate::error::ErrorBody),
    ))]
async fn metrics(state: web::Data<OpsState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    require_read(&state, &req)?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.cluster.encode_metrics()))
}

/// The tree and the metrics: open on the ops listener, the admin token elsewhere.
fn require_read(state: &OpsState, req: &HttpRequest) -> Result<(), ApiError> {
    match state.read_access {
        ReadAccess::Open => Ok(()),
        ReadAccess::AdminToken => require_admin(state, req),
    }
}

/// Checks `Authorization: Bearer <admin token>` in constant time. No token configured means
/// the admin API is off.
fn require_admin(state: &OpsState, req: &HttpRequest) -> Result<(), ApiError> {
    let Some(token) = state.admin_token.as_ref().filter(|t| !t.is_empty()) else {
        return Err(ApiError::unauthorized(
            "the admin API is disabled: set admin.token in the configuration (the actor tree and metrics are also served without a token on ops.port)",
        ));
    };
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::http::bearer_token)
        .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
    if token.ct_eq(presented) {
        Ok(())
    } else {
        Err(ApiError::unauthorized("invalid admin token"))
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct Page {
    /// 1 to 500 (default 50).
    limit: Option<i64>,
    /// Rows to skip (default 0).
    offset: Option<i64>,
}

/// Dead letters (events that failed for good), newest first.
#[utoipa::path(get, path = "/admin/events", tag = "admin", params(Page), security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{events: [event], limit, offset}`", body = serde_json::Value),
        (status = 400, description = "A query parameter does not read", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or wrong admin token, or no admin token configured", body = crate::error::ErrorBody),
        (status = 422, description = "`limit` or `offset` out of range", body = crate::error::ErrorBody),
    ))]
async fn list_dead_letters(
    state: web::Data<OpsState>,
    req: HttpRequest,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&state, &req)?;
    let limit = page.limit.unwrap_or(50);
    let offset = page.offset.unwrap_or(0);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::unprocessable(
            "limit",
            "must be between 1 and 500",
        ));
    }
    if offset < 0 {
        return Err(ApiError::unprocessable("offset", "must not be negative"));
    }
    let events = state
        .cluster
        .dead_letters(limit, offset)
        .await
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(json!({
        "events": events,
        "limit": limit,
        "offset": offset,
    })))
}

/// Every organization's audit entries (and those of none, like the admin's own actions),
/// newest first; `?organization_id=` narrows to one. Same parameters and answer as the
/// organization-scoped `GET /audit` ([`AuditParams`]).
#[utoipa::path(get, path = "/admin/audit", tag = "admin", params(AuditParams), security(("admin_token" = [])),
    responses(
        (status = 200, description = "A page of entries, newest first", body = crate::db::audit::AuditPage),
        (status = 400, description = "A parameter does not read", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = crate::error::ErrorBody),
    ))]
async fn list_audit(
    state: web::Data<OpsState>,
    req: HttpRequest,
    params: web::Query<AuditParams>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&state, &req)?;
    let params = params.into_inner();
    let organization_id = params
        .organization_id
        .as_deref()
        .map(uuid::Uuid::parse_str)
        .transpose()
        .map_err(|_| ApiError::bad_request("invalid organization_id: not a UUID"))?;
    let query = params
        .into_query(organization_id)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let page = state
        .audit
        .query(&query)
        .await
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(page))
}

fn parse_id(raw: &str) -> Result<EventRowId, ApiError> {
    raw.parse::<i64>()
        .map(EventRowId)
        .map_err(|_| ApiError::bad_request(format!("event id {:?} is not a number", echo(raw))))
}

/// One stored inbound event.
#[utoipa::path(get, path = "/admin/events/{id}", tag = "admin", params(("id" = String, Path, description = "The event's row id (a number)")), security(("admin_token" = [])),
    responses(
        (status = 200, description = "The event", body = serde_json::Value),
        (status = 400, description = "The id is not a number", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = crate::error::ErrorBody),
        (status = 404, description = "No such event", body = crate::error::ErrorBody),
    ))]
async fn get_event(
    state: web::Data<OpsState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&state, &req)?;
    let id = parse_id(&path)?;
    let event = state
        .cluster
        .inbox()
        .get(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no event {id}")))?;
    Ok(HttpResponse::Ok().json(event))
}

/// Puts a dead letter back in the inbox. The inbox writes the `event.requeued` entry in the
/// requeue's transaction: no entry, no requeue (500).
#[utoipa::path(post, path = "/admin/events/{id}/retry", tag = "admin", params(("id" = String, Path, description = "The event's row id (a number)")), security(("admin_token" = [])),
    responses(
        (status = 202, description = "Requeued; the event as it is now", body = serde_json::Value),
        (status = 400, description = "The id is not a number", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = crate::error::ErrorBody),
        (status = 409, description = "Not a dead letter (or no such event)", body = crate::error::ErrorBody),
    ))]
async fn retry_event(
    state: web::Data<OpsState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&state, &req)?;
    let id = parse_id(&path)?;
    let event = state
        .cluster
        .requeue_dead_letter(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::conflict(format!("event {id} is not a dead letter")))?;
    tracing::info!(event_id = %id, "dead letter requeued");
    Ok(HttpResponse::Accepted().json(event))
}

/// Discards a dead letter. The inbox writes the `event.discarded` entry in the discard's
/// transaction: no entry, no discard (500).
#[utoipa::path(delete, path = "/admin/events/{id}", tag = "admin", params(("id" = String, Path, description = "The event's row id (a number)")), security(("admin_token" = [])),
    responses(
        (status = 204, description = "Discarded"),
        (status = 400, description = "The id is not a number", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = crate::error::ErrorBody),
        (status = 409, description = "Not a dead letter (or no such event)", body = crate::error::ErrorBody),
    ))]
async fn discard_event(
    state: web::Data<OpsState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&state, &req)?;
    let id = parse_id(&path)?;
    if !state
        .cluster
        .discard_dead_letter(id)
        .await
        .map_err(ApiError::internal)?
    {
        return Err(ApiError::conflict(format!(
            "event {id} is not a dead letter"
        )));
    }
    tracing::info!(event_id = %id, "dead letter discarded");
    Ok(HttpResponse::NoContent().finish())
}
