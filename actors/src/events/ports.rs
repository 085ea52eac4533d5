//! What the event routing needs from the outside world: the rules, the messages it posted
//! (one row per thing and channel, claimed like reply intents), the Slack calls, and the
//! inbox that takes triage turns.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::blocks::Rendered;
use super::model::SourceKind;
use super::rules::EventRule;
use crate::conversation::{MessageMetadata, SlackApiError, ThreadMessage};
use crate::ids::{ChannelId, MessageTs, TeamId};

/// A store failed (unreachable, or a statement failed).
#[derive(Debug, thiserror::Error)]
#[error("event store unavailable: {0}")]
pub struct StoreFailure(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// The organization's rules.
#[async_trait]
pub trait RuleStore: Send + Sync + 'static {
    /// The enabled rules of `organization` for events of `kind`.
    async fn rules_for(
        &self,
        organization: uuid::Uuid,
        kind: SourceKind,
    ) -> Result<Vec<EventRule>, StoreFailure>;
}

/// Which message: one per thing and channel (a unique key in the database, so two replicas
/// never post two messages for one thing).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventMessageKey {
    pub team: TeamId,
    pub channel: ChannelId,
    /// [`super::OpsEvent::thing_key`], or a digest's `digest:{rule}:{window}`.
    pub thing: String,
}

/// A triage turn to start in a posted message's thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriageRequest {
    pub organization_id: uuid::Uuid,
    /// The agent's current message: what happened.
    pub description: String,
    /// The normalized event ([`super::OpsEvent::agent_context`]).
    pub event: serde_json::Value,
}

/// What the store knows of a message.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageSlot {
    pub id: uuid::Uuid,
    /// Set once posted.
    pub slack_ts: Option<MessageTs>,
    /// The last event it shows (JSON of [`super::OpsEvent`]), none for a digest.
    pub event: Option<serde_json::Value>,
}

/// What the message should show, recorded before Slack is called.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub organization_id: uuid::Uuid,
    pub rendered: Rendered,
    /// The event it shows, for later merges (none for a digest).
    pub event: Option<serde_json::Value>,
    /// Only a newer version replaces what is recorded (the inbox event's id; a digest's
    /// count), so an older event handled late never overwrites a newer one.
    pub version: i64,
    /// A triage turn to start once it is posted (first post only).
    pub triage: Option<TriageRequest>,
}

/// One claim of a message row: the holder alone posts or updates it until `claimed_until`.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageClaim {
    pub id: uuid::Uuid,
    /// The claim's number (a fencing token: writes of an older claim are refused).
    pub claim: i32,
    pub key: EventMessageKey,
    pub slack_ts: Option<MessageTs>,
    /// An earlier claim was posting and did not record the result: look in the channel.
    pub uncertain: bool,
    pub rendered: Rendered,
    pub version: i64,
    /// The version Slack shows (-1: none yet).
    pub shown_version: i64,
    /// When Slack was last given a version.
    pub shown_at: Option<DateTime<Utc>>,
    /// When the row was created (a lost post is after it).
    pub created_at: DateTime<Utc>,
    /// A digest (its updates are spaced out).
    pub digest: bool,
    /// A triage turn to start, not queued yet.
    pub triage: Option<TriageRequest>,
}

/// A thing's place in its rule's storm window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StormHit {
    /// 1 for the first thing of the window; stable across retries of the same event.
    pub ordinal: i64,
    /// Start of the window (database clock).
    pub window_start: DateTime<Utc>,
}

/// What a digest shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestState {
    /// Events past the threshold in the window.
    pub count: i64,
    /// Their newest titles, newest first.
    pub recent: Vec<String>,
}

/// The posted messages, their claims and the storm windows.
#[async_trait]
pub trait EventMessageStore: Send + Sync + 'static {
    /// The message of a thing, if one was recorded.
    async fn find(&self, key: &EventMessageKey) -> Result<Option<MessageSlot>, StoreFailure>;
    /// Records what the message of `key` should show (creating its row), unless a newer
    /// version is recorded; returns the row's id.
    async fn upsert(
        &self,
        key: &EventMessageKey,
        desired: &Desired,
    ) -> Result<uuid::Uuid, StoreFailure>;
    /// Claims the row for `lease` unless another claim holds it (`None`).
    async fn claim(
        &self,
        id: uuid::Uuid,
        lease: Duration,
    ) -> Result<Option<MessageClaim>, StoreFailure>;
    /// A post is about to be sent (a later claim must look in the channel first); false when
    /// the claim no longer holds.
    async fn mark_posting(
        &self,
        id: uuid::Uuid,
        claim: i32,
        lease: Duration,
    ) -> Result<bool, StoreFailure>;
    /// The message is in Slack as `ts` showing `version` (a fact: recorded whoever holds the
    /// claim).
    async fn record_posted(
        &self,
        id: uuid::Uuid,
        ts: &MessageTs,
        version: i64,
    ) -> Result<(), StoreFailure>;
    /// Slack shows `version` now; false when the claim no longer holds.
    async fn record_shown(
        &self,
        id: uuid::Uuid,
        claim: i32,
        version: i64,
    ) -> Result<bool, StoreFailure>;
    /// The triage turn was queued.
    async fn triage_queued(&self, id: uuid::Uuid) -> Result<(), StoreFailure>;
    /// Ends the claim at once; `uncertain`: a post may be in Slack unrecorded.
    async fn release(
        &self,
        id: uuid::Uuid,
        claim: i32,
        uncertain: bool,
    ) -> Result<(), StoreFailure>;
    /// Records that `thing` reached `rule` in the current window (once per thing and window)
    /// and answers its place.
    async fn storm_hit(
        &self,
        rule: uuid::Uuid,
        thing: &str,
        title: &str,
    ) -> Result<StormHit, StoreFailure>;
    /// The digest of `rule`'s window: things past `threshold`.
    async fn digest_state(
        &self,
        rule: uuid::Uuid,
        window_start: DateTime<Utc>,
        threshold: i64,
    ) -> Result<DigestState, StoreFailure>;
    /// Posted messages whose Slack version lags what is recorded and whose claim is free:
    /// updates deferred (digests spaced out) or cut off by a crash.
    async fn lagging(&self, limit: i64) -> Result<Vec<uuid::Uuid>, StoreFailure>;
}

/// The Slack calls of event messages.
#[async_trait]
pub trait EventSlack: Send + Sync + 'static {
    /// `chat.postMessage` at the channel's top level with blocks and metadata. Not repeated
    /// by the adapter after a failure that may have taken effect.
    async fn post_event(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        text: &str,
        blocks: &serde_json::Value,
        metadata: &MessageMetadata,
    ) -> Result<MessageTs, SlackApiError>;
    /// `chat.update` of a posted message (idempotent).
    async fn update_event(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        ts: &MessageTs,
        text: &str,
        blocks: &serde_json::Value,
    ) -> Result<(), SlackApiError>;
    /// Our bot's top-level messages in the channel after `oldest`, with their metadata
    /// (`conversations.history` with `include_all_metadata`).
    async fn bot_messages_in_channel(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        oldest: &MessageTs,
    ) -> Result<Vec<ThreadMessage>, SlackApiError>;
}

/// Where triage turns go: the inbox, as their own events (deduplicated by the message).
#[async_trait]
pub trait TriageQueue: Send + Sync + 'static {
    /// Queues a triage turn in the thread of message `ts` (once per message `message_id`).
    async fn enqueue(
        &self,
        message_id: uuid::Uuid,
        team: &TeamId,
        channel: &ChannelId,
        ts: &MessageTs,
        request: &TriageRequest,
    ) -> Result<(), StoreFailure>;
}
