//! [`ConversationStore`] on the `conversations`, `messages` and `channels` tables.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::dsl::now;
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::RunQueryDsl;
use infragpt_actors::conversation::{
    ChannelRecord, Conversation, ConversationStore, ConversationStoreError, InsertOutcome,
    MessageKind, NewMessage, Sender, StoredMessage,
};
use infragpt_actors::ids::{ChannelId, ConversationId, MessageTs, SlackUserId, TeamId, ThreadKey};
use infragpt_actors::inbox::EventRowId;

use super::schema::{channels, conversations, messages};
use super::{Pool, StoreError, conn};

/// `messages.sender_kind` of a Slack user's message.
const KIND_USER: &str = "user";
/// `messages.sender_kind` of an agent (bot) message.
const KIND_AGENT: &str = "agent";
/// `messages.sender_id` of agent messages.
const AGENT_SENDER_ID: &str = "agent";

diesel::define_sql_function! {
    /// SQL `COALESCE` of two nullable texts.
    fn coalesce(x: diesel::sql_types::Nullable<diesel::sql_types::Text>, y: diesel::sql_types::Nullable<diesel::sql_types::Text>) -> diesel::sql_types::Nullable<diesel::sql_types::Text>;
}

/// Conversations, messages and channels in PostgreSQL.
#[derive(Clone)]
pub struct PgConversationStore {
    pool: Pool,
}

impl std::fmt::Debug for PgConversationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConversationStore")
            .field("pool", &self.pool.status())
            .finish()
    }
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
#[derive(Debug, Queryable, Selectable)]
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
#[derive(Debug, Queryable, Selectable)]
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
    /// A store on `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
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
            .get_result(&mut conn)
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
        let (kind, sender_id) = match &msg.sender {
            Sender::User(u) => (KIND_USER, u.as_str().to_owned()),
            Sender::Agent => (KIND_AGENT, AGENT_SENDER_ID.to_owned()),
        };
        let mut conn = conn(&self.pool).await?;
        let inserted: Option<uuid::Uuid> = diesel::insert_into(messages::table)
            .values((
                messages::conversation_id.eq(msg.conversation_id.0),
                messages::slack_ts.eq(msg.slack_ts.as_str()),
                messages::sender_kind.eq(kind),
                messages::sender_id.eq(&sender_id),
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
            .get_result(&mut conn)
            .await
            .optional()
            .map_err(unavailable)?;
        if inserted.is_some() {
            diesel::update(conversations::table.find(msg.conversation_id.0))
                .set((
                    conversations::last_message_at.eq(now),
                    conversations::updated_at.eq(now),
                ))
                .execute(&mut conn)
                .await
                .map_err(unavailable)?;
            return Ok(InsertOutcome::Inserted);
        }
        let source: Option<i64> = messages::table
            .filter(messages::conversation_id.eq(msg.conversation_id.0))
            .filter(messages::slack_ts.eq(msg.slack_ts.as_str()))
            .select(messages::source_event_id)
            .first(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(InsertOutcome::Exists {
            source_event_id: source.map(EventRowId),
        })
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
        rows.into_iter().map(StoredMessage::try_from).collect()
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
            .get_result(&mut conn)
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
                // Monitoring only ever turns on here.
                channels::monitored.eq(channels::monitored.or(excluded(channels::monitored))),
                channels::updated_at.eq(now),
            ))
            .execute(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
