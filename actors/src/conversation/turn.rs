//! The conversation handler: what a Slack event does to a conversation. One instance serves
//! every thread; the router hands it one thread's events one at a time, in order.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;
use tracing::{info, warn};

use super::ports::{
    AgentError, AgentTurn, ConversationStore, ConversationStoreError, HistorySender, InsertOutcome,
    MessageKind, NewMessage, PastMessage, Sender, SlackApi, SlackApiError,
};
use super::reply::{ReplyMode, split_message};
use crate::handler::{EventHandler, HandleOutcome, HandlerError};
use crate::ids::{MessageTs, ThreadKey};
use crate::inbox::{InboundEvent, RoutingKey};
use crate::slack_events::{self, DecideContext, Decision, Inbound, SlackEvent};

/// The reply posted in the thread when the agent cannot answer a turn.
pub const UNAVAILABLE_REPLY: &str = ":warning: The InfraGPT assistant is unavailable right now, \
so I could not answer this message. It has been saved and an operator can retry it.";

/// The notice posted in the thread when the agent answers `success: false` (the default of
/// `agent.failure_notice`). The agent's error text stays in the logs, the dead letter and the
/// admin API: it can be an internal exception, not something for the channel.
pub const DEFAULT_FAILURE_NOTICE: &str = ":warning: Sorry, I could not answer this message. \
The problem has been recorded and an operator can retry it.";

/// The reaction added to each message that becomes a turn.
pub const SEEN_REACTION: &str = "eyes";

/// The routing key of a Slack event callback: its thread, so that every event of a thread
/// (including the `app_mention`/`message` twins of one human message) is handled in order by
/// one actor. Events that belong to no thread go to one key per workspace.
pub fn routing_key(cb: &slack_events::EventCallback) -> RoutingKey {
    let team = cb.team_id.as_str();
    let (channel, ts, thread_ts) = match &cb.event {
        SlackEvent::AppMention(m) => (&m.channel, &m.ts, m.thread_ts.as_ref()),
        SlackEvent::Message(m) => (&m.channel, &m.ts, m.thread_ts.as_ref()),
        SlackEvent::MessageChanged { channel, ts, .. } => (channel, ts, None),
        SlackEvent::MessageDeleted {
            channel,
            deleted_ts,
        } => (channel, deleted_ts, None),
        SlackEvent::Other { .. } => return RoutingKey(format!("{team}/-/-")),
    };
    let thread = thread_ts.unwrap_or(ts);
    RoutingKey(format!("{team}/{}/{}", channel.as_str(), thread.as_str()))
}

fn store_err(e: ConversationStoreError) -> HandlerError {
    HandlerError::retryable(e)
}

fn slack_err(e: SlackApiError) -> HandlerError {
    match e {
        SlackApiError::WorkspaceInactive { .. } | SlackApiError::UnknownWorkspace(_) => {
            HandlerError::permanent(e)
        }
        _ => HandlerError::retryable(e),
    }
}

/// Handles Slack events for the conversation threads.
pub struct ConversationHandler {
    store: Arc<dyn ConversationStore>,
    slack: Arc<dyn SlackApi>,
    agent: Arc<dyn super::ports::Agent>,
    reply_mode: ReplyMode,
    failure_notice: String,
    history_sender: HistorySender,
}

impl std::fmt::Debug for ConversationHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConversationHandler")
            .field("reply_mode", &self.reply_mode)
            .field("history_sender", &self.history_sender)
            .finish_non_exhaustive()
    }
}

impl ConversationHandler {
    /// Builds the handler over its ports.
    pub fn new(
        store: Arc<dyn ConversationStore>,
        slack: Arc<dyn SlackApi>,
        agent: Arc<dyn super::ports::Agent>,
        reply_mode: ReplyMode,
    ) -> Self {
        Self {
            store,
            slack,
            agent,
            reply_mode,
            failure_notice: DEFAULT_FAILURE_NOTICE.to_owned(),
            history_sender: HistorySender::default(),
        }
    }

    /// Posts `notice` instead of the agent's error text when it answers `success: false`
    /// (`agent.failure_notice`).
    pub fn with_failure_notice(mut self, notice: impl Into<String>) -> Self {
        self.failure_notice = notice.into();
        self
    }

    /// Spells past senders in the agent's history as `format` says (`agent.history_sender`).
    pub fn with_history_sender(mut self, format: HistorySender) -> Self {
        self.history_sender = format;
        self
    }

    /// Posts a notice of the service's own in the thread and stores it as a notice (so it
    /// never reaches the agent's history nor counts as the turn's answer). Best effort: the
    /// turn's outcome does not depend on it.
    async fn post_notice(
        &self,
        key: &ThreadKey,
        conversation: crate::ids::ConversationId,
        in_reply_to: &MessageTs,
        text: &str,
    ) {
        if let Err(e) = self
            .post_reply(key, conversation, in_reply_to, text, MessageKind::Notice)
            .await
        {
            warn!(conversation_id = %conversation, error = %e, "could not post the notice");
        }
    }

    async fn post_reply(
        &self,
        key: &ThreadKey,
        conversation: crate::ids::ConversationId,
        in_reply_to: &MessageTs,
        text: &str,
        kind: MessageKind,
    ) -> Result<(), HandlerError> {
        for chunk in split_message(text) {
            let ts = self
                .slack
                .post_message(&key.team, &key.channel, Some(&key.thread_ts), &chunk)
                .await
                .map_err(slack_err)?;
            self.store
                .insert_message(NewMessage {
                    conversation_id: conversation,
                    slack_ts: ts,
                    sender: Sender::Agent,
                    sender_name: None,
                    sender_email: None,
                    text: chunk,
                    source_event_id: None,
                    in_reply_to: Some(in_reply_to.clone()),
                    kind,
                })
                .await
                .map_err(store_err)?;
        }
        Ok(())
    }

    async fn turn(
        &self,
        event: &InboundEvent,
        turn: slack_events::Turn,
    ) -> Result<HandleOutcome, HandlerError> {
        let key = turn.thread.clone();
        let team = key.team.clone();
        let channel = key.channel.clone();
        let ts = turn.turn_id.ts.clone();
        let user = turn.user.clone();

        if turn.marks_channel_monitored {
            let known = self
                .store
                .channel(&team, &channel)
                .await
                .map_err(store_err)?;
            let name = match known.and_then(|c| c.name) {
                Some(name) => Some(name),
                None => match self.slack.channel_name(&team, &channel).await {
                    Ok(name) => name,
                    Err(e) => {
                        warn!(team_id = %team, channel_id = %channel, error = %e, "conversations.info failed");
                        None
                    }
                },
            };
            self.store
                .upsert_channel(&team, &channel, name.as_deref(), true)
                .await
                .map_err(store_err)?;
        }

        let conversation = self
            .store
            .upsert_conversation(&key)
            .await
            .map_err(store_err)?;
        let profile = match self.slack.user_profile(&team, &user).await {
            Ok(p) => p,
            Err(e) => {
                warn!(team_id = %team, user_id = %user, error = %e, "users.info failed");
                Default::default()
            }
        };
        let inserted = self
            .store
            .insert_message(NewMessage {
                conversation_id: conversation.id,
                slack_ts: ts.clone(),
                sender: Sender::User(user.clone()),
                sender_name: profile.name.clone(),
                sender_email: profile.email.clone(),
                text: turn.text.clone(),
                source_event_id: Some(event.id),
                in_reply_to: None,
                kind: MessageKind::Message,
            })
            .await
            .map_err(store_err)?;
        if let InsertOutcome::Exists { source_event_id } = inserted
            && source_event_id != Some(event.id)
        {
            // The same human message arrived as another event (app_mention and message
            // twins, or a redelivery with a new event id): one turn only.
            return Ok(HandleOutcome::Ignored(format!(
                "message {ts} already handled as inbound event {}",
                source_event_id.map_or_else(|| "?".to_owned(), |i| i.to_string())
            )));
        }

        // Best effort and off the turn's path: reactions.add is a Tier 3 method (about 50 a
        // minute per workspace), so under load the client throttles it for seconds, which
        // must not delay the agent call or the thread's next turn.
        {
            let (slack, team, channel, ts) = (
                self.slack.clone(),
                team.clone(),
                channel.clone(),
                ts.clone(),
            );
            tokio::spawn(async move {
                if let Err(e) = slack
                    .add_reaction(&team, &channel, &ts, SEEN_REACTION)
                    .await
                {
                    warn!(team_id = %team, channel_id = %channel, ts = %ts, error = %e, "reactions.add failed");
                }
            });
        }

        // A retry after a crash: the answer may already be in the thread.
        if self
            .store
            .agent_reply_exists(conversation.id, &ts, None)
            .await
            .map_err(store_err)?
        {
            return Ok(HandleOutcome::Done);
        }
        self.store
            .set_current_turn(conversation.id, &ts)
            .await
            .map_err(store_err)?;

        let history = self
            .store
            .history(conversation.id)
            .await
            .map_err(store_err)?;
        // What came before this turn: a retried turn (admin retry of a dead letter) must not
        // see later messages of the thread as its past. Notices are ours, not the
        // conversation's: the agent never sees them.
        let past: Vec<_> = history
            .into_iter()
            .filter(|m| m.kind == MessageKind::Message)
            .filter(|m| {
                let turn_of = match m.sender {
                    Sender::User(_) => Some(&m.slack_ts),
                    Sender::Agent => m.in_reply_to.as_ref(),
                };
                turn_of.is_none_or(|t| t.chrono_cmp(&ts).is_lt())
            })
            .collect();
        // With plain senders the ids are not in the messages: they travel in the context.
        let history_senders = (self.history_sender == HistorySender::Plain).then(|| {
            past.iter()
                .map(|m| (m.id.to_string(), json!(m.sender.to_agent_sender())))
                .collect::<serde_json::Map<_, _>>()
        });
        let past_messages = past
            .into_iter()
            .map(|m| PastMessage {
                message_id: m.id.to_string(),
                content: m.text,
                sender: m.sender.to_history_sender(self.history_sender),
                timestamp: m
                    .created_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            })
            .collect();
        let mut context = json!({
            "team_id": team.as_str(),
            "channel_id": channel.as_str(),
            "thread_ts": key.thread_ts.as_str(),
            "message_ts": ts.as_str(),
            "sender": {
                "user_id": user.as_str(),
                "name": profile.name,
                "username": profile.username,
                "email": profile.email,
            },
            "source": "slack",
        });
        if let Some(senders) = history_senders {
            context["history_senders"] = serde_json::Value::Object(senders);
        }
        let agent_turn = AgentTurn {
            conversation_id: conversation.id,
            current_message: turn.text.clone(),
            past_messages,
            context,
            user_id: user.to_string(),
            channel_id: channel.to_string(),
        };

        match self.agent.process(agent_turn).await {
            Ok(answer) => {
                let posted = self
                    .store
                    .agent_reply_exists(conversation.id, &ts, None)
                    .await
                    .map_err(store_err)?;
                if posted {
                    // The agent posted through SendReply (send_reply mode).
                    if !answer.success {
                        warn!(conversation_id = %conversation.id, agent_type = %answer.agent_type, error = %answer.error_message, "agent posted a reply but answered success=false");
                    }
                    return Ok(HandleOutcome::Done);
                }
                if !answer.success {
                    // The error text can be an internal exception: it goes to the logs and
                    // the dead letter (admin API), the thread gets a short notice.
                    let error = if answer.error_message.trim().is_empty() {
                        "no reason given"
                    } else {
                        answer.error_message.as_str()
                    };
                    warn!(conversation_id = %conversation.id, agent_type = %answer.agent_type, error, "agent could not answer the turn");
                    self.post_notice(&key, conversation.id, &ts, &self.failure_notice)
                        .await;
                    return Err(HandlerError::permanent(format!(
                        "the agent answered success=false (agent_type {:?}): {error}",
                        answer.agent_type
                    )));
                }
                if answer.response_text.trim().is_empty() {
                    return Ok(HandleOutcome::Done);
                }
                if self.reply_mode == ReplyMode::SendReply {
                    // The upstream agent posts through SendReply before it returns; one that
                    // did not (or whose SendReply was refused) is answered from its response
                    // so nothing is lost.
                    info!(conversation_id = %conversation.id, "agent returned without SendReply; posting its response");
                }
                self.post_reply(
                    &key,
                    conversation.id,
                    &ts,
                    &answer.response_text,
                    MessageKind::Message,
                )
                .await?;
                Ok(HandleOutcome::Done)
            }
            Err(e) => {
                warn!(conversation_id = %conversation.id, error = %e, "agent call failed");
                self.post_notice(&key, conversation.id, &ts, UNAVAILABLE_REPLY)
                    .await;
                Err(HandlerError::permanent(match e {
                    AgentError::Unavailable(_) | AgentError::Timeout(_) | AgentError::Failed(_) => {
                        e.to_string()
                    }
                }))
            }
        }
    }
}

#[async_trait]
impl EventHandler for ConversationHandler {
    async fn handle(&self, event: &InboundEvent) -> Result<HandleOutcome, HandlerError> {
        let cb = match slack_events::parse_value(event.payload.clone()) {
            Ok(Inbound::EventCallback(cb)) => cb,
            Ok(Inbound::UrlVerification { .. }) => {
                return Ok(HandleOutcome::Ignored("url_verification".into()));
            }
            Ok(Inbound::Other { kind }) => {
                return Ok(HandleOutcome::Ignored(format!(
                    "body type {kind} is not handled"
                )));
            }
            Err(e) => {
                return Err(HandlerError::permanent(format!(
                    "unreadable slack event: {e}"
                )));
            }
        };
        let team = cb.team_id.clone();
        let bot = self.slack.bot_identity(&team).await.map_err(slack_err)?;
        let (channel_monitored, bot_in_thread) = match &cb.event {
            SlackEvent::Message(m) => {
                let channel = m.channel.clone();
                let monitored = self
                    .store
                    .channel(&team, &channel)
                    .await
                    .map_err(store_err)?
                    .is_some_and(|c| c.monitored);
                let in_thread = match &m.thread_ts {
                    Some(t) => self
                        .store
                        .find_by_key(&ThreadKey::new(team.clone(), channel, t.clone()))
                        .await
                        .map_err(store_err)?
                        .is_some(),
                    None => false,
                };
                (monitored, in_thread)
            }
            _ => (false, false),
        };
        let ctx = DecideContext {
            bot_user_id: Some(bot.user_id.clone()),
            channel_monitored,
            bot_in_thread,
        };
        match slack_events::decide(&cb, &ctx) {
            Decision::Turn(turn) => self.turn(event, turn).await,
            Decision::Update { key, new_text, .. } => {
                let found = self
                    .store
                    .edit_message(&team, &key.channel, &key.ts, &new_text)
                    .await
                    .map_err(store_err)?;
                Ok(if found {
                    HandleOutcome::Done
                } else {
                    HandleOutcome::Ignored("edited message is not stored".into())
                })
            }
            Decision::Delete { key } => {
                let found = self
                    .store
                    .mark_deleted(&team, &key.channel, &key.ts)
                    .await
                    .map_err(store_err)?;
                Ok(if found {
                    HandleOutcome::Done
                } else {
                    HandleOutcome::Ignored("deleted message is not stored".into())
                })
            }
            Decision::Ignored(reason) => Ok(HandleOutcome::Ignored(reason.to_string())),
        }
    }
}
