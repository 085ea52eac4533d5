//! Retention: deletes finished inbound events (`done`, `ignored`) older than the retention
//! period and, when configured, conversations whose last message is older than theirs (with
//! their messages and reply intents), in small batches, from one process at a time.
//!
//! Dead letters (`failed`) stay until an operator retries or discards them; unfinished events
//! (`pending`, `processing`) are work. Neither is ever deleted here, and neither is a
//! conversation with a turn in flight.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Timestamptz};
use diesel_async::{AsyncConnection, RunQueryDsl};
use infragpt_actors::inbox::EventStatus;

use super::{Conn, Pool, StoreError, conn};
use crate::db::committed::CommittedExt as _;

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

/// One batch of conversations: those whose last message is before the cut-off, oldest
/// created first (`conversations_created_idx`; such a conversation was created before the
/// cut-off too, and the time of the last message, which every turn updates, has no index,
/// so those updates stay HOT), except those with a turn in flight: an unfinished event of
/// the thread (its routing key is `ThreadKey::to_routing_key`, `team/channel/thread_ts`; the
/// literal source matches the partial index `inbound_events_slack_key_idx`) or a reply being
/// posted (an unposted intent with a live claim); a worker storing a message is handling
/// such an event. Rows another transaction locked are skipped, the next run takes them. A
/// message stored after this selection waits on the row lock (its foreign key), fails once
/// the batch commits, and its retry starts a new conversation.
const DUE_CONVERSATIONS: &str = "SELECT c.id FROM conversations c \
     WHERE c.created_at < $1 AND c.last_message_at < $1 \
     AND NOT EXISTS (SELECT 1 FROM inbound_events e \
         WHERE e.source = 'slack' \
         AND e.routing_key = c.team_id || '/' || c.channel_id || '/' || c.thread_ts \
         AND e.status IN ('pending', 'processing')) \
     AND NOT EXISTS (SELECT 1 FROM reply_intents i \
         WHERE i.conversation_id = c.id AND i.posted_at IS NULL AND i.claimed_until > now()) \
     ORDER BY c.created_at LIMIT $2 \
     FOR UPDATE OF c SKIP LOCKED";

/// The rows that reference a batch of conversations, then the conversations. The foreign
/// keys would cascade, but explicit deletes tell how many rows of each table went.
const DELETE_CONVERSATION_INTENTS: &str =
    "DELETE FROM reply_intents WHERE conversation_id = ANY($1)";
const DELETE_CONVERSATION_MESSAGES: &str = "DELETE FROM messages WHERE conversation_id = ANY($1)";
const DELETE_CONVERSATIONS: &str = "DELETE FROM conversations WHERE id = ANY($1)";

/// Progress indicators of turns older than a day (`turn_progress`): Slack drops a status
/// after two minutes, and an answered turn's row only tells late reports to stay away. Run by
/// every replica's housekeeping (a DELETE is safe to run twice), whatever the retention
/// settings; the conversations' own retention cascades to theirs.
const DELETE_STALE_PROGRESS: &str =
    "DELETE FROM turn_progress WHERE created_at < now() - interval '1 day'";

/// What a run deletes and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Days a finished event is kept after it was processed; 0 keeps them forever.
    pub inbound_events_days: u32,
    /// Days a conversation is kept after its last message; 0 keeps them forever.
    pub conversations_days: u32,
    /// Rows per DELETE statement (one short transaction each); at least 1.
    pub batch_size: u32,
    /// Pause between two batches.
    pub batch_pause: Duration,
}

/// How a run went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionOutcome {
    /// Retention is off (`inbound_events_days` and `conversations_days` both 0): nothing was
    /// deleted.
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
    /// Events with `processed_at` before this were due (none when their retention is off).
    pub cutoff: Option<DateTime<Utc>>,
    /// Inbound events deleted.
    pub deleted: u64,
    /// DELETE statements run on the inbox (the last one deletes fewer than a batch).
    pub batches: u32,
    /// What went of the conversations.
    pub conversations: ConversationsRun,
    /// Wall time of the run.
    pub duration: Duration,
    /// Rows per status after the run.
    pub rows: Vec<(EventStatus, i64)>,
    /// `pg_total_relation_size` of `inbound_events` (table, indexes, TOAST) after the run.
    pub bytes: i64,
}

/// The conversations' part of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConversationsRun {
    /// Conversations whose last message is before this were due (none when their retention
    /// is off).
    pub cutoff: Option<DateTime<Utc>>,
    /// Conversations deleted.
    pub deleted: u64,
    /// Their messages.
    pub messages: u64,
    /// Their reply intents.
    pub reply_intents: u64,
    /// Batches run, each one transaction (the last one deletes fewer than a batch).
    pub batches: u32,
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    flag: bool,
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: uuid::Uuid,
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
            .get_committed::<Flag>(&mut conn)
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

/// `days` before now; `None` for 0 (kept forever).
fn cutoff(days: u32) -> Option<DateTime<Utc>> {
    (days > 0).then(|| Utc::now() - TimeDelta::days(i64::from(days)))
}

/// One retention run over `pool`: takes the lock (or skips), deletes the due rows in batches,
/// then measures the inbox (also when disabled or skipped, for the gauges).
pub async fn run_retention_once(
    pool: &Pool,
    settings: &RetentionSettings,
) -> Result<RetentionReport, StoreError> {
    let started = Instant::now();
    let mut report = RetentionReport {
        outcome: RetentionOutcome::Disabled,
        cutoff: cutoff(settings.inbound_events_days),
        deleted: 0,
        batches: 0,
        conversations: ConversationsRun {
            cutoff: cutoff(settings.conversations_days),
            ..ConversationsRun::default()
        },
        duration: Duration::ZERO,
        rows: Vec::new(),
        bytes: 0,
    };
    if report.cutoff.is_some() || report.conversations.cutoff.is_some() {
        let mut conn = conn(pool).await?;
        let locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS flag")
            .bind::<BigInt, _>(RETENTION_LOCK_KEY)
            .get_committed::<Flag>(&mut conn)
            .await?;
        if locked.flag {
            let mut locked = LockedConn { conn: Some(conn) };
            if let Some(cutoff) = report.cutoff {
                delete_due(locked.get(), settings, cutoff, &mut report).await?;
                delete_due_slash_questions(locked.get(), cutoff).await?;
            }
            if let Some(cutoff) = report.conversations.cutoff {
                delete_due_conversations(locked.get(), settings, cutoff, &mut report.conversations)
                    .await?;
            }
            locked.release().await?;
            report.outcome = RetentionOutcome::Ran;
        } else {
            report.outcome = RetentionOutcome::Locked;
        }
    }
    let mut conn = conn(pool).await?;
    let stale = diesel::sql_query(DELETE_STALE_PROGRESS)
        .execute(&mut conn)
        .await?;
    if stale > 0 {
        tracing::debug!(deleted = stale, "stale turn progress rows deleted");
    }
    report.rows = super::inbox::count_by_status(&mut conn).await?;
    report.bytes = diesel::sql_query("SELECT pg_total_relation_size('inbound_events') AS bytes")
        .get_committed::<Size>(&mut conn)
        .await?
        .bytes;
    report.duration = started.elapsed();
    Ok(report)
}

/// The questions `/infragpt <question>` posted, kept as long as the inbox keeps their
/// commands: past the cut-off, unless the command is unfinished or a dead letter (its retry
/// needs the record to not post twice). A replay of so old a command cannot pass the
/// signature's 5-minute window.
const DELETE_SLASH_QUESTIONS: &str = "DELETE FROM slash_questions q \
     WHERE q.created_at < $1 \
     AND NOT EXISTS (SELECT 1 FROM inbound_events e \
         WHERE e.source = 'slack' AND e.source_id = 'slash:' || q.trigger_id \
         AND e.status IN ('pending', 'processing', 'failed'))";

async fn delete_due_slash_questions(
    conn: &mut Conn,
    cutoff: DateTime<Utc>,
) -> Result<(), StoreError> {
    let deleted = diesel::sql_query(DELETE_SLASH_QUESTIONS)
        .bind::<Timestamptz, _>(cutoff)
        .execute(conn)
        .await?;
    tracing::debug!(deleted, "retention: slash questions");
    Ok(())
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

/// Deletes conversations batch after batch, each batch one transaction (its conversations,
/// their messages and reply intents), until one comes back short.
async fn delete_due_conversations(
    conn: &mut Conn,
    settings: &RetentionSettings,
    cutoff: DateTime<Utc>,
    run: &mut ConversationsRun,
) -> Result<(), StoreError> {
    let batch = settings.batch_size.max(1);
    loop {
        let [reply_intents, messages, conversations] = conn
            .transaction::<_, StoreError, _>(async move |conn| {
                let ids: Vec<uuid::Uuid> = diesel::sql_query(DUE_CONVERSATIONS)
                    .bind::<Timestamptz, _>(cutoff)
                    .bind::<BigInt, _>(i64::from(batch))
                    .load::<IdRow>(conn)
                    .await?
                    .into_iter()
                    .map(|r| r.id)
                    .collect();
                let mut deleted = [0usize; 3];
                if ids.is_empty() {
                    return Ok(deleted);
                }
                let statements = [
                    DELETE_CONVERSATION_INTENTS,
                    DELETE_CONVERSATION_MESSAGES,
                    DELETE_CONVERSATIONS,
                ];
                for (n, statement) in deleted.iter_mut().zip(statements) {
                    *n = diesel::sql_query(statement)
                        .bind::<Array<diesel::sql_types::Uuid>, _>(&ids)
                        .execute(conn)
                        .await?;
                }
                Ok(deleted)
            })
            .await?;
        run.batches += 1;
        run.deleted += conversations as u64;
        run.messages += messages as u64;
        run.reply_intents += reply_intents as u64;
        tracing::debug!(
            batch = run.batches,
            conversations,
            messages,
            reply_intents,
            "conversation retention batch"
        );
        if conversations < batch as usize {
            return Ok(());
        }
        if !settings.batch_pause.is_zero() {
            tokio::time::sleep(settings.batch_pause).await;
        }
    }
}
