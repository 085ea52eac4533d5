//! The approval side of [`ConversationHandler`] against in-memory fakes: no actix, no
//! database. A refused click changes nothing; a decision is made once, updates the message
//! and gives the agent its decision turn; a retry of the deciding event resumes without
//! deciding again or asking the agent twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::{ConversationHandler, MessageMetadata, ReplyMode, SlackApiError};
use crate::approvals::model::{
    Approval, ApprovalStatus, Decision, NewApproval, Refusal, RiskLevel,
};
use crate::approvals::ports::{ApprovalSlack, ApprovalStore, ApprovalStoreError, PostClaim};
use crate::approvals::{APPROVE_ACTION, ApprovalPorts, DENY_ACTION};
use crate::conversation::ConversationStore;
use crate::handler::{EventHandler, HandleOutcome};
use crate::ids::{
    ApprovalId, ChannelId, ConversationId, MessageTs, SlackUserId, TeamId, ThreadKey,
};
use crate::inbox::{EventRowId, InboundEvent};
use crate::sources;
use crate::testing::{FakeAgent, FakeSlack, MemoryConversationStore, claimed_event};

const ROOT: &str = "1700000000.000100";
const REQUEST_TS: &str = "1700000001.000100";

/// What the fakes answer for the calls only the agent-facing service makes.
fn not_used() -> ApprovalStoreError {
    ApprovalStoreError::Corrupt("not used by the worker".into())
}

#[derive(Default)]
struct MemoryApprovals {
    rows: Mutex<HashMap<ApprovalId, Approval>>,
    audit: Mutex<Vec<String>>,
}

#[async_trait]
impl ApprovalStore for MemoryApprovals {
    async fn create(&self, _new: &NewApproval) -> Result<(Approval, bool), ApprovalStoreError> {
        Err(not_used())
    }
    async fn get(&self, id: ApprovalId) -> Result<Option<Approval>, ApprovalStoreError> {
        Ok(self.rows.lock().get(&id).cloned())
    }
    async fn claim_post(
        &self,
        _: ApprovalId,
        _: Duration,
    ) -> Result<PostClaim, ApprovalStoreError> {
        Err(not_used())
    }
    async fn start_post(&self, _: ApprovalId, _: i32) -> Result<bool, ApprovalStoreError> {
        Err(not_used())
    }
    async fn record_post(&self, _: ApprovalId, _: &MessageTs) -> Result<(), ApprovalStoreError> {
        Err(not_used())
    }
    async fn release_post(&self, _: ApprovalId, _: i32, _: bool) -> Result<(), ApprovalStoreError> {
        Err(not_used())
    }
    async fn decide(
        &self,
        id: ApprovalId,
        decision: Decision,
        by: &SlackUserId,
        reason: Option<&str>,
        event: EventRowId,
    ) -> Result<Option<Approval>, ApprovalStoreError> {
        let mut rows = self.rows.lock();
        let Some(a) = rows.get_mut(&id) else {
            return Ok(None);
        };
        if a.status != ApprovalStatus::Pending || a.expires_at <= Utc::now() {
            return Ok(None);
        }
        a.status = decision.status();
        a.decided_by = Some(by.clone());
        a.decided_at = Some(Utc::now());
        a.reason = reason.map(str::to_owned);
        a.decided_event = Some(event);
        self.audit
            .lock()
            .push(format!("{}:{by}", decision.as_str()));
        Ok(Some(a.clone()))
    }
    async fn refuse(
        &self,
        _: &Approval,
        by: &SlackUserId,
        refusal: Refusal,
        _: EventRowId,
    ) -> Result<(), ApprovalStoreError> {
        self.audit
            .lock()
            .push(format!("refused:{}:{by}", refusal.as_str()));
        Ok(())
    }
    async fn expire_due(&self, _: i64) -> Result<Vec<Approval>, ApprovalStoreError> {
        Ok(Vec::new())
    }
    async fn count_pending(&self) -> Result<i64, ApprovalStoreError> {
        Ok(0)
    }
    async fn is_org_admin(&self, _: &TeamId, _: &str) -> Result<bool, ApprovalStoreError> {
        Ok(false)
    }
    async fn workspace_active(&self, _: &TeamId) -> Result<bool, ApprovalStoreError> {
        Ok(true)
    }
}

#[derive(Default)]
struct RecordingSlack {
    updates: Mutex<Vec<Value>>,
    ephemerals: Mutex<Vec<(SlackUserId, String)>>,
    views: Mutex<Vec<Value>>,
}

#[async_trait]
impl ApprovalSlack for RecordingSlack {
    async fn post_blocks(
        &self,
        _: &TeamId,
        _: &ChannelId,
        _: &MessageTs,
        _: &str,
        _: &Value,
        _: &MessageMetadata,
    ) -> Result<MessageTs, SlackApiError> {
        Err(SlackApiError::Api(
            "post_blocks: not used by the worker".into(),
        ))
    }
    async fn update_blocks(
        &self,
        _: &TeamId,
        _: &ChannelId,
        _: &MessageTs,
        _: &str,
        blocks: &Value,
    ) -> Result<(), SlackApiError> {
        self.updates.lock().push(blocks.clone());
        Ok(())
    }
    async fn post_ephemeral(
        &self,
        _: &TeamId,
        _: &ChannelId,
        user: &SlackUserId,
        _: Option<&MessageTs>,
        text: &str,
    ) -> Result<(), SlackApiError> {
        self.ephemerals.lock().push((user.clone(), text.to_owned()));
        Ok(())
    }
    async fn open_view(&self, _: &TeamId, _: &str, view: &Value) -> Result<(), SlackApiError> {
        self.views.lock().push(view.clone());
        Ok(())
    }
}

fn user(id: &str) -> SlackUserId {
    SlackUserId::parse(id).unwrap()
}

fn click(id: ApprovalId, who: &str, action_id: &str, action_ts: &str) -> Value {
    json!({
        "type": "block_actions",
        "team": {"id": "T1"}, "user": {"id": who, "team_id": "T1"},
        "trigger_id": "1.2.trigger",
        "channel": {"id": "C1"},
        "message": {"ts": REQUEST_TS, "thread_ts": ROOT},
        "actions": [{"action_id": action_id, "value": id.to_string(), "action_ts": action_ts,
                     "type": "button"}]
    })
}

fn event(id: i64, payload: Value) -> InboundEvent {
    claimed_event(
        id,
        sources::SLACK,
        &format!("interaction-{id}"),
        &format!("T1/C1/{ROOT}"),
        "block_actions",
        payload,
    )
}

#[tokio::test]
async fn refusals_change_nothing_and_a_decision_is_made_and_answered_once() {
    let store = MemoryConversationStore::new();
    let key = ThreadKey::new(
        TeamId::parse("T1").unwrap(),
        ChannelId::parse("C1").unwrap(),
        MessageTs::parse(ROOT).unwrap(),
    );
    let conversation = store.upsert_conversation(&key).await.unwrap();
    let approvals = Arc::new(MemoryApprovals::default());
    let id = ApprovalId::new_random();
    approvals.rows.lock().insert(
        id,
        Approval {
            id,
            conversation_id: ConversationId(conversation.id.0),
            key: key.clone(),
            action_key: "restart".into(),
            summary: "Restart api".into(),
            details: String::new(),
            risk: RiskLevel::High,
            approvers: vec![],
            requested_by: Some(user("UALICE")),
            turn_ts: Some(MessageTs::parse(ROOT).unwrap()),
            status: ApprovalStatus::Pending,
            expires_at: Utc::now() + chrono::Duration::hours(1),
            created_at: Utc::now(),
            message_ts: Some(MessageTs::parse(REQUEST_TS).unwrap()),
            decided_by: None,
            decided_at: None,
            reason: None,
            decided_event: None,
        },
    );
    let slack = FakeSlack::new();
    let agent = FakeAgent::new();
    let blocks = Arc::new(RecordingSlack::default());
    let handler = ConversationHandler::new(
        store.clone(),
        slack.clone(),
        agent.clone(),
        ReplyMode::Response,
    )
    .with_approvals(ApprovalPorts {
        store: approvals.clone(),
        slack: blocks.clone(),
    });

    // Bob may not decide: an ephemeral, an audit entry, nothing else.
    let out = handler
        .handle(&event(1, click(id, "UBOB", APPROVE_ACTION, "1.1")))
        .await;
    assert!(matches!(out, Ok(HandleOutcome::Done)), "{out:?}");
    assert_eq!(*approvals.audit.lock(), ["refused:not_allowed:UBOB"]);
    assert_eq!(blocks.ephemerals.lock().len(), 1);
    assert_eq!(blocks.ephemerals.lock()[0].0, user("UBOB"));
    assert!(blocks.updates.lock().is_empty());
    assert!(agent.turns().is_empty());

    // Alice's Deny opens the modal and decides nothing.
    handler
        .handle(&event(2, click(id, "UALICE", DENY_ACTION, "1.2")))
        .await
        .unwrap();
    assert_eq!(blocks.views.lock().len(), 1);
    assert_eq!(approvals.rows.lock()[&id].status, ApprovalStatus::Pending);

    // Alice approves: decided, the message updated, the agent's decision turn answered.
    let approve = event(3, click(id, "UALICE", APPROVE_ACTION, "1.3"));
    handler.handle(&approve).await.unwrap();
    assert_eq!(approvals.rows.lock()[&id].status, ApprovalStatus::Approved);
    assert_eq!(blocks.updates.lock().len(), 1);
    let turns = agent.turns();
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].context["approval"]["decision"], "approved");
    assert_eq!(turns[0].context["approval"]["decided_by"], "UALICE");
    assert_eq!(turns[0].context["message_ts"], REQUEST_TS);
    assert_eq!(turns[0].user_id, "UALICE");
    let posts = slack.posts();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert!(
        posts[0].text.starts_with("answer to: Approval"),
        "{}",
        posts[0].text
    );

    // The deciding event again (a crash after the decision): resumed, nothing decided twice,
    // the agent not asked again.
    handler.handle(&approve).await.unwrap();
    assert_eq!(agent.turns().len(), 1);
    assert_eq!(slack.posts().len(), 1);
    // A second click: refused as decided.
    handler
        .handle(&event(4, click(id, "UALICE", APPROVE_ACTION, "1.4")))
        .await
        .unwrap();
    assert_eq!(
        *approvals.audit.lock(),
        [
            "refused:not_allowed:UBOB",
            "approved:UALICE",
            "refused:already_decided:UALICE"
        ]
    );
}
