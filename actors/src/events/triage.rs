//! Triage: a rule with `triage: true` starts a conversation in the thread of each new event
//! message. The posted message is the thread's first turn: stored as the conversation's user
//! message (from the bot's user, text = the event's description), made the current turn, and
//! sent to the agent with the normalized event in the context JSON (`event`: kind, source,
//! links, labels...). The agent answers through SendReply as for any turn; people then
//! continue the thread like any conversation the bot is part of.
//!
//! A triage turn is its own inbox event (source `triage`, one per message, routing key the
//! thread's), so it survives crashes like every event; the turn's answer decides whether a
//! retried event asks the agent again (once answered, never).

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::conversation::{
    Agent, AgentError, AgentTurn, AgentTurnStart, ConversationStore, MessageKind, NewMessage,
    ReplyService, Sender, SlackApi,
};
use crate::ids::{ChannelId, ConversationId, MessageTs, TeamId, ThreadKey};
use crate::inbox::{InboundEvent, InboundEvents};
use crate::{EventHandler, HandleOutcome, HandlerError};

/// Stored name of a triage turn's sender (the event message is the bot's own).
pub const TRIAGE_SENDER_NAME: &str = "InfraGPT events";

/// The inbox payload of a triage turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriagePayload {
    /// The event message's row.
    pub message_id: uuid::Uuid,
    pub team_id: String,
    pub channel_id: String,
    /// The event message's ts: the thread.
    pub ts: String,
    pub organization_id: uuid::Uuid,
    pub description: String,
    /// The normalized event.
    pub event: serde_json::Value,
}

/// The handler of triage turns.
pub struct TriageHandler {
    store: Arc<dyn ConversationStore>,
    slack: Arc<dyn SlackApi>,
    agent: Arc<dyn Agent>,
    replies: Arc<ReplyService>,
    claims: Option<Arc<dyn InboundEvents>>,
}

impl std::fmt::Debug for TriageHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TriageHandler").finish_non_exhaustive()
    }
}

fn permanent(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::permanent(e)
}

fn retryable(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::retryable(e)
}

impl TriageHandler {
    /// A handler over the conversation ports; answers the agent returns without SendReply
    /// are posted through `replies`.
    pub fn new(
        store: Arc<dyn ConversationStore>,
        slack: Arc<dyn SlackApi>,
        agent: Arc<dyn Agent>,
        replies: Arc<ReplyService>,
    ) -> Self {
        Self {
            store,
            slack,
            agent,
            replies,
            claims: None,
        }
    }

    /// Confirms the event's claim before the agent is asked (several replicas).
    pub fn with_claim_fence(mut self, inbox: Arc<dyn InboundEvents>) -> Self {
        self.claims = Some(inbox);
        self
    }
}

#[async_trait]
impl EventHandler for TriageHandler {
    async fn handle(&self, event: &InboundEvent) -> Result<HandleOutcome, HandlerError> {
        let p: TriagePayload = serde_json::from_value(event.payload.clone())
            .map_err(|e| permanent(format!("triage payload: {e}")))?;
        let team = TeamId::parse(p.team_id.as_str()).map_err(permanent)?;
        let channel = ChannelId::parse(p.channel_id.as_str()).map_err(permanent)?;
        let ts = MessageTs::parse(p.ts.as_str()).map_err(permanent)?;
        let key = ThreadKey::new(team.clone(), channel.clone(), ts.clone());
        let bot = self.slack.bot_identity(&team).await.map_err(|e| {
            if e.is_transient() {
                retryable(e)
            } else {
                permanent(e)
            }
        })?;
        let start = self
            .store
            .begin_turn(
                &key,
                NewMessage {
                    conversation_id: ConversationId(uuid::Uuid::nil()),
                    slack_ts: ts.clone(),
                    sender: Sender::User(bot.user_id.clone()),
                    sender_name: Some(TRIAGE_SENDER_NAME.to_owned()),
                    sender_email: None,
                    text: p.description.clone(),
                    source_event_id: Some(event.id),
                    in_reply_to: None,
                    kind: MessageKind::Message,
                },
            )
            .await
            .map_err(retryable)?;
        let conversation = start.conversation;
        if start.state.answered {
            return Ok(HandleOutcome::Done);
        }
        let claim = self.claims.as_ref().map(|_| event.claim());
        if let (Some(inbox), Some(claim)) = (&self.claims, claim)
            && !self.store.checks_claims()
        {
            inbox
                .confirm(claim)
                .await
                .map_err(|e| retryable(format!("not asking the agent: {e}")))?;
        }
        match self
            .store
            .start_agent_turn(conversation.id, &ts, claim)
            .await
            .map_err(retryable)?
        {
            AgentTurnStart::Started => {}
            AgentTurnStart::Fenced => {
                return Err(retryable(
                    "not asking the agent: the event's claim no longer holds",
                ));
            }
        }
        let context = json!({
            "team_id": team.as_str(),
            "channel_id": channel.as_str(),
            "thread_ts": ts.as_str(),
            "message_ts": ts.as_str(),
            "source": "event",
            "organization_id": p.organization_id,
            "event": p.event,
        });
        let answer = self
            .agent
            .process(AgentTurn {
                conversation_id: conversation.id,
                current_message: p.description.clone(),
                past_messages: Vec::new(),
                context,
                user_id: bot.user_id.to_string(),
                channel_id: channel.to_string(),
            })
            .await;
        match answer {
            Ok(a) if a.success => {
                let answered = self
                    .store
                    .agent_reply_exists(conversation.id, &ts, None)
                    .await
                    .map_err(retryable)?;
                if !answered && !a.response_text.trim().is_empty() {
                    self.replies
                        .send_reply_to(
                            &conversation.id.to_string(),
                            &a.response_text,
                            Some(ts.as_str()),
                        )
                        .await
                        .map_err(retryable)?;
                }
                Ok(HandleOutcome::Done)
            }
            Ok(a) => Err(permanent(format!(
                "the agent could not triage: {}",
                a.error_message
            ))),
            Err(e @ (AgentError::Unavailable(_) | AgentError::Timeout(_))) => Err(retryable(e)),
            Err(e) => Err(permanent(e)),
        }
    }
}
