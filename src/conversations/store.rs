//! The conversations of one organization in PostgreSQL: pages of them, one with its messages,
//! and forgetting one (the conversation, its messages and reply intents deleted, the payloads
//! of its Slack events blanked, the audit entry written, all in one transaction).
//!
//! A conversation belongs to the organization its Slack team belongs to
//! (`slack_workspaces.organization_id`); conversations of a workspace no organization
//! installed (the single-workspace bot token) belong to none and are not reachable here.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Jsonb, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use infragpt_actors::audit::AuditEntry;
use infragpt_actors::ids::{ChannelId, MessageTs, TeamId, ThreadKey};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use crate::db::audit::insert_entry;
use crate::db::committed::CommittedExt as _;
use crate::db::schema::{messages, reply_intents};
use crate::db::{Pool, StoreError, conn};

/// The audit action of a forgotten conversation.
pub const DELETED_ACTION: &str = "conversation.deleted";

/// What a forgotten event's payload becomes. The row stays, so a redelivery of the event
/// (deduplicated by source id) is still recognised and not handled again.
pub fn tombstone() -> serde_json::Value {
    json!({ "forgotten": true })
}

/// `last_error` of a dead letter closed because its conversation was forgotten (the admin
/// API's discard writes `discarded`).
const CLOSED_DEAD_LETTER: &str = "discarded: its conversation was deleted";

/// The columns of a [`ConversationSummary`] over `c`, a set of conversation rows.
const SUMMARY_COLUMNS: &str = "SELECT c.id, c.team_id, c.channel_id, ch.name AS channel_name, \
     c.thread_ts, c.created_at, c.last_message_at, \
     (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS message_count";

/// The channel's name, when known.
const CHANNEL_NAME: &str =
    "LEFT JOIN channels ch ON ch.team_id = c.team_id AND ch.channel_id = c.channel_id";

/// One conversation (`$2`) of the organization (`$1`).
const ONE: &str = "FROM conversations c JOIN slack_workspaces w ON w.team_id = c.team_id";

/// A page of the organization's (`$1`) conversations, `$2` rows, newest first, older than the
/// cursor when `{cursor}` is given. Each workspace's newest come from an ordered scan of
/// `conversations_team_created_idx` stopped at the page size, then the workspaces' are merged:
/// a page reads about a page per workspace, however many conversations there are; the
/// messages are counted for the page's rows only.
const PAGE: &str = "FROM (SELECT c.* FROM slack_workspaces w \
     CROSS JOIN LATERAL (SELECT * FROM conversations c WHERE c.team_id = w.team_id {cursor} \
         ORDER BY c.created_at DESC, c.id DESC LIMIT $2) c \
     WHERE w.organization_id = $1 \
     ORDER BY c.created_at DESC, c.id DESC LIMIT $2) c";

/// The order of the cursor.
const NEWEST_FIRST: &str = "ORDER BY c.created_at DESC, c.id DESC";

/// The page query, after the cursor (`$3`, `$4`) or from the newest.
fn page_query(after_cursor: bool) -> String {
    let cursor = if after_cursor {
        "AND (c.created_at, c.id) < ($3, $4)"
    } else {
        ""
    };
    let from = PAGE.replace("{cursor}", cursor);
    format!("{SUMMARY_COLUMNS} {from} {CHANNEL_NAME} {NEWEST_FIRST}")
}

/// The conversation, if the organization's, locked until the transaction ends: a worker
/// storing a message in it (a foreign key check) or a reply claiming an intent waits, and
/// after the deletion finds it gone.
const LOCK: &str = "SELECT c.team_id, c.channel_id, c.thread_ts FROM conversations c \
     JOIN slack_workspaces w ON w.team_id = c.team_id \
     WHERE c.id = $1 AND w.organization_id = $2 \
     FOR UPDATE OF c";

/// Slack events of these routing keys still to be handled (the literal source matches the
/// partial index `inbound_events_slack_key_idx`).
const UNFINISHED: &str = "SELECT count(*) AS n FROM inbound_events \
     WHERE source = 'slack' AND routing_key = ANY($1) AND status IN ('pending', 'processing')";

/// Replies being posted right now (an unposted intent with a live claim).
const POSTING: &str = "SELECT count(*) AS n FROM reply_intents \
     WHERE conversation_id = $1 AND posted_at IS NULL AND claimed_until > now()";

/// Blanks the finished Slack events of these routing keys; a dead letter among them is
/// closed the way the admin API discards one (`ignored`), since retrying it would replay a
/// tombstone. Returns, per row, whether it was a dead letter.
const FORGET_EVENTS: &str = "WITH due AS (\
     SELECT id, status FROM inbound_events \
     WHERE source = 'slack' AND routing_key = ANY($1) \
     AND status IN ('done', 'ignored', 'failed') AND payload <> $2 \
     FOR UPDATE) \
     UPDATE inbound_events e SET payload = $2, raw_body = NULL, \
     status = CASE WHEN due.status = 'failed' THEN 'ignored' ELSE due.status END, \
     last_error = CASE WHEN due.status = 'failed' THEN $3 ELSE NULL END, \
     processed_at = CASE WHEN due.status = 'failed' THEN now() ELSE e.processed_at END, \
     updated_at = now() \
     FROM due WHERE e.id = due.id \
     RETURNING due.status = 'failed' AS flag";

/// A thread that `/infragpt <question>` started: its question record goes, and the
/// command's event (routed to the channel, `TEAM/CHANNEL/-`, not to the thread) is blanked
/// like the thread's own events. Returns, per blanked event, whether it was a dead letter.
const FORGET_SLASH: &str = "WITH q AS (\
     DELETE FROM slash_questions \
     WHERE team_id = $1 AND channel_id = $2 AND posted_ts = $3 \
     RETURNING trigger_id), \
     due AS (\
     SELECT e.id, e.status FROM inbound_events e JOIN q ON e.source_id = 'slash:' || q.trigger_id \
     WHERE e.source = 'slack' AND e.status IN ('done', 'ignored', 'failed') AND e.payload <> $4 \
     FOR UPDATE OF e) \
     UPDATE inbound_events e SET payload = $4, raw_body = NULL, \
     status = CASE WHEN due.status = 'failed' THEN 'ignored' ELSE due.status END, \
     last_error = CASE WHEN due.status = 'failed' THEN $5 ELSE NULL END, \
     processed_at = CASE WHEN due.status = 'failed' THEN now() ELSE e.processed_at END, \
     updated_at = now() \
     FROM due WHERE e.id = due.id \
     RETURNING due.status = 'failed' AS flag";

/// One conversation as the API answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, QueryableByName)]
pub struct ConversationSummary {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub id: Uuid,
    /// Slack team.
    #[diesel(sql_type = Text)]
    pub team_id: String,
    /// Slack channel.
    #[diesel(sql_type = Text)]
    pub channel_id: String,
    /// The channel's name, when known.
    #[diesel(sql_type = Nullable<Text>)]
    pub channel_name: Option<String>,
    /// The ts of the thread's first message.
    #[diesel(sql_type = Text)]
    pub thread_ts: String,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub last_message_at: DateTime<Utc>,
    /// Stored messages (those deleted in Slack included).
    #[diesel(sql_type = BigInt)]
    pub message_count: i64,
}

/// One stored message as the API answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageView {
    pub id: Uuid,
    /// Slack's ts of the message.
    pub slack_ts: String,
    /// `message` (a user's text or the agent's answer) or `notice` (posted by the service).
    pub kind: String,
    /// `user`, `agent`, or `bot` (an alert source's post, `slack.alert_sources`).
    pub sender_kind: String,
    /// The Slack user id, `agent`, or the bot id (`B…`) of a `bot`.
    pub sender_id: String,
    pub sender_name: Option<String>,
    /// Null when the message was deleted in Slack: its author took it back, so it is not
    /// shown (it stays stored until the conversation is deleted).
    pub text: Option<String>,
    /// Deleted in Slack.
    pub deleted: bool,
    pub edited_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// The ts of the user message an agent message answers.
    pub in_reply_to: Option<String>,
}

#[derive(Debug, Queryable)]
struct MessageRow {
    id: Uuid,
    slack_ts: String,
    kind: String,
    sender_kind: String,
    sender_id: String,
    sender_name: Option<String>,
    text: String,
    deleted: bool,
    edited_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    in_reply_to: Option<String>,
}

impl From<MessageRow> for MessageView {
    fn from(row: MessageRow) -> Self {
        Self {
            id: row.id,
            slack_ts: row.slack_ts,
            kind: row.kind,
            sender_kind: row.sender_kind,
            sender_id: row.sender_id,
            sender_name: row.sender_name,
            text: (!row.deleted).then_some(row.text),
            deleted: row.deleted,
            edited_at: row.edited_at,
            created_at: row.created_at,
            in_reply_to: row.in_reply_to,
        }
    }
}

/// A conversation and its messages, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConversationDetail {
    pub conversation: ConversationSummary,
    pub messages: Vec<MessageView>,
}

/// Where the next page starts: opaque to clients, the creation time (microseconds) and id of
/// the last conversation of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationCursor {
    created_at: DateTime<Utc>,
    id: Uuid,
}

/// A cursor that is not one we issued.
#[derive(Debug, thiserror::Error)]
#[error("not a cursor this API issued")]
pub struct InvalidCursor;

impl ConversationCursor {
    fn after(c: &ConversationSummary) -> Self {
        Self {
            created_at: c.created_at,
            id: c.id,
        }
    }

    /// The cursor as clients see it: `{microseconds}.{uuid}`.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_at.timestamp_micros(), self.id)
    }

    /// Reads a cursor from [`ConversationCursor::encode`], and nothing else.
    pub fn decode(raw: &str) -> Result<Self, InvalidCursor> {
        let (micros, id) = raw.split_once('.').ok_or(InvalidCursor)?;
        let micros: i64 = micros.parse().map_err(|_| InvalidCursor)?;
        let cursor = Self {
            created_at: DateTime::from_timestamp_micros(micros).ok_or(InvalidCursor)?,
            id: Uuid::parse_str(id).map_err(|_| InvalidCursor)?,
        };
        // `+1`, other UUID spellings and the like parse too, but are not what we issue.
        if cursor.encode() == raw {
            Ok(cursor)
        } else {
            Err(InvalidCursor)
        }
    }
}

/// A page of conversations, newest first, and the cursor of the next page when there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConversationPage {
    pub conversations: Vec<ConversationSummary>,
    /// `?before=` for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Why a conversation cannot be forgotten right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFlight {
    /// Slack events of the thread are still to be handled (a turn is running or queued).
    Events(i64),
    /// A reply is being posted into the thread.
    Reply,
}

/// What was forgotten (the answer of `DELETE /conversations/{id}` and its audit entry's
/// details).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Forgotten {
    pub id: Uuid,
    pub team_id: String,
    pub channel_id: String,
    pub thread_ts: String,
    /// Messages deleted.
    pub messages: u64,
    /// Reply intents deleted.
    pub reply_intents: u64,
    /// Slack events whose payload was blanked.
    pub inbound_events_forgotten: u64,
    /// Of those, dead letters closed.
    pub dead_letters_closed: u64,
}

/// How [`OrgConversations::forget`] went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forget {
    /// Not a conversation of this organization (or none at all).
    NotFound,
    /// Refused: a turn is in flight; nothing changed.
    InFlight(InFlight),
    /// Deleted, and audited in the same transaction.
    Forgotten(Forgotten),
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    flag: bool,
}

#[derive(QueryableByName)]
struct KeyRow {
    #[diesel(sql_type = Text)]
    team_id: String,
    #[diesel(sql_type = Text)]
    channel_id: String,
    #[diesel(sql_type = Text)]
    thread_ts: String,
}

/// The routing keys of a conversation's Slack events: its thread's, and each message's own
/// ts in its channel (Slack's edits and deletes of a reply carry the reply's ts and no thread,
/// so they are routed by it; see `conversation::routing_key`).
fn routing_keys(id: Uuid, row: &KeyRow, message_ts: &[String]) -> Result<Vec<String>, StoreError> {
    let corrupt = |e| StoreError::corrupt(format!("conversation {id}"), e);
    let team = TeamId::parse(row.team_id.as_str()).map_err(corrupt)?;
    let channel = ChannelId::parse(row.channel_id.as_str()).map_err(corrupt)?;
    let mut keys = Vec::with_capacity(message_ts.len() + 1);
    for ts in std::iter::once(&row.thread_ts).chain(message_ts) {
        let ts = MessageTs::parse(ts.as_str()).map_err(corrupt)?;
        let key = ThreadKey::new(team.clone(), channel.clone(), ts).to_routing_key();
        if !keys.contains(&key.0) {
            keys.push(key.0);
        }
    }
    Ok(keys)
}

/// The organization-scoped conversations API's store.
#[derive(Clone)]
pub struct OrgConversations {
    pool: Pool,
}

impl std::fmt::Debug for OrgConversations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgConversations")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl OrgConversations {
    /// The store on `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// One page of the organization's conversations, newest first, older than `before`.
    /// `limit` is at least 1.
    pub async fn page(
        &self,
        organization_id: Uuid,
        before: Option<ConversationCursor>,
        limit: i64,
    ) -> Result<ConversationPage, StoreError> {
        let limit = limit.max(1);
        let mut conn = conn(&self.pool).await?;
        // One row more than the page tells whether there is a next page.
        let mut conversations: Vec<ConversationSummary> = match before {
            None => {
                diesel::sql_query(page_query(false))
                    .bind::<diesel::sql_types::Uuid, _>(organization_id)
                    .bind::<BigInt, _>(limit + 1)
                    .load(&mut conn)
                    .await?
            }
            Some(cursor) => {
                diesel::sql_query(page_query(true))
                    .bind::<diesel::sql_types::Uuid, _>(organization_id)
                    .bind::<BigInt, _>(limit + 1)
                    .bind::<Timestamptz, _>(cursor.created_at)
                    .bind::<diesel::sql_types::Uuid, _>(cursor.id)
                    .load(&mut conn)
                    .await?
            }
        };
        let next_cursor = if conversations.len() as i64 > limit {
            conversations.truncate(limit as usize);
            conversations
                .last()
                .map(|c| ConversationCursor::after(c).encode())
        } else {
            None
        };
        tracing::debug!(
            organization_id = %organization_id,
            conversations = conversations.len(),
            more = next_cursor.is_some(),
            "conversation page read"
        );
        Ok(ConversationPage {
            conversations,
            next_cursor,
        })
    }

    /// One conversation of the organization with its messages, oldest first; `None` when it
    /// is another organization's or does not exist.
    pub async fn get(
        &self,
        organization_id: Uuid,
        id: Uuid,
    ) -> Result<Option<ConversationDetail>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let conversation: Option<ConversationSummary> = diesel::sql_query(format!(
            "{SUMMARY_COLUMNS} {ONE} {CHANNEL_NAME} WHERE w.organization_id = $1 AND c.id = $2"
        ))
        .bind::<diesel::sql_types::Uuid, _>(organization_id)
        .bind::<diesel::sql_types::Uuid, _>(id)
        .get_committed(&mut conn)
        .await
        .optional()?;
        let Some(conversation) = conversation else {
            return Ok(None);
        };
        let rows: Vec<MessageRow> = messages::table
            .filter(messages::conversation_id.eq(id))
            .order((messages::created_at.asc(), messages::slack_ts.asc()))
            .select((
                messages::id,
                messages::slack_ts,
                messages::kind,
                messages::sender_kind,
                messages::sender_id,
                messages::sender_name,
                messages::text,
                messages::deleted,
                messages::edited_at,
                messages::created_at,
                messages::in_reply_to,
            ))
            .load(&mut conn)
            .await?;
        Ok(Some(ConversationDetail {
            conversation,
            messages: rows.into_iter().map(MessageView::from).collect(),
        }))
    }

    /// Forgets the organization's conversation `id` for `actor` (`user/{clerk id}`): deletes
    /// it with its messages and reply intents, blanks the payloads of its finished Slack
    /// events (closing its dead letters), and writes the `conversation.deleted` audit entry,
    /// in one transaction. Refused while a turn is in flight, changing nothing.
    pub async fn forget(
        &self,
        organization_id: Uuid,
        id: Uuid,
        actor: String,
    ) -> Result<Forget, StoreError> {
        let mut conn = conn(&self.pool).await?;
        conn.transaction::<_, StoreError, _>(async move |conn| {
            forget_in(conn, organization_id, id, actor).await
        })
        .await
    }
}

async fn forget_in(
    conn: &mut AsyncPgConnection,
    organization_id: Uuid,
    id: Uuid,
    actor: String,
) -> Result<Forget, StoreError> {
    let key: Option<KeyRow> = diesel::sql_query(LOCK)
        .bind::<diesel::sql_types::Uuid, _>(id)
        .bind::<diesel::sql_types::Uuid, _>(organization_id)
        .get_committed(conn)
        .await
        .optional()?;
    let Some(key) = key else {
        return Ok(Forget::NotFound);
    };
    let message_ts: Vec<String> = messages::table
        .filter(messages::conversation_id.eq(id))
        .select(messages::slack_ts)
        .load(conn)
        .await?;
    let keys = routing_keys(id, &key, &message_ts)?;

    let unfinished = diesel::sql_query(UNFINISHED)
        .bind::<Array<Text>, _>(&keys)
        .get_committed::<Count>(conn)
        .await?
        .n;
    if unfinished > 0 {
        return Ok(Forget::InFlight(InFlight::Events(unfinished)));
    }
    let posting = diesel::sql_query(POSTING)
        .bind::<diesel::sql_types::Uuid, _>(id)
        .get_committed::<Count>(conn)
        .await?
        .n;
    if posting > 0 {
        return Ok(Forget::InFlight(InFlight::Reply));
    }

    let reply_intents =
        diesel::delete(reply_intents::table.filter(reply_intents::conversation_id.eq(id)))
            .execute(conn)
            .await?;
    let messages = diesel::delete(messages::table.filter(messages::conversation_id.eq(id)))
        .execute(conn)
        .await?;
    diesel::delete(crate::db::schema::conversations::table.find(id))
        .execute(conn)
        .await?;
    let events: Vec<Flag> = diesel::sql_query(FORGET_EVENTS)
        .bind::<Array<Text>, _>(&keys)
        .bind::<Jsonb, _>(tombstone())
        .bind::<Text, _>(CLOSED_DEAD_LETTER)
        .load(conn)
        .await?;
    let slash: Vec<Flag> = diesel::sql_query(FORGET_SLASH)
        .bind::<Text, _>(&key.team_id)
        .bind::<Text, _>(&key.channel_id)
        .bind::<Text, _>(&key.thread_ts)
        .bind::<Jsonb, _>(tombstone())
        .bind::<Text, _>(CLOSED_DEAD_LETTER)
        .load(conn)
        .await?;
    let events: Vec<Flag> = events.into_iter().chain(slash).collect();

    let forgotten = Forgotten {
        id,
        team_id: key.team_id,
        channel_id: key.channel_id,
        thread_ts: key.thread_ts,
        messages: messages as u64,
        reply_intents: reply_intents as u64,
        inbound_events_forgotten: events.len() as u64,
        dead_letters_closed: events.iter().filter(|e| e.flag).count() as u64,
    };
    let mut details = serde_json::to_value(&forgotten)
        .map_err(|e| StoreError::corrupt("conversation.deleted details", e))?;
    if let Some(details) = details.as_object_mut() {
        // The target says which conversation.
        details.remove("id");
    }
    insert_entry(
        conn,
        &AuditEntry {
            organization_id: Some(organization_id),
            actor,
            action: DELETED_ACTION.to_owned(),
            target: Some(id.to_string()),
            details,
        },
    )
    .await?;
    Ok(Forget::Forgotten(forgotten))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_what_we_never_issue() {
        let cursor = ConversationCursor {
            created_at: DateTime::from_timestamp_micros(1_733_000_000_123_456).expect("time"),
            id: Uuid::parse_str("6f9619ff-8b86-d011-b42d-00cf4fc964ff").expect("uuid"),
        };
        let raw = cursor.encode();
        assert_eq!(raw, "1733000000123456.6f9619ff-8b86-d011-b42d-00cf4fc964ff");
        assert_eq!(ConversationCursor::decode(&raw).expect("ours"), cursor);
        for bad in [
            "",
            ".",
            "1733000000123456",
            "1733000000123456.",
            "+1733000000123456.6f9619ff-8b86-d011-b42d-00cf4fc964ff",
            "1733000000123456.6f9619ff8b86d011b42d00cf4fc964ff",
            "1733000000123456.6F9619FF-8B86-D011-B42D-00CF4FC964FF",
            "x.6f9619ff-8b86-d011-b42d-00cf4fc964ff",
            "99999999999999999999.6f9619ff-8b86-d011-b42d-00cf4fc964ff",
        ] {
            assert!(ConversationCursor::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn routing_keys_are_the_thread_and_each_message_ts_once() {
        let key = KeyRow {
            team_id: "T1".into(),
            channel_id: "C1".into(),
            thread_ts: "1700000000.000100".into(),
        };
        let keys = routing_keys(
            Uuid::nil(),
            &key,
            &["1700000000.000100".into(), "1700000001.000200".into()],
        )
        .expect("keys");
        assert_eq!(keys, ["T1/C1/1700000000.000100", "T1/C1/1700000001.000200"]);
        let broken = KeyRow {
            thread_ts: "not-a-ts".into(),
            ..key
        };
        assert!(routing_keys(Uuid::nil(), &broken, &[]).is_err());
    }

    #[test]
    fn messages_deleted_in_slack_show_no_text() {
        let row = |deleted| MessageRow {
            id: Uuid::nil(),
            slack_ts: "1700000000.000100".into(),
            kind: "message".into(),
            sender_kind: "user".into(),
            sender_id: "U1".into(),
            sender_name: None,
            text: "secret".into(),
            deleted,
            edited_at: None,
            created_at: DateTime::UNIX_EPOCH,
            in_reply_to: None,
        };
        assert_eq!(
            MessageView::from(row(false)).text.as_deref(),
            Some("secret")
        );
        assert_eq!(MessageView::from(row(true)).text, None);
    }
}
