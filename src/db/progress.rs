//! [`ProgressStore`] on `turn_progress`: each step is one statement, and the times are the
//! database's, so every replica agrees on who holds an indicator and when it may change.

use std::time::Duration;

use async_trait::async_trait;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Uuid as SqlUuid};
use diesel::{OptionalExtension, QueryableByName};
use diesel_async::RunQueryDsl;
use infragpt_actors::conversation::{
    AnswerSlot, ConversationStoreError, ProgressClaim, ProgressLock, ProgressStore,
};
use infragpt_actors::ids::{ConversationId, MessageTs, ReplyIntentId};

use super::prepared::PreparedExt;
use super::{Pool, StoreError, conn};
use crate::db::committed::CommittedExt as _;

/// Opens a turn's indicator, held by a new lock (a retried turn finds it open).
const OPEN: &str = "\
INSERT INTO turn_progress (conversation_id, turn_ts, lock_id, locked_until)
VALUES ($1, $2, gen_random_uuid(), now() + $3 * interval '1 millisecond')
ON CONFLICT (conversation_id, turn_ts) DO NOTHING
RETURNING lock_id";

/// Takes an opened indicator that shows nothing yet and is neither held nor answered.
const LOCK_UNSHOWN: &str = "\
UPDATE turn_progress
SET lock_id = gen_random_uuid(), locked_until = now() + $3 * interval '1 millisecond'
WHERE conversation_id = $1 AND turn_ts = $2
  AND answer_intent IS NULL AND shown_at IS NULL
  AND (locked_until IS NULL OR locked_until <= now())
RETURNING lock_id";

/// The indicator is shown; releases it.
const SHOWN: &str = "\
UPDATE turn_progress
SET placeholder_ts = $4, shown_text = $5, shown_at = now(), lock_id = NULL, locked_until = NULL
WHERE conversation_id = $1 AND turn_ts = $2 AND lock_id = $3";

/// Notes the latest report, unless the turn is answered.
const NOTE: &str = "\
UPDATE turn_progress SET pending_text = $3
WHERE conversation_id = $1 AND turn_ts = $2 AND answer_intent IS NULL";

/// Takes the pending report for showing when nobody holds the indicator and it last changed
/// at least the interval ($4, ms) ago.
const CLAIM: &str = "\
UPDATE turn_progress
SET lock_id = gen_random_uuid(), locked_until = now() + $3 * interval '1 millisecond',
    shown_text = pending_text, pending_text = NULL, shown_at = now()
WHERE conversation_id = $1 AND turn_ts = $2
  AND answer_intent IS NULL AND pending_text IS NOT NULL
  AND (locked_until IS NULL OR locked_until <= now())
  AND (shown_at IS NULL OR shown_at <= now() - $4 * interval '1 millisecond')
RETURNING lock_id, shown_text AS text, placeholder_ts";

/// When a pending report that could not be claimed may be: 0 rows when there is nothing
/// to show.
const CLAIM_WAIT: &str = "\
SELECT CEIL(GREATEST(
           EXTRACT(EPOCH FROM COALESCE(locked_until, now()) - now()),
           EXTRACT(EPOCH FROM COALESCE(shown_at + $3 * interval '1 millisecond', now()) - now()),
           0) * 1000)::BIGINT AS wait_ms
FROM turn_progress
WHERE conversation_id = $1 AND turn_ts = $2
  AND answer_intent IS NULL AND pending_text IS NOT NULL";

const RELEASE: &str = "\
UPDATE turn_progress SET lock_id = NULL, locked_until = NULL
WHERE conversation_id = $1 AND turn_ts = $2 AND lock_id = $3";

/// The reply takes the indicator over when nobody holds it (or it took it already).
const ANSWER: &str = "\
UPDATE turn_progress
SET answer_intent = $3, lock_id = NULL, locked_until = NULL, pending_text = NULL
WHERE conversation_id = $1 AND turn_ts = $2
  AND ((answer_intent IS NULL AND (locked_until IS NULL OR locked_until <= now()))
       OR answer_intent = $3)
RETURNING placeholder_ts";

/// Why the reply could not take it: held (wait that long), or another reply took it.
const ANSWER_WAIT: &str = "\
SELECT answer_intent IS NOT NULL AS taken,
       CEIL(GREATEST(EXTRACT(EPOCH FROM COALESCE(locked_until, now()) - now()), 0) * 1000)::BIGINT
           AS wait_ms
FROM turn_progress
WHERE conversation_id = $1 AND turn_ts = $2";

#[derive(QueryableByName)]
struct LockRow {
    #[diesel(sql_type = SqlUuid)]
    lock_id: uuid::Uuid,
}

#[derive(QueryableByName)]
struct ClaimRow {
    #[diesel(sql_type = SqlUuid)]
    lock_id: uuid::Uuid,
    #[diesel(sql_type = Text)]
    text: String,
    #[diesel(sql_type = Nullable<Text>)]
    placeholder_ts: Option<String>,
}

#[derive(QueryableByName)]
struct WaitRow {
    #[diesel(sql_type = BigInt)]
    wait_ms: i64,
}

#[derive(QueryableByName)]
struct PlaceholderRow {
    #[diesel(sql_type = Nullable<Text>)]
    placeholder_ts: Option<String>,
}

#[derive(QueryableByName)]
struct AnswerWaitRow {
    #[diesel(sql_type = Bool)]
    taken: bool,
    #[diesel(sql_type = BigInt)]
    wait_ms: i64,
}

fn unavailable(e: diesel::result::Error) -> ConversationStoreError {
    StoreError::from(e).into()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn wait(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// A stored placeholder ts.
pub(crate) fn placeholder(ts: Option<String>) -> Result<Option<MessageTs>, ConversationStoreError> {
    ts.map(MessageTs::parse)
        .transpose()
        .map_err(|e| StoreError::corrupt("turn_progress.placeholder_ts", e).into())
}

/// The turns' progress indicators in PostgreSQL.
#[derive(Clone)]
pub struct PgProgressStore {
    pool: Pool,
}

impl std::fmt::Debug for PgProgressStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgProgressStore")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl PgProgressStore {
    /// A store on `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Runs a statement on a turn's indicator that returns the lock it took, if any.
    async fn lock(
        &self,
        statement: &'static str,
        conversation: ConversationId,
        turn: &MessageTs,
        lease: Duration,
    ) -> Result<Option<ProgressLock>, ConversationStoreError> {
        let mut conn = conn(&self.pool).await?;
        let row: Option<LockRow> = diesel::sql_query(statement)
            .bind::<SqlUuid, _>(conversation.0)
            .bind::<Text, _>(turn.as_str())
            .bind::<BigInt, _>(millis(lease))
            .prepared()
            .get_committed(&mut conn)
            .await
            .optional()
            .map_err(unavailable)?;
        Ok(row.map(|r| ProgressLock(r.lock_id)))
    }
}

#[async_trait]
impl ProgressStore for PgProgressStore {
    async fn open_progress(
        &self,
        conversation: ConversationId,
        turn: &MessageTs,
        lease: Duration,
    ) -> Result<Option<ProgressLock>, ConversationStoreError> {
        self.lock(OPEN, conversation, turn, lease).await
    }

    async fn lock_unshown(
        &self,
        conversation: ConversationId,
        turn: &MessageTs,
        lease: Duration,
    ) -> Result<Option<ProgressLock>, ConversationStoreError> {
        self.lock(LOCK_UNSHOWN, conversation, turn, lease).await
    }

    async fn progress_shown(
        &self,
        conversation: ConversationId,
        turn: &MessageTs,
        lock: ProgressLock,
        placeholder: Option<&MessageTs>,
        text: &str,
    ) -> Result<(), ConversationStoreError> {
        let mut conn = conn(&self.pool).await?;
        diesel::sql_query(SHOWN)
            .bind::<SqlUuid, _>(conversation.0)
            .bind::<Text, _>(turn.as_str())
            .bind::<SqlUuid, _>(lock.0)
            .bind::<Nullable<Text>, _>(placeholder.map(MessageTs::as_str))
            .bind::<Text, _>(text)
            .prepared()
            .execute(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn note_progress(
        &self,
        conversation: ConversationId,
        turn: &MessageTs,
        text: &str,
    ) -> Result<bool, ConversationStoreError> {
        let mut conn = conn(&self.pool).await?;
        let changed = diesel::sql_query(NOTE)
            .bind::<SqlUuid, _>(conversation.0)
            .bind::<Text, _>(turn.as_str())
            .bind::<Text, _>(text)
            .prepared()
            .execute(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(changed > 0)
    }

    async fn claim_progress(
        &self,
        conversation: ConversationId,
        turn: &MessageTs,
        lease: Duration,
        interval: Duration,
    ) -> Result<ProgressClaim, ConversationStoreError> {
        let mut conn = conn(&self.pool).await?;
        let claimed: Option<ClaimRow> = diesel::sql_query(CLAIM)
            .bind::<SqlUuid, _>(conversation.0)
            .bind::<Text, _>(turn.as_str())
            .bind::<BigInt, _>(millis(lease))
            .bind::<BigInt, _>(millis(interval))
            .prepared()
            .get_committed(&mut conn)
            .await
            .optional()
            .map_err(unavailable)?;
        if let Some(row) = claimed {
            return Ok(ProgressClaim::Claimed {
                lock: ProgressLock(row.lock_id),
                text: row.text,
                placeholder: placeholder(row.placeholder_ts)?,
            });
        }
        let pending: Option<WaitRow> = diesel::sql_query(CLAIM_WAIT)
            .bind::<SqlUuid, _>(conversation.0)
            .bind::<Text, _>(turn.as_str())
            .bind::<BigInt, _>(millis(interval))
            .prepared()
            .get_committed(&mut conn)
            .await
            .optional()
            .map_err(unavailable)?;
        Ok(match pending {
            Some(row) => ProgressClaim::Later(wait(row.wait_ms)),
            None => ProgressClaim::Nothing,
        })
    }

    async fn release_progress(
        &self,
        conversation: ConversationId,
        turn: &MessageTs,
        lock: ProgressLock,
    ) -> Result<(), ConversationStoreError> {
        let mut conn = conn(&self.pool).await?;
        diesel::sql_query(RELEASE)
            .bind::<SqlUuid, _>(conversation.0)
            .bind::<Text, _>(turn.as_str())
            .bind::<SqlUuid, _>(lock.0)
            .prepared()
            .execute(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn answer_slot(
        &self,
        conversation: ConversationId,
        turn: &MessageTs,
        intent: ReplyIntentId,
    ) -> Result<AnswerSlot, ConversationStoreError> {
        let mut conn = conn(&self.pool).await?;
        let taken: Option<PlaceholderRow> = diesel::sql_query(ANSWER)
            .bind::<SqlUuid, _>(conversation.0)
            .bind::<Text, _>(turn.as_str())
            .bind::<SqlUuid, _>(intent.0)
            .prepared()
            .get_committed(&mut conn)
            .await
            .optional()
            .map_err(unavailable)?;
        if let Some(row) = taken {
            return Ok(match placeholder(row.placeholder_ts)? {
                Some(ts) => AnswerSlot::Replace(ts),
                None => AnswerSlot::Post,
            });
        }
        let why: Option<AnswerWaitRow> = diesel::sql_query(ANSWER_WAIT)
            .bind::<SqlUuid, _>(conversation.0)
            .bind::<Text, _>(turn.as_str())
            .prepared()
            .get_committed(&mut conn)
            .await
            .optional()
            .map_err(unavailable)?;
        Ok(match why {
            // Held: ask again once the holder is done (the lease bounds it).
            Some(row) if !row.taken => AnswerSlot::Wait(wait(row.wait_ms)),
            // Another reply replaced the placeholder, or the turn shows no indicator.
            _ => AnswerSlot::Post,
        })
    }
}
