//! Test support, compiled always so the root crate's tests can use it too: the runtime's
//! in-memory inbox and scriptable handlers, a Slack-like test event, and in-memory fakes of
//! the conversation ports.

pub use infragpt_runtime::testing::*;

use infragpt_runtime::inbox::NewInboundEvent;

use crate::sources;

/// A Slack-like event for tests: source id `"{key}#{seq}"`, kind `app_mention`, payload
/// `{"seq": seq}`.
pub fn slack_event(key: &str, seq: u64) -> NewInboundEvent {
    NewInboundEvent {
        kind: "app_mention".into(),
        ..keyed_event(sources::SLACK, key, seq)
    }
}

pub use conversation_fakes::{
    FakeAgent, FakeSlack, MemoryConversationStore, PostedMessage, UploadedFile,
};

/// In-memory fakes of the conversation ports, with the semantics of the real adapters that
/// the conversation logic relies on (unique message ts per conversation, soft deletes,
/// `monitored` only ever turning on).
mod conversation_fakes {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use async_trait::async_trait;
    use chrono::Utc;
    use parking_lot::Mutex;

    use crate::conversation::{
        Agent, AgentAnswer, AgentError, AgentTurn, BotIdentity, ChannelRecord, Conversation,
        ConversationStore, ConversationStoreError, InsertOutcome, NewMessage, ReplyService,
        SlackApi, SlackApiError, StoredMessage, UserProfile,
    };
    use crate::ids::{ChannelId, ConversationId, MessageTs, SlackUserId, TeamId, ThreadKey};
    use crate::inbox::EventRowId;

    #[derive(Debug, Clone)]
    struct Row {
        message: StoredMessage,
        conversation: ConversationId,
        source_event_id: Option<EventRowId>,
        deleted: bool,
    }

    #[derive(Debug, Default)]
    struct StoreState {
        conversations: Vec<Conversation>,
        rows: Vec<Row>,
        channels: HashMap<(TeamId, ChannelId), ChannelRecord>,
    }

    /// An in-memory [`ConversationStore`].
    #[derive(Debug, Default)]
    pub struct MemoryConversationStore {
        state: Mutex<StoreState>,
        unavailable: AtomicBool,
    }

    impl MemoryConversationStore {
        /// An empty store.
        pub fn new() -> Arc<Self> {
            Arc::new(Self::default())
        }

        /// Makes every call fail with [`ConversationStoreError::Unavailable`] (or work again).
        pub fn set_unavailable(&self, unavailable: bool) {
            self.unavailable.store(unavailable, Ordering::SeqCst);
        }

        /// The conversation of a thread.
        pub fn conversation(&self, key: &ThreadKey) -> Option<Conversation> {
            let st = self.state.lock();
            st.conversations.iter().find(|c| c.key == *key).cloned()
        }

        /// Every stored message of a conversation, deleted ones included, oldest first.
        pub fn messages(&self, id: ConversationId) -> Vec<StoredMessage> {
            let st = self.state.lock();
            st.rows
                .iter()
                .filter(|r| r.conversation == id)
                .map(|r| r.message.clone())
                .collect()
        }

        /// A channel as stored.
        pub fn channel_record(&self, team: &TeamId, channel: &ChannelId) -> Option<ChannelRecord> {
            let st = self.state.lock();
            st.channels.get(&(team.clone(), channel.clone())).cloned()
        }

        fn check(&self) -> Result<(), ConversationStoreError> {
            if self.unavailable.load(Ordering::SeqCst) {
                Err(ConversationStoreError::Unavailable(
                    "memory store switched off".into(),
                ))
            } else {
                Ok(())
            }
        }

        fn in_channel<'a>(
            st: &'a mut StoreState,
            team: &TeamId,
            channel: &ChannelId,
            ts: &MessageTs,
        ) -> Option<&'a mut Row> {
            let ids: Vec<ConversationId> = st
                .conversations
                .iter()
                .filter(|c| c.key.team == *team && c.key.channel == *channel)
                .map(|c| c.id)
                .collect();
            st.rows
                .iter_mut()
                .find(|r| ids.contains(&r.conversation) && r.message.slack_ts == *ts && !r.deleted)
        }
    }

    #[async_trait]
    impl ConversationStore for MemoryConversationStore {
        async fn upsert_conversation(
            &self,
            key: &ThreadKey,
        ) -> Result<Conversation, ConversationStoreError> {
            self.check()?;
            let mut st = self.state.lock();
            if let Some(c) = st.conversations.iter().find(|c| c.key == *key) {
                return Ok(c.clone());
            }
            let c = Conversation {
                id: ConversationId::new_random(),
                key: key.clone(),
                current_turn_ts: None,
            };
            st.conversations.push(c.clone());
            Ok(c)
        }

        async fn find_by_key(
            &self,
            key: &ThreadKey,
        ) -> Result<Option<Conversation>, ConversationStoreError> {
            self.check()?;
            Ok(self.conversation(key))
        }

        async fn find(
            &self,
            id: ConversationId,
        ) -> Result<Option<Conversation>, ConversationStoreError> {
            self.check()?;
            let st = self.state.lock();
            Ok(st.conversations.iter().find(|c| c.id == id).cloned())
        }

        async fn insert_message(
            &self,
            msg: NewMessage,
        ) -> Result<InsertOutcome, ConversationStoreError> {
            self.check()?;
            let mut st = self.state.lock();
            if let Some(r) = st.rows.iter().find(|r| {
                r.conversation == msg.conversation_id && r.message.slack_ts == msg.slack_ts
            }) {
                return Ok(InsertOutcome::Exists {
                    source_event_id: r.source_event_id,
                });
            }
            st.rows.push(Row {
                message: StoredMessage {
                    id: uuid::Uuid::new_v4(),
                    slack_ts: msg.slack_ts,
                    sender: msg.sender,
                    text: msg.text,
                    created_at: Utc::now(),
                    in_reply_to: msg.in_reply_to,
                    kind: msg.kind,
                },
                conversation: msg.conversation_id,
                source_event_id: msg.source_event_id,
                deleted: false,
            });
            Ok(InsertOutcome::Inserted)
        }

        async fn history(
            &self,
            id: ConversationId,
        ) -> Result<Vec<StoredMessage>, ConversationStoreError> {
            self.check()?;
            let st = self.state.lock();
            Ok(st
                .rows
                .iter()
                .filter(|r| r.conversation == id && !r.deleted)
                .map(|r| r.message.clone())
                .collect())
        }

        async fn set_current_turn(
            &self,
            id: ConversationId,
            ts: &MessageTs,
        ) -> Result<(), ConversationStoreError> {
            self.check()?;
            let mut st = self.state.lock();
            if let Some(c) = st.conversations.iter_mut().find(|c| c.id == id) {
                c.current_turn_ts = Some(ts.clone());
            }
            Ok(())
        }

        async fn agent_reply_exists(
            &self,
            id: ConversationId,
            in_reply_to: &MessageTs,
            text: Option<&str>,
        ) -> Result<bool, ConversationStoreError> {
            self.check()?;
            let st = self.state.lock();
            Ok(st.rows.iter().any(|r| {
                r.conversation == id
                    && r.message.sender == crate::conversation::Sender::Agent
                    // A notice is not an answer, as in the PostgreSQL store.
                    && r.message.kind == crate::conversation::MessageKind::Message
                    && r.message.in_reply_to.as_ref() == Some(in_reply_to)
                    && text.is_none_or(|t| r.message.text == t)
            }))
        }

        async fn edit_message(
            &self,
            team: &TeamId,
            channel: &ChannelId,
            ts: &MessageTs,
            text: &str,
        ) -> Result<bool, ConversationStoreError> {
            self.check()?;
            let mut st = self.state.lock();
            Ok(Self::in_channel(&mut st, team, channel, ts)
                .map(|r| r.message.text = text.to_owned())
                .is_some())
        }

        async fn mark_deleted(
            &self,
            team: &TeamId,
            channel: &ChannelId,
            ts: &MessageTs,
        ) -> Result<bool, ConversationStoreError> {
            self.check()?;
            let mut st = self.state.lock();
            Ok(Self::in_channel(&mut st, team, channel, ts)
                .map(|r| r.deleted = true)
                .is_some())
        }

        async fn channel(
            &self,
            team: &TeamId,
            channel: &ChannelId,
        ) -> Result<Option<ChannelRecord>, ConversationStoreError> {
            self.check()?;
            Ok(self.channel_record(team, channel))
        }

        async fn upsert_channel(
            &self,
            team: &TeamId,
            channel: &ChannelId,
            name: Option<&str>,
            monitored: bool,
        ) -> Result<(), ConversationStoreError> {
            self.check()?;
            let mut st = self.state.lock();
            let record = st
                .channels
                .entry((team.clone(), channel.clone()))
                .or_insert(ChannelRecord {
                    name: None,
                    monitored: false,
                });
            if let Some(name) = name {
                record.name = Some(name.to_owned());
            }
            record.monitored |= monitored;
            Ok(())
        }
    }

    /// A message [`FakeSlack`] posted.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct PostedMessage {
        pub team: TeamId,
        pub channel: ChannelId,
        pub thread_ts: Option<MessageTs>,
        pub ts: MessageTs,
        pub text: String,
    }

    /// A file [`FakeSlack`] shared in a thread.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct UploadedFile {
        pub channel: ChannelId,
        pub thread_ts: MessageTs,
        pub filename: String,
        pub title: String,
        pub content: String,
    }

    #[derive(Debug, Default)]
    struct SlackState {
        posts: Vec<PostedMessage>,
        uploads: Vec<UploadedFile>,
        reactions: Vec<(ChannelId, MessageTs, String)>,
        identity_error: Option<SlackApiError>,
        post_error: Option<SlackApiError>,
    }

    /// A [`SlackApi`] that records posts and reactions. The bot is `U0BOT`, every user is
    /// called by their id, every channel `ops`; posted messages get increasing timestamps.
    #[derive(Debug, Default)]
    pub struct FakeSlack {
        state: Mutex<SlackState>,
        next_ts: AtomicU64,
    }

    impl FakeSlack {
        /// The bot's user id.
        pub const BOT_USER: &'static str = "U0BOT";

        /// A fake with nothing posted.
        pub fn new() -> Arc<Self> {
            Arc::new(Self::default())
        }

        /// Every post, in order.
        pub fn posts(&self) -> Vec<PostedMessage> {
            self.state.lock().posts.clone()
        }

        /// Every file shared, in order.
        pub fn uploads(&self) -> Vec<UploadedFile> {
            self.state.lock().uploads.clone()
        }

        /// Every reaction added: channel, message ts, reaction name.
        pub fn reactions(&self) -> Vec<(ChannelId, MessageTs, String)> {
            self.state.lock().reactions.clone()
        }

        /// Makes `auth.test` fail with `error` from now on.
        pub fn fail_identity(&self, error: SlackApiError) {
            self.state.lock().identity_error = Some(error);
        }

        /// Makes `chat.postMessage` fail with `error` from now on (`None`: work again).
        pub fn fail_posts(&self, error: Option<SlackApiError>) {
            self.state.lock().post_error = error;
        }
    }

    #[async_trait]
    impl SlackApi for FakeSlack {
        async fn bot_identity(&self, _team: &TeamId) -> Result<BotIdentity, SlackApiError> {
            if let Some(e) = self.state.lock().identity_error.clone() {
                return Err(e);
            }
            Ok(BotIdentity {
                user_id: SlackUserId::parse(Self::BOT_USER)
                    .map_err(|e| SlackApiError::Api(e.to_string()))?,
                bot_id: Some("B0BOT".into()),
                team_name: Some("Test".into()),
            })
        }

        async fn post_message(
            &self,
            team: &TeamId,
            channel: &ChannelId,
            thread_ts: Option<&MessageTs>,
            text: &str,
        ) -> Result<MessageTs, SlackApiError> {
            let mut st = self.state.lock();
            if let Some(e) = st.post_error.clone() {
                return Err(e);
            }
            let n = self.next_ts.fetch_add(1, Ordering::SeqCst) + 1;
            let ts = MessageTs::parse(format!("1900000000.{n:06}"))
                .map_err(|e| SlackApiError::Api(e.to_string()))?;
            st.posts.push(PostedMessage {
                team: team.clone(),
                channel: channel.clone(),
                thread_ts: thread_ts.cloned(),
                ts: ts.clone(),
                text: text.to_owned(),
            });
            Ok(ts)
        }

        async fn upload_file(
            &self,
            _team: &TeamId,
            channel: &ChannelId,
            thread_ts: &MessageTs,
            filename: &str,
            title: &str,
            content: &str,
        ) -> Result<(), SlackApiError> {
            let mut st = self.state.lock();
            if let Some(e) = st.post_error.clone() {
                return Err(e);
            }
            st.uploads.push(UploadedFile {
                channel: channel.clone(),
                thread_ts: thread_ts.clone(),
                filename: filename.to_owned(),
                title: title.to_owned(),
                content: content.to_owned(),
            });
            Ok(())
        }

        async fn add_reaction(
            &self,
            _team: &TeamId,
            channel: &ChannelId,
            ts: &MessageTs,
            name: &str,
        ) -> Result<(), SlackApiError> {
            self.state
                .lock()
                .reactions
                .push((channel.clone(), ts.clone(), name.to_owned()));
            Ok(())
        }

        async fn user_profile(
            &self,
            _team: &TeamId,
            user: &SlackUserId,
        ) -> Result<UserProfile, SlackApiError> {
            Ok(UserProfile {
                name: Some(format!("name of {user}")),
                username: Some(user.to_string()),
                email: None,
            })
        }

        async fn channel_name(
            &self,
            _team: &TeamId,
            _channel: &ChannelId,
        ) -> Result<Option<String>, SlackApiError> {
            Ok(Some("ops".into()))
        }
    }

    /// What [`FakeAgent`] does with each turn.
    #[derive(Debug, Clone)]
    enum Behaviour {
        Answer(AgentAnswer),
        Fail(AgentError),
        /// Posts the text through SendReply, then answers successfully with it.
        SendReply(String),
    }

    /// An [`Agent`] that records the turns it got and answers as told (by default
    /// successfully, with `answer to: {current message}`).
    #[derive(Debug, Default)]
    pub struct FakeAgent {
        turns: Mutex<Vec<AgentTurn>>,
        behaviour: Mutex<Option<Behaviour>>,
        replies: Mutex<Option<Arc<ReplyService>>>,
    }

    impl FakeAgent {
        /// An agent answering every turn.
        pub fn new() -> Arc<Self> {
            Arc::new(Self::default())
        }

        /// Every turn it was asked, in order.
        pub fn turns(&self) -> Vec<AgentTurn> {
            self.turns.lock().clone()
        }

        /// Answers with `answer` from now on.
        pub fn answer_with(&self, answer: AgentAnswer) {
            *self.behaviour.lock() = Some(Behaviour::Answer(answer));
        }

        /// Fails with `error` from now on.
        pub fn fail_with(&self, error: AgentError) {
            *self.behaviour.lock() = Some(Behaviour::Fail(error));
        }

        /// Posts `text` through `replies` (SendReply) before it returns, from now on.
        pub fn send_reply_with(&self, replies: Arc<ReplyService>, text: impl Into<String>) {
            *self.replies.lock() = Some(replies);
            *self.behaviour.lock() = Some(Behaviour::SendReply(text.into()));
        }

        /// A successful answer with `text`.
        pub fn success(text: &str) -> AgentAnswer {
            AgentAnswer {
                success: true,
                response_text: text.to_owned(),
                error_message: String::new(),
                agent_type: "fake".into(),
                confidence: 1.0,
                tools_used: Vec::new(),
            }
        }
    }

    #[async_trait]
    impl Agent for FakeAgent {
        async fn process(&self, turn: AgentTurn) -> Result<AgentAnswer, AgentError> {
            self.turns.lock().push(turn.clone());
            let behaviour = self.behaviour.lock().clone();
            match behaviour {
                None => Ok(Self::success(&format!(
                    "answer to: {}",
                    turn.current_message
                ))),
                Some(Behaviour::Answer(a)) => Ok(a),
                Some(Behaviour::Fail(e)) => Err(e),
                Some(Behaviour::SendReply(text)) => {
                    let replies = self.replies.lock().clone();
                    if let Some(replies) = replies {
                        replies
                            .send_reply(&turn.conversation_id.to_string(), &text)
                            .await
                            .map_err(|e| AgentError::Failed(e.to_string()))?;
                    }
                    Ok(Self::success(&text))
                }
            }
        }
    }
}
