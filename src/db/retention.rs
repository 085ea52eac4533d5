//! Inbox retention: deletes finished inbound events (`done`, `ignored`) older than the
//! retention period, in small batches, from one process at a time.
//!
//! Dead letters (`failed`) stay until an operator retries or discards them; unfinished events
//! (`pending`, `processing`) are work. Neither is ever deleted here.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Timestamptz};
use diesel_async::RunQueryDsl;
use infragpt_actors::inbox::EventStatus;

use super::{Conn, Pool, StoreError, conn};

/// Session advisory lock key held for a whole retention run: with several replicas on one
/// database only one deletes at a time ("infragpt_retention" in spirit; any fixed value).
pub const RETENTION_LOCK_KEY: i64 = 0x1f2a_7265_7465_6e74;

/// One batch: the oldest finished rows past the cut-off. The literal statuses match the
/// partial index `inbound_events_retention_idx` (a bound array would not prove its predicate).
/// `id = ANY(ARRAY(…))` rather than `id IN (…)`: with `IN` the planner may hash-join the ids
/// against a sequential scan of the whole table; the array makes it a primary-key lookup.
/// Rows locked by someone else are skipped: the next run takes them.
const DELETE_BATCH: &str = "DELETE FROM inbound_events WHERE id = ANY(ARRAY(\
     SELECT id FROM inbound_events \
     WHERE status IN ('done', 'ignored') AND processed_at < $1 \
     ORDER BY processed_at LIMIT $2 \
     FOR UPDATE SKIP LOCKED)) \
     AND status IN ('done', 'ignored')";

/// What a run deletes and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Days a finished event is kept after it was processed; 0 keeps them forever.
    pub inbound_events_days: u32,
    /// Rows per DELETE statement (one short transaction each); at least 1.
    pub batch_size: u32,
    /// Pause between two batches.
    pub batch_pause: Duration,
}

/// How a run went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionOutcome {
    /// Retention is off (`inbound_events_days: 0`): nothing was deleted.
    Disabled,
    /// Another process holds the retention lock: this run skipped the deletion.
    Locked,
    /// This process held the lock and deleted what was due.
    Ran,
}

impl RetentionOutcome {
    /// The snake_case name (health detail, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Locked => "skipped_locked",
            Self::Ran => "ran",
        }
    }
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct RetentionReport {
    pub outcome: RetentionOutcome,
    /// Events with `processed_at` before this were due (none when disabled).
    pub cutoff: Option<DateTime<Utc>>,
    /// Rows deleted.
    pub deleted: u64,
    /// DELETE statements run (the last one deletes fewer than a batch).
    pub batches: u32,
    /// Wall time of the run.
    pub duration: Duration,
    /// Rows per status after the run.
    pub rows: Vec<(EventStatus, i64)>,
    /// `pg_total_relation_size` of `inbound_events` (table, indexes, TOAST) after the run.
    pub bytes: i64,
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    flag: bool,
}

#[derive(QueryableByName)]
struct Size {
    #[diesel(sql_type = BigInt)]
    bytes: i64,
}

/// A connection holding the retention lock. Dropped without [`LockedConn::release`] (an error,
/// or the run's future dropped at shutdown) it closes the connection instead of pooling it, so
/// the session lock never outlives the run.
struct LockedConn {
    conn: Option<Conn>,
}

impl LockedConn {
    fn get(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("the connection is present until released or dropped")
    }

    /// Unlocks and returns the connection to the pool.
    async fn release(mut self) -> Result<(), StoreError> {
        let mut conn = self
            .conn
            .take()
            .expect("the connection is present until released or dropped");
        let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1) AS flag")
            .bind::<BigInt, _>(RETENTION_LOCK_KEY)
            .get_result::<Flag>(&mut conn)
            .await;
        match unlocked {
            Ok(Flag { flag: true }) => Ok(()),
            Ok(Flag { flag: false }) => {
                // Not ours after all: never pool a session whose lock state is unknown.
                drop(deadpool::managed::Object::take(conn));
                tracing::warn!("the retention lock was not held at release");
                Ok(())
            }
            Err(e) => {
                drop(deadpool::managed::Object::take(conn));
                Err(e.into())
            }
        }
    }
}

impl Drop for LockedConn {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(deadpool::managed::Object::take(conn));
            tracing::debug!("a connection holding the retention lock was closed");
        }
    }
}

/// One retention run over `pool`: takes the lock (or skips), deletes the due rows in batches,
/// then measures the table (also when disabled or skipped, for the gauges).
pub async fn run_retention_once(
    pool: &Pool,
    settings: &RetentionSettings,
) -> Result<RetentionReport, StoreError> {
    let started = Instant::now();
    let mut report = RetentionReport {
        outcome: RetentionOutcome::Disabled,
        cutoff: None,
        deleted: 0,
        batches: 0,
        duration: Duration::ZERO,
        rows: Vec::new(),
        bytes: 0,
    };
    if settings.inbound_events_days > 0 {
        let cutoff = Utc::now() - TimeDelta::days(i64::from(settings.inbound_events_days));
        report.cutoff = Some(cutoff);
        let mut conn = conn(pool).await?;
        let locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS flag")
            .bind::<BigInt, _>(RETENTION_LOCK_KEY)
            .get_result::<Flag>(&mut conn)
            .await?;
        if locked.flag {
            let mut locked = LockedConn { conn: Some(conn) };
            delete_due(locked.get(), settings, cutoff, &mut report).await?;
            locked.release().await?;
            report.outcome = RetentionOutcome::Ran;
        } else {
            report.outcome = RetentionOutcome::Locked;
        }
    }
    let mut conn = conn(pool).await?;
    report.rows = super::inbox::count_by_status(&mut conn).await?;
    report.bytes = diesel::sql_query("SELECT pg_total_relation_size('inbound_events') AS bytes")
        .get_result::<Size>(&mut conn)
        .await?
        .bytes;
    report.duration = started.elapsed();
    Ok(report)
}

/// Deletes batch after batch until one comes back short.
async fn delete_due(
    conn: &mut Conn,
    settings: &RetentionSettings,
    cutoff: DateTime<Utc>,
    report: &mut RetentionReport,
) -> Result<(), StoreError> {
    let batch = settings.batch_size.max(1);
    loop {
        let deleted = diesel::sql_query(DELETE_BATCH)
            .bind::<Timestamptz, _>(cutoff)
            .bind::<BigInt, _>(i64::from(batch))
            .execute(conn)
            .await?;
        report.batches += 1;
        report.deleted += deleted as u64;
        tracing::debug!(batch = report.batches, deleted, "retention batch");
        if deleted < batch as usize {
            return Ok(());
        }
        if !settings.batch_pause.is_zero() {
            tokio::time::sleep(settings.batch_pause).await;
        }
    }
}
