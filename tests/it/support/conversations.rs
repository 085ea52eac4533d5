//! Conversation fixtures written the way the service writes them: workspaces linked to an
//! organization, conversations and messages through the conversation store's port, inbox
//! rows and reply intents as the worker and the poster leave them.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel_async::RunQueryDsl;
use infragpt::db::Pool;
use infragpt::db::conversations::{PgConversationStore, intent_digest};
use infragpt::db::schema::{conversations, inbound_events, messages, reply_intents};
use infragpt_actors::conversation::{ConversationStore, MessageKind, NewMessage, Sender};
use infragpt_actors::ids::{ChannelId, MessageTs, SlackUserId, TeamId, ThreadKey};
use serde_json::{Value, json};
use uuid::Uuid;

/// Who wrote a seeded message: the agent, or a Slack user id.
pub const AGENT: &str = "agent";

/// Records Slack team `team` as installed by `organization` (none: the single-workspace bot
/// token's, which belongs to no organization).
pub async fn link_workspace(pool: &Pool, team: &str, organization: Option<Uuid>) {
    let mut conn = pool.get().await.expect("conn");
    diesel::sql_query(
        "INSERT INTO slack_workspaces (team_id, team_name, organization_id) VALUES ($1, $1, $2) \
         ON CONFLICT (team_id) DO UPDATE SET organization_id = EXCLUDED.organization_id",
    )
    .bind::<Text, _>(team)
    .bind::<Nullable<diesel::sql_types::Uuid>, _>(organization)
    .execute(&mut conn)
    .await
    .expect("workspace");
}

/// The routing key of a thread (or of a message's own ts).
pub fn key(team: &str, channel: &str, ts: &str) -> String {
    ThreadKey::new(
        TeamId::parse(team).expect("team"),
        ChannelId::parse(channel).expect("channel"),
        MessageTs::parse(ts).expect("ts"),
    )
    .to_routing_key()
    .0
}

/// A conversation of thread `thread_ts` with `messages` (ts, sender, text) stored in order
/// through the store's port; the agent's messages answer the thread's first message.
pub async fn seed_conversation(
    pool: &Pool,
    team: &str,
    channel: &str,
    thread_ts: &str,
    messages: &[(&str, &str, &str)],
) -> Uuid {
    let store = PgConversationStore::new(pool.clone());
    let thread = MessageTs::parse(thread_ts).expect("ts");
    let conversation = store
        .upsert_conversation(&ThreadKey::new(
            TeamId::parse(team).expect("team"),
            ChannelId::parse(channel).expect("channel"),
            thread.clone(),
        ))
        .await
        .expect("conversation");
    for (ts, sender, text) in messages {
        let slack_ts = MessageTs::parse(*ts).expect("ts");
        let message = if *sender == AGENT {
            NewMessage::from_agent(
                conversation.id,
                slack_ts,
                (*text).to_owned(),
                Some(thread.clone()),
                MessageKind::Message,
            )
        } else {
            NewMessage {
                conversation_id: conversation.id,
                slack_ts,
                sender: Sender::User(SlackUserId::parse(*sender).expect("user")),
                sender_name: Some(format!("name of {sender}")),
                sender_email: Some(format!("{sender}@example.test")),
                text: (*text).to_owned(),
                source_event_id: None,
                in_reply_to: None,
                kind: MessageKind::Message,
            }
        };
        store.insert_message(message).await.expect("message");
    }
    conversation.id.0
}

/// Sets a conversation's creation and last-message times.
pub async fn set_times(
    pool: &Pool,
    id: Uuid,
    created_at: DateTime<Utc>,
    last_message_at: DateTime<Utc>,
) {
    let mut conn = pool.get().await.expect("conn");
    diesel::update(conversations::table.find(id))
        .set((
            conversations::created_at.eq(created_at),
            conversations::last_message_at.eq(last_message_at),
        ))
        .execute(&mut conn)
        .await
        .expect("times");
}

/// A Slack inbox row of `routing_key` in `status` (finished ones processed now); its id.
pub async fn insert_event(
    pool: &Pool,
    source_id: &str,
    routing_key: &str,
    status: &str,
    raw_body: Option<&str>,
) -> i64 {
    insert_event_from(pool, "slack", source_id, routing_key, status, raw_body).await
}

/// [`insert_event`] from any source.
pub async fn insert_event_from(
    pool: &Pool,
    source: &str,
    source_id: &str,
    routing_key: &str,
    status: &str,
    raw_body: Option<&str>,
) -> i64 {
    let mut conn = pool.get().await.expect("conn");
    let finished = matches!(status, "done" | "ignored" | "failed");
    diesel::insert_into(inbound_events::table)
        .values((
            inbound_events::source.eq(source),
            inbound_events::source_id.eq(source_id),
            inbound_events::routing_key.eq(routing_key),
            inbound_events::partition.eq(0i16),
            inbound_events::kind.eq("message"),
            inbound_events::payload.eq(event_payload(source_id)),
            inbound_events::raw_body.eq(raw_body),
            inbound_events::status.eq(status),
            inbound_events::last_error.eq((status == "failed").then_some("agent failed: boom")),
            inbound_events::processed_at.eq(finished.then(Utc::now)),
        ))
        .returning(inbound_events::id)
        .get_result(&mut conn)
        .await
        .expect("event")
}

/// What [`insert_event`] stores as the payload: a Slack event with text.
pub fn event_payload(source_id: &str) -> Value {
    json!({"event_id": source_id, "event": {"type": "message", "text": format!("secret of {source_id}")}})
}

/// One inbox row: (status, payload, raw_body, last_error, source_id).
pub async fn event_row(
    pool: &Pool,
    id: i64,
) -> (String, Value, Option<String>, Option<String>, String) {
    let mut conn = pool.get().await.expect("conn");
    inbound_events::table
        .find(id)
        .select((
            inbound_events::status,
            inbound_events::payload,
            inbound_events::raw_body,
            inbound_events::last_error,
            inbound_events::source_id,
        ))
        .first(&mut conn)
        .await
        .expect("event row")
}

/// Sets an inbox row's status.
pub async fn set_event_status(pool: &Pool, id: i64, status: &str) {
    let mut conn = pool.get().await.expect("conn");
    diesel::update(inbound_events::table.find(id))
        .set(inbound_events::status.eq(status))
        .execute(&mut conn)
        .await
        .expect("status");
}

/// How a seeded reply intent stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Posted and recorded.
    Posted,
    /// Not posted, claimed by a poster for this many more seconds (negative: lapsed).
    Claimed(i64),
}

/// A reply intent of `conversation` for turn `turn_ts` and `text`.
pub async fn insert_intent(
    pool: &Pool,
    conversation: Uuid,
    turn_ts: &str,
    text: &str,
    how: Intent,
) {
    let mut conn = pool.get().await.expect("conn");
    let (posted, claimed_secs) = match how {
        Intent::Posted => (true, 0),
        Intent::Claimed(secs) => (false, secs),
    };
    diesel::sql_query(
        "INSERT INTO reply_intents (conversation_id, turn_ts, digest, kind, posting, parts, \
         parts_done, claims, claimed_by, claimed_until, posted_at) \
         VALUES ($1, $2, $3, 'message', $4, 1, $5, 1, 'test', \
         now() + $6 * interval '1 second', CASE WHEN $7 THEN now() END)",
    )
    .bind::<diesel::sql_types::Uuid, _>(conversation)
    .bind::<Text, _>(turn_ts)
    .bind::<Text, _>(intent_digest(text))
    .bind::<diesel::sql_types::Jsonb, _>(json!({"kind": "messages", "parts": [text]}))
    .bind::<diesel::sql_types::Integer, _>(i32::from(posted))
    .bind::<BigInt, _>(claimed_secs)
    .bind::<diesel::sql_types::Bool, _>(posted)
    .execute(&mut conn)
    .await
    .expect("intent");
}

/// (conversations, messages, reply intents) stored for conversation `id`.
pub async fn rows_of(pool: &Pool, id: Uuid) -> (i64, i64, i64) {
    let mut conn = pool.get().await.expect("conn");
    let c = conversations::table
        .filter(conversations::id.eq(id))
        .count()
        .get_result(&mut conn)
        .await
        .expect("count");
    let m = messages::table
        .filter(messages::conversation_id.eq(id))
        .count()
        .get_result(&mut conn)
        .await
        .expect("count");
    let r = reply_intents::table
        .filter(reply_intents::conversation_id.eq(id))
        .count()
        .get_result(&mut conn)
        .await
        .expect("count");
    (c, m, r)
}

/// Every conversation id.
pub async fn conversation_ids(pool: &Pool) -> Vec<Uuid> {
    let mut conn = pool.get().await.expect("conn");
    let mut ids: Vec<Uuid> = conversations::table
        .select(conversations::id)
        .load(&mut conn)
        .await
        .expect("ids");
    ids.sort();
    ids
}

/// Now minus `days`.
pub fn days_ago(days: i64) -> DateTime<Utc> {
    Utc::now() - chrono::TimeDelta::days(days)
}
