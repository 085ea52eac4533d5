//! The conversation handler: what a Slack event does to a conversation. One instance serves
//! every thread; the router hands it one thread's events one at a time, in order.

mod approvals;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::json;
use tracing::{debug, info, warn};

use super::once::{
    Alone, BUSY_WAIT, BeforePost, FenceError, INTENT_LEASE, PostError, Poster, Standing,
};
use super::ports::{
    Agent, AgentAnswer, AgentError, AgentTurn, AgentTurnStart, Conversation, ConversationStore,
    ConversationStoreError, HistorySender, InsertOutcome, MessageKind, NewIntent, NewMessage,
    PastMessage, Posting, Sender, SlackApi, SlackApiError, StartIfNew, StoredMessage, TurnState,
    UserProfile,
};
use super::progress::{Progress, ProgressLock};
use super::recent::RecentMap;
use super::reply::{AnswerStyle, ReplyMode, split_message};
use crate::Metrics;
use crate::handler::{EventHandler, HandleOutcome, HandlerError};
use crate::ids::{ChannelId, ConversationId, MessageTs, TeamId, ThreadKey};
use crate::inbox::{EventRowId, InboundEvent, InboundEvents, RoutingKey};
use crate::slack_alerts::{AlertSource, AlertSources};
use crate::slack_events::{
    self, Author, BotId, DecideContext, Decision, Inbound, MessageKey, SlackEvent, TurnId,
};

/// The reply posted in the thread when the agent cannot answer a turn.
pub const UNAVAILABLE_REPLY: &str = ":warning: The InfraGPT assistant is unavailable right now, \
so I could not answer this message. It has been saved and an operator can retry it.";

/// The default of `agent.history_limit`: the latest messages of a thread a turn reads for
/// the agent, besides the thread's first one.
pub const DEFAULT_HISTORY_LIMIT: u32 = 100;

/// The notice posted in the thread when the agent answers `success: false` (the default of
/// `agent.failure_notice`). The agent's error text stays in the logs, the dead letter and the
/// admin API: it can be an internal exception, not something for the channel.
pub const DEFAULT_FAILURE_NOTICE: &str = ":warning: Sorry, I could not answer this message. \
The problem has been recorded and an operator can retry it.";

/// How long a channel this process marked monitored is not marked again. Every mention
/// would otherwise read and write its channel row; monitoring only ever turns on, so the
/// skip only delays, by this long, re-marking a channel whose row was deleted since.
const MONITORED_RECHECK: Duration = Duration::from_secs(60);
/// Past this many remembered channels, the stale ones are forgotten.
const MONITORED_REMEMBERED: usize = 10_000;

/// The reaction added to each message that becomes a turn.
pub const SEEN_REACTION: &str = "eyes";

/// The routing key of a Slack event callback: its thread, so that every event of a thread
/// (including the `app_mention`/`message` twins of one human message) is handled in order by
/// one actor. Events that belong to no thread go to one key per workspace.
pub fn routing_key(cb: &slack_events::EventCallback) -> RoutingKey {
    let (channel, ts, thread_ts) = match &cb.event {
        SlackEvent::AppMention(m) => (&m.channel, &m.ts, m.thread_ts.as_ref()),
        SlackEvent::Message(m) => (&m.channel, &m.ts, m.thread_ts.as_ref()),
        SlackEvent::MessageChanged { channel, ts, .. } => (channel, ts, None),
        SlackEvent::MessageDeleted {
            channel,
            deleted_ts,
        } => (channel, deleted_ts, None),
        SlackEvent::Other { .. } => {
            return ThreadKey::unthreaded_routing_key(cb.team_id.as_str());
        }
    };
    ThreadKey::of_message(&cb.team_id, channel, ts, thread_ts).to_routing_key()
}

fn store_err(e: ConversationStoreError) -> HandlerError {
    HandlerError::retryable(e)
}

fn slack_err(e: SlackApiError) -> HandlerError {
    if e.is_transient() {
        HandlerError::retryable(e)
    } else {
        HandlerError::permanent(e)
    }
}

fn post_err(e: PostError) -> HandlerError {
    match e {
        PostError::Store(e) => store_err(e),
        PostError::Slack(e) => slack_err(e),
        // Another process is posting the reply, or took it over: the retry finds it done.
        PostError::Busy { .. } | PostError::ClaimLost(_) => HandlerError::retryable(e),
        // Whoever owns the event now handles it; this attempt ends without posting.
        PostError::Fenced(_) => HandlerError::retryable(e),
    }
}

/// The pre-post check of one inbound event ([`ConversationHandler::before_post`]).
struct EventFence<'a> {
    handler: &'a ConversationHandler,
    event: &'a InboundEvent,
}

#[async_trait]
impl BeforePost for EventFence<'_> {
    async fn check(&self) -> Result<(), FenceError> {
        self.handler.before_post(self.event).await
    }
}

/// Handles Slack events for the conversation threads.
pub struct ConversationHandler {
    store: Arc<dyn ConversationStore>,
    slack: Arc<dyn SlackApi>,
    agent: Arc<dyn Agent>,
    reply_mode: ReplyMode,
    failure_notice: String,
    history_sender: HistorySender,
    answer_style: AnswerStyle,
    lease: Duration,
    busy_wait: Duration,
    /// The inbox whose claims fence posts (see [`Self::with_claim_fence`]).
    claims: Option<Arc<dyn InboundEvents>>,
    /// Asked right before each Slack write (see [`Self::with_standing`]).
    standing: Arc<dyn Standing>,
    /// Channels this handler marked monitored, and when (see [`MONITORED_RECHECK`]).
    monitored: Mutex<HashMap<(TeamId, ChannelId), Instant>>,
    /// Human messages this process made turns of lately, by the event that made each: the
    /// other twin (`app_mention` / `message`) is ignored without a statement.
    recent_turns: Mutex<RecentMap<TurnId, EventRowId>>,
    /// Where the stage timings go (`infragpt_stage_seconds`), when set.
    metrics: Option<Metrics>,
    /// Attempts of an event after which an unreachable agent is reported in the thread
    /// (see [`Self::with_agent_retries`]).
    agent_retries: u32,
    /// Bots whose posts are turns (`slack.alert_sources`).
    alert_sources: AlertSources,
    /// The turns' progress indicators (`slack.progress`), when shown.
    progress: Option<Arc<Progress>>,
    /// Approvals: clicks and modal submissions are decided here (see [`Self::with_approvals`]).
    approvals: Option<crate::approvals::ApprovalPorts>,
    /// The SendReplies this process handled (see [`Self::with_replies_here`]).
    replies_here: Option<Arc<super::RepliesHere>>,
    /// How long the agent works on a turn before the seen reaction is added (see
    /// [`Self::with_seen_delay`]).
    seen_delay: Duration,
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
        agent: Arc<dyn Agent>,
        reply_mode: ReplyMode,
    ) -> Self {
        Self {
            store,
            slack,
            agent,
            reply_mode,
            failure_notice: DEFAULT_FAILURE_NOTICE.to_owned(),
            history_sender: HistorySender::default(),
            answer_style: AnswerStyle::default(),
            lease: INTENT_LEASE,
            busy_wait: BUSY_WAIT,
            claims: None,
            standing: Arc::new(Alone),
            monitored: Mutex::default(),
            recent_turns: Mutex::new(RecentMap::new(RECENT_TURNS)),
            metrics: None,
            agent_retries: 0,
            alert_sources: AlertSources::default(),
            progress: None,
            replies_here: None,
            approvals: None,
            seen_delay: Duration::ZERO,
        }
    }

    /// Adds the seen reaction only when the agent is still working on a turn after `delay`
    /// (`slack.progress_delay_ms`, like the progress indicator): an answer within it says
    /// the message was seen, and a reaction landing beside it is noise in the thread and a
    /// Tier 3 call (about 50 a minute per workspace) spent. Zero (the default): as soon as
    /// the agent is asked.
    pub fn with_seen_delay(mut self, delay: Duration) -> Self {
        self.seen_delay = delay;
        self
    }

    /// Shows that a turn is being worked on while the agent works, and ends the indicator
    /// with the answer (`slack.progress`).
    pub fn with_progress(mut self, progress: Arc<Progress>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Reads what the SendReplies of this process did (tallied by the [`super::ReplyService`]
    /// built with the same record): once the agent returns, a turn whose answer was posted
    /// here is done without reading its state from the store again.
    pub fn with_replies_here(mut self, here: Arc<super::RepliesHere>) -> Self {
        self.replies_here = Some(here);
        self
    }

    /// Decides approvals: a click or a deny modal's submission recorded for a thread is
    /// handled by that thread's worker, in order with its messages, and the decision goes
    /// to the agent as a new turn. Without it, interactions are ignored.
    pub fn with_approvals(mut self, ports: crate::approvals::ApprovalPorts) -> Self {
        self.approvals = Some(ports);
        self
    }

    /// Posts of these bots in monitored channels are turns, their text flattened
    /// (`slack.alert_sources`).
    pub fn with_alert_sources(mut self, sources: Vec<AlertSource>) -> Self {
        self.alert_sources = AlertSources::new(sources);
        self
    }

    /// Retries a turn whose agent could not be reached (down, restarting, or the connection
    /// broke mid-call) while the event has been attempted at most `retry_budget` times,
    /// instead of posting the "unavailable" notice at once: an agent that is back within
    /// the inbox's retry backoff answers late rather than not at all. Pass the inbox's retry
    /// budget (`actors.retry_budget`), so the last attempt still posts the notice before
    /// the event becomes a dead letter. Default 0: the notice at the first failure.
    pub fn with_agent_retries(mut self, retry_budget: u32) -> Self {
        self.agent_retries = retry_budget;
        self
    }

    /// Records how long each stage of a turn takes (`begin_turn`, `start_turn`,
    /// `agent_call`, `deliver`) in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn stage(&self, stage: &str, started: Instant) {
        if let Some(m) = &self.metrics {
            m.observe_stage(stage, started.elapsed());
        }
    }

    /// Posts only while the event's claim in `inbox` holds: with several replicas, a replica
    /// that lost the event's partition (paused past its lease, cut off from the database)
    /// posts nothing for it. The service always sets it; without it (unit tests over fakes)
    /// every post goes ahead.
    pub fn with_claim_fence(mut self, inbox: Arc<dyn InboundEvents>) -> Self {
        self.claims = Some(inbox);
        self
    }

    /// A reply claimed by this process is not posted once its contact with the cluster
    /// broke after the claim (see [`Standing`]); the service passes its cluster.
    pub fn with_standing(mut self, standing: Arc<dyn Standing>) -> Self {
        self.standing = standing;
        self
    }

    /// What this handler asks right before each Slack write (the slash handler asks it too).
    pub(crate) fn standing(&self) -> &Arc<dyn Standing> {
        &self.standing
    }

    /// How long a claim on a reply lasts, and how long the handler waits for another
    /// process's claim on the same reply (tests shorten them).
    pub fn with_claim_timing(mut self, lease: Duration, busy_wait: Duration) -> Self {
        self.lease = lease;
        self.busy_wait = busy_wait;
        self
    }

    /// The one check right before each Slack post made for `event` (every message and file
    /// share of an answer or notice, after the reply is claimed and before the post is
    /// marked as under way). `Err` stops the posting: nothing more reaches Slack for this
    /// attempt, the claim is given up and the event is retried.
    ///
    /// The check: the event is still `processing` under this attempt's claim and its
    /// partition's lease is this replica's with at least `cluster.safety_margin_ms` left
    /// ([`InboundEvents::confirm`]).
    pub async fn before_post(&self, event: &InboundEvent) -> Result<(), FenceError> {
        match &self.claims {
            Some(inbox) => inbox
                .confirm(event.claim())
                .await
                .map_err(|e| FenceError(e.to_string())),
            None => Ok(()),
        }
    }

    fn poster<'a>(&'a self, fence: &'a dyn BeforePost) -> Poster<'a> {
        Poster {
            store: self.store.as_ref(),
            slack: self.slack.as_ref(),
            lease: self.lease,
            busy_wait: self.busy_wait,
            fence,
            standing: self.standing.clone(),
            progress: self.progress.as_deref().and_then(Progress::indicators),
        }
    }

    /// Finishes the answers to `ts` an earlier attempt (of any process) started and did not
    /// finish, before anything decides whether the turn is answered.
    async fn finish_started_answers(
        &self,
        event: &InboundEvent,
        key: &ThreadKey,
        conversation: ConversationId,
        ts: &MessageTs,
    ) -> Result<(), HandlerError> {
        let fence = EventFence {
            handler: self,
            event,
        };
        self.poster(&fence)
            .finish_started(key, conversation, ts)
            .await
            .map(drop)
            .map_err(post_err)
    }

    /// Answers are formatted and sized for Slack as `style` says (`agent.answer_format`,
    /// `slack.answer_file_threshold`); notices are posted as configured.
    pub fn with_answer_style(mut self, style: AnswerStyle) -> Self {
        self.answer_style = style;
        self
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
    /// never reaches the agent's history nor counts as the turn's answer), once per turn
    /// and text. Best effort: the turn's outcome does not depend on it.
    async fn post_notice(
        &self,
        event: &InboundEvent,
        key: &ThreadKey,
        conversation: ConversationId,
        in_reply_to: &MessageTs,
        text: &str,
    ) {
        if let Err(e) = self
            .post_reply(
                event,
                key,
                conversation,
                in_reply_to,
                text,
                MessageKind::Notice,
            )
            .await
        {
            warn!(conversation_id = %conversation, error = %e, "could not post the notice");
        }
    }

    /// Posts an answer or notice once (see [`super::once`]), checking
    /// [`Self::before_post`] right before each post.
    async fn post_reply(
        &self,
        event: &InboundEvent,
        key: &ThreadKey,
        conversation: ConversationId,
        in_reply_to: &MessageTs,
        text: &str,
        kind: MessageKind,
    ) -> Result<(), HandlerError> {
        let posting = match kind {
            MessageKind::Message => self.answer_style.plan(text),
            // Our own notices are configured in mrkdwn already, and short.
            MessageKind::Notice => Posting::Messages {
                parts: split_message(text),
            },
        };
        let intent = NewIntent {
            conversation_id: conversation,
            in_reply_to: Some(in_reply_to.clone()),
            kind,
            text: text.to_owned(),
            posting,
        };
        let fence = EventFence {
            handler: self,
            event,
        };
        self.poster(&fence)
            .post(key, &intent)
            .await
            .map(drop)
            .map_err(post_err)
    }

    /// One turn: record the user message (once per human message), then let the agent answer
    /// it. Each step is idempotent, so a retried event resumes where the last attempt stopped.
    pub async fn turn(
        &self,
        event: &InboundEvent,
        turn: slack_events::Turn,
    ) -> Result<HandleOutcome, HandlerError> {
        if turn.marks_channel_monitored {
            self.mark_monitored(&turn.thread.team, &turn.thread.channel)
                .await?;
        }
        let profile = self.sender_profile(&turn).await;
        let ts = &turn.turn_id.ts;
        let started = Instant::now();
        let message = user_message(event, &turn, &profile);
        let start = if self.store.checks_claims() {
            // A new message starts its agent turn in the same statement.
            let start = StartIfNew {
                claim: self.claims.as_ref().map(|_| event.claim()),
                progress_lease: self.progress_opened_by_store().map(Progress::lease),
            };
            self.store
                .begin_turn_starting(&turn.thread, message, start)
                .await
        } else {
            self.store.begin_turn(&turn.thread, message).await
        }
        .map_err(store_err)?;
        self.stage("begin_turn", started);
        match start.inserted {
            InsertOutcome::Exists { source_event_id } if source_event_id != Some(event.id) => {
                // The same human message arrived as another event (app_mention and message
                // twins, or a redelivery with a new event id): one turn only.
                return Ok(already_handled(ts, source_event_id));
            }
            _ => self.remember_turn(&turn.turn_id, event.id),
        }
        let conversation = start.conversation;

        // Nothing answers the turn yet: whatever answers it from here on is the agent's.
        let fresh = !start.state.answered && start.state.unfinished.is_empty();
        // A retry after a crash: the answer may already be in the thread, or half of it.
        if self
            .answered(event, &turn.thread, conversation.id, ts, start.state)
            .await?
        {
            return Ok(HandleOutcome::Done);
        }
        let agent_turn = self.agent_turn(&conversation, &turn, &profile, start.history);
        let opened = match start.started {
            Some(started) => started.progress,
            None => {
                let started = Instant::now();
                let opened = self.start_agent_turn(event, conversation.id, ts).await?;
                self.stage("start_turn", started);
                opened
            }
        };
        // The indicator opens before the agent is asked (so a reply it sends at once finds
        // it); Slack is told beside the agent call, which it must not delay.
        let indicator = match &self.progress {
            Some(progress) => match opened {
                Some(lock) => Some((progress, lock)),
                None if !self.store.opens_progress() => progress
                    .open(conversation.id, ts)
                    .await
                    .map(|lock| (progress, lock)),
                None => None,
            },
            None => None,
        };
        let started = Instant::now();
        let work = self.seen_beside(conversation.id, &turn, self.agent.process(agent_turn));
        let answer = match indicator {
            Some((progress, lock)) => {
                progress
                    .beside(&turn.thread, conversation.id, ts, lock, work)
                    .await
            }
            None => work.await,
        };
        self.stage("agent_call", started);
        match answer {
            Ok(answer) => {
                let started = Instant::now();
                let delivered = self
                    .deliver(event, &conversation, &turn, fresh, answer)
                    .await;
                self.stage("deliver", started);
                delivered
            }
            Err(e) => self.agent_failed(event, &conversation, &turn, e).await,
        }
    }

    /// Makes the turn current right before the agent is asked. The agent answers through
    /// SendReply, which posts under the conversation's current turn and cannot be fenced
    /// (the upstream agent names no turn). So a replica that lost this event (paused past
    /// its lease while another replica went on to the thread's next turns) must neither move
    /// the current turn back nor ask the agent: the claim is checked in the same step.
    async fn start_agent_turn(
        &self,
        event: &InboundEvent,
        conversation: ConversationId,
        ts: &MessageTs,
    ) -> Result<Option<ProgressLock>, HandlerError> {
        let claim = self.claims.as_ref().map(|_| event.claim());
        if claim.is_some() && !self.store.checks_claims() {
            self.before_post(event)
                .await
                .map_err(|e| HandlerError::retryable(format!("not asking the agent: {e}")))?;
        }
        // The turn's progress indicator opens in the same statement when the store can.
        let (start, lock) = match self.progress_opened_by_store() {
            Some(p) => self
                .store
                .start_agent_turn_with_progress(conversation, ts, claim, p.lease())
                .await
                .map_err(store_err)?,
            None => (
                self.store
                    .start_agent_turn(conversation, ts, claim)
                    .await
                    .map_err(store_err)?,
                None,
            ),
        };
        match start {
            AgentTurnStart::Started => Ok(lock),
            AgentTurnStart::Fenced => Err(HandlerError::retryable(
                "not asking the agent: the event's claim no longer holds (another replica owns it)",
            )),
        }
    }

    /// The progress settings when turns show progress and the store opens the indicator as
    /// it starts the turn.
    fn progress_opened_by_store(&self) -> Option<&Progress> {
        self.progress
            .as_deref()
            .filter(|p| p.indicators().is_some() && self.store.opens_progress())
    }

    /// An `app_mention` makes its channel monitored, named from `conversations.info` once.
    async fn mark_monitored(&self, team: &TeamId, channel: &ChannelId) -> Result<(), HandlerError> {
        let remembered = (team.clone(), channel.clone());
        if self
            .monitored_marks()
            .get(&remembered)
            .is_some_and(|at| at.elapsed() < MONITORED_RECHECK)
        {
            return Ok(());
        }
        let known = self.store.channel(team, channel).await.map_err(store_err)?;
        let name = match known.and_then(|c| c.name) {
            Some(name) => Some(name),
            None => match self.slack.channel_name(team, channel).await {
                Ok(name) => name,
                Err(e) => {
                    warn!(team_id = %team, channel_id = %channel, error = %e, "conversations.info failed");
                    None
                }
            },
        };
        self.store
            .upsert_channel(team, channel, name.as_deref(), true)
            .await
            .map_err(store_err)?;
        if name.is_some() {
            let mut marks = self.monitored_marks();
            if marks.len() >= MONITORED_REMEMBERED {
                marks.retain(|_, at| at.elapsed() < MONITORED_RECHECK);
            }
            marks.insert(remembered, Instant::now());
        }
        Ok(())
    }

    /// The event that made a turn of this human message in this process lately, if any.
    fn made_by(&self, id: &TurnId) -> Option<EventRowId> {
        self.recent_turns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .copied()
    }

    fn remember_turn(&self, id: &TurnId, made_by: EventRowId) {
        self.recent_turns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(id.clone(), || made_by);
    }

    fn monitored_marks(&self) -> std::sync::MutexGuard<'_, HashMap<(TeamId, ChannelId), Instant>> {
        // A panic while holding it leaves a plain map: still usable.
        self.monitored.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The author's profile (`users.info`); a lookup failure leaves it empty. A bot's is its
    /// name from the post: `users.info` knows no bot ids.
    async fn sender_profile(&self, turn: &slack_events::Turn) -> UserProfile {
        let team = &turn.thread.team;
        let user = match &turn.author {
            Author::User(user) => user,
            Author::Alert(origin) => {
                return UserProfile {
                    name: origin.name.clone(),
                    username: None,
                    email: None,
                };
            }
        };
        match self.slack.user_profile(team, user).await {
            Ok(p) => p,
            Err(e) => {
                warn!(team_id = %team, user_id = %user, error = %e, "users.info failed");
                UserProfile::default()
            }
        }
    }

    /// Runs `work` (the agent call) and adds the seen reaction once it has taken the seen
    /// delay ([`Self::with_seen_delay`]; at once without one), unless the agent's answer is
    /// under way here by then (a SendReply of this process began for the turn; one that
    /// reached another replica is not known here). The reaction never delays the work: it
    /// is sent in the background.
    async fn seen_beside<F: std::future::Future>(
        &self,
        conversation: ConversationId,
        turn: &slack_events::Turn,
        work: F,
    ) -> F::Output {
        if self.seen_delay.is_zero() {
            self.add_seen_reaction(turn);
            return work.await;
        }
        let mut work = std::pin::pin!(work);
        tokio::select! {
            biased;
            done = &mut work => return done,
            () = tokio::time::sleep(self.seen_delay) => {}
        }
        let replying = self
            .replies_here
            .as_ref()
            .is_some_and(|here| here.replying(conversation, &turn.turn_id.ts));
        if !replying {
            self.add_seen_reaction(turn);
        }
        work.await
    }

    /// Adds the "seen" reaction, best effort and off the turn's path: reactions.add is a
    /// Tier 3 method (about 50 a minute per workspace), which must not delay the agent call
    /// or the thread's next turn; over the workspace's rate the adapter refuses it at once
    /// (`RateLimited`) and it is skipped.
    fn add_seen_reaction(&self, turn: &slack_events::Turn) {
        let slack = self.slack.clone();
        let id = turn.turn_id.clone();
        tokio::spawn(async move {
            match slack
                .add_reaction(&id.team_id, &id.channel, &id.ts, SEEN_REACTION)
                .await
            {
                Ok(()) => {}
                // Over the workspace's rate: a late "seen" says nothing; the answer will.
                Err(SlackApiError::RateLimited { .. }) => {
                    debug!(team_id = %id.team_id, channel_id = %id.channel, ts = %id.ts, "seen reaction skipped: over the workspace's rate");
                }
                Err(e) => {
                    warn!(team_id = %id.team_id, channel_id = %id.channel, ts = %id.ts, error = %e, "reactions.add failed");
                }
            }
        });
    }

    /// True when the turn at `ts` has its answer, given what the store said of it (`state`):
    /// answers an earlier attempt (of any process) started and did not finish are finished
    /// first, then looked at again.
    async fn answered(
        &self,
        event: &InboundEvent,
        key: &ThreadKey,
        conversation: ConversationId,
        ts: &MessageTs,
        state: TurnState,
    ) -> Result<bool, HandlerError> {
        if state.unfinished.is_empty() {
            return Ok(state.answered);
        }
        self.finish_started_answers(event, key, conversation, ts)
            .await?;
        let state = self
            .store
            .turn_state(conversation, ts)
            .await
            .map_err(store_err)?;
        Ok(state.answered)
    }

    /// The request for the agent: the turn's text, the thread before it, and its context.
    fn agent_turn(
        &self,
        conversation: &Conversation,
        turn: &slack_events::Turn,
        profile: &UserProfile,
        history: Vec<StoredMessage>,
    ) -> AgentTurn {
        let key = &turn.thread;
        let ts = &turn.turn_id.ts;
        let past = past_messages(history, ts);
        let mut context = json!({
            "team_id": key.team.as_str(),
            "channel_id": key.channel.as_str(),
            "thread_ts": key.thread_ts.as_str(),
            "message_ts": ts.as_str(),
            "sender": {
                "user_id": turn.author.slack_id(),
                "name": profile.name,
                "username": profile.username,
                "email": profile.email,
            },
            "source": "slack",
        });
        // A post of an alert source: the agent knows it reads an alert, and whose.
        if let Author::Alert(origin) = &turn.author {
            context["alert"] = json!({
                "bot_id": origin.bot_id.as_str(),
                "app_id": origin.app_id.as_ref().map(|a| a.as_str()),
                "name": origin.name,
            });
        }
        // With plain senders the ids are not in the messages: they travel in the context.
        if self.history_sender == HistorySender::Plain {
            context["history_senders"] = serde_json::Value::Object(
                past.iter()
                    .map(|m| (m.id.to_string(), json!(m.sender.to_agent_sender())))
                    .collect(),
            );
        }
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
        AgentTurn {
            conversation_id: conversation.id,
            current_message: turn.text.clone(),
            past_messages,
            context,
            user_id: turn.author.slack_id().to_owned(),
            channel_id: key.channel.to_string(),
        }
    }

    /// The agent answered: post its answer unless it was posted through SendReply already.
    /// `fresh`: the turn had no answer, finished or not, when this attempt started it.
    async fn deliver(
        &self,
        event: &InboundEvent,
        conversation: &Conversation,
        turn: &slack_events::Turn,
        fresh: bool,
        answer: AgentAnswer,
    ) -> Result<HandleOutcome, HandlerError> {
        let ts = &turn.turn_id.ts;
        let posted_here = self
            .replies_here
            .as_deref()
            .is_some_and(|here| here.take_answered(conversation.id, ts));
        let refused_here = self
            .replies_here
            .as_deref()
            .is_some_and(|here| here.take_refused(conversation.id));
        // The agent's SendReply posted the answer in this process, and no earlier attempt
        // left one half-posted: the store would say the same.
        let answered = if posted_here && fresh {
            true
        } else {
            // A SendReply that stopped half way (here or on another replica) is finished
            // first.
            let state = self
                .store
                .turn_state(conversation.id, ts)
                .await
                .map_err(store_err)?;
            self.answered(event, &turn.thread, conversation.id, ts, state)
                .await?
        };
        if answered {
            // The agent posted through SendReply (send_reply mode).
            if !answer.success {
                warn!(conversation_id = %conversation.id, agent_type = %answer.agent_type, error = %answer.error_message, "agent posted a reply but answered success=false");
            }
            return Ok(HandleOutcome::Done);
        }
        if !answer.success {
            // The error text can be an internal exception: it goes to the logs and the dead
            // letter (admin API), the thread gets a short notice.
            let error = if answer.error_message.trim().is_empty() {
                "no reason given"
            } else {
                answer.error_message.as_str()
            };
            let attempts = u32::try_from(event.attempts).unwrap_or(0);
            if refused_here && attempts <= self.agent_retries {
                // Its SendReply was refused here for a moment (the store or Slack down):
                // the agent gave up on our failure, not on the question.
                warn!(conversation_id = %conversation.id, agent_type = %answer.agent_type, error, attempts, "the agent could not answer because its SendReply was refused for a moment; the turn will be retried");
                return Err(HandlerError::retryable(format!(
                    "the agent answered success=false after its SendReply was refused: {error}"
                )));
            }
            warn!(conversation_id = %conversation.id, agent_type = %answer.agent_type, error, "agent could not answer the turn");
            self.post_notice(
                event,
                &turn.thread,
                conversation.id,
                ts,
                &self.failure_notice,
            )
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
            // The upstream agent posts through SendReply before it returns; one that did not
            // (or whose SendReply was refused) is answered from its response so nothing is
            // lost.
            info!(conversation_id = %conversation.id, "agent returned without SendReply; posting its response");
        }
        self.post_reply(
            event,
            &turn.thread,
            conversation.id,
            ts,
            &answer.response_text,
            MessageKind::Message,
        )
        .await?;
        Ok(HandleOutcome::Done)
    }

    /// The agent could not answer. An unreachable agent is retried within the budget of
    /// [`Self::with_agent_retries`] (the inbox's backoff spaces the attempts, the client's
    /// circuit breaker keeps them cheap); otherwise, and at the last attempt, one short
    /// notice goes in the thread and the event becomes a dead letter (retryable by an
    /// operator).
    async fn agent_failed(
        &self,
        event: &InboundEvent,
        conversation: &Conversation,
        turn: &slack_events::Turn,
        error: AgentError,
    ) -> Result<HandleOutcome, HandlerError> {
        let attempts = u32::try_from(event.attempts).unwrap_or(0);
        if matches!(error, AgentError::Unavailable(_)) && attempts <= self.agent_retries {
            warn!(conversation_id = %conversation.id, error = %error, attempts, "agent unreachable; the turn will be retried");
            return Err(HandlerError::retryable(error));
        }
        warn!(conversation_id = %conversation.id, error = %error, "agent call failed");
        self.post_notice(
            event,
            &turn.thread,
            conversation.id,
            &turn.turn_id.ts,
            UNAVAILABLE_REPLY,
        )
        .await;
        Err(HandlerError::permanent(error))
    }

    /// What the conversation's store, channel and thread say about a callback.
    async fn decide_context(
        &self,
        cb: &slack_events::EventCallback,
    ) -> Result<DecideContext, HandlerError> {
        let team = &cb.team_id;
        let bot = self.slack.bot_identity(team).await.map_err(slack_err)?;
        let (channel_monitored, bot_in_thread) = match &cb.event {
            SlackEvent::Message(m) => {
                let monitored = self
                    .store
                    .channel(team, &m.channel)
                    .await
                    .map_err(store_err)?
                    .is_some_and(|c| c.monitored);
                let in_thread = match &m.thread_ts {
                    Some(t) => self
                        .store
                        .find_by_key(&ThreadKey::new(team.clone(), m.channel.clone(), t.clone()))
                        .await
                        .map_err(store_err)?
                        .is_some(),
                    None => false,
                };
                (monitored, in_thread)
            }
            _ => (false, false),
        };
        Ok(DecideContext {
            bot_user_id: Some(bot.user_id),
            channel_monitored,
            bot_in_thread,
            bot_id: bot.bot_id.map(BotId),
            alert_sources: self.alert_sources.clone(),
        })
    }

    /// An edit of a stored message.
    async fn edit(&self, key: &MessageKey, new_text: &str) -> Result<HandleOutcome, HandlerError> {
        let found = self
            .store
            .edit_message(&key.team_id, &key.channel, &key.ts, new_text)
            .await
            .map_err(store_err)?;
        Ok(if found {
            HandleOutcome::Done
        } else {
            HandleOutcome::Ignored("edited message is not stored".into())
        })
    }

    /// A delete of a stored message.
    async fn delete(&self, key: &MessageKey) -> Result<HandleOutcome, HandlerError> {
        let found = self
            .store
            .mark_deleted(&key.team_id, &key.channel, &key.ts)
            .await
            .map_err(store_err)?;
        Ok(if found {
            HandleOutcome::Done
        } else {
            HandleOutcome::Ignored("deleted message is not stored".into())
        })
    }
}

/// The user message a turn stores (its conversation is filled in by
/// [`ConversationStore::begin_turn`]).
fn user_message(
    event: &InboundEvent,
    turn: &slack_events::Turn,
    profile: &UserProfile,
) -> NewMessage {
    NewMessage {
        conversation_id: ConversationId(uuid::Uuid::nil()),
        slack_ts: turn.turn_id.ts.clone(),
        sender: match &turn.author {
            Author::User(user) => Sender::User(user.clone()),
            Author::Alert(origin) => Sender::Bot(origin.bot_id.clone()),
        },
        sender_name: profile.name.clone(),
        sender_email: profile.email.clone(),
        text: turn.text.clone(),
        source_event_id: Some(event.id),
        in_reply_to: None,
        kind: MessageKind::Message,
    }
}

/// What came before the turn at `ts`, as the agent sees it: a retried turn (admin retry of a
/// dead letter) must not see later messages of the thread as its past. Notices are ours, not
/// the conversation's: the agent never sees them.
fn past_messages(history: Vec<StoredMessage>, ts: &MessageTs) -> Vec<StoredMessage> {
    history
        .into_iter()
        .filter(|m| m.kind == MessageKind::Message)
        .filter(|m| {
            let turn_of = match m.sender {
                Sender::User(_) | Sender::Bot(_) => Some(&m.slack_ts),
                Sender::Agent => m.in_reply_to.as_ref(),
            };
            turn_of.is_none_or(|t| t.chrono_cmp(ts).is_lt())
        })
        .collect()
}

/// The outcome for the twin (or a redelivery under a new event id) of a message whose turn
/// `made_by` made (`None`: a row stored before events were remembered).
fn already_handled(ts: &MessageTs, made_by: Option<EventRowId>) -> HandleOutcome {
    let made_by = made_by.map_or_else(|| "?".to_owned(), |id| id.to_string());
    HandleOutcome::Ignored(format!(
        "message {ts} already handled as inbound event {made_by}"
    ))
}

/// How many recent turns a handler remembers for twins: they arrive within a second of each
/// other, so a few thousand cover any burst (about 100 bytes each).
const RECENT_TURNS: usize = 4096;

/// The callback inside an inbound Slack event; bodies that hold none are ignored, unreadable
/// ones are dead letters at once.
fn callback(
    event: &InboundEvent,
) -> Result<slack_events::EventCallback, Result<HandleOutcome, HandlerError>> {
    match slack_events::parse_value(event.payload.clone()) {
        Ok(Inbound::EventCallback(cb)) => Ok(*cb),
        Ok(Inbound::UrlVerification { .. }) => {
            Err(Ok(HandleOutcome::Ignored("url_verification".into())))
        }
        Ok(Inbound::Other { kind }) => Err(Ok(HandleOutcome::Ignored(format!(
            "body type {kind} is not handled"
        )))),
        Err(e) => Err(Err(HandlerError::permanent(format!(
            "unreadable slack event: {e}"
        )))),
    }
}

#[async_trait]
impl EventHandler for ConversationHandler {
    async fn handle(&self, event: &InboundEvent) -> Result<HandleOutcome, HandlerError> {
        if crate::approvals::interaction::is_interaction(&event.payload) {
            return self.interaction(event).await;
        }
        let cb = match callback(event) {
            Ok(cb) => cb,
            Err(outcome) => return outcome,
        };
        if let Some(id) = slack_events::turn_id(&cb)
            && let Some(made_by) = self.made_by(&id)
            && made_by != event.id
        {
            // The twin of a message this process made a turn of: both come for every
            // mention, usually together, so skipping the store here saves a round trip per
            // mention. After a restart (or on another replica) the store answers the same.
            return Ok(already_handled(&id.ts, Some(made_by)));
        }
        let ctx = self.decide_context(&cb).await?;
        match slack_events::decide(&cb, &ctx) {
            Decision::Turn(turn) => self.turn(event, turn).await,
            Decision::Update { key, new_text, .. } => self.edit(&key, &new_text).await,
            Decision::Delete { key } => self.delete(&key).await,
            Decision::Ignored(reason) => Ok(HandleOutcome::Ignored(reason.to_string())),
        }
    }
}
