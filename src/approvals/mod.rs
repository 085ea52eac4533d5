//! Approvals (issue 14), the service side: the PostgreSQL store ([`store`]), the REST API of
//! the organization's approvals (`GET /approvals?status=`, `GET /approvals/{id}`: Clerk
//! session, organization-scoped, members may read), the expiry sweep and the
//! `infragpt_approvals_pending` gauge, as [`ApprovalsModule`].
//!
//! The agent-facing calls (RequestApproval, GetApproval, `POST /approvals`) are in
//! `reply::approvals`, authenticated like SendReply; the decision runs in the conversation
//! worker (`infragpt_actors::conversation::turn`); the Slack calls are `slack::web`'s.

pub mod store;

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use infragpt_actors::Metrics;
use infragpt_actors::approvals::{ApprovalService, ApprovalStatus};
use serde::Deserialize;
use uuid::Uuid;

use self::store::PgApprovalStore;
use crate::error::ApiError;
use crate::grpc::server::GrpcShell;
use crate::http::HttpShell;
use crate::identity::auth::OrgPrincipal;
use crate::server::{AppState, Module};

/// Largest page of `GET /approvals`.
const MAX_PAGE: i64 = 200;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// `pending`, `approved`, `denied` or `expired` (default: all).
    status: Option<String>,
    /// Page size, 1 to 200 (default 50).
    limit: Option<String>,
}

fn store_error(e: impl std::fmt::Display, who: &OrgPrincipal) -> ApiError {
    tracing::error!(error = %e, organization_id = %who.organization_id.0, "approval store failed");
    ApiError::unavailable("approval store unavailable, retry later")
}

/// The organization's approvals, newest first.
#[utoipa::path(get, path = "/approvals", tag = "approvals", params(ListParams), security(("clerk_session" = [])),
    responses(
        (status = 200, description = "`{approvals: [...]}`", body = serde_json::Value),
        (status = 400, description = "A parameter does not read", body = crate::error::ErrorBody),
        crate::identity::auth::SessionRefusals,
    ))]
async fn list(
    who: OrgPrincipal,
    store: web::Data<PgApprovalStore>,
    params: web::Query<ListParams>,
) -> Result<HttpResponse, ApiError> {
    let params = params.into_inner();
    let status = params
        .status
        .as_deref()
        .map(|s| {
            ApprovalStatus::parse(s).ok_or_else(|| {
                ApiError::bad_request("invalid status: pending, approved, denied or expired")
            })
        })
        .transpose()?;
    let limit = match params.limit.as_deref() {
        None => 50,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid limit: must be a number from 1 to {MAX_PAGE}"
                ))
            })?,
    };
    let approvals = store
        .list_for_org(who.organization_id.0, status, limit)
        .await
        .map_err(|e| store_error(e, &who))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "approvals": approvals })))
}

/// One of the organization's approvals.
#[utoipa::path(get, path = "/approvals/{id}", tag = "approvals", security(("clerk_session" = [])),
    params(("id" = String, Path, description = "The approval's UUID")),
    responses(
        (status = 200, description = "The approval", body = serde_json::Value),
        (status = 404, description = "Not one of the organization's approvals", body = crate::error::ErrorBody),
        crate::identity::auth::SessionRefusals,
    ))]
async fn get_one(
    who: OrgPrincipal,
    store: web::Data<PgApprovalStore>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::not_found("approval not found");
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let approval = store
        .get_for_org(who.organization_id.0, id)
        .await
        .map_err(|e| store_error(e, &who))?
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(approval))
}

/// The REST routes in the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(list, get_one))]
pub struct ApprovalsApi;

/// Registers `GET /approvals` and `GET /approvals/{id}`.
pub fn configure(cfg: &mut web::ServiceConfig, store: PgApprovalStore) {
    cfg.app_data(web::Data::new(store))
        .route("/approvals", web::get().to(list))
        .route("/approvals/{id}", web::get().to(get_one));
}

/// The REST routes, the expiry sweep and the pending gauge.
pub struct ApprovalsModule {
    service: Arc<ApprovalService>,
    metrics: Metrics,
    interval: Duration,
    sweeper: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for ApprovalsModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalsModule")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl ApprovalsModule {
    /// The module over the service (whose expiry it sweeps every `interval`).
    pub fn new(service: Arc<ApprovalService>, metrics: Metrics, interval: Duration) -> Self {
        Self {
            service,
            metrics,
            interval,
            sweeper: None,
        }
    }
}

#[async_trait::async_trait]
impl Module for ApprovalsModule {
    fn name(&self) -> &str {
        "approvals"
    }

    async fn start(
        &mut self,
        state: &AppState,
        http: &mut HttpShell,
        _grpc: &mut GrpcShell,
    ) -> anyhow::Result<()> {
        let store = PgApprovalStore::new(state.db.pool().clone());
        http.add_routes(Arc::new(move |cfg| configure(cfg, store.clone())));
        let gauge = prometheus::IntGauge::new(
            "infragpt_approvals_pending",
            "Approvals the agent asked for that nobody has decided yet (and not expired)",
        )?;
        // A second module over the same registry (tests) keeps the first gauge.
        if let Err(e) = self.metrics.registry().register(Box::new(gauge.clone())) {
            tracing::debug!(error = %e, "infragpt_approvals_pending is registered already");
        }
        let service = self.service.clone();
        let interval = self.interval.max(Duration::from_millis(50));
        self.sweeper = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = service.expire_due().await {
                    tracing::warn!(error = %e, "approvals: expiry sweep failed");
                }
                match service.count_pending().await {
                    Ok(n) => gauge.set(n),
                    Err(e) => tracing::debug!(error = %e, "approvals: counting pending failed"),
                }
            }
        }));
        Ok(())
    }

    async fn stop(&mut self) {
        if let Some(sweeper) = self.sweeper.take() {
            sweeper.abort();
        }
    }
}
