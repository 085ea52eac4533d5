//! What the slash command and the assistant pane need from the outside world, besides the
//! conversation ports they share ([`crate::conversation::SlackApi`], the store's channels).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{SlashCommand, SuggestedPrompt, TriggerId};
use crate::audit::AuditEntry;
use crate::conversation::{SlackApiError, ThreadMessage};
use crate::slack_events::{ChannelId, TeamId, Ts, UserId};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum SlashStoreError {
    /// The store could not be reached or the statement failed.
    #[error("slash command store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A channel's watch state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChannelWatch {
    /// Every message in the channel is a turn.
    pub monitored: bool,
    /// Someone ran `stop`: a mention no longer turns watching on (only `watch` does).
    pub stopped: bool,
}

/// What `stop`/`watch` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchChange {
    /// The state changed (and the audit entry was written with it).
    Changed,
    /// It was so already: nothing written.
    Unchanged,
}

/// The question a `/infragpt <question>` posts, as far as it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuestionPost {
    /// Posted and recorded, as this message.
    pub posted_ts: Option<Ts>,
    /// An attempt started posting at this time and did not record the result: the message
    /// may be in the channel already.
    pub posting_since: Option<DateTime<Utc>>,
}

/// Channels' watch state, the questions slash commands post, and counts for `status`.
#[async_trait]
pub trait SlashStore: Send + Sync + 'static {
    /// The channel's watch state (`Default` when the channel is not known).
    async fn channel_watch(
        &self,
        team: &TeamId,
        channel: &ChannelId,
    ) -> Result<ChannelWatch, SlashStoreError>;
    /// Turns watching on (`watch`) or off for good (`stop`), with `audit` in the same
    /// transaction when it changes anything; the adapter fills in the workspace's
    /// organization. Nothing is written when the state was so already.
    async fn set_channel_watch(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        watch: bool,
        audit: AuditEntry,
    ) -> Result<WatchChange, SlashStoreError>;
    /// Conversations of the workspace created since `since`.
    async fn conversations_since(
        &self,
        team: &TeamId,
        since: DateTime<Utc>,
    ) -> Result<i64, SlashStoreError>;
    /// The command's question post, created (not posting, not posted) when new.
    async fn question_post(&self, cmd: &SlashCommand) -> Result<QuestionPost, SlashStoreError>;
    /// Marks the question as being posted now (`true`) or as not posted after a refusal
    /// Slack gave before anything happened (`false`).
    async fn question_posting(
        &self,
        trigger: &TriggerId,
        posting: bool,
    ) -> Result<(), SlashStoreError>;
    /// Records the posted question's ts.
    async fn question_posted(&self, trigger: &TriggerId, ts: &Ts) -> Result<(), SlashStoreError>;
}

/// The Slack calls of the slash command and the assistant pane.
#[async_trait]
pub trait SlashSlack: Send + Sync + 'static {
    /// POSTs an ephemeral answer to a command's `response_url`.
    async fn respond(&self, response_url: &str, text: &str) -> Result<(), SlackApiError>;
    /// `chat.postEphemeral`: `text` to `user` only, in `channel`.
    async fn post_ephemeral(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        user: &UserId,
        text: &str,
    ) -> Result<(), SlackApiError>;
    /// `assistant.threads.setSuggestedPrompts`.
    async fn set_suggested_prompts(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        thread_ts: &Ts,
        prompts: &[SuggestedPrompt],
    ) -> Result<(), SlackApiError>;
    /// `assistant.threads.setTitle`.
    async fn set_title(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        thread_ts: &Ts,
        title: &str,
    ) -> Result<(), SlackApiError>;
    /// Our bot's top-level messages in `channel` since `oldest`, with their metadata.
    async fn bot_messages_in_channel(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        oldest: &Ts,
    ) -> Result<Vec<ThreadMessage>, SlackApiError>;
}
