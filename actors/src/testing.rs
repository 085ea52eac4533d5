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

/// A process's standing in the cluster ([`crate::conversation::Standing`]) that a test
/// breaks and restores: broken, it says contact was lost after every claim (a replica
/// paused past its lease).
#[derive(Debug, Default)]
pub struct Contact {
    broken: std::sync::atomic::AtomicBool,
    /// One more than the asks left before the contact breaks by itself (0: never).
    breaks_in: std::sync::atomic::AtomicUsize,
}

impl Contact {
    /// Contact lost (`true`) or back (`false`).
    pub fn set_broken(&self, broken: bool) {
        self.breaks_in.store(0, std::sync::atomic::Ordering::SeqCst);
        self.broken
            .store(broken, std::sync::atomic::Ordering::SeqCst);
    }

    /// The next `asks` questions are answered in contact, every later one lost: contact that
    /// breaks between two checks of one write.
    pub fn break_after(&self, asks: usize) {
        self.broken
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.breaks_in
            .store(asks + 1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl crate::conversation::Standing for Contact {
    fn unbroken_since(
        &self,
        _since: std::time::Instant,
    ) -> Result<(), crate::conversation::FenceError> {
        use std::sync::atomic::Ordering::SeqCst;
        let left = self
            .breaks_in
            .fetch_update(SeqCst, SeqCst, |n| (n > 1).then(|| n - 1))
            .unwrap_or_else(|n| n);
        if left == 1 {
            self.broken.store(true, SeqCst);
        }
        if self.broken.load(SeqCst) {
            Err(crate::conversation::FenceError("contact lost".into()))
        } else {
            Ok(())
        }
    }
}

pub use conversation_fakes::{
    FakeAgent, FakeSlack, MemoryConversationStore, PostedMessage, StoredIntent, UploadedFile,
};

/// In-memory fakes of the conversation ports, with the semantics of the real adapters that
/// the conversation logic relies on (unique message ts per conversation, soft deletes,
/// `monitored` only ever turning on, reply intents claimed with a lease and a claim count).
mod conversation_fakes {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    use async_trait::async_trait;
    use chrono::{DateTime, Utc};
    use parking_lot::Mutex;

    use crate::conversation::{
        Agent, AgentAnswer, AgentError, AgentTurn, BotIdentity, ChannelRecord, ClaimToken,
        ClaimedIntent, Conversation, ConversationStore, ConversationStoreError, InsertOutcome,
        IntentClaim, IntentStep, MessageKind, MessageMetadata, NewIntent, NewMessage, Posting,
        ReplyService, SlackApi, SlackApiError, StoredMessage, ThreadMessage, TurnState,
        UserProfile,
    };
    use crate::ids::{
        ChannelId, ConversationId, MessageTs, ReplyIntentId, SlackUserId, TeamId, ThreadKey,
    };
    use crate::inbox::EventRowId;

    #[derive(Debug, Clone)]
    struct Row {
        message: StoredMessage,
        conversation: ConversationId,
        source_event_id: Option<EventRowId>,
        deleted: bool,
    }

    /// A reply intent as [`MemoryConversationStore`] keeps it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct StoredIntent {
        pub id: ReplyIntentId,
        pub conversation: ConversationId,
        pub in_reply_to: Option<MessageTs>,
        /// The key's text (the real store keeps its digest).
        pub text: String,
        pub kind: MessageKind,
        pub posting: Posting,
        pub parts_done: usize,
        pub posting_part: Option<usize>,
        pub file_id: Option<String>,
        pub file_done: bool,
        pub posted: bool,
        pub claims: i32,
        pub claimed_by: Option<String>,
        pub claimed_until: Option<DateTime<Utc>>,
    }

    impl StoredIntent {
        fn claimable(&self, now: DateTime<Utc>) -> bool {
            !self.posted && self.claimed_until.is_none_or(|until| until <= now)
        }

        fn complete(&self) -> bool {
            self.parts_done >= self.posting.message_count()
                && (!self.posting.has_file() || self.file_done)
        }
    }

    #[derive(Debug, Default)]
    struct StoreState {
        conversations: Vec<Conversation>,
        rows: Vec<Row>,
        channels: HashMap<(TeamId, ChannelId), ChannelRecord>,
        intents: Vec<StoredIntent>,
    }

    /// An in-memory [`ConversationStore`].
    #[derive(Debug)]
    pub struct MemoryConversationStore {
        state: Mutex<StoreState>,
        unavailable: AtomicBool,
        fail_next_record: AtomicBool,
        fail_next_claim: AtomicBool,
        owner: String,
        turn_state_reads: AtomicU64,
    }

    impl Default for MemoryConversationStore {
        fn default() -> Self {
            Self {
                state: Mutex::default(),
                unavailable: AtomicBool::new(false),
                fail_next_record: AtomicBool::new(false),
                fail_next_claim: AtomicBool::new(false),
                turn_state_reads: AtomicU64::new(0),
                owner: "memory".to_owned(),
            }
        }
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

        /// The next recording of a posted reply message fails (once), as if the process
        /// lost the database right after the post.
        pub fn fail_next_record(&self) {
            self.fail_next_record.store(true, Ordering::SeqCst);
        }

        /// The next claim of a reply intent fails (once), as if the database went away for
        /// a moment before anything was posted.
        pub fn fail_next_claim(&self) {
            self.fail_next_claim.store(true, Ordering::SeqCst);
        }

        /// How many times a turn's answer so far was read ([`ConversationStore::turn_state`]).
        pub fn turn_state_reads(&self) -> u64 {
            self.turn_state_reads.load(Ordering::SeqCst)
        }

        /// Every reply intent, oldest first.
        pub fn intents(&self) -> Vec<StoredIntent> {
            self.state.lock().intents.clone()
        }

        /// Ends every claim now, as if their leases ran out (their holders stopped).
        pub fn expire_claims(&self) {
            let now = Utc::now();
            for i in &mut self.state.lock().intents {
                if i.claimed_until.is_some() {
                    i.claimed_until = Some(now);
                }
            }
        }

        fn claim(&self, i: &mut StoredIntent, lease: Duration) -> IntentClaim {
            let now = Utc::now();
            if i.posted {
                return IntentClaim::Posted;
            }
            if !i.claimable(now) {
                return IntentClaim::Busy {
                    claimed_by: i.claimed_by.clone().unwrap_or_default(),
                    claimed_until: i.claimed_until.unwrap_or(now),
                };
            }
            i.claims += 1;
            i.claimed_by = Some(self.owner.clone());
            i.claimed_until = Some(now + lease);
            IntentClaim::Claimed(ClaimedIntent {
                token: ClaimToken {
                    intent: i.id,
                    claim: i.claims,
                },
                conversation_id: i.conversation,
                in_reply_to: i.in_reply_to.clone(),
                kind: i.kind,
                posting: i.posting.clone(),
                parts_done: i.parts_done,
                uncertain_part: i.posting_part,
                file_id: i.file_id.clone(),
                file_done: i.file_done,
                first_part_marked: false,
                answer_slot: None,
            })
        }

        fn insert(st: &mut StoreState, msg: NewMessage) -> InsertOutcome {
            if let Some(r) = st.rows.iter().find(|r| {
                r.conversation == msg.conversation_id && r.message.slack_ts == msg.slack_ts
            }) {
                return InsertOutcome::Exists {
                    source_event_id: r.source_event_id,
                };
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
            InsertOutcome::Inserted
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
        async fn turn_state(
            &self,
            id: ConversationId,
            ts: &MessageTs,
        ) -> Result<TurnState, ConversationStoreError> {
            self.turn_state_reads.fetch_add(1, Ordering::SeqCst);
            Ok(TurnState {
                unfinished: self
                    .unfinished_intents(id, ts, MessageKind::Message)
                    .await?,
                answered: self.agent_reply_exists(id, ts, None).await?,
            })
        }

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
            Ok(Self::insert(&mut self.state.lock(), msg))
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

        async fn claim_intent(
            &self,
            intent: &NewIntent,
            lease: Duration,
        ) -> Result<IntentClaim, ConversationStoreError> {
            self.check()?;
            if self.fail_next_claim.swap(false, Ordering::SeqCst) {
                return Err(ConversationStoreError::Unavailable(
                    "memory store failed the claim once".into(),
                ));
            }
            let mut st = self.state.lock();
            let idx = match st.intents.iter().position(|i| {
                i.conversation == intent.conversation_id
                    && i.in_reply_to == intent.in_reply_to
                    && i.text == intent.text
            }) {
                Some(idx) => idx,
                None => {
                    st.intents.push(StoredIntent {
                        id: ReplyIntentId::new_random(),
                        conversation: intent.conversation_id,
                        in_reply_to: intent.in_reply_to.clone(),
                        text: intent.text.clone(),
                        kind: intent.kind,
                        posting: intent.posting.clone(),
                        parts_done: 0,
                        posting_part: None,
                        file_id: None,
                        file_done: false,
                        posted: false,
                        claims: 0,
                        claimed_by: None,
                        claimed_until: None,
                    });
                    st.intents.len() - 1
                }
            };
            let stored = &mut st.intents[idx];
            let new = stored.claims == 0;
            let mut claim = self.claim(stored, lease);
            // As in PostgreSQL: a new intent is recorded with its first message under way.
            if let IntentClaim::Claimed(c) = &mut claim
                && new
                && c.posting.message_count() > 0
            {
                stored.posting_part = Some(0);
                c.first_part_marked = true;
            }
            Ok(claim)
        }

        async fn claim_intent_by_id(
            &self,
            id: ReplyIntentId,
            lease: Duration,
        ) -> Result<IntentClaim, ConversationStoreError> {
            self.check()?;
            let mut st = self.state.lock();
            match st.intents.iter_mut().find(|i| i.id == id) {
                Some(i) => Ok(self.claim(i, lease)),
                None => Err(ConversationStoreError::Unavailable(
                    format!("no reply intent {id}").into(),
                )),
            }
        }

        async fn unfinished_intents(
            &self,
            conversation: ConversationId,
            in_reply_to: &MessageTs,
            kind: MessageKind,
        ) -> Result<Vec<ReplyIntentId>, ConversationStoreError> {
            self.check()?;
            let st = self.state.lock();
            Ok(st
                .intents
                .iter()
                .filter(|i| {
                    i.conversation == conversation
                        && i.in_reply_to.as_ref() == Some(in_reply_to)
                        && i.kind == kind
                        && !i.posted
                })
                .map(|i| i.id)
                .collect())
        }

        async fn advance_intent(
            &self,
            token: ClaimToken,
            step: IntentStep,
            lease: Duration,
        ) -> Result<bool, ConversationStoreError> {
            self.check()?;
            if matches!(step, IntentStep::Posted { .. })
                && self.fail_next_record.swap(false, Ordering::SeqCst)
            {
                return Err(ConversationStoreError::Unavailable(
                    "memory store failed the recording once".into(),
                ));
            }
            let mut st = self.state.lock();
            let Some(idx) = st.intents.iter().position(|i| i.id == token.intent) else {
                return Err(ConversationStoreError::Unavailable(
                    format!("no reply intent {}", token.intent).into(),
                ));
            };
            let ours = st.intents[idx].claims == token.claim;
            let renew = Utc::now() + lease;
            match step {
                IntentStep::Renew if ours => st.intents[idx].claimed_until = Some(renew),
                IntentStep::Posting { part } if ours && !st.intents[idx].posted => {
                    let i = &mut st.intents[idx];
                    i.posting_part = Some(part);
                    i.claimed_until = Some(renew);
                }
                IntentStep::Posting { .. } => return Ok(false),
                IntentStep::Posted { part, message } => {
                    Self::insert(&mut st, message);
                    let i = &mut st.intents[idx];
                    i.parts_done = i.parts_done.max(part + 1);
                    if ours {
                        i.posting_part = None;
                        i.claimed_until = Some(renew);
                    }
                    i.posted = i.complete();
                }
                IntentStep::FileUploaded { file_id } if ours => {
                    st.intents[idx].file_id = Some(file_id);
                }
                IntentStep::FileShared => {
                    let i = &mut st.intents[idx];
                    i.file_done = true;
                    i.posted = i.complete();
                }
                IntentStep::Abandon { uncertain } if ours => {
                    let i = &mut st.intents[idx];
                    i.claimed_until = Some(Utc::now());
                    if !uncertain {
                        i.posting_part = None;
                    }
                }
                IntentStep::Renew
                | IntentStep::FileUploaded { .. }
                | IntentStep::Abandon { .. } => {}
            }
            Ok(ours)
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
        pub metadata: Option<MessageMetadata>,
    }

    /// A file [`FakeSlack`] shared in a thread.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct UploadedFile {
        pub file_id: String,
        pub channel: ChannelId,
        pub thread_ts: MessageTs,
        /// The ts of the message that shares it.
        pub ts: MessageTs,
        pub filename: String,
        pub title: String,
        pub content: String,
    }

    /// Called after each successful post with the number of posts so far.
    type AfterPost = Arc<dyn Fn(usize) + Send + Sync>;

    #[derive(Default)]
    struct SlackState {
        posts: Vec<PostedMessage>,
        /// Uploaded, not shared yet: id → (filename, content).
        pending_uploads: HashMap<String, (String, String)>,
        uploads: Vec<UploadedFile>,
        reactions: Vec<(ChannelId, MessageTs, String)>,
        identity_error: Option<SlackApiError>,
        post_error: Option<SlackApiError>,
        /// Posts fail with this error after they took effect (the answer was lost).
        lost_answers: Option<SlackApiError>,
        after_post: Option<AfterPost>,
        lookups: usize,
        /// How long each post takes before it takes effect.
        post_delay: std::time::Duration,
        /// Every `assistant.threads.setStatus`: channel, thread, status.
        statuses: Vec<(ChannelId, MessageTs, String)>,
    }

    impl std::fmt::Debug for SlackState {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SlackState")
                .field("posts", &self.posts.len())
                .field("uploads", &self.uploads.len())
                .finish_non_exhaustive()
        }
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

        /// Makes every post and file share take effect and then fail with `error`, as when
        /// the answer is lost on the way back (`None`: work again).
        pub fn lose_answers(&self, error: Option<SlackApiError>) {
            self.state.lock().lost_answers = error;
        }

        /// Calls `f` after each successful post or file share with the number of them so
        /// far (tests stop the store there to play a crash).
        pub fn after_post(&self, f: impl Fn(usize) + Send + Sync + 'static) {
            self.state.lock().after_post = Some(Arc::new(f));
        }

        /// Makes every post take `delay` before it takes effect (a slow Slack).
        pub fn delay_posts(&self, delay: std::time::Duration) {
            self.state.lock().post_delay = delay;
        }

        /// Every thread status set, in order: channel, thread, status.
        pub fn statuses(&self) -> Vec<(ChannelId, MessageTs, String)> {
            self.state.lock().statuses.clone()
        }

        /// How many times the bot's messages of a thread were looked up.
        pub fn lookups(&self) -> usize {
            self.state.lock().lookups
        }

        fn next_ts(&self) -> Result<MessageTs, SlackApiError> {
            let n = self.next_ts.fetch_add(1, Ordering::SeqCst) + 1;
            MessageTs::parse(format!("1900000000.{n:06}"))
                .map_err(|e| SlackApiError::Api(e.to_string()))
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
            metadata: Option<&MessageMetadata>,
        ) -> Result<MessageTs, SlackApiError> {
            let delay = self.state.lock().post_delay;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let (ts, count, after, lost) = {
                let mut st = self.state.lock();
                if let Some(e) = st.post_error.clone() {
                    return Err(e);
                }
                let ts = self.next_ts()?;
                st.posts.push(PostedMessage {
                    team: team.clone(),
                    channel: channel.clone(),
                    thread_ts: thread_ts.cloned(),
                    ts: ts.clone(),
                    text: text.to_owned(),
                    metadata: metadata.cloned(),
                });
                (
                    ts,
                    st.posts.len() + st.uploads.len(),
                    st.after_post.clone(),
                    st.lost_answers.clone(),
                )
            };
            if let Some(f) = after {
                f(count);
            }
            match lost {
                Some(e) => Err(e),
                None => Ok(ts),
            }
        }

        async fn upload_file(
            &self,
            _team: &TeamId,
            filename: &str,
            content: &str,
        ) -> Result<String, SlackApiError> {
            let mut st = self.state.lock();
            if let Some(e) = st.post_error.clone() {
                return Err(e);
            }
            let id = format!("F{:06}", st.pending_uploads.len() + st.uploads.len() + 1);
            st.pending_uploads
                .insert(id.clone(), (filename.to_owned(), content.to_owned()));
            Ok(id)
        }

        async fn share_file(
            &self,
            _team: &TeamId,
            channel: &ChannelId,
            thread_ts: &MessageTs,
            file_id: &str,
            title: &str,
        ) -> Result<(), SlackApiError> {
            let mut st = self.state.lock();
            if let Some(e) = st.post_error.clone() {
                return Err(e);
            }
            let Some((filename, content)) = st.pending_uploads.remove(file_id) else {
                return Err(SlackApiError::Api(
                    "files.completeUploadExternal: file_not_found".into(),
                ));
            };
            let ts = self.next_ts()?;
            st.uploads.push(UploadedFile {
                file_id: file_id.to_owned(),
                channel: channel.clone(),
                thread_ts: thread_ts.clone(),
                ts,
                filename,
                title: title.to_owned(),
                content,
            });
            let (count, after, lost) = (
                st.posts.len() + st.uploads.len(),
                st.after_post.clone(),
                st.lost_answers.clone(),
            );
            drop(st);
            if let Some(f) = after {
                f(count);
            }
            match lost {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }

        async fn bot_messages_in_thread(
            &self,
            _team: &TeamId,
            channel: &ChannelId,
            thread_ts: &MessageTs,
            after: Option<&MessageTs>,
        ) -> Result<Vec<ThreadMessage>, SlackApiError> {
            let mut st = self.state.lock();
            st.lookups += 1;
            let later = |ts: &MessageTs| after.is_none_or(|a| ts.chrono_cmp(a).is_gt());
            let mut found: Vec<ThreadMessage> = st
                .posts
                .iter()
                .filter(|p| {
                    p.channel == *channel && p.thread_ts.as_ref() == Some(thread_ts) && later(&p.ts)
                })
                .map(|p| ThreadMessage {
                    ts: p.ts.clone(),
                    metadata: p.metadata.clone(),
                    file_ids: Vec::new(),
                })
                .collect();
            found.extend(
                st.uploads
                    .iter()
                    .filter(|u| u.channel == *channel && u.thread_ts == *thread_ts && later(&u.ts))
                    .map(|u| ThreadMessage {
                        ts: u.ts.clone(),
                        metadata: None,
                        file_ids: vec![u.file_id.clone()],
                    }),
            );
            found.sort_by(|a, b| a.ts.chrono_cmp(&b.ts));
            Ok(found)
        }

        async fn update_message(
            &self,
            _team: &TeamId,
            channel: &ChannelId,
            ts: &MessageTs,
            text: &str,
            metadata: Option<&MessageMetadata>,
        ) -> Result<(), SlackApiError> {
            let mut st = self.state.lock();
            if let Some(e) = st.post_error.clone() {
                return Err(e);
            }
            let Some(post) = st
                .posts
                .iter_mut()
                .find(|p| &p.channel == channel && &p.ts == ts)
            else {
                return Err(SlackApiError::Api("chat.update: message_not_found".into()));
            };
            post.text = text.to_owned();
            if let Some(m) = metadata {
                post.metadata = Some(m.clone());
            }
            Ok(())
        }

        async fn delete_message(
            &self,
            _team: &TeamId,
            channel: &ChannelId,
            ts: &MessageTs,
        ) -> Result<(), SlackApiError> {
            let mut st = self.state.lock();
            let before = st.posts.len();
            st.posts.retain(|p| !(&p.channel == channel && &p.ts == ts));
            if st.posts.len() == before {
                return Err(SlackApiError::Api("chat.delete: message_not_found".into()));
            }
            Ok(())
        }

        async fn set_thread_status(
            &self,
            _team: &TeamId,
            channel: &ChannelId,
            thread_ts: &MessageTs,
            status: &str,
        ) -> Result<(), SlackApiError> {
            self.state.lock().statuses.push((
                channel.clone(),
                thread_ts.clone(),
                status.to_owned(),
            ));
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
        /// Posts the text through SendReply and answers successfully with it whether or not
        /// SendReply worked.
        SendReplyBestEffort(String),
        /// Posts the text through SendReply; answers `success: false` with SendReply's error
        /// when it failed (what the development agent does).
        SendReplyOrReport(String),
    }

    /// An [`Agent`] that records the turns it got and answers as told (by default
    /// successfully, with `answer to: {current message}`).
    #[derive(Debug, Default)]
    pub struct FakeAgent {
        turns: Mutex<Vec<AgentTurn>>,
        behaviour: Mutex<Option<Behaviour>>,
        replies: Mutex<Option<Arc<ReplyService>>>,
        think: Mutex<std::time::Duration>,
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

        /// Works `think` on each turn after its SendReply (if it sends one) and before
        /// returning, from now on.
        pub fn think_for(&self, think: std::time::Duration) {
            *self.think.lock() = think;
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

        /// Like [`Self::send_reply_with`], but answers `text` successfully even when
        /// SendReply failed.
        pub fn send_reply_best_effort(&self, replies: Arc<ReplyService>, text: impl Into<String>) {
            *self.replies.lock() = Some(replies);
            *self.behaviour.lock() = Some(Behaviour::SendReplyBestEffort(text.into()));
        }

        /// Like [`Self::send_reply_with`], but answers `success: false` with SendReply's
        /// error when it failed, as the development agent does.
        pub fn send_reply_or_report(&self, replies: Arc<ReplyService>, text: impl Into<String>) {
            *self.replies.lock() = Some(replies);
            *self.behaviour.lock() = Some(Behaviour::SendReplyOrReport(text.into()));
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
            let answer = self.answer(turn).await;
            let think = *self.think.lock();
            if !think.is_zero() {
                tokio::time::sleep(think).await;
            }
            answer
        }
    }

    impl FakeAgent {
        /// What [`Agent::process`] returns for `turn`, SendReplies sent.
        async fn answer(&self, turn: AgentTurn) -> Result<AgentAnswer, AgentError> {
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
                Some(Behaviour::SendReplyBestEffort(text)) => {
                    let replies = self.replies.lock().clone();
                    if let Some(replies) = replies
                        && let Err(e) = replies
                            .send_reply(&turn.conversation_id.to_string(), &text)
                            .await
                    {
                        tracing::warn!(error = %e, "fake agent: SendReply failed; answering anyway");
                    }
                    Ok(Self::success(&text))
                }
                Some(Behaviour::SendReplyOrReport(text)) => {
                    let replies = self.replies.lock().clone();
                    let sent = match replies {
                        Some(replies) => replies
                            .send_reply(&turn.conversation_id.to_string(), &text)
                            .await
                            .map(drop),
                        None => Ok(()),
                    };
                    Ok(match sent {
                        Ok(()) => Self::success(&text),
                        Err(e) => AgentAnswer {
                            success: false,
                            error_message: format!("SendReply failed: {e}"),
                            ..Self::success("")
                        },
                    })
                }
            }
        }
    }
}
