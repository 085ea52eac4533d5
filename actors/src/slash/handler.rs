//! What a recorded slash command, a question's turn and the assistant pane's events do.
//!
//! [`SlackStreamHandler`] is the handler of the `slack` stream: it sends the kinds of this
//! module to [`SlashHandler`] and everything else to the [`ConversationHandler`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::json;
use tracing::{info, warn};

use super::ports::{SlashSlack, SlashStore, SlashStoreError, WatchChange};
use super::{
    ASSISTANT_CONTEXT_KIND, ASSISTANT_STARTED_KIND, AssistantThread, COMMAND_KIND, Command,
    QUESTION_EVENT_TYPE, QUESTION_TURN_KIND, QuestionTurn, SlashCommand, SuggestedPrompt,
    default_prompts, question_text, thread_title, usage,
};
use crate::audit::AuditEntry;
use crate::cluster::Cluster;
use crate::conversation::{
    ConversationHandler, ConversationStore, MessageMetadata, SlackApi, SlackApiError,
};
use crate::handler::{EventHandler, HandleOutcome, HandlerError};
use crate::health::{ActorState, HealthRegistry};
use crate::ids::ThreadKey;
use crate::inbox::{EventPayload, InboundEvent, InboundEvents, NewInboundEvent};
use crate::slack_events::{
    self, Author, ChannelId, EventId, Inbound, SlackEvent, TeamId, Ts, Turn, TurnId,
};
use crate::{kinds, sources};

/// Slack errors that mean the app lacks the feature (the assistant scope, or a token that
/// cannot call the method): logged once per workspace and method, then not called again for
/// [`FEATURE_RECHECK`].
pub const FEATURE_MISSING_ERRORS: [&str; 4] = [
    "missing_scope",
    "not_allowed_token_type",
    "feature_not_enabled",
    "unknown_method",
];
/// How long a method Slack refused for a missing feature is not called again.
const FEATURE_RECHECK: Duration = Duration::from_secs(3600);
/// How far before the first posting attempt a retry looks for the question in the channel.
const RECOVERY_SLACK: i64 = 60;

/// Records an event in the inbox and dispatches it (the [`Cluster`] in the service).
#[async_trait]
pub trait Ingest: Send + Sync + 'static {
    /// Records `event` (a duplicate source id records nothing) and dispatches it when new.
    async fn ingest(&self, event: NewInboundEvent) -> Result<(), String>;
}

#[async_trait]
impl Ingest for Cluster {
    async fn ingest(&self, event: NewInboundEvent) -> Result<(), String> {
        Cluster::ingest(self, event)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

fn store_err(e: SlashStoreError) -> HandlerError {
    HandlerError::retryable(e)
}

fn slack_err(e: SlackApiError) -> HandlerError {
    if e.is_transient() {
        HandlerError::retryable(e)
    } else {
        HandlerError::permanent(e)
    }
}

/// The code in a Slack API error (`method: code`).
fn error_code(e: &SlackApiError) -> Option<&str> {
    match e {
        SlackApiError::Api(text) => {
            Some(text.rsplit(": ").next().unwrap_or(text).trim_matches('"'))
        }
        _ => None,
    }
}

/// The slash command, the question's turn and the assistant pane.
pub struct SlashHandler {
    store: Arc<dyn SlashStore>,
    slack: Arc<dyn SlashSlack>,
    web: Arc<dyn SlackApi>,
    conversations: Arc<ConversationHandler>,
    conversation_store: Arc<dyn ConversationStore>,
    ingest: Arc<dyn Ingest>,
    claims: Option<Arc<dyn InboundEvents>>,
    health: Option<HealthRegistry>,
    prompts: Vec<SuggestedPrompt>,
    /// (workspace, method) Slack refused for a missing feature, and when.
    missing: Mutex<HashMap<(TeamId, &'static str), Instant>>,
}

impl std::fmt::Debug for SlashHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlashHandler")
            .field("prompts", &self.prompts)
            .finish_non_exhaustive()
    }
}

/// The ports a [`SlashHandler`] runs on.
#[allow(missing_debug_implementations)]
pub struct SlashPorts {
    pub store: Arc<dyn SlashStore>,
    pub slack: Arc<dyn SlashSlack>,
    /// `chat.postMessage` of the question.
    pub web: Arc<dyn SlackApi>,
    /// Whether a DM thread has a conversation yet (its first message titles it).
    pub conversation_store: Arc<dyn ConversationStore>,
    /// Where the question's turn is recorded.
    pub ingest: Arc<dyn Ingest>,
}

impl SlashHandler {
    /// A handler over `ports`, running question turns through `conversations`.
    pub fn new(ports: SlashPorts, conversations: Arc<ConversationHandler>) -> Self {
        Self {
            store: ports.store,
            slack: ports.slack,
            web: ports.web,
            conversations,
            conversation_store: ports.conversation_store,
            ingest: ports.ingest,
            claims: None,
            health: None,
            prompts: default_prompts(),
            missing: Mutex::default(),
        }
    }

    /// Posts only while the event's claim in `inbox` holds (as the conversation handler).
    pub fn with_claim_fence(mut self, inbox: Arc<dyn InboundEvents>) -> Self {
        self.claims = Some(inbox);
        self
    }

    /// Where `status` reads the agent client's health.
    pub fn with_health(mut self, health: HealthRegistry) -> Self {
        self.health = Some(health);
        self
    }

    /// The assistant pane's suggested prompts (`slack.suggested_prompts`; empty: defaults).
    pub fn with_prompts(mut self, prompts: Vec<SuggestedPrompt>) -> Self {
        if !prompts.is_empty() {
            self.prompts = prompts;
        }
        self
    }

    async fn fence(&self, event: &InboundEvent) -> Result<(), HandlerError> {
        match &self.claims {
            Some(inbox) => inbox
                .confirm(event.claim())
                .await
                .map_err(|e| HandlerError::retryable(format!("not posting: {e}"))),
            None => Ok(()),
        }
    }

    /// A recorded command.
    pub async fn command(&self, event: &InboundEvent) -> Result<HandleOutcome, HandlerError> {
        let cmd = SlashCommand::parse(&event.payload)
            .map_err(|e| HandlerError::permanent(format!("unreadable slash command: {e}")))?;
        info!(team_id = %cmd.team_id, channel_id = %cmd.channel_id, user_id = %cmd.user_id, trigger_id = %cmd.trigger_id, "slash command");
        match cmd.request() {
            Command::Help => {
                self.answer(&cmd, &usage(&cmd.command)).await;
                Ok(HandleOutcome::Done)
            }
            Command::Status => {
                let text = self.status(&cmd).await?;
                self.answer(&cmd, &text).await;
                Ok(HandleOutcome::Done)
            }
            Command::Stop => self.set_watch(&cmd, false).await,
            Command::Watch => self.set_watch(&cmd, true).await,
            Command::Ask(question) => self.ask(event, &cmd, &question).await,
        }
    }

    /// An ephemeral answer to the caller: through the command's `response_url`, else (none,
    /// or it failed) `chat.postEphemeral`. Best effort: it never fails the command, whose
    /// effect (a state change, a question) is done or retried on its own.
    async fn answer(&self, cmd: &SlashCommand, text: &str) {
        if let Some(url) = &cmd.response_url {
            match self.slack.respond(url, text).await {
                Ok(()) => return,
                Err(e) => {
                    warn!(trigger_id = %cmd.trigger_id, error = %e, "response_url failed; trying chat.postEphemeral");
                }
            }
        }
        if let Err(e) = self
            .slack
            .post_ephemeral(&cmd.team_id, &cmd.channel_id, &cmd.user_id, text)
            .await
        {
            warn!(trigger_id = %cmd.trigger_id, error = %e, "the ephemeral answer could not be sent");
        }
    }

    /// `status`: the agent client's circuit, today's conversations, this channel.
    async fn status(&self, cmd: &SlashCommand) -> Result<String, HandlerError> {
        let midnight: DateTime<Utc> = Utc::now()
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .map_or_else(Utc::now, |t| t.and_utc());
        let today = self
            .store
            .conversations_since(&cmd.team_id, midnight)
            .await
            .map_err(store_err)?;
        let watch = self
            .store
            .channel_watch(&cmd.team_id, &cmd.channel_id)
            .await
            .map_err(store_err)?;
        let channel = match (watch.monitored, watch.stopped) {
            (true, _) => "watched: every message here is answered",
            (false, true) => "not watched (stopped): only mentions and threads I'm in are answered",
            (false, false) => "not watched: only mentions and threads I'm in are answered",
        };
        Ok(format!(
            "*InfraGPT status*\n• Agent: {}\n• Conversations today (UTC) in this workspace: {today}\n• This channel: {channel}",
            self.agent_status()
        ))
    }

    fn agent_status(&self) -> &'static str {
        let Some(health) = &self.health else {
            return "unknown";
        };
        match health.group(kinds::AGENT_CLIENT).first().map(|s| s.state) {
            None => "not called yet",
            Some(ActorState::Running | ActorState::Starting) => "reachable (circuit closed)",
            Some(ActorState::Restarting) => "recovering (circuit half open, probing)",
            Some(ActorState::Failed | ActorState::Stopped) => "unreachable (circuit open)",
        }
    }

    /// `stop` / `watch`: the change and its audit entry in one transaction, then the answer.
    async fn set_watch(
        &self,
        cmd: &SlashCommand,
        watch: bool,
    ) -> Result<HandleOutcome, HandlerError> {
        let entry = AuditEntry {
            organization_id: None,
            actor: format!("slack/{}", cmd.user_id),
            action: if watch {
                "channel.watched"
            } else {
                "channel.unwatched"
            }
            .to_owned(),
            target: Some(format!("{}/{}", cmd.team_id, cmd.channel_id)),
            details: json!({
                "team_id": cmd.team_id.as_str(),
                "channel_id": cmd.channel_id.as_str(),
                "channel_name": cmd.channel_name,
                "user_id": cmd.user_id.as_str(),
                "trigger_id": cmd.trigger_id.as_str(),
            }),
        };
        let change = self
            .store
            .set_channel_watch(&cmd.team_id, &cmd.channel_id, watch, entry)
            .await
            .map_err(store_err)?;
        let c = &cmd.command;
        let text = match (watch, change) {
            (true, WatchChange::Changed) => format!(
                "I'm now watching this channel: every message here gets an answer in its thread. `{c} stop` turns it off."
            ),
            (true, WatchChange::Unchanged) => {
                format!("I was already watching this channel. `{c} stop` turns it off.")
            }
            (false, WatchChange::Changed) => format!(
                "I stopped watching this channel: I answer only mentions and threads I'm in. A mention does not turn watching back on; `{c} watch` does."
            ),
            (false, WatchChange::Unchanged) => format!(
                "I was not watching this channel. `{c} watch` makes me answer every message here."
            ),
        };
        self.answer(cmd, &text).await;
        Ok(HandleOutcome::Done)
    }

    /// `/infragpt <question>`: the question is posted in the channel once (a durable record
    /// of the post, the message's metadata to recognise it after a crash, the event's claim
    /// checked right before posting), then its turn is recorded for the thread's worker.
    async fn ask(
        &self,
        event: &InboundEvent,
        cmd: &SlashCommand,
        question: &str,
    ) -> Result<HandleOutcome, HandlerError> {
        let post = self.store.question_post(cmd).await.map_err(store_err)?;
        let ts = match post.posted_ts {
            Some(ts) => ts,
            None => {
                let found = match post.posting_since {
                    Some(since) => self.find_question(cmd, since).await?,
                    None => None,
                };
                match found {
                    Some(ts) => ts,
                    None => self.post_question(event, cmd, question).await?,
                }
            }
        };
        let turn = QuestionTurn {
            team_id: cmd.team_id.clone(),
            channel_id: cmd.channel_id.clone(),
            ts,
            user_id: cmd.user_id.clone(),
            question: question.to_owned(),
            trigger_id: cmd.trigger_id.clone(),
            event_time: event.received_at.timestamp(),
        };
        let payload = serde_json::to_value(&turn).map_err(HandlerError::permanent)?;
        self.ingest
            .ingest(NewInboundEvent {
                source: sources::SLACK,
                source_id: turn.source_id(),
                routing_key: turn.thread().to_routing_key(),
                kind: QUESTION_TURN_KIND.to_owned(),
                payload: EventPayload::Json(payload),
            })
            .await
            .map_err(|e| HandlerError::retryable(format!("recording the question's turn: {e}")))?;
        Ok(HandleOutcome::Done)
    }

    async fn post_question(
        &self,
        event: &InboundEvent,
        cmd: &SlashCommand,
        question: &str,
    ) -> Result<Ts, HandlerError> {
        let since = Instant::now();
        self.fence(event).await?;
        self.store
            .question_posting(&cmd.trigger_id, true)
            .await
            .map_err(store_err)?;
        let metadata = MessageMetadata {
            event_type: QUESTION_EVENT_TYPE.to_owned(),
            event_payload: json!({ "trigger_id": cmd.trigger_id.as_str() })
                .as_object()
                .cloned()
                .unwrap_or_default(),
        };
        let text = question_text(&cmd.user_id, question);
        let post =
            self.web
                .post_message(&cmd.team_id, &cmd.channel_id, None, &text, Some(&metadata));
        // A replica paused since the fence may have lost the event to another one.
        let posted = crate::conversation::fenced_write(self.conversations.standing(), since, post)
            .await
            .map_err(|e| HandlerError::retryable(format!("not posting: {e}")))?;
        match posted {
            Ok(ts) => {
                self.store
                    .question_posted(&cmd.trigger_id, &ts)
                    .await
                    .map_err(store_err)?;
                Ok(ts)
            }
            Err(e) => {
                if !e.may_have_taken_effect()
                    && let Err(s) = self.store.question_posting(&cmd.trigger_id, false).await
                {
                    warn!(trigger_id = %cmd.trigger_id, error = %s, "could not clear the posting mark");
                }
                if !e.is_transient() {
                    let why = match error_code(&e) {
                        Some("not_in_channel" | "channel_not_found") => "I could not post your question here: I'm not in this channel. Invite me, or mention me in a channel I'm in.".to_owned(),
                        _ => "I could not post your question in this channel.".to_owned(),
                    };
                    self.answer(cmd, &why).await;
                }
                Err(slack_err(e))
            }
        }
    }

    /// The question an attempt that started at `since` may have posted without recording
    /// it: our bot's message carrying the command's trigger in its metadata.
    async fn find_question(
        &self,
        cmd: &SlashCommand,
        since: DateTime<Utc>,
    ) -> Result<Option<Ts>, HandlerError> {
        let oldest = Ts::try_from(format!("{}.000000", since.timestamp() - RECOVERY_SLACK))
            .map_err(HandlerError::permanent)?;
        let messages = self
            .slack
            .bot_messages_in_channel(&cmd.team_id, &cmd.channel_id, &oldest)
            .await
            .map_err(slack_err)?;
        let found = messages.into_iter().find(|m| {
            m.metadata.as_ref().is_some_and(|md| {
                md.event_type == QUESTION_EVENT_TYPE
                    && md.event_payload.get("trigger_id").and_then(|v| v.as_str())
                        == Some(cmd.trigger_id.as_str())
            })
        });
        match found {
            Some(m) => {
                info!(trigger_id = %cmd.trigger_id, ts = %m.ts, "found the question an earlier attempt posted");
                self.store
                    .question_posted(&cmd.trigger_id, &m.ts)
                    .await
                    .map_err(store_err)?;
                Ok(Some(m.ts))
            }
            None => Ok(None),
        }
    }

    /// The question's turn, in its thread's worker: a turn like a mention's, with the user
    /// as the sender; it marks the channel watched unless someone stopped it.
    pub async fn question_turn(&self, event: &InboundEvent) -> Result<HandleOutcome, HandlerError> {
        let q: QuestionTurn = serde_json::from_value(event.payload.clone())
            .map_err(|e| HandlerError::permanent(format!("unreadable question turn: {e}")))?;
        let turn = Turn {
            turn_id: TurnId {
                team_id: q.team_id.clone(),
                channel: q.channel_id.clone(),
                ts: q.ts.clone(),
            },
            thread: q.thread(),
            event_id: EventId(q.source_id()),
            author: Author::User(q.user_id.clone()),
            text: q.question.clone(),
            raw_text: question_text(&q.user_id, &q.question),
            event_time: q.event_time,
            marks_channel_monitored: true,
        };
        self.conversations.turn(event, turn).await
    }

    /// Calls an optional assistant method: a missing feature is logged once per workspace
    /// and method (then the method is skipped for a while), any failure only logged.
    async fn optional<F>(&self, team: &TeamId, method: &'static str, call: F)
    where
        F: std::future::Future<Output = Result<(), SlackApiError>>,
    {
        let key = (team.clone(), method);
        if self
            .missing_marks()
            .get(&key)
            .is_some_and(|at| at.elapsed() < FEATURE_RECHECK)
        {
            return;
        }
        match call.await {
            Ok(()) => {}
            Err(e) if error_code(&e).is_some_and(|c| FEATURE_MISSING_ERRORS.contains(&c)) => {
                warn!(team_id = %team, method, error = %e, "the Slack app lacks this assistant feature (scope assistant:write, the Agents & AI Apps feature); not calling it for an hour");
                self.missing_marks().insert(key, Instant::now());
            }
            Err(e) => warn!(team_id = %team, method, error = %e, "optional assistant call failed"),
        }
    }

    fn missing_marks(&self) -> std::sync::MutexGuard<'_, HashMap<(TeamId, &'static str), Instant>> {
        self.missing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `assistant_thread_started`: the suggested prompts.
    pub async fn assistant_started(
        &self,
        event: &InboundEvent,
    ) -> Result<HandleOutcome, HandlerError> {
        let t = AssistantThread::parse(&event.payload)
            .map_err(|e| HandlerError::permanent(format!("unreadable assistant thread: {e}")))?;
        self.optional(
            &t.team_id,
            "assistant.threads.setSuggestedPrompts",
            self.slack.set_suggested_prompts(
                &t.team_id,
                &t.channel_id,
                &t.thread_ts,
                &self.prompts,
            ),
        )
        .await;
        Ok(HandleOutcome::Done)
    }

    /// A `message` event: the conversation handler's; the first user message of a DM's
    /// thread (an assistant thread) then titles the thread.
    pub async fn message(&self, event: &InboundEvent) -> Result<HandleOutcome, HandlerError> {
        let title = self.title_candidate(event).await;
        let outcome = self.conversations.handle(event).await;
        if let (Ok(HandleOutcome::Done), Some((team, channel, thread_ts, text))) = (&outcome, title)
        {
            let title = thread_title(&text);
            if !title.is_empty() {
                self.optional(
                    &team,
                    "assistant.threads.setTitle",
                    self.slack.set_title(&team, &channel, &thread_ts, &title),
                )
                .await;
            }
        }
        outcome
    }

    /// A person's reply in a DM thread that has no conversation yet.
    async fn title_candidate(
        &self,
        event: &InboundEvent,
    ) -> Option<(TeamId, ChannelId, Ts, String)> {
        let Ok(Inbound::EventCallback(cb)) = slack_events::parse_value(event.payload.clone())
        else {
            return None;
        };
        let SlackEvent::Message(m) = &cb.event else {
            return None;
        };
        let thread_ts = m.thread_ts.as_ref().filter(|t| **t != m.ts)?;
        if m.channel_type.as_deref() != Some("im")
            || m.user.is_none()
            || m.bot_id.is_some()
            || m.subtype.is_some()
        {
            return None;
        }
        let key = ThreadKey::new(cb.team_id.clone(), m.channel.clone(), thread_ts.clone());
        match self.conversation_store.find_by_key(&key).await {
            Ok(None) => Some((
                cb.team_id.clone(),
                m.channel.clone(),
                thread_ts.clone(),
                m.text.clone(),
            )),
            Ok(Some(_)) => None,
            Err(e) => {
                warn!(error = %e, "could not tell whether the thread is new; not titling it");
                None
            }
        }
    }
}

/// The handler of the `slack` stream: the slash command's and assistant pane's kinds go to
/// [`SlashHandler`], everything else to the [`ConversationHandler`].
pub struct SlackStreamHandler {
    conversations: Arc<ConversationHandler>,
    slash: Arc<SlashHandler>,
}

impl std::fmt::Debug for SlackStreamHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackStreamHandler").finish_non_exhaustive()
    }
}

impl SlackStreamHandler {
    /// Both handlers.
    pub fn new(conversations: Arc<ConversationHandler>, slash: Arc<SlashHandler>) -> Self {
        Self {
            conversations,
            slash,
        }
    }
}

#[async_trait]
impl EventHandler for SlackStreamHandler {
    async fn handle(&self, event: &InboundEvent) -> Result<HandleOutcome, HandlerError> {
        match event.kind.as_str() {
            COMMAND_KIND => self.slash.command(event).await,
            QUESTION_TURN_KIND => self.slash.question_turn(event).await,
            ASSISTANT_STARTED_KIND => self.slash.assistant_started(event).await,
            ASSISTANT_CONTEXT_KIND => Ok(HandleOutcome::Ignored(
                "assistant context changes are recorded, not used".to_owned(),
            )),
            "message" => self.slash.message(event).await,
            _ => self.conversations.handle(event).await,
        }
    }
}
