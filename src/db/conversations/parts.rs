//! Posted parts of replies, recorded together: the SendReplies that post at the same moment
//! store their messages and advance their intents in one statement ([`PartsPosted`] on the
//! runtime's group-commit [`Batcher`]), as the inbox's done marks are.

use diesel::QueryableByName;
use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Bool, Integer, Nullable, Text, Timestamptz, Uuid};
use diesel_async::RunQueryDsl;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use infragpt_actors::conversation::{NewMessage, StoredMessage};
use infragpt_actors::group_commit::{BatchWrite, Batcher};
use infragpt_actors::health::ActorHealth;
use infragpt_actors::ids::MessageTs;

use super::history::HistoryCache;
use super::sender_columns;
use crate::db::Pool;
use crate::db::batch::write_batch;
use crate::db::error::{StoreError, conn};
use crate::db::prepared::PreparedExt as _;

/// Parts one statement records at most.
const BATCH_MAX: usize = 256;

/// How long one batch may take before its parts fail (their posts are then found in the
/// thread by the next claim, as after any failed record).
const BATCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One posted part: intent `id` under claim `claim` has its first `parts` messages in the
/// thread, `message` being the last of them; the claim's lease runs `lease_ms` more.
#[derive(Debug)]
pub(crate) struct PartPosted {
    pub(crate) id: uuid::Uuid,
    pub(crate) claim: i32,
    pub(crate) parts: i32,
    pub(crate) lease_ms: i64,
    pub(crate) message: NewMessage,
}

/// Records each part: stores its agent message unless its ts is stored (touching its
/// conversation when it was not), and records the part in its intent, a fact whoever holds
/// the claim; the in-flight mark is cleared and the lease extended only for the current
/// claim. Returns each intent with whether the claim is still the caller's, and, when its
/// message was stored, that message's row and its conversation's new `history_seq` (moved
/// by one however many of its messages the batch stored), for the histories kept in memory.
///
/// `i.id = ANY($1)` lets the generic plan probe the intents by id (the intents of a batch
/// are distinct: [`record`] writes a batch that names one twice row by row); the probe also
/// locks them in id order, as every batch does, so two processes' batches cannot deadlock
/// on them.
const PARTS_POSTED: &str = "\
WITH p AS (
    SELECT * FROM unnest($1::uuid[], $2::int4[], $3::int4[], $4::int8[], $5::uuid[],
        $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::int8[],
        $13::text[], $14::text[])
    WITH ORDINALITY AS x(id, claim, parts, lease, conversation_id, slack_ts, sender_kind,
        sender_id, sender_name, sender_email, text, source_event_id, in_reply_to, kind, n)
), stored AS (
    INSERT INTO messages (conversation_id, slack_ts, sender_kind, sender_id, sender_name,
        sender_email, text, source_event_id, in_reply_to, kind)
    SELECT conversation_id, slack_ts, sender_kind, sender_id, sender_name, sender_email, text,
        source_event_id, in_reply_to, kind
    FROM p ORDER BY n
    ON CONFLICT (conversation_id, slack_ts) DO NOTHING
    RETURNING id, conversation_id, slack_ts, created_at
), touched AS (
    UPDATE conversations
        SET last_message_at = now(), updated_at = now(), history_seq = history_seq + 1
    WHERE id = ANY($5::uuid[]) AND id IN (SELECT conversation_id FROM stored)
    RETURNING id, history_seq
)
UPDATE reply_intents AS i
    SET parts_done = GREATEST(i.parts_done, p.parts),
        posting_part = CASE WHEN i.claims = p.claim THEN NULL ELSE i.posting_part END,
        claimed_until = CASE WHEN i.claims = p.claim
                             THEN now() + p.lease * interval '1 millisecond'
                             ELSE i.claimed_until END,
        posted_at = CASE WHEN GREATEST(i.parts_done, p.parts) >= i.parts
                              AND (i.posting->>'kind' <> 'file' OR i.file_done)
                         THEN COALESCE(i.posted_at, now()) ELSE i.posted_at END
    FROM p
    WHERE i.id = ANY($1::uuid[]) AND i.id = p.id
RETURNING i.id, i.claims = p.claim AS ours,
    (SELECT t.history_seq FROM touched t WHERE t.id = p.conversation_id) AS history_seq,
    (SELECT s.id FROM stored s
        WHERE s.conversation_id = p.conversation_id AND s.slack_ts = p.slack_ts) AS message_id,
    (SELECT s.created_at FROM stored s
        WHERE s.conversation_id = p.conversation_id AND s.slack_ts = p.slack_ts) AS message_at";

/// The grouped writer of posted parts.
pub(crate) struct PartsPosted {
    pool: Pool,
    history: Arc<HistoryCache>,
}

impl PartsPosted {
    /// Starts the writer on the caller's arbiter (its callers, the SendReplies, only wait
    /// for it); its state shows as `health`. Needs a running actix system.
    pub(crate) fn start(
        pool: Pool,
        history: Arc<HistoryCache>,
        health: ActorHealth,
    ) -> Batcher<Self> {
        Batcher::start_here(Self { pool, history }, BATCH_MAX, health, BATCH_TIMEOUT)
    }
}

impl BatchWrite for PartsPosted {
    type Item = PartPosted;
    /// True while the claim is still the caller's.
    type Out = bool;
    type Error = StoreError;

    fn write(&self, parts: Vec<PartPosted>) -> BoxFuture<'static, Vec<Result<bool, StoreError>>> {
        let (pool, history) = (self.pool.clone(), self.history.clone());
        async move { record(&pool, &history, &parts).await }.boxed()
    }
}

/// Records `parts` ([`PARTS_POSTED`]): in one statement when their intents are distinct,
/// else one by one in order.
pub(crate) async fn record(
    pool: &Pool,
    history: &HistoryCache,
    parts: &[PartPosted],
) -> Vec<Result<bool, StoreError>> {
    let mut seen = std::collections::HashSet::with_capacity(parts.len());
    if parts.iter().all(|p| seen.insert(p.id)) {
        write_batch(parts, |parts| record_distinct(pool, history, parts)).await
    } else {
        let mut outcomes = Vec::with_capacity(parts.len());
        for part in parts {
            outcomes.extend(
                write_batch(std::slice::from_ref(part), |one| {
                    record_distinct(pool, history, one)
                })
                .await,
            );
        }
        outcomes
    }
}

/// [`PARTS_POSTED`] for parts of distinct intents.
async fn record_distinct(
    pool: &Pool,
    history: &HistoryCache,
    parts: &[PartPosted],
) -> Result<Vec<Result<bool, StoreError>>, StoreError> {
    #[derive(QueryableByName)]
    struct Recorded {
        #[diesel(sql_type = Uuid)]
        id: uuid::Uuid,
        #[diesel(sql_type = Bool)]
        ours: bool,
        #[diesel(sql_type = Nullable<BigInt>)]
        history_seq: Option<i64>,
        #[diesel(sql_type = Nullable<Uuid>)]
        message_id: Option<uuid::Uuid>,
        #[diesel(sql_type = Nullable<Timestamptz>)]
        message_at: Option<DateTime<Utc>>,
    }
    let messages = || parts.iter().map(|p| &p.message);
    let ids: Vec<uuid::Uuid> = parts.iter().map(|p| p.id).collect();
    let claims: Vec<i32> = parts.iter().map(|p| p.claim).collect();
    let counts: Vec<i32> = parts.iter().map(|p| p.parts).collect();
    let leases: Vec<i64> = parts.iter().map(|p| p.lease_ms).collect();
    let conversations: Vec<uuid::Uuid> = messages().map(|m| m.conversation_id.0).collect();
    let ts: Vec<&str> = messages().map(|m| m.slack_ts.as_str()).collect();
    let (kinds, senders): (Vec<&str>, Vec<&str>) =
        messages().map(|m| sender_columns(&m.sender)).unzip();
    let names: Vec<Option<&str>> = messages().map(|m| m.sender_name.as_deref()).collect();
    let emails: Vec<Option<&str>> = messages().map(|m| m.sender_email.as_deref()).collect();
    let texts: Vec<&str> = messages().map(|m| m.text.as_str()).collect();
    let events: Vec<Option<i64>> = messages().map(|m| m.source_event_id.map(|e| e.0)).collect();
    let replies: Vec<Option<&str>> = messages()
        .map(|m| m.in_reply_to.as_ref().map(MessageTs::as_str))
        .collect();
    let message_kinds: Vec<&str> = messages().map(|m| m.kind.as_str()).collect();
    let mut conn = conn(pool).await?;
    let recorded: Vec<Recorded> = diesel::sql_query(PARTS_POSTED)
        .bind::<Array<Uuid>, _>(&ids)
        .bind::<Array<Integer>, _>(&claims)
        .bind::<Array<Integer>, _>(&counts)
        .bind::<Array<BigInt>, _>(&leases)
        .bind::<Array<Uuid>, _>(&conversations)
        .bind::<Array<Text>, _>(&ts)
        .bind::<Array<Text>, _>(&kinds)
        .bind::<Array<Text>, _>(&senders)
        .bind::<Array<Nullable<Text>>, _>(&names)
        .bind::<Array<Nullable<Text>>, _>(&emails)
        .bind::<Array<Text>, _>(&texts)
        .bind::<Array<Nullable<BigInt>>, _>(&events)
        .bind::<Array<Nullable<Text>>, _>(&replies)
        .bind::<Array<Text>, _>(&message_kinds)
        .prepared()
        .load(&mut conn)
        .await?;
    // Each conversation's new number, and the messages it got; these are copied into the
    // kept history only where this process keeps the conversation's.
    let by_intent: HashMap<uuid::Uuid, &NewMessage> =
        parts.iter().map(|p| (p.id, &p.message)).collect();
    let seqs: HashMap<uuid::Uuid, i64> = recorded
        .iter()
        .filter_map(|r| Some((by_intent.get(&r.id)?.conversation_id.0, r.history_seq?)))
        .collect();
    for (conversation, seq) in seqs {
        let messages = recorded.iter().filter_map(|r| {
            let m = by_intent
                .get(&r.id)
                .filter(|m| m.conversation_id.0 == conversation)?;
            Some(StoredMessage {
                id: r.message_id?,
                slack_ts: m.slack_ts.clone(),
                sender: m.sender.clone(),
                text: m.text.clone(),
                created_at: r.message_at?,
                in_reply_to: m.in_reply_to.clone(),
                kind: m.kind,
            })
        });
        history.extend(conversation, seq, messages);
    }
    let ours: HashMap<uuid::Uuid, bool> = recorded.into_iter().map(|r| (r.id, r.ours)).collect();
    Ok(ids
        .iter()
        .map(|id| {
            ours.get(id)
                .copied()
                .ok_or_else(|| StoreError::NotFound(format!("reply intent {id}")))
        })
        .collect())
}
