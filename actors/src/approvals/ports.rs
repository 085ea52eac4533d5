//! Ports of the approvals: the store (PostgreSQL: the approvals, their audit entries in the
//! same transactions, and the facts about the deciding person's organization) and the Block
//! Kit calls of the Slack Web API.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::model::{Approval, Decision, NewApproval, Refusal};
use crate::conversation::{MessageMetadata, SlackApiError};
use crate::ids::{ApprovalId, ChannelId, MessageTs, SlackUserId, TeamId};
use crate::inbox::EventRowId;

/// The approval store failed.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalStoreError {
    /// The database could not be reached or the statement failed: retry.
    #[error("approval store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored row does not read.
    #[error("corrupt approval row: {0}")]
    Corrupt(String),
}

/// What a claim on posting an approval's message found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostClaim {
    /// Posted and recorded already.
    Posted(MessageTs),
    /// Another process holds an unexpired claim.
    Busy,
    /// Claimed: `token` names the claim; `maybe_posted` says an earlier claim may have
    /// posted without recording it (look in the thread first).
    Claimed { token: i32, maybe_posted: bool },
}

/// The approvals in PostgreSQL. Every change writes its audit entry in its own transaction;
/// a change that changed nothing writes none.
#[async_trait]
pub trait ApprovalStore: Send + Sync + 'static {
    /// Records the request (audit `approval.requested`) unless the conversation has one with
    /// the same action key; returns the stored approval and whether it is new.
    async fn create(&self, new: &NewApproval) -> Result<(Approval, bool), ApprovalStoreError>;
    /// One approval.
    async fn get(&self, id: ApprovalId) -> Result<Option<Approval>, ApprovalStoreError>;
    /// Claims posting the message for `lease` (unless it is posted or claimed by someone
    /// else).
    async fn claim_post(
        &self,
        id: ApprovalId,
        lease: Duration,
    ) -> Result<PostClaim, ApprovalStoreError>;
    /// Marks that the claim `token` is about to post (a crash after it leaves
    /// `maybe_posted` for the next claim). False when the claim is no longer ours.
    async fn start_post(&self, id: ApprovalId, token: i32) -> Result<bool, ApprovalStoreError>;
    /// Records the posted message (whatever the claim: it is a fact).
    async fn record_post(&self, id: ApprovalId, ts: &MessageTs) -> Result<(), ApprovalStoreError>;
    /// Gives the claim `token` up; `clear_started` when nothing can have reached Slack.
    async fn release_post(
        &self,
        id: ApprovalId,
        token: i32,
        clear_started: bool,
    ) -> Result<(), ApprovalStoreError>;
    /// Decides a pending, unexpired approval (audit `approval.approved` / `.denied`), in
    /// one conditional update; `None` when it was not pending or had expired (nothing
    /// changed).
    async fn decide(
        &self,
        id: ApprovalId,
        decision: Decision,
        by: &SlackUserId,
        reason: Option<&str>,
        event: EventRowId,
    ) -> Result<Option<Approval>, ApprovalStoreError>;
    /// Records a refused click (audit `approval.refused`, once per inbound event).
    async fn refuse(
        &self,
        approval: &Approval,
        by: &SlackUserId,
        refusal: Refusal,
        event: EventRowId,
    ) -> Result<(), ApprovalStoreError>;
    /// Expires the pending approvals past their expiry (at most `limit`; audit
    /// `approval.expired` each, in the same transaction), returning them. With several
    /// replicas, each approval is expired by exactly one (`WHERE status = 'pending'`).
    async fn expire_due(&self, limit: i64) -> Result<Vec<Approval>, ApprovalStoreError>;
    /// Pending approvals (the gauge).
    async fn count_pending(&self) -> Result<i64, ApprovalStoreError>;
    /// True when `email` belongs to an admin (`org:admin`) of the organization the
    /// workspace `team` is installed for.
    async fn is_org_admin(&self, team: &TeamId, email: &str) -> Result<bool, ApprovalStoreError>;
    /// False when the workspace's installation is revoked or inactive.
    async fn workspace_active(&self, team: &TeamId) -> Result<bool, ApprovalStoreError>;
}

/// The Block Kit calls of the Slack Web API.
#[async_trait]
pub trait ApprovalSlack: Send + Sync + 'static {
    /// `chat.postMessage` with blocks and metadata in a thread; the message's ts.
    #[allow(clippy::too_many_arguments)]
    async fn post_blocks(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        thread_ts: &MessageTs,
        text: &str,
        blocks: &Value,
        metadata: &MessageMetadata,
    ) -> Result<MessageTs, SlackApiError>;
    /// `chat.update` with new text and blocks.
    async fn update_blocks(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        ts: &MessageTs,
        text: &str,
        blocks: &Value,
    ) -> Result<(), SlackApiError>;
    /// `chat.postEphemeral` to `user` (in the thread when given).
    async fn post_ephemeral(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        user: &SlackUserId,
        thread_ts: Option<&MessageTs>,
        text: &str,
    ) -> Result<(), SlackApiError>;
    /// `views.open` with a click's `trigger_id`.
    async fn open_view(
        &self,
        team: &TeamId,
        trigger_id: &str,
        view: &Value,
    ) -> Result<(), SlackApiError>;
}
