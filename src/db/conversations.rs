//! [`ConversationStore`] on the `conversations`, `messages`, `channels` and `reply_intents`
//! tables.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::dsl::now;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Double, Integer, Jsonb, Nullable, Text};
use diesel::upsert::excluded;
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl};
use infragpt_actors::conversation::{
    AgentTurnStart, AnswerSlot, ChannelRecord, ClaimToken, ClaimedIntent, Conversation,
    ConversationStore, ConversationStoreError, InsertOutcome, IntentClaim, IntentStep, MessageKind,
    NewIntent, NewMessage, Posting, ProgressLock, Sender, StartIfNew, StartedTurn, StoredMessage,
    TurnStart, TurnState,
};
use infragpt_actors::ids::{
    ChannelId, ConversationId, MessageTs, ReplyIntentId, SlackUserId, TeamId, ThreadKey,
};
use infragpt_actors::inbox::{Claim, EventRowId};
use infragpt_actors::partitions::ReplicaId;
use infragpt_actors::slack_events::BotId;

use super::prepared::PreparedExt;
use super::schema::{channels, conversations, messages, reply_intents};
use super::{Pool, StoreError, conn};
use crate::db::committed::CommittedExt as _;
use infragpt_actors::group_commit::Batcher;
use infragpt_actors::health::ActorHealth;

mod history;
mod parts;

use history::HistoryCache;

/// `messages.sender_kind` of a Slack user's message.
const KIND_USER: &str = "user";
/// `messages.sender_kind` of an agent (bot) message.
const KIND_AGENT: &str = "agent";
/// `messages.sender_kind` of another bot's post that was a turn (`slack.alert_sources`);
/// `sender_id` is its bot id.
const KIND_BOT: &str = "bot";
/// `messages.sender_id` of agent messages.
const AGENT_SENDER_ID: &str = "agent";

diesel::define_sql_function! {
    /// SQL `COALESCE` of two nullable texts.
    fn coalesce(x: diesel::sql_types::Nullable<diesel::sql_types::Text>, y: diesel::sql_types::Nullable<diesel::sql_types::Text>) -> diesel::sql_types::Nullable<diesel::sql_types::Text>;
}

/// `infragpt_turn_history_total` sources.
const HISTORY_KEPT: &str = "kept";
const HISTORY_NEW_THREAD: &str = "new_thread";
const HISTORY_READ: &str = "read";

fn history_turns_counter() -> prometheus::IntCounterVec {
    let counter = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "infragpt_turn_history_total",
            "Turns by where their history came from: kept in memory, a new thread's first \
             message, or read from the database",
        ),
        &["source"],
    )
    .expect("a valid metric");
    for source in [HISTORY_KEPT, HISTORY_NEW_THREAD, HISTORY_READ] {
        counter.with_label_values(&[source]);
    }
    counter
}

/// `reply_intents.turn_ts` of an intent that answers no known turn.
const NO_TURN: &str = "";

/// Conversations, messages, channels and reply intents in PostgreSQL.
#[derive(Clone)]
pub struct PgConversationStore {
    pool: Pool,
    /// `reply_intents.claimed_by` of this store's claims.
    owner: String,
    /// The replica whose partition leases fence [`ConversationStore::start_agent_turn`]
    /// (`None`: a process alone on the database, or a tool).
    fence_replica: Option<String>,
    /// How much lease that step wants left, in seconds.
    fence_margin_secs: f64,
    /// The cluster's lease in seconds: reply claims held by a replica silent for longer
    /// lapse (`None`: only the claim's own lease counts).
    replica_lease_secs: Option<f64>,
    /// The latest messages a turn's history holds besides the thread's first one.
    history_limit: u32,
    /// The writer that records the parts posted at the same moment together (see
    /// [`Self::with_grouped_parts`]); without it each part is a statement of its own.
    parts: Option<Batcher<parts::PartsPosted>>,
    /// The threads' histories this process has read or written ([`Self::with_history_cache`]).
    history: std::sync::Arc<HistoryCache>,
    /// Where turns' histories came from ([`Self::history_counter`]).
    history_turns: prometheus::IntCounterVec,
}

impl std::fmt::Debug for PgConversationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConversationStore")
            .field("pool", &self.pool.status())
            .field("owner", &self.owner)
            .finish()
    }
}

/// The key digest of an intent's text (`reply_intents.digest`): SHA-256, hex.
pub fn intent_digest(text: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()))
}

fn millis(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

fn part_number(part: usize) -> i32 {
    i32::try_from(part).unwrap_or(i32::MAX)
}

/// Records the intent (new key) or claims it again (its claim lapsed), in one statement. A
/// new intent is recorded with its first message marked under way (`posting_part` 0), which
/// saves the mark's own statement; only a new intent's claim has `claims` 1.
/// ([`ClaimedIntent::first_part_marked`]).
///
/// A claim lapses when its lease runs out, or sooner when its holder is a replica that
/// stopped or has been silent for longer than the cluster's lease (`$9`, seconds; NULL
/// outside a cluster): a killed replica's partitions move after that long, and its claims
/// must move with them rather than outlast every retry of the turn that inherits them.
static CLAIM_BY_KEY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "\
INSERT INTO reply_intents AS i
    (conversation_id, turn_ts, digest, kind, posting, parts, claims, claimed_by, claimed_until,
     posting_part)
VALUES ($1, $2, $3, $4, $5, $6, 1, $7, now() + $8 * interval '1 millisecond',
    CASE WHEN $6 > 0 THEN 0 END)
{CLAIM_ON_CONFLICT}"
    )
});

/// How [`CLAIM_BY_KEY`] and [`CLAIM_REPLY`] claim an intent recorded already, and what they
/// return.
const CLAIM_ON_CONFLICT: &str = "\
ON CONFLICT (conversation_id, turn_ts, digest) DO UPDATE
    SET claims = i.claims + 1, claimed_by = EXCLUDED.claimed_by,
        claimed_until = EXCLUDED.claimed_until
    WHERE i.posted_at IS NULL AND (i.claimed_until IS NULL OR i.claimed_until <= now()
        OR ($9::float8 IS NOT NULL AND EXISTS (SELECT 1 FROM cluster_replicas r
            WHERE r.replica_id = i.claimed_by
              AND (r.status = 'stopped' OR r.heartbeat_at < now() - make_interval(secs => $9)))))
RETURNING i.id, i.claims, i.conversation_id, i.turn_ts, i.kind, i.posting, i.parts_done,
    i.posting_part, i.file_id, i.file_done";

/// SendReply's first statement: conversation `$1` and, when the reply names no turn (`$2`
/// NULL) or its current turn, [`CLAIM_BY_KEY`] under the current turn. The claim's columns
/// are NULL when nothing was claimed. With `$10` (progress is shown), a new intent (first
/// claim) also takes its turn's progress indicator over when nobody holds it, as
/// `db::progress`'s `ANSWER` does: `indicator_taken` with the placeholder to replace, or
/// `has_indicator` false when the turn has none (the answer is a new message either way).
static CLAIM_REPLY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "\
WITH conv AS (
    SELECT id, team_id, channel_id, thread_ts, current_turn_ts FROM conversations WHERE id = $1
), claimed AS (
    INSERT INTO reply_intents AS i
        (conversation_id, turn_ts, digest, kind, posting, parts, claims, claimed_by,
         claimed_until, posting_part)
    SELECT conv.id, COALESCE(conv.current_turn_ts, '{NO_TURN}'), $3, $4, $5, $6, 1, $7,
        now() + $8 * interval '1 millisecond', CASE WHEN $6 > 0 THEN 0 END
    FROM conv WHERE $2::text IS NULL OR $2 = conv.current_turn_ts
    {CLAIM_ON_CONFLICT}
), indicator AS (
    SELECT 1 FROM turn_progress p JOIN claimed c
        ON p.conversation_id = c.conversation_id AND p.turn_ts = c.turn_ts
    WHERE $10 AND c.claims = 1
), taken AS (
    UPDATE turn_progress p
    SET answer_intent = c.id, lock_id = NULL, locked_until = NULL, pending_text = NULL
    FROM claimed c
    WHERE $10 AND c.claims = 1 AND p.conversation_id = c.conversation_id
      AND p.turn_ts = c.turn_ts
      AND p.answer_intent IS NULL AND (p.locked_until IS NULL OR p.locked_until <= now())
    RETURNING p.placeholder_ts
)
SELECT conv.id, conv.team_id, conv.channel_id, conv.thread_ts,
    conv.current_turn_ts, claimed.id AS intent_id, claimed.claims, claimed.turn_ts, claimed.kind,
    claimed.posting, claimed.parts_done, claimed.posting_part, claimed.file_id,
    claimed.file_done,
    EXISTS (SELECT 1 FROM indicator) AS has_indicator,
    EXISTS (SELECT 1 FROM taken) AS indicator_taken,
    (SELECT placeholder_ts FROM taken) AS placeholder_ts
FROM conv LEFT JOIN claimed ON true"
    )
});

/// What [`CLAIM_REPLY`] returns.
#[derive(Debug, QueryableByName)]
struct ReplyClaimRow {
    #[diesel(embed)]
    conversation: ConversationRow,
    #[diesel(sql_type = Nullable<diesel::sql_types::Uuid>)]
    intent_id: Option<uuid::Uuid>,
    #[diesel(sql_type = Nullable<Integer>)]
    claims: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    turn_ts: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    kind: Option<String>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    posting: Option<serde_json::Value>,
    #[diesel(sql_type = Nullable<Integer>)]
    parts_done: Option<i32>,
    #[diesel(sql_type = Nullable<Integer>)]
    posting_part: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    file_id: Option<String>,
    #[diesel(sql_type = Nullable<Bool>)]
    file_done: Option<bool>,
    #[diesel(sql_type = Bool)]
    has_indicator: bool,
    #[diesel(sql_type = Bool)]
    indicator_taken: bool,
    #[diesel(sql_type = Nullable<Text>)]
    placeholder_ts: Option<String>,
}

impl ReplyClaimRow {
    /// Where the claimed intent's first message goes, when the statement settled it
    /// ([`ClaimedIntent::answer_slot`]): taken over, or no indicator to take. Asked only for
    /// a first claim (`take_indicator`).
    fn answer_slot(
        &mut self,
        take_indicator: bool,
    ) -> Result<Option<AnswerSlot>, ConversationStoreError> {
        if !take_indicator || self.claims != Some(1) {
            return Ok(None);
        }
        if self.indicator_taken {
            let placeholder = super::progress::placeholder(self.placeholder_ts.take())?;
            return Ok(Some(
                placeholder.map_or(AnswerSlot::Post, AnswerSlot::Replace),
            ));
        }
        Ok((!self.has_indicator).then_some(AnswerSlot::Post))
    }

    /// The claimed intent's row, when the statement claimed one.
    fn claimed(&mut self) -> Option<ClaimRow> {
        Some(ClaimRow {
            id: self.intent_id.take()?,
            claims: self.claims?,
            conversation_id: self.conversation.id,
            turn_ts: self.turn_ts.take()?,
            kind: self.kind.take()?,
            posting: self.posting.take()?,
            parts_done: self.parts_done?,
            posting_part: self.posting_part,
            file_id: self.file_id.take(),
            file_done: self.file_done?,
        })
    }
}

/// Claims a recorded intent whose claim lapsed (as in [`CLAIM_BY_KEY`]; `$4` the cluster's
/// lease in seconds).
const CLAIM_BY_ID: &str = "\
UPDATE reply_intents AS i
    SET claims = claims + 1, claimed_by = $2,
        claimed_until = now() + $3 * interval '1 millisecond'
    WHERE id = $1 AND posted_at IS NULL AND (claimed_until IS NULL OR claimed_until <= now()
        OR ($4::float8 IS NOT NULL AND EXISTS (SELECT 1 FROM cluster_replicas r
            WHERE r.replica_id = i.claimed_by
              AND (r.status = 'stopped' OR r.heartbeat_at < now() - make_interval(secs => $4)))))
RETURNING id, claims, conversation_id, turn_ts, kind, posting, parts_done, posting_part,
    file_id, file_done";

/// Records that the file is in the thread (a fact). True: the claim is still ours.
const FILE_SHARED: &str = "\
UPDATE reply_intents
    SET file_done = true,
        posted_at = CASE WHEN parts_done >= parts THEN COALESCE(posted_at, now())
                         ELSE posted_at END
    WHERE id = $1
RETURNING claims = $2 AS flag";

/// Renews the lease of the current claim (marking part `$4` under way when given).
const RENEW: &str = "\
UPDATE reply_intents
    SET claimed_until = now() + $3 * interval '1 millisecond',
        posting_part = COALESCE($4, posting_part)
    WHERE id = $1 AND claims = $2 AND posted_at IS NULL";

/// Ends the current claim now; forgets the in-flight marks unless something may be in the
/// thread unrecorded.
const ABANDON: &str = "\
UPDATE reply_intents
    SET claimed_until = now(),
        posting_part = CASE WHEN $3 THEN posting_part ELSE NULL END,
        file_id = CASE WHEN $3 OR file_done THEN file_id ELSE NULL END
    WHERE id = $1 AND claims = $2";

/// A turn's first step in one statement: the thread's conversation (created when new), the
/// user message (unless stored already), and the turn's answer so far. An existing
/// conversation's `history_seq` moves by one whether or not the message is stored (a new one
/// starts at 0 with it), so the history kept in memory at the number before is the history
/// now with the stored message added ([`history`]). The subqueries see
/// the database as it was before the statement, so a message stored now is not among
/// them; one stored before is, with the event that stored it.
///
/// When `$13` asks for it and the message is new, the statement also starts the agent turn
/// as [`START_AGENT_TURN_WITH_PROGRESS`] would: the message becomes the current turn while
/// the event's claim (`$14`, `$15`; `$16`, `$17` the replica and margin of the lease fence)
/// holds, and the progress indicator opens for `$18` ms when given.
///
/// The `start` checks look rows up by key only (the conversation by its thread, then the
/// message by conversation and ts; the event by id), so that no plan can scan a table:
/// a prepared statement keeps the generic plan made when its connection first ran it, and
/// one made while the tables were nearly empty (a new database, before autovacuum's first
/// analyze) had scanned `messages` by ts and a partial index of `inbound_events` by its
/// second column at every turn (BENCHMARKS.md, "Plans made on empty tables").
static BEGIN_TURN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "\
WITH start AS (
    SELECT $13::bool
        AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id =
                (SELECT t.id FROM conversations t
                 WHERE t.team_id = $1 AND t.channel_id = $2 AND t.thread_ts = $3)
            AND m.slack_ts = $4)
        AND ($14::bigint IS NULL OR {} IS TRUE)
        AS go
), conv AS (
    INSERT INTO conversations AS c (team_id, channel_id, thread_ts, current_turn_ts)
    SELECT $1, $2, $3, CASE WHEN start.go THEN $4 END FROM start
    ON CONFLICT (team_id, channel_id, thread_ts)
        DO UPDATE SET updated_at = now(), last_message_at = now(),
            current_turn_ts = COALESCE(EXCLUDED.current_turn_ts, c.current_turn_ts),
            history_seq = c.history_seq + 1
    RETURNING c.id, c.team_id, c.channel_id, c.thread_ts, c.current_turn_ts, c.history_seq
), msg AS (
    INSERT INTO messages (conversation_id, slack_ts, sender_kind, sender_id, sender_name,
        sender_email, text, source_event_id, in_reply_to, kind)
    SELECT conv.id, $4, $5, $6, $7, $8, $9, $10, $11, $12 FROM conv
    ON CONFLICT (conversation_id, slack_ts) DO NOTHING
    RETURNING id, created_at
), opened AS (
    INSERT INTO turn_progress (conversation_id, turn_ts, lock_id, locked_until)
    SELECT conv.id, $4, gen_random_uuid(), now() + $18 * interval '1 millisecond'
    FROM conv, start WHERE start.go AND $18::bigint IS NOT NULL
    ON CONFLICT (conversation_id, turn_ts) DO NOTHING
    RETURNING lock_id
)
SELECT conv.id, conv.team_id, conv.channel_id, conv.thread_ts, conv.current_turn_ts,
    EXISTS (SELECT 1 FROM msg) AS inserted,
    (SELECT m.source_event_id FROM messages m
        WHERE m.conversation_id = conv.id AND m.slack_ts = $4) AS stored_by,
    ARRAY(SELECT i.id FROM reply_intents i
        WHERE i.conversation_id = conv.id AND i.turn_ts = $4 AND i.kind = 'message'
          AND i.posted_at IS NULL ORDER BY i.created_at) AS unfinished,
    EXISTS (SELECT 1 FROM messages a
        WHERE a.conversation_id = conv.id AND a.in_reply_to = $4 AND a.sender_kind = 'agent'
          AND a.kind = 'message') AS answered,
    (SELECT go FROM start) AS started,
    (SELECT lock_id FROM opened) AS lock_id,
    (SELECT id FROM msg) AS message_id,
    (SELECT created_at FROM msg) AS message_at,
    NOT EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = conv.id) AS alone,
    conv.history_seq
FROM conv",
        super::inbox::claim_held("$14", "$15", "$16", "$17")
    )
});

/// The history of the thread `($1, $2, $3)` that a turn sends to the agent, oldest first:
/// its first message and its latest `$4` (the turn's own among them), so that a turn of a
/// long thread reads a bounded number of rows through `messages_conversation_idx` instead
/// of the whole thread (`agent.history_limit`). Sent right behind [`BEGIN_TURN`] on the same
/// connection (pipelined), so it names the thread, not the id that statement returns. The
/// thread's filter is written twice: a CTE read by both halves would be materialized, which
/// reads the whole thread again. Each row carries the conversation's `history_seq` as the
/// read saw it: the number the history in memory is kept at.
const THREAD_HISTORY: &str = "\
(SELECT m.id, m.slack_ts, m.sender_kind, m.sender_id, m.text, m.created_at, m.in_reply_to, m.kind,
    c.history_seq
 FROM messages m JOIN conversations c ON c.id = m.conversation_id
 WHERE c.team_id = $1 AND c.channel_id = $2 AND c.thread_ts = $3 AND NOT m.deleted
 ORDER BY m.created_at, m.slack_ts LIMIT 1)
UNION
(SELECT m.id, m.slack_ts, m.sender_kind, m.sender_id, m.text, m.created_at, m.in_reply_to, m.kind,
    c.history_seq
 FROM messages m JOIN conversations c ON c.id = m.conversation_id
 WHERE c.team_id = $1 AND c.channel_id = $2 AND c.thread_ts = $3 AND NOT m.deleted
 ORDER BY m.created_at DESC, m.slack_ts DESC LIMIT $4)
ORDER BY created_at, slack_ts";

/// The answer to turn `$2` of conversation `$1` so far.
const TURN_STATE: &str = "\
SELECT ARRAY(SELECT i.id FROM reply_intents i
        WHERE i.conversation_id = $1 AND i.turn_ts = $2 AND i.kind = 'message'
          AND i.posted_at IS NULL ORDER BY i.created_at) AS unfinished,
    EXISTS (SELECT 1 FROM messages a
        WHERE a.conversation_id = $1 AND a.in_reply_to = $2 AND a.sender_kind = 'agent'
          AND a.kind = 'message') AS answered";

/// Makes `$2` the current turn of conversation `$1`, only while the claim `($3, $4)` holds
/// (when given): the event is still processing under that attempt, and its partition is
/// leased to the replica `$5` with `$6` seconds left.
static START_AGENT_TURN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "UPDATE conversations SET current_turn_ts = $2, updated_at = now() \
         WHERE id = $1 AND ($3::bigint IS NULL OR {} IS TRUE)",
        super::inbox::claim_held("$3", "$4", "$5", "$6")
    )
});

/// [`START_AGENT_TURN`] that also opens the turn's progress indicator (`turn_progress`),
/// locked for `$7` ms, in the same statement; returns whether the turn started and the new
/// indicator's lock (NULL when the turn already had one, or did not start).
static START_AGENT_TURN_WITH_PROGRESS: std::sync::LazyLock<String> = std::sync::LazyLock::new(
    || {
        format!(
            "WITH started AS ({} RETURNING id), \
             opened AS (INSERT INTO turn_progress (conversation_id, turn_ts, lock_id, locked_until) \
               SELECT id, $2, gen_random_uuid(), now() + $7 * interval '1 millisecond' FROM started \
               ON CONFLICT (conversation_id, turn_ts) DO NOTHING RETURNING lock_id) \
             SELECT (SELECT count(*) FROM started) AS started, (SELECT lock_id FROM opened) AS lock_id",
            START_AGENT_TURN.as_str()
        )
    },
);

/// What [`START_AGENT_TURN_WITH_PROGRESS`] returns.
#[derive(Debug, QueryableByName)]
struct StartedRow {
    #[diesel(sql_type = BigInt)]
    started: i64,
    #[diesel(sql_type = Nullable<diesel::sql_types::Uuid>)]
    lock_id: Option<uuid::Uuid>,
}

/// One claimed `reply_intents` row.
#[derive(Debug, QueryableByName)]
#[diesel(table_name = reply_intents, check_for_backend(diesel::pg::Pg))]
struct ClaimRow {
    id: uuid::Uuid,
    claims: i32,
    conversation_id: uuid::Uuid,
    turn_ts: String,
    kind: String,
    posting: serde_json::Value,
    parts_done: i32,
    posting_part: Option<i32>,
    file_id: Option<String>,
    file_done: bool,
}

impl TryFrom<ClaimRow> for ClaimedIntent {
    type Error = ConversationStoreError;
    fn try_from(row: ClaimRow) -> Result<Self, Self::Error> {
        let corrupt = |e: crate::db::error::BoxError| {
            ConversationStoreError::from(StoreError::corrupt(format!("reply intent {}", row.id), e))
        };
        let in_reply_to = match row.turn_ts.as_str() {
            NO_TURN => None,
            ts => Some(MessageTs::parse(ts).map_err(|e| corrupt(e.into()))?),
        };
        let kind = MessageKind::parse(&row.kind)
            .ok_or_else(|| corrupt(format!("unknown kind {:?}", row.kind).into()))?;
        let posting: Posting =
            serde_json::from_value(row.posting.clone()).map_err(|e| corrupt(e.into()))?;
        let count = |n: i32| usize::try_from(n).map_err(|e| corrupt(e.into()));
        // The first claim's own mark ([`CLAIM_BY_KEY`]), not an earlier claim's post.
        let first_part_marked = row.claims == 1 && row.posting_part == Some(0);
        let uncertain_part = if first_part_marked {
            None
        } else {
            row.posting_part.map(count).transpose()?
        };
        Ok(ClaimedIntent {
            token: ClaimToken {
                intent: ReplyIntentId(row.id),
                claim: row.claims,
            },
            conversation_id: ConversationId(row.conversation_id),
            in_reply_to,
            kind,
            posting,
            parts_done: count(row.parts_done)?,
            uncertain_part,
            file_id: row.file_id,
            file_done: row.file_done,
            first_part_marked,
            answer_slot: None,
        })
    }
}

/// What [`BEGIN_TURN`] returns.
#[derive(Debug, QueryableByName)]
struct BeginTurnRow {
    #[diesel(embed)]
    conversation: ConversationRow,
    #[diesel(sql_type = Bool)]
    inserted: bool,
    #[diesel(sql_type = Nullable<BigInt>)]
    stored_by: Option<i64>,
    #[diesel(embed)]
    state: TurnStateRow,
    #[diesel(sql_type = Bool)]
    started: bool,
    #[diesel(sql_type = Nullable<diesel::sql_types::Uuid>)]
    lock_id: Option<uuid::Uuid>,
    /// The message's row, when this statement stored it.
    #[diesel(sql_type = Nullable<diesel::sql_types::Uuid>)]
    message_id: Option<uuid::Uuid>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Timestamptz>)]
    message_at: Option<DateTime<Utc>>,
    /// The thread had no message before this statement.
    #[diesel(sql_type = Bool)]
    alone: bool,
    #[diesel(sql_type = BigInt)]
    history_seq: i64,
}

/// A row of [`THREAD_HISTORY`].
#[derive(Debug, QueryableByName)]
struct HistoryRow {
    #[diesel(embed)]
    message: MessageRow,
    #[diesel(sql_type = BigInt)]
    history_seq: i64,
}

/// What [`TURN_STATE`] returns (and the end of [`BEGIN_TURN`]'s row).
#[derive(Debug, QueryableByName)]
struct TurnStateRow {
    #[diesel(sql_type = diesel::sql_types::Array<diesel::sql_types::Uuid>)]
    unfinished: Vec<uuid::Uuid>,
    #[diesel(sql_type = Bool)]
    answered: bool,
}

impl From<TurnStateRow> for TurnState {
    fn from(row: TurnStateRow) -> Self {
        TurnState {
            unfinished: row.unfinished.into_iter().map(ReplyIntentId).collect(),
            answered: row.answered,
        }
    }
}

/// Who holds an intent that could not be claimed.
#[derive(Debug, Queryable)]
struct HolderRow {
    posted_at: Option<DateTime<Utc>>,
    claimed_by: Option<String>,
    claimed_until: Option<DateTime<Utc>>,
}

impl From<HolderRow> for IntentClaim {
    fn from(row: HolderRow) -> Self {
        if row.posted_at.is_some() {
            return IntentClaim::Posted;
        }
        IntentClaim::Busy {
            claimed_by: row.claimed_by.unwrap_or_default(),
            // Free again by now (a race with its release): the caller tries once more.
            claimed_until: row.claimed_until.unwrap_or_else(Utc::now),
        }
    }
}

#[derive(Debug, QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    flag: bool,
}

/// `messages.sender_kind` and `sender_id` of `sender`.
fn sender_columns(sender: &Sender) -> (&'static str, &str) {
    match sender {
        Sender::User(u) => (KIND_USER, u.as_str()),
        Sender::Bot(b) => (KIND_BOT, b.as_str()),
        Sender::Agent => (KIND_AGENT, AGENT_SENDER_ID),
    }
}

/// Binds a message's columns after a statement's first binds, as [`BEGIN_TURN`]'s insert
/// takes them (the ts first, the kind last).
macro_rules! bind_message {
    ($query:expr, $msg:expr) => {{
        let msg: &NewMessage = $msg;
        let (kind, sender_id) = sender_columns(&msg.sender);
        $query
            .bind::<Text, _>(msg.slack_ts.as_str())
            .bind::<Text, _>(kind)
            .bind::<Text, _>(sender_id)
            .bind::<Nullable<Text>, _>(msg.sender_name.as_deref())
            .bind::<Nullable<Text>, _>(msg.sender_email.as_deref())
            .bind::<Text, _>(&msg.text)
            .bind::<Nullable<BigInt>, _>(msg.source_event_id.map(|e| e.0))
            .bind::<Nullable<Text>, _>(msg.in_reply_to.as_ref().map(MessageTs::as_str))
            .bind::<Text, _>(msg.kind.as_str())
    }};
}

/// What a new intent stores besides its key: the digest of its text, its planned posting and
/// its number of messages.
struct IntentColumns {
    digest: String,
    posting: serde_json::Value,
    parts: i32,
}

impl IntentColumns {
    fn of(intent: &NewIntent) -> Result<Self, ConversationStoreError> {
        Ok(Self {
            digest: intent_digest(&intent.text),
            posting: serde_json::to_value(&intent.posting)
                .map_err(|e| StoreError::corrupt("reply intent posting", e))?,
            parts: i32::try_from(intent.posting.message_count())
                .map_err(|e| StoreError::corrupt("reply intent parts", e))?,
        })
    }
}

/// Binds `$3`–`$9` of [`CLAIM_BY_KEY`] and [`CLAIM_REPLY`]: the intent's columns, the claim's
/// owner and lease, and the cluster's lease.
macro_rules! bind_intent {
    ($query:expr, $columns:expr, $intent:expr, $store:expr, $lease:expr) => {{
        let columns: &IntentColumns = $columns;
        $query
            .bind::<Text, _>(&columns.digest)
            .bind::<Text, _>($intent.kind.as_str())
            .bind::<Jsonb, _>(&columns.posting)
            .bind::<Integer, _>(columns.parts)
            .bind::<Text, _>(&$store.owner)
            .bind::<BigInt, _>(millis($lease))
            .bind::<Nullable<Double>, _>($store.replica_lease_secs)
    }};
}

/// Stores a message unless its ts is stored in the conversation already (on `conn`, so it
/// can share a transaction).
async fn insert_on(
    conn: &mut AsyncPgConnection,
    msg: &NewMessage,
) -> Result<InsertOutcome, diesel::result::Error> {
    let (kind, sender_id) = sender_columns(&msg.sender);
    let inserted: Option<uuid::Uuid> = diesel::insert_into(messages::table)
        .values((
            messages::conversation_id.eq(msg.conversation_id.0),
            messages::slack_ts.eq(msg.slack_ts.as_str()),
            messages::sender_kind.eq(kind),
            messages::sender_id.eq(sender_id),
            messages::sender_name.eq(msg.sender_name.as_deref()),
            messages::sender_email.eq(msg.sender_email.as_deref()),
            messages::text.eq(&msg.text),
            messages::source_event_id.eq(msg.source_event_id.map(|e| e.0)),
            messages::in_reply_to.eq(msg.in_reply_to.as_ref().map(MessageTs::as_str)),
            messages::kind.eq(msg.kind.as_str()),
        ))
        .on_conflict((messages::conversation_id, messages::slack_ts))
        .do_nothing()
        .returning(messages::id)
        .get_committed(conn)
        .await
        .optional()?;
    if inserted.is_some() {
        diesel::update(conversations::table.find(msg.conversation_id.0))
            .set((
                conversations::last_message_at.eq(now),
                conversations::updated_at.eq(now),
                conversations::history_seq.eq(conversations::history_seq + 1),
            ))
            .execute(conn)
            .await?;
        return Ok(InsertOutcome::Inserted);
    }
    let source: Option<i64> = messages::table
        .filter(messages::conversation_id.eq(msg.conversation_id.0))
        .filter(messages::slack_ts.eq(msg.slack_ts.as_str()))
        .select(messages::source_event_id)
        .first(conn)
        .await?;
    Ok(InsertOutcome::Exists {
        source_event_id: source.map(EventRowId),
    })
}

/// Why a turn did not start: fenced, or (an error) no such conversation.
async fn fenced_or_missing(
    conn: &mut AsyncPgConnection,
    id: ConversationId,
) -> Result<AgentTurnStart, ConversationStoreError> {
    let exists: i64 = conversations::table
        .find(id.0)
        .count()
        .get_committed(conn)
        .await
        .map_err(unavailable)?;
    if exists == 0 {
        return Err(StoreError::NotFound(format!("conversation {id}")).into());
    }
    Ok(AgentTurnStart::Fenced)
}

/// The port's error, with the store's error as its source.
impl From<StoreError> for ConversationStoreError {
    fn from(e: StoreError) -> Self {
        ConversationStoreError::Unavailable(Box::new(e))
    }
}

fn unavailable(e: diesel::result::Error) -> ConversationStoreError {
    StoreError::from(e).into()
}

/// One `conversations` row (the columns the port needs).
#[derive(Debug, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = conversations, check_for_backend(diesel::pg::Pg))]
struct ConversationRow {
    id: uuid::Uuid,
    team_id: String,
    channel_id: String,
    thread_ts: String,
    current_turn_ts: Option<String>,
}

impl TryFrom<ConversationRow> for Conversation {
    type Error = ConversationStoreError;
    fn try_from(row: ConversationRow) -> Result<Self, Self::Error> {
        let corrupt = |e: infragpt_actors::ids::IdError| {
            ConversationStoreError::from(StoreError::corrupt(format!("conversation {}", row.id), e))
        };
        Ok(Conversation {
            id: ConversationId(row.id),
            key: ThreadKey::new(
                TeamId::parse(row.team_id.as_str()).map_err(corrupt)?,
                ChannelId::parse(row.channel_id.as_str()).map_err(corrupt)?,
                MessageTs::parse(row.thread_ts.as_str()).map_err(corrupt)?,
            ),
            current_turn_ts: row
                .current_turn_ts
                .as_deref()
                .map(MessageTs::parse)
                .transpose()
                .map_err(corrupt)?,
        })
    }
}

/// One `messages` row as the history needs it.
#[derive(Debug, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = messages, check_for_backend(diesel::pg::Pg))]
struct MessageRow {
    id: uuid::Uuid,
    slack_ts: String,
    sender_kind: String,
    sender_id: String,
    text: String,
    created_at: DateTime<Utc>,
    in_reply_to: Option<String>,
    kind: String,
}

fn rows_to_history(rows: Vec<MessageRow>) -> Result<Vec<StoredMessage>, ConversationStoreError> {
    rows.into_iter().map(StoredMessage::try_from).collect()
}

impl TryFrom<MessageRow> for StoredMessage {
    type Error = ConversationStoreError;
    fn try_from(row: MessageRow) -> Result<Self, Self::Error> {
        let corrupt = |e: crate::db::error::BoxError| {
            ConversationStoreError::from(StoreError::corrupt(format!("message {}", row.id), e))
        };
        let sender = match row.sender_kind.as_str() {
            KIND_AGENT => Sender::Agent,
            KIND_USER => Sender::User(
                SlackUserId::parse(row.sender_id.as_str()).map_err(|e| corrupt(e.into()))?,
            ),
            KIND_BOT => Sender::Bot(BotId::new(row.sender_id.as_str())),
            other => return Err(corrupt(format!("unknown sender kind {other:?}").into())),
        };
        let kind = MessageKind::parse(&row.kind)
            .ok_or_else(|| corrupt(format!("unknown message kind {:?}", row.kind).into()))?;
        Ok(StoredMessage {
            id: row.id,
            slack_ts: MessageTs::parse(row.slack_ts.as_str()).map_err(|e| corrupt(e.into()))?,
            sender,
            text: row.text,
            created_at: row.created_at,
            in_reply_to: row
                .in_reply_to
                .map(MessageTs::parse)
                .transpose()
                .map_err(|e| corrupt(e.into()))?,
            kind,
        })
    }
}

impl PgConversationStore {
    /// A store on `pool`, claiming reply intents under a name of its own (see
    /// [`Self::with_owner`]).
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            // Unique per store, like a replica: two test apps on one database are two owners;
            // claims are told apart by their count, the name is a label.
            owner: ReplicaId::for_this_process().0,
            fence_replica: None,
            fence_margin_secs: 0.0,
            replica_lease_secs: None,
            history_limit: infragpt_actors::conversation::DEFAULT_HISTORY_LIMIT,
            parts: None,
            history: std::sync::Arc::default(),
            history_turns: history_turns_counter(),
        }
    }

    /// [`IntentStep::Posted`]: through the grouped writer when there is one.
    async fn part_posted(
        &self,
        token: ClaimToken,
        part: usize,
        message: NewMessage,
        lease: Duration,
    ) -> Result<bool, ConversationStoreError> {
        let part = parts::PartPosted {
            id: token.intent.0,
            claim: token.claim,
            parts: part_number(part).saturating_add(1),
            lease_ms: millis(lease),
            message,
        };
        let ours = match &self.parts {
            Some(writer) => writer.submit(part).await,
            None => parts::record(&self.pool, &self.history, std::slice::from_ref(&part))
                .await
                .pop()
                .unwrap_or_else(|| Err(StoreError::Batch("no outcome for the part".into()))),
        };
        Ok(ours?)
    }

    /// Records the parts that SendReplies post at the same moment in one statement, through
    /// a writer on the caller's arbiter whose state shows as `health`, on `pool`. Needs a
    /// running actix system.
    ///
    /// `pool` should be a [`crate::db::build_writer_pool`]: the statement's generic plan,
    /// made while `conversations` was small, had scanned the whole table at every batch to
    /// touch the parts' conversations (BENCHMARKS.md, "HOT updates of conversations and
    /// reply intents").
    pub fn with_grouped_parts(mut self, pool: Pool, health: ActorHealth) -> Self {
        self.parts = Some(parts::PartsPosted::start(
            pool,
            self.history.clone(),
            health,
        ));
        self
    }

    /// Reads a turn's history as the thread's first message and its latest `limit`
    /// ([`THREAD_HISTORY`]; at least 1).
    pub fn with_history_limit(mut self, limit: u32) -> Self {
        self.history_limit = limit.max(1);
        self.history.set_limit(self.history_limit);
        self
    }

    /// Keeps the histories of the threads this store reads or writes in memory, `bytes` in
    /// all (0: none), so that a turn of a known thread reads no message it has read before
    /// ([`history`]; `agent.history_cache_mib`).
    pub fn with_history_cache(self, bytes: usize) -> Self {
        self.history.configure(self.history_limit, bytes);
        self
    }

    /// Checks, when a turn starts, that the inbound event's partition is leased to
    /// `replica` with at least `margin` left (as [`super::PgInbox::fenced`] does for claims),
    /// and treats reply claims of replicas that stopped or have been silent for longer than
    /// `lease` (the cluster's) as lapsed.
    pub fn with_lease_fence(
        mut self,
        replica: &ReplicaId,
        margin: Duration,
        lease: Duration,
    ) -> Self {
        self.fence_replica = Some(replica.0.clone());
        self.fence_margin_secs = margin.as_secs_f64();
        self.replica_lease_secs = Some(lease.as_secs_f64());
        self
    }

    /// Claims reply intents as `owner` (`reply_intents.claimed_by`: a pod or host name,
    /// for people reading the table).
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// `infragpt_turn_history_total{source}`: turns whose history was `kept` in memory, was
    /// the `new_thread`'s first message, or was `read` from the database. Register it where
    /// the service's metrics are.
    pub fn history_counter(&self) -> prometheus::IntCounterVec {
        self.history_turns.clone()
    }

    /// The name this store claims reply intents under.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// [`ConversationStore::begin_turn`], starting the agent turn too when `start` asks
    /// ([`BEGIN_TURN`]), with the thread's history read in the same round trip.
    async fn begin(
        &self,
        key: &ThreadKey,
        message: NewMessage,
        start: Option<StartIfNew>,
    ) -> Result<TurnStart, ConversationStoreError> {
        let claim = start.and_then(|s| s.claim);
        let pooled = conn(&self.pool).await?;
        let conn: &AsyncPgConnection = &pooled;
        let begin = diesel::sql_query(BEGIN_TURN.as_str())
            .bind::<Text, _>(key.team.as_str())
            .bind::<Text, _>(key.channel.as_str())
            .bind::<Text, _>(key.thread_ts.as_str());
        let begin = bind_message!(begin, &message)
            .bind::<Bool, _>(start.is_some())
            .bind::<Nullable<BigInt>, _>(claim.map(|c| c.id.0))
            .bind::<Integer, _>(claim.map_or(0, |c| c.attempt))
            .bind::<Nullable<Text>, _>(self.fence_replica.as_deref())
            .bind::<Double, _>(self.fence_margin_secs)
            .bind::<Nullable<BigInt>, _>(start.and_then(|s| s.progress_lease).map(millis))
            .prepared()
            .get_committed::<BeginTurnRow>(&mut &*conn);
        let history = || {
            diesel::sql_query(THREAD_HISTORY)
                .bind::<Text, _>(key.team.as_str())
                .bind::<Text, _>(key.channel.as_str())
                .bind::<Text, _>(key.thread_ts.as_str())
                .bind::<BigInt, _>(i64::from(self.history_limit))
                .prepared()
                .load::<HistoryRow>(&mut &*conn)
        };
        let first = key.thread_ts == message.slack_ts;
        // A thread's first message nearly always starts its conversation, and a thread whose
        // history is kept needs only what the statement stored: neither reads the thread
        // together with the statement (but after it, when it must).
        let (row, read) = if first || self.history.knows(key) {
            (begin.await.map_err(unavailable)?, None)
        } else {
            // Sent behind the first statement without waiting for it: one round trip for both.
            let (row, rows) = futures::try_join!(begin, history()).map_err(unavailable)?;
            (row, Some(rows))
        };
        let conversation_id = row.conversation.id;
        let stored = match (row.message_id, row.message_at) {
            (Some(id), Some(created_at)) => vec![StoredMessage {
                id,
                slack_ts: message.slack_ts,
                sender: message.sender,
                text: message.text,
                created_at,
                in_reply_to: message.in_reply_to,
                kind: message.kind,
            }],
            _ => Vec::new(),
        };
        let (history, source) = match read {
            Some(rows) => (self.kept(key, conversation_id, rows)?, HISTORY_READ),
            // Into an empty thread, the history is the message stored. It is kept only when
            // the statement created the conversation (the number is then 0): an existing one
            // may have got another writer's message while the statement waited for its row,
            // which the statement's view of "empty" predates.
            None if row.alone && !stored.is_empty() => {
                if row.history_seq == 0 {
                    self.history.fill(key, conversation_id, 0, &stored);
                } else {
                    self.history.forget(conversation_id);
                }
                (stored, HISTORY_NEW_THREAD)
            }
            None => match self
                .history
                .advance(conversation_id, row.history_seq, stored)
            {
                Some(history) => (history, HISTORY_KEPT),
                None => {
                    let rows = history().await.map_err(unavailable)?;
                    (self.kept(key, conversation_id, rows)?, HISTORY_READ)
                }
            },
        };
        self.history_turns.with_label_values(&[source]).inc();
        drop(pooled);
        let inserted = if row.inserted {
            InsertOutcome::Inserted
        } else {
            InsertOutcome::Exists {
                source_event_id: row.stored_by.map(EventRowId),
            }
        };
        let conversation = Conversation::try_from(row.conversation)?;
        Ok(TurnStart {
            conversation,
            inserted,
            state: row.state.into(),
            started: row.started.then_some(StartedTurn {
                progress: row.lock_id.map(ProgressLock),
            }),
            history,
        })
    }

    /// The history [`THREAD_HISTORY`] read, kept in memory at the number the read saw.
    fn kept(
        &self,
        key: &ThreadKey,
        conversation: uuid::Uuid,
        rows: Vec<HistoryRow>,
    ) -> Result<Vec<StoredMessage>, ConversationStoreError> {
        let seq = <[HistoryRow]>::first(&rows).map(|r| r.history_seq);
        let history = rows_to_history(rows.into_iter().map(|r| r.message).collect())?;
        match seq {
            Some(seq) => self.history.fill(key, conversation, seq, &history),
            None => self.history.forget(conversation),
        }
        Ok(history)
    }

    async fn holder(
        conn: &mut AsyncPgConnection,
        filter: reply_intents::BoxedQuery<'_, diesel::pg::Pg>,
    ) -> Result<IntentClaim, ConversationStoreError> {
        let row: HolderRow = filter
            .select((
                reply_intents::posted_at,
                reply_intents::claimed_by,
                reply_intents::claimed_until,
            ))
            .first(conn)
            .await
            .map_err(unavailable)?;
        Ok(row.into())
    }

    /// [`Self::holder`] of the intent `(conversation, turn, digest)`.
    async fn holder_by_key(
        conn: &mut AsyncPgConnection,
        conversation: ConversationId,
        turn: &str,
        digest: &str,
    ) -> Result<IntentClaim, ConversationStoreError> {
        let filter = reply_intents::table
            .filter(reply_intents::conversation_id.eq(conversation.0))
            .filter(reply_intents::turn_ts.eq(turn.to_owned()))
            .filter(reply_intents::digest.eq(digest.to_owned()))
            .into_boxed();
        Self::holder(conn, filter).await
    }

    /// Ids of the conversations of one channel (for edits and deletes, which Slack addresses
    /// by channel and ts only).
    fn channel_conversations(
        team: &TeamId,
        channel: &ChannelId,
    ) -> conversations::BoxedQuery<'static, diesel::pg::Pg, diesel::sql_types::Uuid> {
        conversations::table
            .select(conversations::id)
            .filter(conversations::team_id.eq(team.as_str().to_owned()))
            .filter(conversations::channel_id.eq(channel.as_str().to_owned()))
            .into_boxed()
    }
}

#[async_trait]
impl ConversationStore for PgConversationStore {
    async fn upsert_conversation(
        &self,
        key: &ThreadKey,
    ) -> Result<Conversation, ConversationStoreError> {
        let mut conn = conn(&self.pool).await?;
        let row: ConversationRow = diesel::insert_into(conversations::table)
            .values((
                conversations::team_id.eq(key.team.as_str()),
                conversations::channel_id.eq(key.channel.as_str()),
                conversations::thread_ts.eq(key.thread_ts.as_str()),
            ))
            .on_conflict((
                conversations::team_id,
                conversations::channel_id,
                conversations::thread_ts,
            ))
            .do_update()
            .set(conversations::updated_at.eq(now))
            .returning(ConversationRow::as_returning())
            .get_committed(&mut conn)
            .await
            .map_err(unavailable)?;
        row.try_into()
    }

    async fn find_by_key(
        &self,
        key: &ThreadKey,
    ) -> Result<Option<Conversation>, ConversationStoreError> {
        let mut conn = conn(&self.pool).await?;
        let row: Option<ConversationRow> = conversations::table
            .filter(conversations::team_id.eq(key.team.as_str()))
            .filter(conversations::channel_id.eq(key.channel.as_str()))
            .filter(conversations::thread_ts.eq(key.thread_ts.as_str()))
            .select(ConversationRow::as_select())
            .first(&mut conn)
            .await
            .optional()
            .map_err(unavailable)?;
        row.map(Conversation::try_from).transpose()
    }

    async fn find(
        &self,
        id: ConversationId,
    ) -> Result<Option<Conversation>, ConversationStoreError> {
        let mut conn = conn(&self.pool).await?;
        let row: Option<ConversationRow> = conversations::table
            .find(id.0)
            .select(ConversationRow::as_select())
            .first(&mut conn)
            .await
            .optional()
            .map_err(unavailable)?;
        row.map(Conversation::try_from).transpose()
    }

    async fn insert_message(
        &self,
        msg: NewMessage,
    ) -> Result<InsertOutcome, ConversationStoreError> {
        let mut conn = conn(&self.pool).await?;
        // One transaction: no turn may see the message before its conversation's
        // `history_seq` has moved.
        conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
            insert_on(conn, &msg).await
        })
        .await
        .map_err(unavailable)
    }

    async fn history(
        &self,
        id: ConversationId,
    ) -> Result<Vec<StoredMessage>, ConversationStoreError> {
        let mut conn = conn(&self.pool).await?;
        let rows: Vec<MessageRow> = messages::table
            .filter(messages::conversation_id.eq(id.0))
            .filter(messages::deleted.eq(false))
            .order((messages::created_at.asc(), messages::slack_ts.asc()))
            .select(MessageRow::as_select())
            .load(&mut conn)
            .await
            .map_err(unavailable)?;
        rows_to_history(rows)
    }

    async fn set_current_turn(
        &self,
        id: ConversationId,
        ts: &MessageTs,
    ) -> Result<(), ConversationStoreError> {
        let mut conn = conn(&self.pool).await?;
        let changed = diesel::update(conversations::table.find(id.0))
            .set((
                conversations::current_turn_ts.eq(ts.as_str()),
                conversations::updated_at.eq(now),
            ))
            .execute(&mut conn)
            .await
            .map_err(unavailable)?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!("conversation {id}")).into());
        }
        Ok(())
    }

    async fn begin_turn(
        &self,
        key: &ThreadKey,
        message: NewMessage,
    ) -> Result<TurnStart, ConversationStoreError> {
        self.begin(key, message, None).await
    }

    async fn begin_turn_starting(
        &self,
        key: &ThreadKey,
        message: NewMessage,
        start: StartIfNew,
    ) -> Result<TurnStart, ConversationStoreError> {
        self.begin(key, message, Some(start)).await
    }
    async fn turn_state(
        &self,
        id: ConversationId,
        ts: &MessageTs,
    ) -> Result<TurnState, ConversationStoreError> {
        let mut conn = conn(&self.pool).await?;
        let row: TurnStateRow = diesel::sql_query(TURN_STATE)
            .bind::<diesel::sql_types::Uuid, _>(id.0)
            .bind::<Text, _>(ts.as_str())
            .prepared()
            .get_committed(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(row.into())
    }

    async fn start_agent_turn(
        &self,
        id: ConversationId,
        ts: &MessageTs,
        claim: Option<Claim>,
    ) -> Result<AgentTurnStart, ConversationStoreError> {
        let mut conn = conn(&self.pool).await?;
        let changed = diesel::sql_query(START_AGENT_TURN.as_str())
            .bind::<diesel::sql_types::Uuid, _>(id.0)
            .bind::<Text, _>(ts.as_str())
            .bind::<Nullable<BigInt>, _>(claim.map(|c| c.id.0))
            .bind::<Integer, _>(claim.map_or(0, |c| c.attempt))
            .bind::<Nullable<Text>, _>(self.fence_replica.as_deref())
            .bind::<Double, _>(self.fence_margin_secs)
            .prepared()
            .execute(&mut conn)
            .await
            .map_err(unavailable)?;
        if changed == 1 {
            return Ok(AgentTurnStart::Started);
        }
        fenced_or_missing(&mut conn, id).await
    }

    fn checks_claims(&self) -> bool {
        true
    }

    async fn start_agent_turn_with_progress(
        &self,
        id: ConversationId,
        ts: &MessageTs,
        claim: Option<Claim>,
        lease: Duration,
    ) -> Result<(AgentTurnStart, Option<ProgressLock>), ConversationStoreError> {
        let mut conn = conn(&self.pool).await?;
        let row: StartedRow = diesel::sql_query(START_AGENT_TURN_WITH_PROGRESS.as_str())
            .bind::<diesel::sql_types::Uuid, _>(id.0)
            .bind::<Text, _>(ts.as_str())
            .bind::<Nullable<BigInt>, _>(claim.map(|c| c.id.0))
            .bind::<Integer, _>(claim.map_or(0, |c| c.attempt))
            .bind::<Nullable<Text>, _>(self.fence_replica.as_deref())
            .bind::<Double, _>(self.fence_margin_secs)
            .bind::<BigInt, _>(millis(lease))
            .prepared()
            .get_committed(&mut conn)
            .await
            .map_err(unavailable)?;
        if row.started == 1 {
            return Ok((AgentTurnStart::Started, row.lock_id.map(ProgressLock)));
        }
        Ok((fenced_or_missing(&mut conn, id).await?, None))
    }

    fn opens_progress(&self) -> bool {
        true
    }

    async fn agent_reply_exists(
        &self,
        id: ConversationId,
        in_reply_to: &MessageTs,
        text: Option<&str>,
    ) -> Result<bool, ConversationStoreError> {
        let mut conn = conn(&self.pool).await?;
        let mut query = messages::table
            .filter(messages::conversation_id.eq(id.0))
            .filter(messages::in_reply_to.eq(in_reply_to.as_str()))
            .filter(messages::sender_kind.eq(KIND_AGENT))
            // A notice ("could not answer") is not an answer: a retry must still call the agent.
            .filter(messages::kind.eq(MessageKind::Message.as_str()))
            .into_boxed();
        if let Some(text) = text {
            query = query.filter(messages::text.eq(text.to_owned()));
        }
        let found: i64 = query
            .count()
            .get_committed(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(found > 0)
    }

    async fn edit_message(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        ts: &MessageTs,
        text: &str,
    ) -> Result<bool, ConversationStoreError> {
        let mut conn = conn(&self.pool).await?;
        let changed = diesel::update(
            messages::table
                .filter(messages::slack_ts.eq(ts.as_str()))
                .filter(
                    messages::conversation_id.eq_any(Self::channel_conversations(team, channel)),
                ),
        )
        .set((messages::text.eq(text), messages::edited_at.eq(now)))
        .execute(&mut conn)
        .await
        .map_err(unavailable)?;
        Ok(changed > 0)
    }

    async fn mark_deleted(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        ts: &MessageTs,
    ) -> Result<bool, ConversationStoreError> {
        let mut conn = conn(&self.pool).await?;
        let changed = diesel::update(
            messages::table
                .filter(messages::slack_ts.eq(ts.as_str()))
                .filter(
                    messages::conversation_id.eq_any(Self::channel_conversations(team, channel)),
                ),
        )
        .set(messages::deleted.eq(true))
        .execute(&mut conn)
        .await
        .map_err(unavailable)?;
        Ok(changed > 0)
    }

    async fn channel(
        &self,
        team: &TeamId,
        channel: &ChannelId,
    ) -> Result<Option<ChannelRecord>, ConversationStoreError> {
        let mut conn = conn(&self.pool).await?;
        let row: Option<(Option<String>, bool)> = channels::table
            .find((team.as_str(), channel.as_str()))
            .select((channels::name, channels::monitored))
            .first(&mut conn)
            .await
            .optional()
            .map_err(unavailable)?;
        Ok(row.map(|(name, monitored)| ChannelRecord { name, monitored }))
    }

    async fn upsert_channel(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        name: Option<&str>,
        monitored: bool,
    ) -> Result<(), ConversationStoreError> {
        let mut conn = conn(&self.pool).await?;
        diesel::insert_into(channels::table)
            .values((
                channels::team_id.eq(team.as_str()),
                channels::channel_id.eq(channel.as_str()),
                channels::name.eq(name),
                channels::monitored.eq(monitored),
            ))
            .on_conflict((channels::team_id, channels::channel_id))
            .do_update()
            .set((
                // A lookup that found no name keeps the one we have.
                channels::name.eq(coalesce(excluded(channels::name), channels::name)),
                // Monitoring only ever turns on here, and not in a channel where someone ran
                // `/infragpt stop` (only `/infragpt watch` turns it back on there).
                channels::monitored.eq(channels::monitored
                    .or(excluded(channels::monitored).and(channels::watch_stopped.eq(false)))),
                channels::updated_at.eq(now),
            ))
            .execute(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn claim_intent(
        &self,
        intent: &NewIntent,
        lease: Duration,
    ) -> Result<IntentClaim, ConversationStoreError> {
        let turn = intent
            .in_reply_to
            .as_ref()
            .map_or(NO_TURN, MessageTs::as_str)
            .to_owned();
        let columns = IntentColumns::of(intent)?;
        let mut conn = conn(&self.pool).await?;
        let query = diesel::sql_query(CLAIM_BY_KEY.as_str())
            .bind::<diesel::sql_types::Uuid, _>(intent.conversation_id.0)
            .bind::<Text, _>(&turn);
        let claimed: Option<ClaimRow> = bind_intent!(query, &columns, intent, self, lease)
            .prepared()
            .get_committed(&mut conn)
            .await
            .optional()
            .map_err(unavailable)?;
        match claimed {
            Some(row) => Ok(IntentClaim::Claimed(row.try_into()?)),
            None => {
                Self::holder_by_key(&mut conn, intent.conversation_id, &turn, &columns.digest).await
            }
        }
    }

    async fn claim_reply(
        &self,
        intent: &NewIntent,
        lease: Duration,
        take_indicator: bool,
    ) -> Result<Option<(Conversation, Option<IntentClaim>)>, ConversationStoreError> {
        let columns = IntentColumns::of(intent)?;
        let mut conn = conn(&self.pool).await?;
        let query = diesel::sql_query(CLAIM_REPLY.as_str())
            .bind::<diesel::sql_types::Uuid, _>(intent.conversation_id.0)
            .bind::<Nullable<Text>, _>(intent.in_reply_to.as_ref().map(MessageTs::as_str));
        let row: Option<ReplyClaimRow> = bind_intent!(query, &columns, intent, self, lease)
            .bind::<Bool, _>(take_indicator)
            .prepared()
            .get_committed(&mut conn)
            .await
            .optional()
            .map_err(unavailable)?;
        let Some(mut row) = row else {
            return Ok(None);
        };
        let answer_slot = row.answer_slot(take_indicator)?;
        let claimed = row.claimed();
        let conversation = Conversation::try_from(row.conversation)?;
        let current = conversation.current_turn_ts.as_ref();
        let claim = match (claimed, &intent.in_reply_to) {
            (Some(claimed), _) => {
                let mut claimed = ClaimedIntent::try_from(claimed)?;
                claimed.answer_slot = answer_slot;
                Some(IntentClaim::Claimed(claimed))
            }
            // Another turn's reply: the caller decides.
            (None, Some(turn)) if current != Some(turn) => None,
            // Under the current turn and not claimed: posted, or someone else's claim.
            (None, _) => {
                let turn = current.map_or(NO_TURN, MessageTs::as_str);
                Some(Self::holder_by_key(&mut conn, conversation.id, turn, &columns.digest).await?)
            }
        };
        Ok(Some((conversation, claim)))
    }

    async fn claim_intent_by_id(
        &self,
        id: ReplyIntentId,
        lease: Duration,
    ) -> Result<IntentClaim, ConversationStoreError> {
        let mut conn = conn(&self.pool).await?;
        let claimed: Option<ClaimRow> = diesel::sql_query(CLAIM_BY_ID)
            .bind::<diesel::sql_types::Uuid, _>(id.0)
            .bind::<Text, _>(&self.owner)
            .bind::<BigInt, _>(millis(lease))
            .bind::<Nullable<Double>, _>(self.replica_lease_secs)
            .prepared()
            .get_committed(&mut conn)
            .await
            .optional()
            .map_err(unavailable)?;
        match claimed {
            Some(row) => Ok(IntentClaim::Claimed(row.try_into()?)),
            None => {
                let filter = reply_intents::table.find(id.0).into_boxed();
                Self::holder(&mut conn, filter).await
            }
        }
    }

    async fn unfinished_intents(
        &self,
        conversation: ConversationId,
        in_reply_to: &MessageTs,
        kind: MessageKind,
    ) -> Result<Vec<ReplyIntentId>, ConversationStoreError> {
        let mut conn = conn(&self.pool).await?;
        let ids: Vec<uuid::Uuid> = reply_intents::table
            .filter(reply_intents::conversation_id.eq(conversation.0))
            .filter(reply_intents::turn_ts.eq(in_reply_to.as_str()))
            .filter(reply_intents::kind.eq(kind.as_str()))
            .filter(reply_intents::posted_at.is_null())
            .order(reply_intents::created_at.asc())
            .select(reply_intents::id)
            .load(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(ids.into_iter().map(ReplyIntentId).collect())
    }

    async fn advance_intent(
        &self,
        token: ClaimToken,
        step: IntentStep,
        lease: Duration,
    ) -> Result<bool, ConversationStoreError> {
        let id = token.intent.0;
        let renew = async |conn: &mut AsyncPgConnection, part: Option<i32>| {
            diesel::sql_query(RENEW)
                .bind::<diesel::sql_types::Uuid, _>(id)
                .bind::<Integer, _>(token.claim)
                .bind::<BigInt, _>(millis(lease))
                .bind::<Nullable<Integer>, _>(part)
                .prepared()
                .execute(conn)
                .await
                .map(|n| n == 1)
        };
        let ours = match step {
            // Grouped with the parts posted beside it: takes no connection here.
            IntentStep::Posted { part, message } => {
                return self.part_posted(token, part, message, lease).await;
            }
            IntentStep::Renew => renew(&mut *conn(&self.pool).await?, None).await,
            IntentStep::Posting { part } => {
                renew(&mut *conn(&self.pool).await?, Some(part_number(part))).await
            }
            IntentStep::FileUploaded { file_id } => diesel::update(
                reply_intents::table
                    .find(id)
                    .filter(reply_intents::claims.eq(token.claim))
                    .filter(reply_intents::posted_at.is_null()),
            )
            .set(reply_intents::file_id.eq(file_id))
            .execute(&mut conn(&self.pool).await?)
            .await
            .map(|n| n == 1),
            IntentStep::FileShared => diesel::sql_query(FILE_SHARED)
                .bind::<diesel::sql_types::Uuid, _>(id)
                .bind::<Integer, _>(token.claim)
                .prepared()
                .get_committed::<Flag>(&mut conn(&self.pool).await?)
                .await
                .map(|f| f.flag),
            IntentStep::Abandon { uncertain } => diesel::sql_query(ABANDON)
                .bind::<diesel::sql_types::Uuid, _>(id)
                .bind::<Integer, _>(token.claim)
                .bind::<Bool, _>(uncertain)
                .prepared()
                .execute(&mut conn(&self.pool).await?)
                .await
                .map(|n| n == 1),
        };
        ours.map_err(unavailable)
    }
}
