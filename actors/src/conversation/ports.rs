//! Ports the conversation logic needs from the outside world: the conversation store
//! (PostgreSQL), the Slack Web API and the AI agent.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::progress::ProgressLock;
use crate::ids::{
    ChannelId, ConversationId, MessageTs, ReplyIntentId, SlackUserId, TeamId, ThreadKey,
};
use crate::inbox::{Claim, EventRowId};
use crate::slack_events::BotId;

/// Who wrote a stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "lowercase")]
pub enum Sender {
    /// A Slack user.
    User(SlackUserId),
    /// Another app's bot whose post was a turn (`slack.alert_sources`).
    Bot(BotId),
    /// The agent (posted by our bot).
    Agent,
}

impl Sender {
    /// The agent contract's spelling: `agent` or `user/{slack user id}`. An alert's bot is
    /// input like a person's message, so it is a `user/…` too, with its bot id (`B…`).
    pub(crate) fn to_agent_sender(&self) -> String {
        match self {
            Self::User(u) => format!("user/{u}"),
            Self::Bot(b) => format!("user/{b}"),
            Self::Agent => "agent".to_owned(),
        }
    }

    /// The spelling `format` asks for in the agent's history.
    pub(crate) fn to_history_sender(&self, format: HistorySender) -> String {
        match (format, self) {
            (HistorySender::Plain, Self::User(_) | Self::Bot(_)) => "user".to_owned(),
            _ => self.to_agent_sender(),
        }
    }
}

/// How past senders are spelled in the history sent to the agent (`agent.history_sender`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HistorySender {
    /// The contract's spelling: `user/{slack user id}` or `agent`.
    #[default]
    Proto,
    /// `user` or `agent`: the upstream agent (v0.1.52) maps only the exact string `user` to
    /// the user role, so with `proto` every past user message reaches its model as the
    /// assistant's. The user ids then travel in the context JSON (`history_senders`).
    Plain,
}

/// What a stored message is, besides who sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// The conversation proper: a user's text or the agent's answer. Only these are sent to
    /// the agent as history, and only an agent message of this kind answers a turn.
    #[default]
    Message,
    /// Posted by the service itself (the agent failed or is unavailable): shown in the
    /// thread, kept out of the agent's history.
    Notice,
}

impl MessageKind {
    /// The `messages.kind` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Notice => "notice",
        }
    }

    /// Parses the `messages.kind` spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "message" => Some(Self::Message),
            "notice" => Some(Self::Notice),
            _ => None,
        }
    }
}

/// A conversation: one Slack thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conversation {
    /// Our id (sent to the agent).
    pub id: ConversationId,
    pub key: ThreadKey,
    /// The user message the current turn answers (set when a turn starts).
    pub current_turn_ts: Option<MessageTs>,
}

/// A stored message, as the agent sees it in its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredMessage {
    pub id: uuid::Uuid,
    pub slack_ts: MessageTs,
    pub sender: Sender,
    /// Text (mention stripped for user messages).
    pub text: String,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// For an agent message: the `ts` of the turn it answers, when known.
    pub in_reply_to: Option<MessageTs>,
    /// Conversation or notice.
    pub kind: MessageKind,
}

/// A message to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub conversation_id: ConversationId,
    /// Slack's ts (unique per conversation).
    pub slack_ts: MessageTs,
    pub sender: Sender,
    /// Display name of a user author, when known.
    pub sender_name: Option<String>,
    /// Email of a user author, when known.
    pub sender_email: Option<String>,
    pub text: String,
    /// The inbound event that carried a user message.
    pub source_event_id: Option<EventRowId>,
    /// For agent messages: the user message they answer.
    pub in_reply_to: Option<MessageTs>,
    /// Conversation or notice.
    pub kind: MessageKind,
}

impl NewMessage {
    /// A message the service posted for the agent (an answer or a notice), answering the user
    /// message `in_reply_to`.
    pub fn from_agent(
        conversation_id: ConversationId,
        slack_ts: MessageTs,
        text: String,
        in_reply_to: Option<MessageTs>,
        kind: MessageKind,
    ) -> Self {
        Self {
            conversation_id,
            slack_ts,
            sender: Sender::Agent,
            sender_name: None,
            sender_email: None,
            text,
            source_event_id: None,
            in_reply_to,
            kind,
        }
    }
}

/// Result of storing a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Stored now.
    Inserted,
    /// A message with this ts was already stored in the conversation, by this inbound event
    /// (or by another one).
    Exists {
        /// The event that stored it first.
        source_event_id: Option<EventRowId>,
    },
}

/// Whether a turn has its answer: what decides, after a crash or a redelivery, between
/// finishing a started answer, doing nothing, and asking the agent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TurnState {
    /// Answers (not notices) to the turn that an earlier attempt started posting and did not
    /// finish, oldest first.
    pub unfinished: Vec<ReplyIntentId>,
    /// An agent message answering the turn is stored.
    pub answered: bool,
}

/// What [`ConversationStore::begin_turn`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnStart {
    pub conversation: Conversation,
    /// The user message: stored now, or stored before (by this event or another one).
    pub inserted: InsertOutcome,
    /// The turn's answer so far.
    pub state: TurnState,
    /// The conversation's non-deleted messages, oldest first (the turn's own included).
    pub history: Vec<StoredMessage>,
    /// Set when the step also started the agent turn ([`ConversationStore::begin_turn_starting`]).
    pub started: Option<StartedTurn>,
}

/// What [`ConversationStore::begin_turn_starting`] asks for besides [`ConversationStore::begin_turn`]:
/// when the user message is new, make it the current turn in the same step, under `claim`
/// as [`ConversationStore::start_agent_turn`] would, and open the turn's progress indicator
/// for `progress_lease` when given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartIfNew {
    pub claim: Option<Claim>,
    pub progress_lease: Option<Duration>,
}

/// The agent turn [`ConversationStore::begin_turn_starting`] started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartedTurn {
    /// The progress indicator's lock, when one was asked for and opened.
    pub progress: Option<ProgressLock>,
}

/// Whether [`ConversationStore::start_agent_turn`] moved the current turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentTurnStart {
    /// The turn is the conversation's current one: ask the agent.
    Started,
    /// The event's claim no longer holds (another replica owns it now): nothing changed.
    Fenced,
}

/// A channel the bot knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelRecord {
    /// Channel name from `conversations.info`, when fetched.
    pub name: Option<String>,
    /// The bot answers plain messages here.
    pub monitored: bool,
}

/// How one answer or notice is posted. Recorded with its intent, so that any process can
/// finish posting it exactly as the first one planned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Posting {
    /// Slack-sized messages, each stored as posted.
    Messages { parts: Vec<String> },
    /// The first lines as a message (stored with the whole converted answer, so the history
    /// keeps it all), then the whole answer as a file snippet in the thread.
    File {
        preview: String,
        stored: String,
        filename: String,
        content: String,
    },
}

impl Posting {
    /// How many messages it posts (a file's preview counts, the file does not).
    pub fn message_count(&self) -> usize {
        match self {
            Self::Messages { parts } => parts.len(),
            Self::File { .. } => 1,
        }
    }

    /// True when a file follows the messages.
    pub fn has_file(&self) -> bool {
        matches!(self, Self::File { .. })
    }

    /// Message `part`: what is posted and what is stored for it.
    pub fn part(&self, part: usize) -> Option<(&str, &str)> {
        match self {
            Self::Messages { parts } => parts.get(part).map(|p| (p.as_str(), p.as_str())),
            Self::File {
                preview, stored, ..
            } if part == 0 => Some((preview, stored)),
            Self::File { .. } => None,
        }
    }
}

/// A reply to post exactly once. Its key is the conversation, the turn it answers and its
/// text: the same text for the same turn is one intent, whoever posts it (the worker's own
/// answer or notice, or SendReply on any replica).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIntent {
    pub conversation_id: ConversationId,
    /// The user message it answers (the conversation's current turn), when known.
    pub in_reply_to: Option<MessageTs>,
    pub kind: MessageKind,
    /// The text as the agent (or the configuration) wrote it: the key's third part.
    pub text: String,
    pub posting: Posting,
}

/// One claim of an intent: the store counts claims, and refuses the writes of a claim that
/// is no longer the latest (a fencing token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimToken {
    pub intent: ReplyIntentId,
    /// The claim's number (1 for the first).
    pub claim: i32,
}

/// An intent this caller holds until its lease runs out: what is posted so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedIntent {
    pub token: ClaimToken,
    pub conversation_id: ConversationId,
    pub in_reply_to: Option<MessageTs>,
    pub kind: MessageKind,
    /// As the first claim planned it.
    pub posting: Posting,
    /// Messages posted and recorded, from the first.
    pub parts_done: usize,
    /// A message an earlier claim started posting and did not record: it may be in the
    /// thread already.
    pub uncertain_part: Option<usize>,
    /// The file an earlier claim uploaded and was sharing, when not known to be shared.
    pub file_id: Option<String>,
    /// The file is shared in the thread.
    pub file_done: bool,
    /// The claim recorded a new intent with its first message already marked under way, so
    /// posting that message needs no mark of its own ([`IntentStep::Posting`]). Should this
    /// claim stop before the post, the next one looks in the thread first, as after any
    /// post under way.
    pub first_part_marked: bool,
    /// Where the first message goes, when the claim also took the turn's progress indicator
    /// over for this reply ([`ConversationStore::claim_reply`] asked to): replacing its
    /// placeholder, or as a new message. `None`: not asked, or the indicator was held (the
    /// poster then takes it over itself, waiting while it is held).
    pub answer_slot: Option<super::progress::AnswerSlot>,
}

/// What claiming an intent found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntentClaim {
    /// Claimed: this caller posts what is missing.
    Claimed(ClaimedIntent),
    /// Everything is posted and recorded.
    Posted,
    /// Another process holds an unexpired claim.
    Busy {
        claimed_by: String,
        claimed_until: DateTime<Utc>,
    },
}

/// Progress of a claimed intent (see [`ConversationStore::advance_intent`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntentStep {
    /// Extends the claim's lease.
    Renew,
    /// Message `part` is about to be posted (extends the lease): until it is recorded, a later
    /// claim looks for it in the thread first.
    Posting { part: usize },
    /// Message `part` is in the thread as `message`: stored with the intent's progress, in one
    /// transaction. Recorded even when the claim was lost, since it is a fact.
    Posted { part: usize, message: NewMessage },
    /// The file is uploaded as `file_id` and about to be shared.
    FileUploaded { file_id: String },
    /// The file is shared in the thread (a fact, recorded whoever holds the claim).
    FileShared,
    /// The claim ends early. `uncertain`: a message or the file may be in the thread without
    /// being recorded, so the next claim must look before posting.
    Abandon { uncertain: bool },
}

/// Conversation store failures.
#[derive(Debug, thiserror::Error)]
pub enum ConversationStoreError {
    /// The store could not be reached or the statement failed.
    #[error("conversation store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Conversations, messages and channels.
#[async_trait]
pub trait ConversationStore: Send + Sync + 'static {
    /// Creates the thread's conversation or returns the existing one.
    async fn upsert_conversation(
        &self,
        key: &ThreadKey,
    ) -> Result<Conversation, ConversationStoreError>;
    /// The conversation of a thread, if any (a thread the bot is part of has one).
    async fn find_by_key(
        &self,
        key: &ThreadKey,
    ) -> Result<Option<Conversation>, ConversationStoreError>;
    /// A conversation by id.
    async fn find(
        &self,
        id: ConversationId,
    ) -> Result<Option<Conversation>, ConversationStoreError>;
    /// Stores a message unless its ts is already stored in the conversation.
    async fn insert_message(
        &self,
        msg: NewMessage,
    ) -> Result<InsertOutcome, ConversationStoreError>;
    /// The conversation's non-deleted messages, oldest first.
    async fn history(
        &self,
        id: ConversationId,
    ) -> Result<Vec<StoredMessage>, ConversationStoreError>;
    /// Records which user message the conversation's current turn answers.
    async fn set_current_turn(
        &self,
        id: ConversationId,
        ts: &MessageTs,
    ) -> Result<(), ConversationStoreError>;
    /// Everything a turn needs before the agent is asked, as one step: the thread's
    /// conversation (created when new), the user message `message` stored in it (its
    /// `conversation_id` is ignored), the turn's answer so far and the history. The default
    /// composes the single-step methods; a database store does it in one or two statements.
    async fn begin_turn(
        &self,
        key: &ThreadKey,
        message: NewMessage,
    ) -> Result<TurnStart, ConversationStoreError> {
        let conversation = self.upsert_conversation(key).await?;
        let ts = message.slack_ts.clone();
        let inserted = self
            .insert_message(NewMessage {
                conversation_id: conversation.id,
                ..message
            })
            .await?;
        let state = self.turn_state(conversation.id, &ts).await?;
        let history = self.history(conversation.id).await?;
        Ok(TurnStart {
            conversation,
            inserted,
            state,
            history,
            started: None,
        })
    }
    /// [`Self::begin_turn`] that, when the user message is new (stored now), also starts
    /// the agent turn in the same step ([`StartIfNew`]): a new message has no answer yet, so
    /// its turn always goes on to the agent. `started` says whether it did; when not (the
    /// message was stored before, the claim no longer holds, or the store cannot: this
    /// default), the caller starts the turn itself. Only stores that check claims themselves
    /// ([`Self::checks_claims`]) are asked.
    async fn begin_turn_starting(
        &self,
        key: &ThreadKey,
        message: NewMessage,
        start: StartIfNew,
    ) -> Result<TurnStart, ConversationStoreError> {
        let _ = start;
        self.begin_turn(key, message).await
    }
    /// The answer to the turn at `ts` so far: answers started and not finished, and whether
    /// one is stored.
    async fn turn_state(
        &self,
        id: ConversationId,
        ts: &MessageTs,
    ) -> Result<TurnState, ConversationStoreError> {
        Ok(TurnState {
            unfinished: self
                .unfinished_intents(id, ts, MessageKind::Message)
                .await?,
            answered: self.agent_reply_exists(id, ts, None).await?,
        })
    }
    /// Makes `ts` the conversation's current turn right before the agent is asked, only
    /// while `claim` (the inbound event's claim, when the caller is fenced) still holds: the
    /// event is this attempt's and its partition is leased to this replica with the safety
    /// margin left. The default, for stores that do not share the inbox's database (test
    /// fakes), does not look at the claim: a fenced caller confirms it with the inbox first.
    async fn start_agent_turn(
        &self,
        id: ConversationId,
        ts: &MessageTs,
        claim: Option<Claim>,
    ) -> Result<AgentTurnStart, ConversationStoreError> {
        let _ = claim;
        self.set_current_turn(id, ts).await?;
        Ok(AgentTurnStart::Started)
    }
    /// Whether [`Self::start_agent_turn`] checks the claim itself. False by default.
    fn checks_claims(&self) -> bool {
        false
    }
    /// [`Self::start_agent_turn`] that also opens the turn's progress indicator in the same
    /// step, held by the caller for `lease` (see [`super::progress`]): the lock when it was
    /// opened now, `None` when it was open already (a retried turn) or the turn was fenced.
    /// Stores that cannot (the default) say so with [`Self::opens_progress`], and the
    /// indicator is opened on its own.
    async fn start_agent_turn_with_progress(
        &self,
        id: ConversationId,
        ts: &MessageTs,
        claim: Option<Claim>,
        lease: Duration,
    ) -> Result<(AgentTurnStart, Option<ProgressLock>), ConversationStoreError> {
        let _ = lease;
        Ok((self.start_agent_turn(id, ts, claim).await?, None))
    }
    /// Whether [`Self::start_agent_turn_with_progress`] opens the indicator. False by default.
    fn opens_progress(&self) -> bool {
        false
    }
    /// True when an agent message (kind `message`, notices do not answer) answering
    /// `in_reply_to` is stored (with exactly `text`, when given).
    async fn agent_reply_exists(
        &self,
        id: ConversationId,
        in_reply_to: &MessageTs,
        text: Option<&str>,
    ) -> Result<bool, ConversationStoreError>;
    /// Updates the text of a stored message (any conversation of the channel); false when
    /// no such message is stored.
    async fn edit_message(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        ts: &MessageTs,
        text: &str,
    ) -> Result<bool, ConversationStoreError>;
    /// Marks a stored message deleted; false when no such message is stored.
    async fn mark_deleted(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        ts: &MessageTs,
    ) -> Result<bool, ConversationStoreError>;
    /// A channel, if known.
    async fn channel(
        &self,
        team: &TeamId,
        channel: &ChannelId,
    ) -> Result<Option<ChannelRecord>, ConversationStoreError>;
    /// Creates or updates a channel; `monitored` only ever turns on here, and not in a
    /// channel where `/infragpt stop` turned it off (only `/infragpt watch` turns it back on).
    async fn upsert_channel(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        name: Option<&str>,
        monitored: bool,
    ) -> Result<(), ConversationStoreError>;

    // ----- reply intents (exactly-once posting) ---------------------------------------------

    /// Records the intent (unless its key is recorded already) and claims it for `lease`
    /// under the store's owner name, in one statement: an unfinished intent whose claim has
    /// run out is claimed again; a posted one answers [`IntentClaim::Posted`], one claimed by
    /// someone else [`IntentClaim::Busy`].
    async fn claim_intent(
        &self,
        intent: &NewIntent,
        lease: Duration,
    ) -> Result<IntentClaim, ConversationStoreError>;
    /// SendReply's first step: the conversation of `intent` and, when `intent.in_reply_to`
    /// is `None` or the conversation's current turn, the claim of the intent under that turn
    /// ([`Self::claim_intent`] with `in_reply_to` set to the current turn), in one step. The
    /// claim is `None` when the intent names another turn (the caller decides what to do
    /// with a late answer); the whole is `None` when the conversation does not exist. The
    /// default looks the conversation up, then claims.
    ///
    /// With `take_indicator` (progress is shown), a store may also take the turn's progress
    /// indicator over for a new intent in the same step
    /// ([`ClaimedIntent::answer_slot`]); the default does not.
    async fn claim_reply(
        &self,
        intent: &NewIntent,
        lease: Duration,
        take_indicator: bool,
    ) -> Result<Option<(Conversation, Option<IntentClaim>)>, ConversationStoreError> {
        let _ = take_indicator;
        let Some(conversation) = self.find(intent.conversation_id).await? else {
            return Ok(None);
        };
        let current = conversation.current_turn_ts.clone();
        let claim = match &intent.in_reply_to {
            Some(turn) if current.as_ref() != Some(turn) => None,
            _ => Some(
                self.claim_intent(
                    &NewIntent {
                        in_reply_to: current,
                        ..intent.clone()
                    },
                    lease,
                )
                .await?,
            ),
        };
        Ok(Some((conversation, claim)))
    }
    /// [`Self::claim_intent`] for an intent recorded already.
    async fn claim_intent_by_id(
        &self,
        id: ReplyIntentId,
        lease: Duration,
    ) -> Result<IntentClaim, ConversationStoreError>;
    /// The unfinished intents of `kind` answering the user message `in_reply_to`, oldest
    /// first.
    async fn unfinished_intents(
        &self,
        conversation: ConversationId,
        in_reply_to: &MessageTs,
        kind: MessageKind,
    ) -> Result<Vec<ReplyIntentId>, ConversationStoreError>;
    /// Records a step of a claimed intent; `lease` is the claim's new lease where the step
    /// extends it. False when `token` is no longer the intent's latest claim (its lease ran
    /// out and another process claimed it): the caller must stop posting.
    async fn advance_intent(
        &self,
        token: ClaimToken,
        step: IntentStep,
        lease: Duration,
    ) -> Result<bool, ConversationStoreError>;
}

/// The bot's identity in one workspace (`auth.test`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BotIdentity {
    /// Bot user id (`U…`): mentions of it address the bot.
    pub user_id: SlackUserId,
    /// Bot id (`B…`), when known.
    pub bot_id: Option<String>,
    /// Workspace name.
    pub team_name: Option<String>,
}

/// A Slack user's profile (`users.info`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct UserProfile {
    /// Display name or real name.
    pub name: Option<String>,
    /// Username (`name`).
    pub username: Option<String>,
    /// Email, when the app may read it.
    pub email: Option<String>,
}

/// Slack Web API failures, as the conversation logic needs to tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackApiError {
    /// Still rate limited after the client's own retries.
    #[error("slack rate limited; retry after {retry_after:?}")]
    RateLimited {
        /// Slack's `Retry-After`.
        retry_after: Duration,
    },
    /// The workspace's token no longer works (`invalid_auth`, `token_revoked`,
    /// `account_inactive`): the workspace is marked inactive.
    #[error("slack workspace {team} is inactive: {error}")]
    WorkspaceInactive {
        team: TeamId,
        /// Slack's error code.
        error: String,
    },
    /// No token is known for the workspace.
    #[error("no slack token for workspace {0}")]
    UnknownWorkspace(TeamId),
    /// Slack answered `ok: false` with this error code.
    #[error("slack api error: {0}")]
    Api(String),
    /// Network or protocol failure.
    #[error("slack transport error: {0}")]
    Transport(String),
    /// Not sent: the write gate ([`crate::conversation::write_gate`]) refused it right
    /// before it would have left (this process's claim may be another's now).
    #[error("slack write not sent: {0}")]
    NotSent(String),
}

/// Machine-readable data attached to a posted message (Slack's message `metadata`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMetadata {
    /// Lowercase letters, digits and underscores.
    pub event_type: String,
    pub event_payload: serde_json::Map<String, serde_json::Value>,
}

/// A message of ours found in a thread (see [`SlackApi::bot_messages_in_thread`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadMessage {
    pub ts: MessageTs,
    /// Its metadata, if it carries any.
    pub metadata: Option<MessageMetadata>,
    /// Ids of the files it shares.
    pub file_ids: Vec<String>,
}

/// Slack `ok: false` error codes that are worth retrying: Slack's side failed or throttled.
/// Every other code is Slack refusing the call for good (`channel_not_found`,
/// `not_in_channel`, `is_archived`, `msg_too_long`, `invalid_auth`, ...).
pub const TRANSIENT_SLACK_ERRORS: [&str; 6] = [
    "ratelimited",
    "rate_limited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
];

/// Slack error codes after which the call may have taken effect all the same (Slack's docs:
/// "it's possible some aspect of the operation succeeded before the error was raised").
const MAYBE_DONE_SLACK_ERRORS: [&str; 2] = ["internal_error", "fatal_error"];

impl SlackApiError {
    /// True when a failed post may be in the thread all the same: the request may have
    /// reached Slack and only the answer was lost (a network failure), or Slack says it may
    /// have done part of it. Such a post is never repeated blindly: the thread is looked at
    /// first.
    pub fn may_have_taken_effect(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Api(text) => MAYBE_DONE_SLACK_ERRORS.contains(&api_error_code(text)),
            Self::RateLimited { .. }
            | Self::WorkspaceInactive { .. }
            | Self::UnknownWorkspace(_)
            | Self::NotSent(_) => false,
        }
    }

    /// Slack's error code, when Slack answered `ok: false`.
    pub fn api_code(&self) -> Option<&str> {
        match self {
            Self::Api(text) => Some(api_error_code(text)),
            _ => None,
        }
    }

    /// The one classification of Slack failures: `true` when the same call may succeed if
    /// retried later (rate limits, network and Slack-side failures), `false` when Slack
    /// refused it for good (no token for the workspace, a dead token, an error code about the
    /// channel or the message). Workers retry only transient failures; SendReply answers
    /// them UNAVAILABLE and the others FAILED_PRECONDITION.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::RateLimited { .. } | Self::Transport(_) | Self::NotSent(_) => true,
            Self::WorkspaceInactive { .. } | Self::UnknownWorkspace(_) => false,
            Self::Api(text) => TRANSIENT_SLACK_ERRORS.contains(&api_error_code(text)),
        }
    }
}

/// The error code in an [`SlackApiError::Api`] text: adapters write `method: code`, and
/// some write the code as a JSON string.
fn api_error_code(text: &str) -> &str {
    let code = text.rsplit(": ").next().unwrap_or(text);
    code.trim().trim_matches('"')
}

/// The Slack Web API calls the conversation logic makes, per workspace.
#[async_trait]
pub trait SlackApi: Send + Sync + 'static {
    /// The bot's identity (`auth.test`), cached by the adapter.
    async fn bot_identity(&self, team: &TeamId) -> Result<BotIdentity, SlackApiError>;
    /// `chat.postMessage`, with `metadata` attached when given; returns the posted message's
    /// ts. A failure after which the message may exist all the same is not retried by the
    /// adapter (see [`SlackApiError::may_have_taken_effect`]).
    async fn post_message(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        thread_ts: Option<&MessageTs>,
        text: &str,
        metadata: Option<&MessageMetadata>,
    ) -> Result<MessageTs, SlackApiError>;
    /// `chat.update` of one of our messages: its text and, when given, its metadata (the
    /// answer that replaces a progress placeholder carries its intent's metadata). An update
    /// is idempotent, so the adapter retries transient failures.
    async fn update_message(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        ts: &MessageTs,
        text: &str,
        metadata: Option<&MessageMetadata>,
    ) -> Result<(), SlackApiError>;
    /// `chat.delete` of one of our messages: a duplicate this process posted for a claim it
    /// had lost meanwhile (see `once::Poster::withdraw`). `Ok` once the message is gone,
    /// including when it was gone already (a repeated delete whose first answer was lost).
    async fn delete_message(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        ts: &MessageTs,
    ) -> Result<(), SlackApiError>;
    /// `assistant.threads.setStatus`: the "is thinking…" line under the thread ("" clears
    /// it; Slack also clears it when the app posts in the thread, or after two minutes).
    async fn set_thread_status(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        thread_ts: &MessageTs,
        status: &str,
    ) -> Result<(), SlackApiError>;
    /// Uploads `content` as a text file (`files.getUploadURLExternal`, then the upload)
    /// without sharing it anywhere; returns the file's id.
    async fn upload_file(
        &self,
        team: &TeamId,
        filename: &str,
        content: &str,
    ) -> Result<String, SlackApiError>;
    /// Shares an uploaded file in the thread, titled `title` (`files.completeUploadExternal`).
    async fn share_file(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        thread_ts: &MessageTs,
        file_id: &str,
        title: &str,
    ) -> Result<(), SlackApiError>;
    /// Every message our bot posted in the thread after `after` (all of the thread when
    /// `None`), with its metadata and files (`conversations.replies` with
    /// `include_all_metadata`, every page).
    async fn bot_messages_in_thread(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        thread_ts: &MessageTs,
        after: Option<&MessageTs>,
    ) -> Result<Vec<ThreadMessage>, SlackApiError>;
    /// `reactions.add`; `already_reacted` counts as success.
    async fn add_reaction(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        ts: &MessageTs,
        name: &str,
    ) -> Result<(), SlackApiError>;
    /// `users.info`, cached per workspace with a TTL by the adapter.
    async fn user_profile(
        &self,
        team: &TeamId,
        user: &SlackUserId,
    ) -> Result<UserProfile, SlackApiError>;
    /// `conversations.info`: the channel's name.
    async fn channel_name(
        &self,
        team: &TeamId,
        channel: &ChannelId,
    ) -> Result<Option<String>, SlackApiError>;
}

/// One message of the history sent to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PastMessage {
    /// Our message id.
    pub message_id: String,
    pub content: String,
    /// `agent` or `user/{slack user id}` (`user` with [`HistorySender::Plain`]).
    pub sender: String,
    /// RFC 3339.
    pub timestamp: String,
}

/// One turn for the agent (`AgentRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentTurn {
    /// Our conversation id.
    pub conversation_id: ConversationId,
    /// The user's text, mention stripped.
    pub current_message: String,
    /// The thread so far, oldest first, without the current message.
    pub past_messages: Vec<PastMessage>,
    /// JSON object: team, channel, thread_ts, sender, message ts.
    pub context: serde_json::Value,
    /// Slack user id of the author.
    pub user_id: String,
    /// Slack channel id.
    pub channel_id: String,
}

/// The agent's answer (`AgentResponse`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentAnswer {
    /// The agent handled the turn.
    pub success: bool,
    /// The answer text.
    pub response_text: String,
    /// Why it failed, when it did.
    pub error_message: String,
    /// Which agent answered.
    pub agent_type: String,
    /// Its confidence.
    pub confidence: f32,
    /// Tools it used.
    pub tools_used: Vec<String>,
}

/// Agent call failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The agent cannot be reached (connection refused, `UNAVAILABLE` after retries, circuit
    /// open).
    #[error("agent unavailable: {0}")]
    Unavailable(String),
    /// The call took longer than the configured timeout.
    #[error("agent call timed out after {0:?}")]
    Timeout(Duration),
    /// The agent answered with an error status.
    #[error("agent failed: {0}")]
    Failed(String),
}

/// The AI agent.
#[async_trait]
pub trait Agent: Send + Sync + 'static {
    /// `ProcessMessage`.
    async fn process(&self, turn: AgentTurn) -> Result<AgentAnswer, AgentError>;
}

#[cfg(test)]
mod slack_error_tests {
    use super::*;

    #[test]
    fn transient_and_permanent_slack_failures() {
        let team = TeamId::parse("T0TEST0001").unwrap();
        for transient in [
            SlackApiError::RateLimited {
                retry_after: Duration::from_secs(1),
            },
            SlackApiError::Transport("connection reset".into()),
            SlackApiError::Api("chat.postMessage: ratelimited".into()),
            SlackApiError::Api("\"internal_error\"".into()),
            SlackApiError::Api("service_unavailable".into()),
        ] {
            assert!(transient.is_transient(), "{transient:?}");
        }
        for permanent in [
            SlackApiError::UnknownWorkspace(team.clone()),
            SlackApiError::WorkspaceInactive {
                team,
                error: "invalid_auth".into(),
            },
            SlackApiError::Api("chat.postMessage: channel_not_found".into()),
            SlackApiError::Api("chat.postMessage: not_in_channel".into()),
            SlackApiError::Api("chat.postMessage: is_archived".into()),
            SlackApiError::Api("chat.postMessage: msg_too_long".into()),
            SlackApiError::Api("\"account_inactive\"".into()),
        ] {
            assert!(!permanent.is_transient(), "{permanent:?}");
        }
    }

    #[test]
    fn failures_after_which_a_post_may_exist() {
        let team = TeamId::parse("T0TEST0001").unwrap();
        for maybe in [
            SlackApiError::Transport("connection reset".into()),
            SlackApiError::Api("chat.postMessage: internal_error".into()),
            SlackApiError::Api("\"fatal_error\"".into()),
        ] {
            assert!(maybe.may_have_taken_effect(), "{maybe:?}");
        }
        for refused in [
            SlackApiError::RateLimited {
                retry_after: Duration::from_secs(1),
            },
            SlackApiError::UnknownWorkspace(team),
            SlackApiError::Api("chat.postMessage: ratelimited".into()),
            SlackApiError::Api("chat.postMessage: channel_not_found".into()),
        ] {
            assert!(!refused.may_have_taken_effect(), "{refused:?}");
        }
    }
}
