//! Replies into a conversation's thread: the SendReply logic the agent calls (over gRPC or
//! HTTP), and splitting long answers at Slack's message size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::once::{
    Alone, BUSY_WAIT, INTENT_LEASE, NoFence, PostError, PostOutcome, Poster, Standing,
};
use super::ports::{
    ConversationStore, ConversationStoreError, MessageKind, NewIntent, Posting, SlackApi,
    SlackApiError,
};
use super::progress::{ProgressError, ProgressOutcome};
use crate::ids::{ConversationId, MessageTs};

/// How the agent's answer reaches Slack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyMode {
    /// The agent calls SendReply before it returns (what the upstream agent does). An answer
    /// that was not sent through SendReply is posted from the response, so nothing is lost.
    #[default]
    SendReply,
    /// The service posts `response_text` of a successful response.
    Response,
}

/// What the agent's answers are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerFormat {
    /// Markdown (what models write): converted to Slack mrkdwn before posting.
    #[default]
    Markdown,
    /// Already Slack mrkdwn: posted as it is.
    Mrkdwn,
}

impl AnswerFormat {
    /// The answer as Slack should receive it.
    pub fn to_slack(self, answer: &str) -> String {
        match self {
            Self::Markdown => super::mrkdwn::from_markdown(answer),
            Self::Mrkdwn => answer.to_owned(),
        }
    }
}

/// How answers look in Slack: their format, and from what size they go as a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerStyle {
    pub format: AnswerFormat,
    /// Answers longer than this many characters are posted as their first lines plus the
    /// whole answer as a file snippet in the thread; 0: always as messages.
    pub file_threshold: usize,
}

impl Default for AnswerStyle {
    fn default() -> Self {
        Self {
            format: AnswerFormat::default(),
            file_threshold: DEFAULT_FILE_THRESHOLD,
        }
    }
}

/// The default of `slack.answer_file_threshold`.
pub const DEFAULT_FILE_THRESHOLD: usize = 12_000;
/// At most this many characters of a long answer are posted as text before its file.
const PREVIEW_CHARS: usize = 1_500;

impl AnswerStyle {
    /// How `answer` goes to Slack (what a reply intent records).
    pub fn plan(&self, answer: &str) -> Posting {
        let text = self.format.to_slack(answer);
        let chars = answer.chars().count();
        if self.file_threshold == 0 || chars <= self.file_threshold {
            return Posting::Messages {
                parts: split_message(&text),
            };
        }
        let head = split_message_at(&text, PREVIEW_CHARS)
            .into_iter()
            .next()
            .unwrap_or_default();
        Posting::File {
            preview: format!(
                "{head}\n\n_The whole answer ({chars} characters) is in the attached file._"
            ),
            stored: text,
            filename: match self.format {
                AnswerFormat::Markdown => "answer.md",
                AnswerFormat::Mrkdwn => "answer.txt",
            }
            .to_owned(),
            content: answer.to_owned(),
        }
    }
}

/// Slack accepts up to 40 000 characters but renders messages over 4 000 poorly; we split at
/// this many characters.
pub const MAX_MESSAGE_CHARS: usize = 3_900;

/// Splits text into Slack-sized messages on line boundaries (a single over-long line is cut
/// at a character boundary). Code fences left open by a split are closed and reopened so
/// Slack markdown renders the same.
pub fn split_message(text: &str) -> Vec<String> {
    split_message_at(text, MAX_MESSAGE_CHARS)
}

/// What starts a part that continues a code block cut by the split.
const REOPENED_FENCE: &str = "```\n";

fn split_message_at(text: &str, max: usize) -> Vec<String> {
    if text.chars().count() <= max {
        return vec![text.to_owned()];
    }
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut current_len = 0usize;
    let mut in_fence = false;
    let fence_budget = 4; // room for "\n```" when a part must close a fence
    let push = |parts: &mut Vec<String>, current: &mut String, in_fence: bool| {
        if in_fence {
            current.push_str("\n```");
        }
        parts.push(std::mem::take(current));
    };
    for line in text.split_inclusive('\n') {
        let mut line = line;
        loop {
            let len = line.chars().count();
            if current_len + len + fence_budget <= max {
                current.push_str(line);
                current_len += len;
                if line.trim_start().starts_with("```") {
                    in_fence = !in_fence;
                }
                break;
            }
            // A part holding only the fence reopened by the last split counts as empty:
            // pushing it would reopen the fence again, forever (found by the fuzzer).
            let only_reopened = in_fence && current == REOPENED_FENCE;
            if current_len > 0 && !only_reopened {
                push(&mut parts, &mut current, in_fence);
                current_len = 0;
                if in_fence {
                    current.push_str(REOPENED_FENCE);
                    current_len = 4;
                }
                continue;
            }
            // One line longer than a message: cut it.
            let take = max.saturating_sub(fence_budget + current_len).max(1);
            let cut = line.char_indices().nth(take).map_or(line.len(), |(i, _)| i);
            current.push_str(&line[..cut]);
            push(&mut parts, &mut current, in_fence);
            current_len = 0;
            if in_fence {
                current.push_str(REOPENED_FENCE);
                current_len = 4;
            }
            line = &line[cut..];
            if line.is_empty() {
                break;
            }
        }
    }
    if !current.trim().is_empty() {
        parts.push(current);
    }
    parts
}

/// SendReply failures.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// `conversation_id` is not a UUID.
    #[error("conversation_id {0:?} is not a valid UUID")]
    InvalidConversationId(String),
    /// The message is empty.
    #[error("message is empty")]
    EmptyMessage,
    /// `turn_ts` is not a Slack message ts.
    #[error("turn_ts {0:?} is not a Slack message ts (digits.digits)")]
    InvalidTurn(String),
    /// No such conversation.
    #[error("conversation {0} not found")]
    NotFound(ConversationId),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] ConversationStoreError),
    /// Slack refused or could not be reached.
    #[error(transparent)]
    Slack(#[from] SlackApiError),
    /// Another process is posting the same reply (or stopped while posting it and its claim
    /// has not run out): worth retrying later.
    #[error(transparent)]
    Contended(PostError),
    /// The task posting the reply panicked or was cancelled (the runtime shutting down).
    #[error("the reply task stopped: {0}")]
    Aborted(String),
}

impl ReplyError {
    /// True when the same call may succeed later: the store or Slack was unavailable, or
    /// another process held the same reply (what the API answers UNAVAILABLE).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store(_) | Self::Contended(_) => true,
            Self::Slack(slack) => slack.is_transient(),
            Self::InvalidConversationId(_)
            | Self::EmptyMessage
            | Self::InvalidTurn(_)
            | Self::NotFound(_)
            | Self::Aborted(_) => false,
        }
    }
}

impl From<PostError> for ReplyError {
    fn from(e: PostError) -> Self {
        match e {
            PostError::Store(e) => Self::Store(e),
            PostError::Slack(e) => Self::Slack(e),
            PostError::Busy { .. } | PostError::ClaimLost(_) | PostError::Fenced(_) => {
                Self::Contended(e)
            }
        }
    }
}

/// What SendReply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyOutcome {
    /// Posted now.
    Posted,
    /// The same text was already posted for the current turn (an agent retry).
    AlreadyPosted,
    /// A reply naming an older turn that is answered already: dropped.
    Superseded,
}

/// Posts agent answers into conversation threads, exactly once per turn and text across
/// processes (see [`super::once`]).
pub struct ReplyService {
    store: Arc<dyn ConversationStore>,
    slack: Arc<dyn SlackApi>,
    style: AnswerStyle,
    lease: Duration,
    busy_wait: Duration,
    /// Where the `send_reply` stage timing goes, when set.
    metrics: Option<crate::Metrics>,
    /// The turns' progress indicators, which an answer ends.
    progress: Option<Arc<super::progress::Progress>>,
    /// Asked right before each Slack write (see [`Self::with_standing`]).
    standing: Arc<dyn Standing>,
    /// Where replies to a current turn are tallied for its worker (see
    /// [`Self::with_replies_here`]).
    here: Option<Arc<super::RepliesHere>>,
}

impl std::fmt::Debug for ReplyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyService").finish_non_exhaustive()
    }
}

impl ReplyService {
    /// Builds the service over its ports.
    pub fn new(store: Arc<dyn ConversationStore>, slack: Arc<dyn SlackApi>) -> Self {
        Self {
            store,
            slack,
            style: AnswerStyle::default(),
            lease: INTENT_LEASE,
            busy_wait: BUSY_WAIT,
            metrics: None,
            progress: None,
            standing: Arc::new(Alone),
            here: None,
        }
    }

    /// Tallies each reply to a conversation's current turn in `here`, which the turn's
    /// worker in this process reads instead of the store once the agent returns.
    pub fn with_replies_here(mut self, here: Arc<super::RepliesHere>) -> Self {
        self.here = Some(here);
        self
    }

    /// A reply claimed by this process is not posted once its contact with the cluster
    /// broke after the claim (the others may have taken it over): the service passes its
    /// cluster; the default ([`Alone`]) never refuses.
    pub fn with_standing(mut self, standing: Arc<dyn Standing>) -> Self {
        self.standing = standing;
        self
    }

    /// Answers end their turn's progress indicator (replacing its placeholder).
    pub fn with_progress(mut self, progress: Arc<super::progress::Progress>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Answers are formatted and sized for Slack as `style` says (`agent.answer_format`,
    /// `slack.answer_file_threshold`).
    pub fn with_answer_style(mut self, style: AnswerStyle) -> Self {
        self.style = style;
        self
    }

    /// How long a claim on a reply lasts, and how long a second caller of the same reply
    /// waits for another process's claim before answering UNAVAILABLE (tests shorten them).
    pub fn with_claim_timing(mut self, lease: Duration, busy_wait: Duration) -> Self {
        self.lease = lease;
        self.busy_wait = busy_wait;
        self
    }

    /// SendReply: posts `message` (converted to mrkdwn unless it is already) in the
    /// conversation's thread and stores what was posted as an agent message answering the
    /// current turn. The same text for the same turn is posted once, whichever replica gets
    /// the call: a concurrent second call waits for the first one's post (up to the busy
    /// wait) and answers AlreadyPosted.
    pub async fn send_reply(
        &self,
        conversation_id: &str,
        message: &str,
    ) -> Result<ReplyOutcome, ReplyError> {
        self.send_reply_to(conversation_id, message, None).await
    }

    /// SendReply naming the turn it answers (`turn_ts`, optional in the contract: an agent
    /// may echo the `message_ts` of ProcessMessage's context; the upstream agent does not).
    /// A reply for the current turn, or without a turn, is [`Self::send_reply`]. A reply
    /// for an older turn is posted under that turn, unless the turn has an answer already:
    /// then it is the late answer of a superseded request (a replica that was paused past
    /// its lease asked the agent again after another replica had answered) and nothing is
    /// posted ([`ReplyOutcome::Superseded`]).
    pub async fn send_reply_to(
        &self,
        conversation_id: &str,
        message: &str,
        turn: Option<&str>,
    ) -> Result<ReplyOutcome, ReplyError> {
        let started = std::time::Instant::now();
        let outcome = self.send(conversation_id, message, turn).await;
        if let Some(m) = &self.metrics {
            m.observe_stage("send_reply", started.elapsed());
        }
        if let (Err(e), Some(here)) = (&outcome, &self.here)
            && e.is_transient()
            && let Ok(id) = conversation_id.trim().parse::<ConversationId>()
        {
            // The agent may give up on it and answer success=false: the turn's worker then
            // tries again instead of posting a notice.
            here.refused(id);
        }
        outcome
    }

    /// [`Self::send_reply_to`] in a task of its own, which the caller going away does not
    /// stop: a request handler's future is dropped when its client disconnects or gives up,
    /// and a post dropped half-way keeps its reply claim until the lease runs out (30 s),
    /// so every retry of the same reply (the agent's, through any replica, and the turn's)
    /// would wait for it. Finished instead, the retry finds it posted.
    pub async fn send_reply_detached(
        self: &Arc<Self>,
        conversation_id: String,
        message: String,
        turn: Option<String>,
    ) -> Result<ReplyOutcome, ReplyError> {
        use tracing::Instrument as _;
        let this = Arc::clone(self);
        let work = async move {
            this.send_reply_to(&conversation_id, &message, turn.as_deref())
                .await
        };
        tokio::spawn(work.instrument(tracing::Span::current()))
            .await
            .map_err(|e| ReplyError::Aborted(e.to_string()))?
    }

    /// SendProgress: shows what the agent is doing in the conversation's thread (see
    /// [`super::progress`]). Without progress configured the call is checked and ignored.
    pub async fn send_progress(
        &self,
        conversation_id: &str,
        text: &str,
    ) -> Result<ProgressOutcome, ProgressError> {
        match &self.progress {
            Some(progress) => progress.report(conversation_id, text).await,
            None => {
                let id: ConversationId = conversation_id.trim().parse().map_err(|_| {
                    ProgressError::InvalidConversationId(conversation_id.to_owned())
                })?;
                if text.trim().is_empty() {
                    return Err(ProgressError::EmptyText);
                }
                self.store
                    .find(id)
                    .await?
                    .ok_or(ProgressError::NotFound(id))?;
                Ok(ProgressOutcome::Ignored("progress is off (slack.progress)"))
            }
        }
    }

    /// Whether replies end progress indicators (progress is shown), so the claim may take a
    /// new reply's indicator over in the same step.
    fn takes_indicator(&self) -> bool {
        self.progress
            .as_deref()
            .and_then(super::progress::Progress::indicators)
            .is_some()
    }

    /// Records how long each SendReply takes (stage `send_reply`) in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    async fn send(
        &self,
        conversation_id: &str,
        message: &str,
        turn: Option<&str>,
    ) -> Result<ReplyOutcome, ReplyError> {
        let id: ConversationId = conversation_id
            .trim()
            .parse()
            .map_err(|_| ReplyError::InvalidConversationId(conversation_id.to_owned()))?;
        if message.trim().is_empty() {
            return Err(ReplyError::EmptyMessage);
        }
        let turn = match turn.map(str::trim).filter(|t| !t.is_empty()) {
            Some(t) => {
                Some(MessageTs::parse(t).map_err(|_| ReplyError::InvalidTurn(t.to_owned()))?)
            }
            None => None,
        };
        let mut intent = NewIntent {
            conversation_id: id,
            in_reply_to: turn,
            kind: MessageKind::Message,
            text: message.to_owned(),
            posting: self.style.plan(message),
        };
        // The conversation and, for its current turn, the claim: one statement.
        let asked = Instant::now();
        let (conversation, first) = self
            .store
            .claim_reply(&intent, self.lease, self.takes_indicator())
            .await?
            .ok_or(ReplyError::NotFound(id))?;
        let mut tally = None;
        let first = match (first, &intent.in_reply_to) {
            (Some(claim), _) => {
                intent.in_reply_to = conversation.current_turn_ts.clone();
                tally = self
                    .here
                    .as_deref()
                    .zip(intent.in_reply_to.as_ref())
                    .map(|(here, turn)| here.begin(id, turn));
                Some((claim, asked))
            }
            (None, Some(turn)) => {
                // A reply for an older turn.
                if self.store.agent_reply_exists(id, turn, None).await? {
                    tracing::info!(conversation_id = %id, turn_ts = %turn, "late reply for an answered turn dropped");
                    return Ok(ReplyOutcome::Superseded);
                }
                None
            }
            (None, None) => {
                return Err(ReplyError::Aborted(
                    "the store claimed no reply for the current turn".into(),
                ));
            }
        };
        let poster = Poster {
            store: self.store.as_ref(),
            slack: self.slack.as_ref(),
            lease: self.lease,
            busy_wait: self.busy_wait,
            fence: &NoFence,
            standing: self.standing.clone(),
            progress: self
                .progress
                .as_deref()
                .and_then(super::progress::Progress::indicators),
        };
        let outcome = match poster
            .post_claimed(&conversation.key, &intent, first)
            .await?
        {
            PostOutcome::Posted => ReplyOutcome::Posted,
            PostOutcome::AlreadyPosted => ReplyOutcome::AlreadyPosted,
        };
        // Dropped without this on an error: the turn's worker then reads the store.
        if let Some(tally) = tally {
            tally.posted();
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_message() {
        assert_eq!(split_message("hello"), vec!["hello".to_owned()]);
    }

    #[test]
    fn splits_on_line_boundaries() {
        let text = "aaaa\nbbbb\ncccc\n";
        let parts = split_message_at(text, 10);
        assert!(parts.iter().all(|p| p.chars().count() <= 10), "{parts:?}");
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn cuts_overlong_lines() {
        let text = "x".repeat(25);
        let parts = split_message_at(&text, 10);
        assert!(parts.iter().all(|p| p.chars().count() <= 10), "{parts:?}");
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn overlong_line_in_a_reopened_fence_is_cut() {
        // A split inside a code block, then a line longer than a message: the part that
        // reopened the fence used to be pushed (empty) and reopened again, forever.
        let text = format!("```\n{}\n{}\n```\n", "x".repeat(12), "y".repeat(50));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(split_message_at(&text, 20)));
        let parts = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the split ends");
        assert!(parts.len() < 10, "{parts:?}");
        assert!(parts.iter().all(|p| p.chars().count() <= 20), "{parts:?}");
        for p in &parts {
            assert_eq!(p.matches("```").count() % 2, 0, "unbalanced fence in {p:?}");
            assert_ne!(p.trim(), "```\n```", "an empty code block: {parts:?}");
        }
        let ys: usize = parts.iter().map(|p| p.matches('y').count()).sum();
        assert_eq!(ys, 50, "{parts:?}");
    }

    #[test]
    fn reopens_code_fences() {
        let text = "```\nline one\nline two\nline three\n```\n";
        let parts = split_message_at(text, 20);
        for p in &parts {
            assert_eq!(p.matches("```").count() % 2, 0, "unbalanced fence in {p:?}");
        }
    }
}
