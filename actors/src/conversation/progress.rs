//! Live progress of a turn in its Slack thread: the indicator people see while the agent
//! works, and `SendProgress`, the agent's way to say what it is doing.
//!
//! When the agent has worked on a turn for a moment (the delay, `slack.progress_delay_ms`;
//! an answer within it is all the thread sees) the thread shows that it is being worked on:
//! Slack's assistant status under the thread (`assistant.threads.setStatus`, "is
//! thinking…") in [`ProgressMode::Status`], or a short placeholder message in
//! [`ProgressMode::Placeholder`] (also where Slack refuses the status: the app lacks the
//! feature). A report the agent sends within the delay is shown at once instead. The
//! agent's progress reports replace what the indicator shows, at most once a second per
//! thread (the latest report wins; the ones in between are never shown). The answer ends
//! the indicator: Slack clears the status when the app posts in the thread, and the
//! answer's first message replaces the placeholder through `chat.update`, so the thread
//! ends with one message, not two.
//!
//! Several replicas may serve one turn (the worker on one, the agent's SendProgress and
//! SendReply on others), so the indicator's state is a row of the store
//! ([`ProgressStore`]) that doubles as a short lock: whoever changes the indicator in Slack
//! holds it, and the answer takes the row over only when nobody does. A report that arrives
//! after the answer, or while the answer replaces the placeholder, is ignored: it can never
//! overwrite the answer or bring the status back under it. Progress is best effort: a
//! failed Slack call is logged and the turn goes on.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::ports::{ConversationStore, ConversationStoreError, MessageMetadata, SlackApi};
use crate::ids::{ConversationId, MessageTs, ReplyIntentId, TeamId, ThreadKey};

/// `metadata.event_type` of a placeholder message.
pub const PROGRESS_EVENT_TYPE: &str = "infragpt_progress";
/// What the indicator says before the agent reports anything.
pub const THINKING: &str = "is thinking…";
/// How long a holder of the indicator may take to change it in Slack.
pub const PROGRESS_LEASE: Duration = Duration::from_secs(5);
/// Least time between two changes of one thread's indicator.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// A Slack call for the indicator gives up before the lease runs out, so the lock it holds
/// cannot lapse while the call may still land.
const SLACK_CALL_TIMEOUT: Duration = Duration::from_secs(4);
/// Longest progress text shown (characters); longer reports are cut with an ellipsis.
pub const MAX_PROGRESS_CHARS: usize = 150;
/// How long the agent may work before "is thinking…" is shown (`slack.progress_delay_ms`).
pub const DEFAULT_PROGRESS_DELAY: Duration = Duration::from_millis(500);

/// How a turn's progress is shown (`slack.progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressMode {
    /// Slack's assistant status under the thread; a placeholder message where Slack refuses
    /// it.
    #[default]
    Status,
    /// A placeholder message that the answer replaces.
    Placeholder,
    /// Nothing: SendProgress is accepted and ignored.
    Off,
}

/// Whoever holds a turn's indicator while changing it in Slack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressLock(pub Uuid);

/// What claiming a turn's pending progress found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressClaim {
    /// The caller holds the indicator and shows `text`: in the placeholder when there is
    /// one, as the status otherwise.
    Claimed {
        lock: ProgressLock,
        text: String,
        placeholder: Option<MessageTs>,
    },
    /// Changed less than a second ago, or held by someone else: try again after this long.
    Later(Duration),
    /// Nothing to show: no pending text, the turn is answered, or it has no indicator.
    Nothing,
}

/// Where the first message of a turn's answer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerSlot {
    /// In place of this placeholder (`chat.update`).
    Replace(MessageTs),
    /// As a new message: no placeholder, or another reply replaced it already.
    Post,
    /// The indicator is being changed right now: ask again after this long.
    Wait(Duration),
}

/// The indicators' state, shared by every replica (PostgreSQL's `turn_progress`).
#[async_trait]
pub trait ProgressStore: Send + Sync + 'static {
    /// Opens the indicator of a turn, held by the caller: `None` when it is open already (a
    /// retried turn keeps what it shows).
    async fn open_progress(
        &self,
        conversation: ConversationId,
        turn: &MessageTs,
        lease: Duration,
    ) -> Result<Option<ProgressLock>, ConversationStoreError>;
    /// Takes an opened indicator that nothing has been shown in yet, for `lease`: `None`
    /// when it is answered, held, or shows something already (a report came first).
    async fn lock_unshown(
        &self,
        conversation: ConversationId,
        turn: &MessageTs,
        lease: Duration,
    ) -> Result<Option<ProgressLock>, ConversationStoreError>;
    /// The indicator shows `text` (in `placeholder`, when one was posted): releases it.
    async fn progress_shown(
        &self,
        conversation: ConversationId,
        turn: &MessageTs,
        lock: ProgressLock,
        placeholder: Option<&MessageTs>,
        text: &str,
    ) -> Result<(), ConversationStoreError>;
    /// Records `text` as the turn's latest progress. False when the turn has no indicator
    /// or is answered (the report is ignored).
    async fn note_progress(
        &self,
        conversation: ConversationId,
        turn: &MessageTs,
        text: &str,
    ) -> Result<bool, ConversationStoreError>;
    /// Claims the latest progress for showing, if nobody holds the indicator and it last
    /// changed at least `interval` ago.
    async fn claim_progress(
        &self,
        conversation: ConversationId,
        turn: &MessageTs,
        lease: Duration,
        interval: Duration,
    ) -> Result<ProgressClaim, ConversationStoreError>;
    /// Releases the indicator after changing it.
    async fn release_progress(
        &self,
        conversation: ConversationId,
        turn: &MessageTs,
        lock: ProgressLock,
    ) -> Result<(), ConversationStoreError>;
    /// Ends the indicator for the reply `intent` (the same intent asking again gets the same
    /// answer): the placeholder its first message replaces, if any.
    async fn answer_slot(
        &self,
        conversation: ConversationId,
        turn: &MessageTs,
        intent: ReplyIntentId,
    ) -> Result<AnswerSlot, ConversationStoreError>;
}

/// Why a progress report was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    /// `conversation_id` is not a UUID.
    #[error("conversation_id {0:?} is not a valid UUID")]
    InvalidConversationId(String),
    /// The text is empty.
    #[error("text is empty")]
    EmptyText,
    /// No such conversation.
    #[error("conversation {0} not found")]
    NotFound(ConversationId),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] ConversationStoreError),
}

/// What a progress report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressOutcome {
    /// Shown now.
    Shown,
    /// Shown within a second, unless a later report or the answer comes first.
    Coalesced,
    /// Not shown, and not an error: the turn is answered, the conversation has no turn under
    /// way, or progress is off.
    Ignored(&'static str),
}

/// The placeholder's text for `text` (mrkdwn: the agent's words escaped, in italics).
pub fn placeholder_text(text: &str) -> String {
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(":hourglass_flowing_sand: _{}_", escaped.trim())
}

/// `text` on one line, cut to [`MAX_PROGRESS_CHARS`].
pub fn clip_progress(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= MAX_PROGRESS_CHARS {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(MAX_PROGRESS_CHARS - 1).collect();
    cut.push('…');
    cut
}

fn placeholder_metadata(turn: &MessageTs) -> MessageMetadata {
    let payload = json!({ "turn_ts": turn.as_str() });
    MessageMetadata {
        event_type: PROGRESS_EVENT_TYPE.to_owned(),
        event_payload: payload.as_object().cloned().unwrap_or_default(),
    }
}

/// Shows turns' progress (see the module docs). One per process, shared by the turn worker
/// (which opens the indicator) and the agent-facing SendProgress.
pub struct Progress {
    mode: ProgressMode,
    /// How long the agent works before the indicator is shown: an answer within it is all
    /// the thread sees.
    delay: Duration,
    store: Arc<dyn ProgressStore>,
    conversations: Arc<dyn ConversationStore>,
    slack: Arc<dyn SlackApi>,
    /// Workspaces where Slack refused the assistant status: they get placeholders.
    no_status: Mutex<HashSet<TeamId>>,
    /// Turns with a delayed showing scheduled in this process.
    scheduled: Mutex<HashSet<(ConversationId, MessageTs)>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("mode", &self.mode)
            .field("delay", &self.delay)
            .finish_non_exhaustive()
    }
}

impl Progress {
    /// Progress over its ports, shown as `mode` says.
    pub fn new(
        mode: ProgressMode,
        store: Arc<dyn ProgressStore>,
        conversations: Arc<dyn ConversationStore>,
        slack: Arc<dyn SlackApi>,
    ) -> Self {
        Self {
            mode,
            delay: DEFAULT_PROGRESS_DELAY,
            store,
            conversations,
            slack,
            no_status: Mutex::default(),
            scheduled: Mutex::default(),
        }
    }

    /// Shows "is thinking…" only once the agent has worked `delay` on a turn (zero: as soon
    /// as it is asked).
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The indicators' store, through which an answer ends its turn's indicator; `None`
    /// when progress is off (no turn has one).
    pub fn indicators(&self) -> Option<&dyn ProgressStore> {
        (self.mode != ProgressMode::Off).then_some(self.store.as_ref())
    }

    fn status_refused(&self, team: &TeamId) -> bool {
        self.no_status
            .lock()
            .map(|set| set.contains(team))
            .unwrap_or(false)
    }

    /// Opens the indicator of a turn that is about to go to the agent, for stores that
    /// cannot open it in the statement that starts the turn. The opening (one database
    /// write) is awaited, so a reply the agent sends at once finds it; then
    /// [`Self::beside`] tells Slack while the agent works. `None`: progress is off, the
    /// turn shows its indicator already (a retry), or the store failed (logged; the turn
    /// goes on without one).
    pub async fn open(
        &self,
        conversation: ConversationId,
        turn: &MessageTs,
    ) -> Option<ProgressLock> {
        if self.mode == ProgressMode::Off {
            return None;
        }
        match self
            .store
            .open_progress(conversation, turn, self.lease())
            .await
        {
            Ok(lock) => lock,
            Err(e) => {
                warn!(conversation_id = %conversation, error = %e, "could not open the turn's progress indicator");
                None
            }
        }
    }

    /// How long whoever opens an indicator holds it: nobody, when it is shown after a delay
    /// (an answer within the delay takes it over in its own claim, with no wait).
    pub fn lease(&self) -> Duration {
        if self.delay.is_zero() {
            PROGRESS_LEASE
        } else {
            Duration::ZERO
        }
    }

    /// Runs `work` (the agent call) while the turn's indicator, opened by this caller, shows
    /// "is thinking…": at once when there is no delay; otherwise only when `work` is still
    /// going after the delay and nothing else has shown or answered the turn meanwhile. An
    /// indicator change that has begun is finished before this returns, so the answer never
    /// waits for a lock that nobody will release. `opened` is the lock the opening returned:
    /// held without a delay, lapsed at once with one (the row is then taken afresh).
    pub async fn beside<F: std::future::Future>(
        &self,
        key: &ThreadKey,
        conversation: ConversationId,
        turn: &MessageTs,
        opened: ProgressLock,
        work: F,
    ) -> F::Output {
        if self.delay.is_zero() {
            return tokio::join!(work, self.show_thinking(key, conversation, turn, opened)).0;
        }
        let mut work = std::pin::pin!(work);
        tokio::select! {
            biased;
            done = &mut work => return done,
            () = tokio::time::sleep(self.delay) => {}
        }
        let show = async {
            match self
                .store
                .lock_unshown(conversation, turn, PROGRESS_LEASE)
                .await
            {
                Ok(Some(lock)) => self.show_thinking(key, conversation, turn, lock).await,
                Ok(None) => {
                    debug!(conversation_id = %conversation, "the indicator is answered or showing already")
                }
                Err(e) => {
                    warn!(conversation_id = %conversation, error = %e, "could not take the turn's progress indicator")
                }
            }
        };
        tokio::join!(work, show).0
    }

    /// Shows "is thinking…" in an indicator the caller holds (`lock`), then releases it.
    async fn show_thinking(
        &self,
        key: &ThreadKey,
        conversation: ConversationId,
        turn: &MessageTs,
        lock: ProgressLock,
    ) {
        let placeholder = self.show_first(key, turn, THINKING, "Thinking…").await;
        if let Err(e) = self
            .store
            .progress_shown(conversation, turn, lock, placeholder.as_ref(), THINKING)
            .await
        {
            // The lease frees the indicator anyway.
            warn!(conversation_id = %conversation, error = %e, "could not record the progress indicator");
        }
    }

    /// Shows a turn's indicator for the first time: `status` as the thread's status, or a
    /// placeholder saying `words` (returned) where that is the mode or Slack refuses the
    /// status.
    async fn show_first(
        &self,
        key: &ThreadKey,
        turn: &MessageTs,
        status: &str,
        words: &str,
    ) -> Option<MessageTs> {
        if self.mode == ProgressMode::Status && !self.status_refused(&key.team) {
            match self.set_status(key, status).await {
                StatusResult::Shown | StatusResult::Failed => return None,
                StatusResult::Refused => {}
            }
        }
        let posted = tokio::time::timeout(
            SLACK_CALL_TIMEOUT,
            self.slack.post_message(
                &key.team,
                &key.channel,
                Some(&key.thread_ts),
                &placeholder_text(words),
                Some(&placeholder_metadata(turn)),
            ),
        )
        .await;
        match posted {
            Ok(Ok(ts)) => Some(ts),
            Ok(Err(e)) => {
                warn!(team_id = %key.team, channel_id = %key.channel, error = %e, "could not post the progress placeholder");
                None
            }
            Err(_) => {
                warn!(team_id = %key.team, channel_id = %key.channel, "posting the progress placeholder timed out");
                None
            }
        }
    }

    async fn set_status(&self, key: &ThreadKey, status: &str) -> StatusResult {
        let result = tokio::time::timeout(
            SLACK_CALL_TIMEOUT,
            self.slack
                .set_thread_status(&key.team, &key.channel, &key.thread_ts, status),
        )
        .await;
        match result {
            Ok(Ok(())) => StatusResult::Shown,
            Ok(Err(e)) if !e.is_transient() => {
                // The app lacks the feature (`missing_scope`, `not_allowed_token_type`...):
                // this workspace gets placeholders from now on. Logged once per workspace.
                let first = self
                    .no_status
                    .lock()
                    .map(|mut set| set.insert(key.team.clone()))
                    .unwrap_or(false);
                if first {
                    warn!(team_id = %key.team, error = %e, "Slack refused the assistant status; showing progress as placeholder messages in this workspace");
                }
                StatusResult::Refused
            }
            Ok(Err(e)) => {
                warn!(team_id = %key.team, error = %e, "assistant.threads.setStatus failed");
                StatusResult::Failed
            }
            Err(_) => {
                warn!(team_id = %key.team, "assistant.threads.setStatus timed out");
                StatusResult::Failed
            }
        }
    }

    /// SendProgress: shows `text` as the progress of the conversation's current turn,
    /// coalesced to one change a second per thread.
    pub async fn report(
        self: &Arc<Self>,
        conversation_id: &str,
        text: &str,
    ) -> Result<ProgressOutcome, ProgressError> {
        let id: ConversationId = conversation_id
            .trim()
            .parse()
            .map_err(|_| ProgressError::InvalidConversationId(conversation_id.to_owned()))?;
        if text.trim().is_empty() {
            return Err(ProgressError::EmptyText);
        }
        let conversation = self
            .conversations
            .find(id)
            .await?
            .ok_or(ProgressError::NotFound(id))?;
        if self.mode == ProgressMode::Off {
            return Ok(ProgressOutcome::Ignored("progress is off (slack.progress)"));
        }
        let Some(turn) = conversation.current_turn_ts else {
            return Ok(ProgressOutcome::Ignored(
                "the conversation has no turn under way",
            ));
        };
        if !self
            .store
            .note_progress(id, &turn, &clip_progress(text))
            .await?
        {
            return Ok(ProgressOutcome::Ignored(
                "the turn is answered, or shows no progress",
            ));
        }
        Ok(self.flush(&conversation.key, id, &turn).await?)
    }

    /// Shows the turn's latest progress if it may change now; schedules it otherwise.
    async fn flush(
        self: &Arc<Self>,
        key: &ThreadKey,
        conversation: ConversationId,
        turn: &MessageTs,
    ) -> Result<ProgressOutcome, ConversationStoreError> {
        let mut outcome = ProgressOutcome::Ignored("the turn is answered");
        loop {
            match self
                .store
                .claim_progress(conversation, turn, PROGRESS_LEASE, PROGRESS_INTERVAL)
                .await?
            {
                ProgressClaim::Claimed {
                    lock,
                    text,
                    placeholder,
                } => {
                    match placeholder {
                        Some(ts) => {
                            self.update_placeholder(key, &ts, &text).await;
                            self.store
                                .release_progress(conversation, turn, lock)
                                .await?;
                        }
                        None => {
                            // The first showing (a report within the delay), or a
                            // placeholder that could not be posted before: show it as the
                            // worker would have, placeholder included.
                            let posted = self.show_first(key, turn, &text, &text).await;
                            self.store
                                .progress_shown(conversation, turn, lock, posted.as_ref(), &text)
                                .await?;
                        }
                    }
                    outcome = ProgressOutcome::Shown;
                }
                ProgressClaim::Later(wait) => {
                    self.schedule(key, conversation, turn, wait);
                    if outcome != ProgressOutcome::Shown {
                        outcome = ProgressOutcome::Coalesced;
                    }
                    return Ok(outcome);
                }
                ProgressClaim::Nothing => return Ok(outcome),
            }
        }
    }

    /// Shows the turn's latest progress after `wait` (once per turn and process: the latest
    /// text is read then). A process that stops before then loses the showing; the answer
    /// follows anyway.
    fn schedule(
        self: &Arc<Self>,
        key: &ThreadKey,
        conversation: ConversationId,
        turn: &MessageTs,
        wait: Duration,
    ) {
        let entry = (conversation, turn.clone());
        let new = self
            .scheduled
            .lock()
            .map(|mut set| set.insert(entry.clone()))
            .unwrap_or(false);
        if !new {
            return;
        }
        debug!(conversation_id = %conversation, wait_ms = wait.as_millis() as u64, "progress coalesced");
        let this = Arc::clone(self);
        let key = key.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
            if let Ok(mut set) = this.scheduled.lock() {
                set.remove(&entry);
            }
            if let Err(e) = this.flush(&key, entry.0, &entry.1).await {
                warn!(conversation_id = %entry.0, error = %e, "could not show the turn's progress");
            }
        });
    }

    /// Changes the placeholder to `text`.
    async fn update_placeholder(&self, key: &ThreadKey, ts: &MessageTs, text: &str) {
        let updated = tokio::time::timeout(
            SLACK_CALL_TIMEOUT,
            self.slack
                .update_message(&key.team, &key.channel, ts, &placeholder_text(text), None),
        )
        .await;
        match updated {
            Ok(Ok(())) => {
                info!(team_id = %key.team, channel_id = %key.channel, "progress shown in the placeholder")
            }
            Ok(Err(e)) => {
                warn!(team_id = %key.team, channel_id = %key.channel, error = %e, "could not update the progress placeholder")
            }
            Err(_) => {
                warn!(team_id = %key.team, channel_id = %key.channel, "updating the progress placeholder timed out")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusResult {
    Shown,
    /// Slack refused it for good: the app lacks the feature.
    Refused,
    /// Transient failure: nothing shown this time.
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_text_is_escaped_mrkdwn() {
        assert_eq!(
            placeholder_text("querying <Datadog> & co "),
            ":hourglass_flowing_sand: _querying &lt;Datadog&gt; &amp; co_"
        );
    }

    #[test]
    fn progress_text_is_one_short_line() {
        assert_eq!(clip_progress("  querying\n\tDatadog  "), "querying Datadog");
        let long = "é".repeat(400);
        let clipped = clip_progress(&long);
        assert_eq!(clipped.chars().count(), MAX_PROGRESS_CHARS);
        assert!(clipped.ends_with('…'));
    }

    #[test]
    fn modes_parse_from_config_spelling() {
        for (text, mode) in [
            ("status", ProgressMode::Status),
            ("placeholder", ProgressMode::Placeholder),
            ("off", ProgressMode::Off),
        ] {
            let parsed: ProgressMode = serde_json::from_value(json!(text)).unwrap();
            assert_eq!(parsed, mode);
        }
        assert!(serde_json::from_value::<ProgressMode>(json!("spinner")).is_err());
    }
}
