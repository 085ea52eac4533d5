//! `/healthz` (the process answers) and `/readyz` (every readiness check passes).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::{HttpResponse, web};
use parking_lot::RwLock;
use serde::Serialize;

/// One thing the service needs before it can take traffic (database, migrations, Slack
/// connections, not overloaded...).
#[async_trait::async_trait]
pub trait ReadinessCheck: Send + Sync + 'static {
    /// Short name shown in `/readyz` (`database`).
    fn name(&self) -> &str;
    /// `Ok(())` when ready, else why not (shown to the caller; no secrets).
    async fn check(&self) -> Result<(), String>;
    /// An advisory check is shown in `/readyz` as `degraded: <why>` when it fails but never
    /// makes the service not ready: a state worth seeing (a backlog) that taking traffic away
    /// would only make worse.
    fn advisory(&self) -> bool {
        false
    }
}

/// The set of readiness checks. Cheap to clone; checks can be added after the server starts.
#[derive(Clone)]
pub struct Readiness {
    checks: Arc<RwLock<Vec<Arc<dyn ReadinessCheck>>>>,
    shutting_down: Arc<AtomicBool>,
    timeout: Duration,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .checks
            .read()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        f.debug_struct("Readiness")
            .field("checks", &names)
            .field("shutting_down", &self.shutting_down.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new(Duration::from_secs(3))
    }
}

/// The outcome of running every check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReadinessReport {
    /// `ready` or `not_ready`.
    #[schema(value_type = String, example = "ready")]
    pub status: &'static str,
    /// Check name → `ok` or why it failed.
    pub checks: BTreeMap<String, String>,
}

impl ReadinessReport {
    /// True when every check passed.
    pub fn is_ready(&self) -> bool {
        self.status == "ready"
    }
}

impl Readiness {
    /// An empty set; each check gets `timeout` before it counts as failed.
    pub fn new(timeout: Duration) -> Self {
        Self {
            checks: Arc::default(),
            shutting_down: Arc::default(),
            timeout,
        }
    }

    /// Adds a check.
    pub fn add(&self, check: impl ReadinessCheck) {
        self.checks.write().push(Arc::new(check));
    }

    /// Adds a shared check.
    pub fn add_arc(&self, check: Arc<dyn ReadinessCheck>) {
        self.checks.write().push(check);
    }

    /// From now on the service reports not ready (load balancers stop sending traffic).
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// True once [`Readiness::set_shutting_down`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Runs every check concurrently, each within the timeout.
    pub async fn report(&self) -> ReadinessReport {
        let checks: Vec<Arc<dyn ReadinessCheck>> = self.checks.read().clone();
        let timeout = self.timeout;
        let results = futures::future::join_all(checks.iter().map(|c| async move {
            let outcome = match tokio::time::timeout(timeout, c.check()).await {
                Ok(r) => r,
                Err(_) => Err(format!("timed out after {} ms", timeout.as_millis())),
            };
            (c.name().to_owned(), c.advisory(), outcome)
        }))
        .await;
        let mut ready = true;
        let mut map = BTreeMap::new();
        if self.is_shutting_down() {
            ready = false;
            map.insert("shutdown".to_owned(), "shutting down".to_owned());
        }
        for (name, advisory, outcome) in results {
            let text = match outcome {
                Ok(()) => "ok".to_owned(),
                Err(why) if advisory => format!("degraded: {why}"),
                Err(why) => {
                    ready = false;
                    why
                }
            };
            map.insert(name, text);
        }
        ReadinessReport {
            status: if ready { "ready" } else { "not_ready" },
            checks: map,
        }
    }
}

/// The health routes' part of the OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(healthz, readyz))]
pub struct HealthApi;

/// `GET /healthz`: 200 `{"status":"ok"}` while the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process serves HTTP: `{\"status\":\"ok\"}`", body = serde_json::Value)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 when every check passes, else 503 naming each failing check.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready (a backlog shows as `degraded: …` but stays ready)", body = ReadinessReport),
        (status = 503, description = "Not ready: the failing checks say why", body = ReadinessReport),
    ))]
pub async fn readyz(readiness: web::Data<Readiness>) -> HttpResponse {
    let report = readiness.report().await;
    if !report.is_ready() {
        let failing: Vec<&str> = report
            .checks
            .iter()
            .filter(|(_, v)| v.as_str() != "ok")
            .map(|(k, _)| k.as_str())
            .collect();
        tracing::debug!(failing = ?failing, "not ready");
        return HttpResponse::ServiceUnavailable().json(report);
    }
    HttpResponse::Ok().json(report)
}

/// Adds `/healthz` and `/readyz`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

/// `/readyz` is unauthenticated: answer the kind of failure, log the details (server address).
fn public_reason(e: &crate::db::DbError) -> String {
    use crate::db::DbError;
    tracing::warn!(error = %e, "readiness check failed");
    match e {
        DbError::Timeout { after, .. } => format!("timed out after {} ms", after.as_millis()),
        DbError::Connect { .. }
        | DbError::ConnectTimeout { .. }
        | DbError::Unreachable { .. }
        | DbError::Pool(_) => "cannot connect".to_owned(),
        DbError::Query(_) => "query failed".to_owned(),
        DbError::Migration(_) => "cannot read migration status".to_owned(),
        _ => "unavailable".to_owned(),
    }
}

/// `database`: a pooled `SELECT 1` within the connect timeout.
#[derive(Debug, Clone)]
pub struct DatabaseCheck {
    db: Arc<crate::db::Database>,
}

impl DatabaseCheck {
    /// A check over `db`'s pool.
    pub fn new(db: Arc<crate::db::Database>) -> Self {
        Self { db }
    }
}

#[async_trait::async_trait]
impl ReadinessCheck for DatabaseCheck {
    fn name(&self) -> &str {
        "database"
    }

    async fn check(&self) -> Result<(), String> {
        self.db.ping().await.map_err(|e| public_reason(&e))
    }
}

/// `migrations`: every embedded migration is applied (`"2 pending"` otherwise). Once all are
/// applied the result is remembered, so probes do not open a connection each time.
#[derive(Debug, Clone)]
pub struct MigrationsCheck {
    db: Arc<crate::db::Database>,
    up_to_date: Arc<AtomicBool>,
}

impl MigrationsCheck {
    /// A check over `db`.
    pub fn new(db: Arc<crate::db::Database>) -> Self {
        Self {
            db,
            up_to_date: Arc::default(),
        }
    }
}

#[async_trait::async_trait]
impl ReadinessCheck for MigrationsCheck {
    fn name(&self) -> &str {
        "migrations"
    }

    async fn check(&self) -> Result<(), String> {
        if self.up_to_date.load(Ordering::Relaxed) {
            return Ok(());
        }
        let status = self
            .db
            .migration_status()
            .await
            .map_err(|e| e.to_string())?;
        if status.pending.is_empty() {
            self.up_to_date.store(true, Ordering::Relaxed);
            Ok(())
        } else {
            Err(format!("{} pending", status.pending.len()))
        }
    }
}
