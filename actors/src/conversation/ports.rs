//! Ports the conversation logic needs from the outside world: the conversation store
//! (PostgreSQL), the Slack Web API and the AI agent.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{ChannelId, ConversationId, MessageTs, SlackUserId, TeamId, ThreadKey};
use crate::inbox::EventRowId;

/// Who wrote a stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "lowercase")]
pub enum Sender {
    /// A Slack user.
    User(SlackUserId),
    /// The agent (posted by our bot).
    Agent,
}

impl Sender {
    /// The agent contract's spelling: `agent` or `user/{slack user id}`.
    pub(crate) fn to_agent_sender(&self) -> String {
        match self {
            Self::User(u) => format!("user/{u}"),
            Self::Agent => "agent".to_owned(),
        }
    }

    /// The spelling `format` asks for in the agent's history.
    pub(crate) fn to_history_sender(&self, format: HistorySender) -> String {
        match (format, self) {
            (HistorySender::Plain, Self::User(_)) => "user".to_owned(),
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

/// A channel the bot knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelRecord {
    /// Channel name from `conversations.info`, when fetched.
    pub name: Option<String>,
    /// The bot answers plain messages here.
    pub monitored: bool,
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
    /// Creates or updates a channel; `monitored` only ever turns on here.
    async fn upsert_channel(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        name: Option<&str>,
        monitored: bool,
    ) -> Result<(), ConversationStoreError>;
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

impl SlackApiError {
    /// The one classification of Slack failures: `true` when the same call may succeed if
    /// retried later (rate limits, network and Slack-side failures), `false` when Slack
    /// refused it for good (no token for the workspace, a dead token, an error code about the
    /// channel or the message). Workers retry only transient failures; SendReply answers
    /// them UNAVAILABLE and the others FAILED_PRECONDITION.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::RateLimited { .. } | Self::Transport(_) => true,
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
    /// `chat.postMessage`; returns the posted message's ts.
    async fn post_message(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        thread_ts: Option<&MessageTs>,
        text: &str,
    ) -> Result<MessageTs, SlackApiError>;
    /// Shares `content` as a text file in the thread (`files.getUploadURLExternal`, the upload,
    /// `files.completeUploadExternal`), titled `title`.
    async fn upload_file(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        thread_ts: &MessageTs,
        filename: &str,
        title: &str,
        content: &str,
    ) -> Result<(), SlackApiError>;
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
}
