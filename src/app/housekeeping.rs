//! The housekeeping actor: runs retention ([`run_retention_once`]: finished inbound events,
//! and conversations when `retention.conversations_days` is set) every
//! `retention.interval_secs`, publishes the last run in the health registry (kind
//! `housekeeping`) and keeps the retention metrics.
//!
//! One per process; with several replicas on one database the advisory lock taken by each run
//! lets only one of them delete at a time (the others skip that run).

use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, TimeDelta, Utc};
use infragpt_actors::health::{ActorHealth, ActorId};
use infragpt_actors::{ActorState, HealthRegistry, Metrics, kinds};
use prometheus::{IntCounterVec, IntGauge, Opts};
use serde_json::json;

use crate::config::RetentionConfig;
use crate::db::Pool;
use crate::db::retention::{RetentionReport, RetentionSettings, run_retention_once};

/// Key of the housekeeping actor in the health registry (named when it only did the inbox;
/// kept, since dashboards and alerts name it).
pub const HEALTH_KEY: &str = "inbox_retention";

/// The `table` label values of `infragpt_retention_deleted_total`.
const TABLES: [&str; 4] = [
    "inbound_events",
    "conversations",
    "messages",
    "reply_intents",
];

impl From<&RetentionConfig> for RetentionSettings {
    fn from(c: &RetentionConfig) -> Self {
        Self {
            inbound_events_days: c.inbound_events_days,
            conversations_days: c.conversations_days,
            batch_size: c.batch_size,
            batch_pause: Duration::from_millis(c.batch_pause_ms),
        }
    }
}

/// The retention collectors on the cluster's registry.
#[derive(Clone)]
struct RetentionMetrics {
    cluster: Metrics,
    deleted_total: IntCounterVec,
    inbox_bytes: IntGauge,
}

impl RetentionMetrics {
    fn register(metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let deleted_total = IntCounterVec::new(
            Opts::new(
                "infragpt_retention_deleted_total",
                "Rows deleted by retention, per table",
            ),
            &["table"],
        )?;
        // Every table from the start, so a rate over a table that had nothing due is 0, not
        // absent.
        for table in TABLES {
            deleted_total.with_label_values(&[table]);
        }
        let inbox_bytes = IntGauge::new(
            "infragpt_inbox_bytes",
            "Size of the inbound_events table with its indexes and TOAST (bytes)",
        )?;
        metrics
            .registry()
            .register(Box::new(deleted_total.clone()))?;
        metrics.registry().register(Box::new(inbox_bytes.clone()))?;
        Ok(Self {
            cluster: metrics.clone(),
            deleted_total,
            inbox_bytes,
        })
    }

    fn record(&self, report: &RetentionReport) {
        let conversations = &report.conversations;
        for (table, n) in TABLES.into_iter().zip([
            report.deleted,
            conversations.deleted,
            conversations.messages,
            conversations.reply_intents,
        ]) {
            self.deleted_total.with_label_values(&[table]).inc_by(n);
        }
        self.inbox_bytes.set(report.bytes);
        // Rows per status are the cluster's `infragpt_inbox_events`; refresh it now that the
        // table changed instead of waiting for the cluster's next sweep.
        self.cluster.set_inbox_counts(&report.rows);
    }
}

/// Runs retention periodically.
pub struct Housekeeping {
    pool: Pool,
    settings: RetentionSettings,
    interval: Duration,
    first_run_delay: Duration,
    health: ActorHealth,
    metrics: RetentionMetrics,
    /// A run is in flight (a slow run is not overlapped by the next tick).
    running: bool,
    next_run_at: DateTime<Utc>,
    last_run: serde_json::Value,
    last_error: serde_json::Value,
}

impl std::fmt::Debug for Housekeeping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Housekeeping")
            .field("settings", &self.settings)
            .field("interval", &self.interval)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl Housekeeping {
    /// Registers the metrics and the health entry and starts the actor. Must run inside an
    /// actix System.
    pub fn start(
        pool: Pool,
        config: &RetentionConfig,
        health: &HealthRegistry,
        metrics: &Metrics,
    ) -> Result<Addr<Self>, prometheus::Error> {
        let metrics = RetentionMetrics::register(metrics)?;
        let (events_days, conversations_days) =
            (config.inbound_events_days, config.conversations_days);
        if conversations_days > 0 && (events_days == 0 || events_days > conversations_days) {
            // Not refused: keeping raw events longer can be deliberate (audits, replays).
            tracing::warn!(
                inbound_events_days = events_days,
                conversations_days,
                "retention.inbound_events_days is 0 or longer than conversations_days: the \
                 Slack payloads of a conversation deleted by retention outlive it"
            );
        }
        let health = health.register(ActorId::new(kinds::HOUSEKEEPING, HEALTH_KEY), None);
        let actor = Self {
            pool,
            settings: RetentionSettings::from(config),
            interval: config.interval(),
            first_run_delay: config.first_run_delay(),
            health,
            metrics,
            running: false,
            next_run_at: after(config.first_run_delay()),
            last_run: serde_json::Value::Null,
            last_error: serde_json::Value::Null,
        };
        actor.publish();
        Ok(actor.start())
    }

    /// Starts a run unless one is in flight.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        self.next_run_at = after(self.interval);
        if self.running {
            tracing::info!("retention still running; this tick is skipped");
            self.publish();
            return;
        }
        self.running = true;
        self.publish();
        let pool = self.pool.clone();
        let settings = self.settings.clone();
        let run = async move { run_retention_once(&pool, &settings).await };
        ctx.spawn(
            run.into_actor(self)
                .map(|result, act, _| act.finished(result)),
        );
    }

    fn finished(&mut self, result: Result<RetentionReport, crate::db::StoreError>) {
        self.running = false;
        let now = Utc::now();
        match result {
            Ok(report) => {
                self.metrics.record(&report);
                let conversations = &report.conversations;
                tracing::info!(
                    outcome = report.outcome.as_str(),
                    deleted = report.deleted,
                    batches = report.batches,
                    conversations_deleted = conversations.deleted,
                    messages_deleted = conversations.messages,
                    reply_intents_deleted = conversations.reply_intents,
                    conversation_batches = conversations.batches,
                    duration_ms = report.duration.as_millis() as u64,
                    inbox_bytes = report.bytes,
                    "retention run"
                );
                self.last_run = json!({
                    "at": now,
                    "outcome": report.outcome.as_str(),
                    "cutoff": report.cutoff,
                    "deleted": report.deleted,
                    "batches": report.batches,
                    "conversations": {
                        "cutoff": conversations.cutoff,
                        "deleted": conversations.deleted,
                        "messages": conversations.messages,
                        "reply_intents": conversations.reply_intents,
                        "batches": conversations.batches,
                    },
                    "duration_ms": report.duration.as_millis() as u64,
                    "inbox_bytes": report.bytes,
                });
                self.health.record_message();
            }
            Err(e) => {
                // The next run retries; the entry stays `running` with the error recorded.
                let error = e.to_string();
                tracing::warn!(error = %error, "retention run failed");
                self.health.record_error(&error);
                self.last_error = json!({ "at": now, "error": error });
            }
        }
        self.publish();
    }

    fn publish(&self) {
        self.health.set_detail(json!({
            "inbound_events_days": self.settings.inbound_events_days,
            "conversations_days": self.settings.conversations_days,
            "batch_size": self.settings.batch_size,
            "interval_secs": self.interval.as_secs(),
            "running": self.running,
            "next_run_at": self.next_run_at,
            "last_run": self.last_run,
            "last_error": self.last_error,
        }));
    }
}

/// Now plus `delay`, saturating at the far future.
fn after(delay: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(delay)
        .ok()
        .and_then(|d| Utc::now().checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl Actor for Housekeeping {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.health.set_state(ActorState::Running);
        ctx.run_later(self.first_run_delay, |act, ctx| {
            act.tick(ctx);
            ctx.run_interval(act.interval, |act, ctx| act.tick(ctx));
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.health.set_state(ActorState::Stopped);
    }
}

/// Stops the actor (at shutdown; an unfinished run is dropped and its lock released with its
/// connection).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopHousekeeping;

impl Handler<StopHousekeeping> for Housekeeping {
    type Result = ();

    fn handle(&mut self, _msg: StopHousekeeping, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
