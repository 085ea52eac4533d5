//! `RequestApproval` and `GetApproval` (both gRPC paths and `POST /approvals` call this one
//! service), the exactly-once post of the request's message, and the expiry sweep.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tracing::{info, warn};

use super::APPROVAL_EVENT_TYPE;
use super::blocks;
use super::model::{Approval, ApprovalError, ApprovalRequest, NewApproval};
use super::ports::{ApprovalSlack, ApprovalStore, PostClaim};
use crate::conversation::{ConversationStore, MessageMetadata, Sender, SlackApi};
use crate::ids::{ApprovalId, MessageTs};

/// How long a claim on posting a request's message lasts.
pub const POST_LEASE: Duration = Duration::from_secs(30);
/// How long a second caller waits for another process's post of the same request.
pub const POST_BUSY_WAIT: Duration = Duration::from_secs(10);

/// The ports the conversation worker needs to decide an approval.
#[derive(Clone)]
pub struct ApprovalPorts {
    pub store: Arc<dyn ApprovalStore>,
    pub slack: Arc<dyn ApprovalSlack>,
}

impl std::fmt::Debug for ApprovalPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalPorts").finish_non_exhaustive()
    }
}

/// The agent-facing side of approvals.
pub struct ApprovalService {
    ports: ApprovalPorts,
    conversations: Arc<dyn ConversationStore>,
    /// For reading the thread after a post that may have reached Slack unrecorded.
    thread: Arc<dyn SlackApi>,
    lease: Duration,
    busy_wait: Duration,
}

impl std::fmt::Debug for ApprovalService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalService").finish_non_exhaustive()
    }
}

/// The metadata on a request's message.
pub fn approval_metadata(id: ApprovalId) -> MessageMetadata {
    let mut payload = serde_json::Map::new();
    payload.insert("approval_id".into(), json!(id.to_string()));
    MessageMetadata {
        event_type: APPROVAL_EVENT_TYPE.to_owned(),
        event_payload: payload,
    }
}

impl ApprovalService {
    /// The service over its ports.
    pub fn new(
        ports: ApprovalPorts,
        conversations: Arc<dyn ConversationStore>,
        thread: Arc<dyn SlackApi>,
    ) -> Self {
        Self {
            ports,
            conversations,
            thread,
            lease: POST_LEASE,
            busy_wait: POST_BUSY_WAIT,
        }
    }

    /// The ports (for the conversation worker).
    pub fn ports(&self) -> &ApprovalPorts {
        &self.ports
    }

    /// `RequestApproval`: records the request (the same action key in the same conversation
    /// answers the approval recorded first, whatever the rest of the request says) and posts
    /// its message in the conversation's thread once, then answers at once: the decision
    /// comes later, as a turn (and through [`Self::get`]).
    pub async fn request(&self, raw: &ApprovalRequest) -> Result<Approval, ApprovalError> {
        let valid = raw.validate()?;
        let conversation = self
            .conversations
            .find(valid.conversation_id)
            .await?
            .ok_or(ApprovalError::ConversationNotFound(valid.conversation_id))?;
        // Whose message started the turn that asks: by default they decide.
        let requested_by = match &conversation.current_turn_ts {
            Some(ts) => self
                .conversations
                .history(conversation.id)
                .await?
                .into_iter()
                .find(|m| &m.slack_ts == ts)
                .and_then(|m| match m.sender {
                    Sender::User(u) => Some(u),
                    _ => None,
                }),
            None => None,
        };
        let new = NewApproval {
            id: ApprovalId::new_random(),
            conversation_id: conversation.id,
            key: conversation.key.clone(),
            action_key: valid.action_key,
            summary: valid.summary,
            details: valid.details,
            risk: valid.risk,
            approvers: valid.approvers,
            requested_by,
            turn_ts: conversation.current_turn_ts.clone(),
            expires_in: valid.expires_in,
        };
        let (approval, created) = self.ports.store.create(&new).await?;
        info!(approval_id = %approval.id, conversation_id = %approval.conversation_id, created, "approval requested");
        self.post_once(approval).await
    }

    /// `GetApproval`.
    pub async fn get(&self, raw_id: &str) -> Result<Approval, ApprovalError> {
        let id = raw_id
            .trim()
            .parse::<ApprovalId>()
            .map_err(|_| ApprovalError::InvalidApprovalId(raw_id.to_owned()))?;
        self.ports
            .store
            .get(id)
            .await?
            .ok_or(ApprovalError::NotFound(id))
    }

    /// Posts the request's message unless it is posted: under a claim on the row, with the
    /// approval id in the message's metadata; a claim after one that may have posted
    /// unrecorded reads the thread first (as the reply intents do).
    async fn post_once(&self, mut approval: Approval) -> Result<Approval, ApprovalError> {
        if approval.message_ts.is_some() {
            return Ok(approval);
        }
        let store = &self.ports.store;
        let started = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            match store.claim_post(approval.id, self.lease).await? {
                PostClaim::Posted(ts) => {
                    approval.message_ts = Some(ts);
                    return Ok(approval);
                }
                PostClaim::Busy => {
                    if started.elapsed() >= self.busy_wait {
                        return Err(ApprovalError::Busy);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                PostClaim::Claimed {
                    token,
                    maybe_posted,
                } => {
                    if maybe_posted && let Some(ts) = self.find_in_thread(&approval).await? {
                        store.record_post(approval.id, &ts).await?;
                        approval.message_ts = Some(ts);
                        return Ok(approval);
                    }
                    if !store.start_post(approval.id, token).await? {
                        continue;
                    }
                    let rendered = blocks::pending(&approval);
                    let key = &approval.key;
                    match self
                        .ports
                        .slack
                        .post_blocks(
                            &key.team,
                            &key.channel,
                            &key.thread_ts,
                            &rendered.text,
                            &rendered.blocks,
                            &approval_metadata(approval.id),
                        )
                        .await
                    {
                        Ok(ts) => {
                            store.record_post(approval.id, &ts).await?;
                            approval.message_ts = Some(ts);
                            return Ok(approval);
                        }
                        Err(e) => {
                            if let Err(release) = store
                                .release_post(approval.id, token, !e.may_have_taken_effect())
                                .await
                            {
                                warn!(approval_id = %approval.id, error = %release, "could not give the post's claim up");
                            }
                            return Err(ApprovalError::Slack(e));
                        }
                    }
                }
            }
        }
    }

    async fn find_in_thread(
        &self,
        approval: &Approval,
    ) -> Result<Option<MessageTs>, ApprovalError> {
        let key = &approval.key;
        let id = approval.id.to_string();
        let found = self
            .thread
            .bot_messages_in_thread(&key.team, &key.channel, &key.thread_ts, None)
            .await
            .map_err(ApprovalError::Slack)?;
        Ok(found
            .into_iter()
            .find(|m| {
                m.metadata.as_ref().is_some_and(|md| {
                    md.event_type == APPROVAL_EVENT_TYPE
                        && md.event_payload.get("approval_id").and_then(|v| v.as_str())
                            == Some(id.as_str())
                })
            })
            .map(|m| m.ts))
    }

    /// Expires what is due (each on exactly one replica) and updates their messages to say
    /// so. Returns how many it expired.
    pub async fn expire_due(&self) -> Result<usize, ApprovalError> {
        let expired = self.ports.store.expire_due(100).await?;
        for approval in &expired {
            info!(approval_id = %approval.id, "approval expired");
            update_message(self.ports.slack.as_ref(), approval).await;
        }
        Ok(expired.len())
    }

    /// Pending approvals (the gauge).
    pub async fn count_pending(&self) -> Result<i64, ApprovalError> {
        Ok(self.ports.store.count_pending().await?)
    }
}

/// Shows the approval's state in its message (best effort: a failure is logged; the state
/// is in the database and every later click is answered from it).
pub async fn update_message(
    slack: &dyn ApprovalSlack,
    approval: &Approval,
) -> Option<crate::conversation::SlackApiError> {
    let ts = approval.message_ts.as_ref()?;
    let rendered = blocks::settled(approval);
    let key = &approval.key;
    match slack
        .update_blocks(
            &key.team,
            &key.channel,
            ts,
            &rendered.text,
            &rendered.blocks,
        )
        .await
    {
        Ok(()) => None,
        Err(e) => {
            warn!(approval_id = %approval.id, error = %e, "chat.update of the approval message failed");
            Some(e)
        }
    }
}
