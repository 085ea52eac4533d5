//! Exactly-once posting of replies (answers and notices) into Slack threads, across
//! processes and crashes.
//!
//! Slack has no idempotency key, so every reply is first recorded as an intent in the store,
//! keyed by (conversation, turn, text), and claimed with a lease; only the claim's holder
//! posts. Each message carries the intent's id and its part number in Slack's message
//! `metadata`; each posted message is stored together with the intent's progress. A claim
//! that finds a message an earlier claim may have posted without recording it looks in the
//! thread for that metadata before posting again. ARCHITECTURE.md ("Exactly-once posting")
//! says what is recorded when and which windows remain.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::json;
use tracing::{debug, info, warn};

use super::ports::{
    ClaimToken, ClaimedIntent, ConversationStore, ConversationStoreError, IntentClaim, IntentStep,
    MessageKind, MessageMetadata, NewIntent, NewMessage, Posting, SlackApi, SlackApiError,
    ThreadMessage,
};
use super::progress::{AnswerSlot, ProgressStore};
use crate::ids::{ConversationId, MessageTs, ReplyIntentId, ThreadKey};

/// `metadata.event_type` of every message posted for an intent.
pub const REPLY_EVENT_TYPE: &str = "infragpt_reply";
/// How long a claim lasts without being renewed. Renewed before each post and every third
/// of it while a Slack call runs, so only a process that stopped (or lost the database)
/// loses it.
pub const INTENT_LEASE: Duration = Duration::from_secs(30);
/// How long a caller waits for another process's claim on the same intent to end before it
/// gives up with [`PostError::Busy`].
pub const BUSY_WAIT: Duration = Duration::from_secs(10);
/// Retries of a post whose failure leaves it unknown whether it reached the thread; each
/// looks at the thread first.
const UNCERTAIN_RETRIES: u32 = 2;
/// First delay before such a retry; doubles.
const UNCERTAIN_RETRY_DELAY: Duration = Duration::from_millis(250);
/// How long giving a claim up after a failed post is tried ([`Poster::give_up`]) while the
/// store is away: about as long as PostgreSQL takes to restart or recover from a crash. The
/// pause between tries starts at [`GIVE_UP_PAUSE`] and doubles up to 1 s.
const GIVE_UP_WITHIN: Duration = Duration::from_secs(5);
const GIVE_UP_PAUSE: Duration = Duration::from_millis(100);
/// Title of a long answer's file.
const FILE_TITLE: &str = "The whole answer";

/// The caller no longer may post for the event it handles (checked right before each post).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("posting is fenced off: {0}")]
pub struct FenceError(pub String);

/// Checked right before each Slack post (message or file share) of an intent.
#[async_trait]
pub trait BeforePost: Send + Sync {
    /// `Err` stops the posting before the call reaches Slack.
    async fn check(&self) -> Result<(), FenceError>;
}

/// Whether this process's claims are still its own in the others' eyes, asked right before
/// each Slack write from nothing but this process's own clock (no round trip, so no window
/// between the check and the call for a pause to fall into).
///
/// Another replica may take over a reply claim as soon as this process's heartbeat is older
/// than the cluster's lease. A process stopped (SIGSTOP, a long GC-like stall, a VM pause)
/// after confirming its claim and before its post would otherwise post on waking, after the
/// new holder looked in the thread and posted too.
pub trait Standing: Send + Sync {
    /// `Err` unless this process has been in contact with the cluster without a break
    /// since `since` (the instant its claim was asked for) and still is.
    fn unbroken_since(&self, since: Instant) -> Result<(), FenceError>;
}

tokio::task_local! {
    /// The standing, and the claim's instant, that a Slack write made inside
    /// [`fenced_write`] must still have when it leaves.
    static WRITE_GATE: (Arc<dyn Standing>, Instant);
}

/// Asked by the Slack adapter right before each request it sends (every attempt): `Err`
/// when the write runs inside [`fenced_write`] and this process's standing broke since its claim.
/// Outside [`fenced_write`] (reads, unclaimed calls) always `Ok`. Asking here, after the token
/// lookup and the client's own waits, leaves only the HTTP client's hand-off to the
/// connection between the check and the bytes on the wire.
pub fn write_gate() -> Result<(), FenceError> {
    WRITE_GATE
        .try_with(|(standing, since)| standing.unbroken_since(*since))
        .unwrap_or(Ok(()))
}

/// Runs `call`, a Slack write for a claim taken at `since`, unless this process's standing
/// broke since then; with the write gate set, so the adapter asks again before each attempt
/// it sends. Asking here first fences in-memory fakes too, which never ask the gate. `call`
/// must not start before it is polled (an `async` call), so a refusal sends nothing.
pub async fn fenced_write<T>(
    standing: &Arc<dyn Standing>,
    since: Instant,
    call: impl std::future::Future<Output = T>,
) -> Result<T, FenceError> {
    standing.unbroken_since(since)?;
    Ok(WRITE_GATE.scope((standing.clone(), since), call).await)
}

/// A process alone on its database: nobody takes its claims over but by their lease.
#[derive(Debug, Clone, Copy, Default)]
pub struct Alone;

impl Standing for Alone {
    fn unbroken_since(&self, _since: Instant) -> Result<(), FenceError> {
        Ok(())
    }
}

impl Standing for infragpt_runtime::Cluster {
    fn unbroken_since(&self, since: Instant) -> Result<(), FenceError> {
        if self.in_contact_since(since) {
            Ok(())
        } else {
            Err(FenceError(
                "this replica lost contact with the cluster after its claim; whoever \
                 holds the claim now acts on it"
                    .to_owned(),
            ))
        }
    }
}

/// No check: SendReply serves the agent's request, not an inbound event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFence;

#[async_trait]
impl BeforePost for NoFence {
    async fn check(&self) -> Result<(), FenceError> {
        Ok(())
    }
}

/// Why a reply could not be posted (yet).
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] ConversationStoreError),
    /// Slack refused or could not be reached.
    #[error(transparent)]
    Slack(#[from] SlackApiError),
    /// Another process holds the intent's claim (it is posting it now, or stopped and its
    /// lease has not run out yet).
    #[error(
        "another process ({claimed_by}) is posting this reply; its claim runs until {claimed_until}"
    )]
    Busy {
        claimed_by: String,
        claimed_until: DateTime<Utc>,
    },
    /// The claim ran out while this process was posting and another one claimed the intent:
    /// that one finishes it.
    #[error("the claim on reply intent {0} was taken over by another process")]
    ClaimLost(ReplyIntentId),
    /// The check before a post refused it.
    #[error(transparent)]
    Fenced(#[from] FenceError),
}

/// What posting an intent did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostOutcome {
    /// This call posted (or finished posting) it.
    Posted,
    /// It was posted already.
    AlreadyPosted,
}

/// The metadata of message `part` of `intent`.
pub fn intent_metadata(intent: ReplyIntentId, part: usize) -> MessageMetadata {
    let payload = json!({ "intent_id": intent.to_string(), "part": part });
    MessageMetadata {
        event_type: REPLY_EVENT_TYPE.to_owned(),
        event_payload: payload.as_object().cloned().unwrap_or_default(),
    }
}

/// The part of `intent` a message's metadata names, if it names that intent.
fn part_of(metadata: Option<&MessageMetadata>, intent: ReplyIntentId) -> Option<usize> {
    let m = metadata.filter(|m| m.event_type == REPLY_EVENT_TYPE)?;
    let id = m.event_payload.get("intent_id")?.as_str()?;
    if id != intent.to_string() {
        return None;
    }
    // Slack gives numbers back as numbers; accept their text too.
    match m.event_payload.get("part")? {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// What the claim is unsure of while it posts: whether something it (or an earlier claim)
/// sent is in the thread without being recorded.
#[derive(Debug, Default)]
struct Uncertainty {
    /// An earlier claim left a message or file unrecorded: look before posting.
    earlier: bool,
    /// This claim sent a post whose outcome it does not know.
    own: bool,
}

impl Uncertainty {
    fn any(&self) -> bool {
        self.earlier || self.own
    }
}

/// Which intent to claim.
#[derive(Clone, Copy)]
enum Target<'a> {
    /// By its key, recording it first if it is new.
    New(&'a NewIntent),
    /// One recorded already.
    Recorded(ReplyIntentId),
}

/// Posts intents once: claims them in the store, posts what is missing, records each part.
pub(crate) struct Poster<'a> {
    pub store: &'a dyn ConversationStore,
    pub slack: &'a dyn SlackApi,
    pub lease: Duration,
    pub busy_wait: Duration,
    /// Checked right before each post.
    pub fence: &'a dyn BeforePost,
    /// Asked right before each Slack write, after every other check, and by the adapter
    /// right before the request leaves ([`fenced_write`]).
    pub standing: Arc<dyn Standing>,
    /// The turns' progress indicators, when progress is shown: a turn's first reply ends
    /// its indicator, replacing the placeholder if there is one.
    pub progress: Option<&'a dyn ProgressStore>,
}

impl Poster<'_> {
    /// Posts `intent` in the thread `key` unless it is posted already; finishes it when an
    /// earlier attempt (of any process) started it.
    pub async fn post(
        &self,
        key: &ThreadKey,
        intent: &NewIntent,
    ) -> Result<PostOutcome, PostError> {
        self.post_claimed(key, intent, None).await
    }

    /// [`Self::post`] when the first claim of `intent` was asked for already (at the instant
    /// given, with the outcome given): a busy claim is waited for and asked again as usual.
    pub async fn post_claimed(
        &self,
        key: &ThreadKey,
        intent: &NewIntent,
        first: Option<(IntentClaim, Instant)>,
    ) -> Result<PostOutcome, PostError> {
        let claim = self.claim(Target::New(intent), first).await?;
        match claim {
            None => Ok(PostOutcome::AlreadyPosted),
            Some((claimed, since)) => {
                self.finish(key, claimed, since).await?;
                Ok(PostOutcome::Posted)
            }
        }
    }

    /// Finishes every answer to `turn` that an earlier attempt started and did not finish (a
    /// crash, a lost claim, a failed post). Notices are left alone: a stale "could not
    /// answer" must not appear before the answer; one posted again is finished through its
    /// key like any other. True when an answer was finished here.
    pub async fn finish_started(
        &self,
        key: &ThreadKey,
        conversation: ConversationId,
        turn: &MessageTs,
    ) -> Result<bool, PostError> {
        let mut finished = false;
        let started = self
            .store
            .unfinished_intents(conversation, turn, MessageKind::Message)
            .await?;
        for id in started {
            let claim = self.claim(Target::Recorded(id), None).await?;
            if let Some((claimed, since)) = claim {
                info!(conversation_id = %conversation, intent_id = %id, claim = claimed.token.claim, "finishing an answer an earlier attempt started");
                self.finish(key, claimed, since).await?;
                finished = true;
            }
        }
        Ok(finished)
    }

    /// Claims, waiting up to `busy_wait` while another process holds the claim. `None`: it
    /// is posted. With the claim comes the instant it was asked for. `first`: the first
    /// claim's outcome, asked for already.
    async fn claim(
        &self,
        target: Target<'_>,
        mut first: Option<(IntentClaim, Instant)>,
    ) -> Result<Option<(ClaimedIntent, Instant)>, PostError> {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            let (claim, asked) = match first.take() {
                Some(first) => first,
                None => {
                    let asked = Instant::now();
                    let claim = match target {
                        Target::New(intent) => self.store.claim_intent(intent, self.lease).await?,
                        Target::Recorded(id) => {
                            self.store.claim_intent_by_id(id, self.lease).await?
                        }
                    };
                    (claim, asked)
                }
            };
            match claim {
                IntentClaim::Claimed(c) => return Ok(Some((c, asked))),
                IntentClaim::Posted => return Ok(None),
                IntentClaim::Busy {
                    claimed_by,
                    claimed_until,
                } => {
                    if started.elapsed() + pause > self.busy_wait {
                        return Err(PostError::Busy {
                            claimed_by,
                            claimed_until,
                        });
                    }
                    debug!(claimed_by, %claimed_until, "reply intent claimed elsewhere; waiting");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    /// Posts what the claimed intent lacks. On failure the claim is given up at once (so
    /// another attempt need not wait for the lease), saying whether something may be in the
    /// thread unrecorded.
    async fn finish(
        &self,
        key: &ThreadKey,
        mut c: ClaimedIntent,
        since: Instant,
    ) -> Result<(), PostError> {
        let token = c.token;
        let mut unsure = Uncertainty {
            earlier: c.uncertain_part.is_some() || (c.file_id.is_some() && !c.file_done),
            own: false,
        };
        let result = self.drive(key, &mut c, since, &mut unsure).await;
        if let Err(e) = &result
            && !matches!(e, PostError::ClaimLost(_))
        {
            self.give_up(token, unsure.any()).await;
        }
        result
    }

    /// Gives the claim up, saying whether something may be in the thread unrecorded. A
    /// failure here is often the store away for a moment (a database restarting), so it is
    /// asked again for up to [`GIVE_UP_WITHIN`] before the lease is left to end the claim:
    /// every retry of the reply, the turn's included, would wait out the lease.
    async fn give_up(&self, token: ClaimToken, uncertain: bool) {
        let started = tokio::time::Instant::now();
        let mut pause = GIVE_UP_PAUSE;
        loop {
            let step = IntentStep::Abandon { uncertain };
            match self.store.advance_intent(token, step, self.lease).await {
                Ok(_) => return,
                Err(e) if started.elapsed() + pause > GIVE_UP_WITHIN => {
                    warn!(intent_id = %token.intent, error = %e, "could not give up the reply intent's claim; its lease ends it");
                    return;
                }
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    async fn drive(
        &self,
        key: &ThreadKey,
        c: &mut ClaimedIntent,
        since: Instant,
        unsure: &mut Uncertainty,
    ) -> Result<(), PostError> {
        let mut retries = 0u32;
        loop {
            if unsure.any() {
                self.reconcile(key, c).await?;
                *unsure = Uncertainty::default();
            }
            if let Some((text, stored)) = c
                .posting
                .part(c.parts_done)
                .map(|(t, s)| (t.to_owned(), s.to_owned()))
            {
                let part = c.parts_done;
                match self
                    .post_part(key, c, since, (part, text, stored), unsure)
                    .await
                {
                    Ok(()) => continue,
                    Err(PostError::Slack(e))
                        if e.may_have_taken_effect() && retries < UNCERTAIN_RETRIES =>
                    {
                        retries += 1;
                        warn!(intent_id = %c.token.intent, part, error = %e, retry = retries, "post may or may not be in the thread; looking before retrying");
                        tokio::time::sleep(UNCERTAIN_RETRY_DELAY * 2u32.pow(retries - 1)).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            if c.posting.has_file() && !c.file_done {
                match self.post_file(key, c, since, unsure).await {
                    Ok(()) => continue,
                    Err(PostError::Slack(e))
                        if e.may_have_taken_effect() && retries < UNCERTAIN_RETRIES =>
                    {
                        retries += 1;
                        warn!(intent_id = %c.token.intent, error = %e, retry = retries, "file share may or may not be in the thread; looking before retrying");
                        tokio::time::sleep(UNCERTAIN_RETRY_DELAY * 2u32.pow(retries - 1)).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            return Ok(());
        }
    }

    /// Posts message `part` (its text, and the text stored for it) and records it.
    async fn post_part(
        &self,
        key: &ThreadKey,
        c: &mut ClaimedIntent,
        since: Instant,
        (part, text, stored): (usize, String, String),
        unsure: &mut Uncertainty,
    ) -> Result<(), PostError> {
        let token = c.token;
        self.fence.check().await?;
        // A new intent's claim marked its first message under way already.
        let marked = part == 0 && std::mem::take(&mut c.first_part_marked);
        if !marked
            && !self
                .store
                .advance_intent(token, IntentStep::Posting { part }, self.lease)
                .await?
        {
            return Err(PostError::ClaimLost(token.intent));
        }
        unsure.own = true;
        let metadata = intent_metadata(token.intent, part);
        let placeholder = match (part, &c.in_reply_to, c.answer_slot.take()) {
            // The claim took the indicator over already.
            (0, Some(_), Some(AnswerSlot::Replace(ts))) => Some(ts),
            (0, Some(_), Some(_)) => None,
            (0, Some(turn), None) => self.answer_slot(c, turn).await?,
            _ => None,
        };
        let posted = match placeholder {
            Some(ts) => {
                self.replace_placeholder(key, (token, since), ts, &text, &metadata)
                    .await?
            }
            None => {
                self.post_in_thread(key, (token, since), &text, &metadata)
                    .await?
            }
        };
        let ts = match posted {
            Ok(ts) => ts,
            Err(e) => {
                unsure.own = e.may_have_taken_effect();
                return Err(e.into());
            }
        };
        match self.record_part(c, part, ts.clone(), stored.clone()).await {
            Err(PostError::ClaimLost(id)) => {
                unsure.own = false;
                self.withdraw(key, c, &ts, &stored).await;
                return Err(PostError::ClaimLost(id));
            }
            other => other?,
        }
        unsure.own = false;
        Ok(())
    }

    /// This process posted `ts` for a claim another process had taken over by then (it was
    /// paused, past every check, before the request left). When that process posted the
    /// part too, ours is the duplicate: it is deleted from the thread and marked deleted in
    /// the store. When the other found ours in the thread and recorded it, no other copy
    /// appears and ours stays: this looks for one for `busy_wait` (a rare path: only a
    /// process that lost its claim while its post was under way takes it).
    async fn withdraw(&self, key: &ThreadKey, c: &ClaimedIntent, ts: &MessageTs, stored: &str) {
        let deadline = tokio::time::Instant::now() + self.busy_wait;
        // The new holder posts within a Slack call or two of its claim: look soon, then less
        // often (each look reads the conversation's history; this path is rare).
        let mut pause = Duration::from_millis(200);
        loop {
            let history = match self.store.history(c.conversation_id).await {
                Ok(h) => h,
                Err(e) => {
                    warn!(intent_id = %c.token.intent, ts = %ts, error = %e, "could not check a reply posted after its claim was lost; it may be in the thread twice");
                    return;
                }
            };
            let other = history.iter().any(|m| {
                m.sender == super::ports::Sender::Agent
                    && m.kind == c.kind
                    && m.in_reply_to == c.in_reply_to
                    && m.text == stored
                    && &m.slack_ts != ts
            });
            if other {
                match self.slack.delete_message(&key.team, &key.channel, ts).await {
                    Ok(()) => {
                        info!(intent_id = %c.token.intent, ts = %ts, "withdrew a duplicate posted after the claim was taken over");
                        if let Err(e) = self.store.mark_deleted(&key.team, &key.channel, ts).await {
                            warn!(intent_id = %c.token.intent, ts = %ts, error = %e, "could not mark the withdrawn duplicate deleted");
                        }
                    }
                    Err(e) => {
                        warn!(intent_id = %c.token.intent, ts = %ts, error = %e, "could not withdraw a duplicate posted after the claim was taken over");
                    }
                }
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                // The new holder found ours in the thread (and recorded it), or has not
                // posted within the wait: ours stays.
                debug!(intent_id = %c.token.intent, ts = %ts, "no other copy of a reply posted after its claim was lost; it stays");
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// Ends the turn's progress indicator for this reply: the placeholder its first message
    /// replaces, if any. Waits while someone changes the indicator (never longer than that
    /// holder's lease), so a progress update cannot land after the answer.
    async fn answer_slot(
        &self,
        c: &ClaimedIntent,
        turn: &MessageTs,
    ) -> Result<Option<MessageTs>, PostError> {
        let Some(progress) = self.progress else {
            return Ok(None);
        };
        // The holder is usually done within one Slack call: look again soon, then less
        // often, never past its lease.
        let mut pause = Duration::from_millis(5);
        loop {
            match progress
                .answer_slot(c.conversation_id, turn, c.token.intent)
                .await?
            {
                AnswerSlot::Replace(ts) => return Ok(Some(ts)),
                AnswerSlot::Post => return Ok(None),
                AnswerSlot::Wait(left) => {
                    debug!(intent_id = %c.token.intent, left_ms = left.as_millis() as u64, "progress indicator busy; waiting to replace it");
                    let nap = pause.min(left).max(Duration::from_millis(1));
                    self.renewing(c.token, tokio::time::sleep(nap)).await?;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
            }
        }
    }

    /// The answer's first message as a `chat.update` of the placeholder, carrying the
    /// intent's metadata (so a later claim finds it like a posted message). A placeholder
    /// that is gone (deleted by someone) is replaced by a new post.
    async fn replace_placeholder(
        &self,
        key: &ThreadKey,
        (token, since): (ClaimToken, Instant),
        placeholder: MessageTs,
        text: &str,
        metadata: &MessageMetadata,
    ) -> Result<Result<MessageTs, SlackApiError>, PostError> {
        let update =
            self.slack
                .update_message(&key.team, &key.channel, &placeholder, text, Some(metadata));
        let updated = self.write((token, since), update).await?;
        match updated {
            Ok(()) => Ok(Ok(placeholder)),
            Err(e)
                if matches!(
                    e.api_code(),
                    Some("message_not_found" | "cant_update_message")
                ) =>
            {
                info!(intent_id = %token.intent, error = %e, "the progress placeholder is gone; posting the answer as a new message");
                self.post_in_thread(key, (token, since), text, metadata)
                    .await
            }
            Err(e) => Ok(Err(e)),
        }
    }

    /// Stores message `part` (posted as `ts`) with the intent's progress.
    async fn record_part(
        &self,
        c: &mut ClaimedIntent,
        part: usize,
        ts: MessageTs,
        stored: String,
    ) -> Result<(), PostError> {
        let message =
            NewMessage::from_agent(c.conversation_id, ts, stored, c.in_reply_to.clone(), c.kind);
        let ours = self
            .store
            .advance_intent(c.token, IntentStep::Posted { part, message }, self.lease)
            .await?;
        c.parts_done = c.parts_done.max(part + 1);
        if ours {
            Ok(())
        } else {
            Err(PostError::ClaimLost(c.token.intent))
        }
    }

    /// Uploads the long answer's file, records its id, then shares it in the thread: the
    /// id is what a later claim looks for in the thread if this one stops after sharing.
    async fn post_file(
        &self,
        key: &ThreadKey,
        c: &mut ClaimedIntent,
        since: Instant,
        unsure: &mut Uncertainty,
    ) -> Result<(), PostError> {
        let token = c.token;
        let (filename, content) = match &c.posting {
            Posting::File {
                filename, content, ..
            } => (filename.clone(), content.clone()),
            Posting::Messages { .. } => return Ok(()),
        };
        let file_id = match &c.file_id {
            Some(id) => id.clone(),
            None => {
                let id = self
                    .renewing(
                        token,
                        self.slack.upload_file(&key.team, &filename, &content),
                    )
                    .await??;
                let step = IntentStep::FileUploaded {
                    file_id: id.clone(),
                };
                if !self.store.advance_intent(token, step, self.lease).await? {
                    return Err(PostError::ClaimLost(token.intent));
                }
                c.file_id = Some(id.clone());
                id
            }
        };
        self.fence.check().await?;
        let share = self.slack.share_file(
            &key.team,
            &key.channel,
            &key.thread_ts,
            &file_id,
            FILE_TITLE,
        );
        unsure.own = true;
        let shared = self.write((token, since), share).await.inspect_err(|e| {
            // Refused before it was sent: nothing to look for.
            if matches!(e, PostError::Fenced(_)) {
                unsure.own = false;
            }
        })?;
        if let Err(e) = shared {
            unsure.own = e.may_have_taken_effect();
            if !unsure.own {
                // Refused: a fresh upload next time (this one may have expired).
                c.file_id = None;
            }
            return Err(e.into());
        }
        self.store
            .advance_intent(token, IntentStep::FileShared, self.lease)
            .await?;
        c.file_done = true;
        unsure.own = false;
        Ok(())
    }

    /// Looks in the thread for what an earlier attempt may have posted without recording it,
    /// and records what it finds, so only what is missing is posted.
    async fn reconcile(&self, key: &ThreadKey, c: &mut ClaimedIntent) -> Result<(), PostError> {
        let token = c.token;
        let found: Vec<ThreadMessage> = self
            .renewing(
                token,
                self.slack.bot_messages_in_thread(
                    &key.team,
                    &key.channel,
                    &key.thread_ts,
                    c.in_reply_to.as_ref(),
                ),
            )
            .await??;
        // The first message of each part (a duplicate from before this mechanism is ignored).
        let mut parts: BTreeMap<usize, MessageTs> = BTreeMap::new();
        for m in &found {
            if let Some(part) = part_of(m.metadata.as_ref(), token.intent) {
                parts.entry(part).or_insert_with(|| m.ts.clone());
            }
        }
        let before = c.parts_done;
        // Parts go out in order: the ones found after the recorded ones are recorded.
        while let Some(ts) = parts.get(&c.parts_done).cloned() {
            let part = c.parts_done;
            let Some((_, stored)) = c.posting.part(part) else {
                break;
            };
            let stored = stored.to_owned();
            self.record_part(c, part, ts, stored).await?;
        }
        if c.parts_done > before {
            info!(intent_id = %token.intent, recorded = c.parts_done - before, "found posted parts of the reply in the thread; recorded them");
        }
        if let Some(file_id) = c.file_id.clone()
            && !c.file_done
        {
            if found.iter().any(|m| m.file_ids.contains(&file_id)) {
                info!(intent_id = %token.intent, file_id, "found the shared file in the thread; recorded it");
                self.store
                    .advance_intent(token, IntentStep::FileShared, self.lease)
                    .await?;
                c.file_done = true;
            } else {
                // Not shared: upload afresh (the first upload is never shared and expires).
                c.file_id = None;
            }
        }
        c.uncertain_part = None;
        Ok(())
    }

    /// `call`, a Slack write for the claim `token` taken at `since`: refused once this
    /// process's standing broke after the claim ([`Standing`], nothing sent: `Fenced`), and
    /// renewing the claim while it runs.
    async fn write<T>(
        &self,
        (token, since): (ClaimToken, Instant),
        call: impl std::future::Future<Output = T>,
    ) -> Result<T, PostError> {
        let gated = fenced_write(&self.standing, since, call);
        match self.renewing(token, gated).await? {
            Ok(out) => Ok(out),
            Err(e) => {
                warn!(intent_id = %token.intent, error = %e, "not posting: the reply's claim may be another process's now");
                Err(PostError::Fenced(e))
            }
        }
    }

    /// `chat.postMessage` of `text` in the thread for the claim `token` (taken at `since`).
    async fn post_in_thread(
        &self,
        key: &ThreadKey,
        claim: (ClaimToken, Instant),
        text: &str,
        metadata: &MessageMetadata,
    ) -> Result<Result<MessageTs, SlackApiError>, PostError> {
        let post = self.slack.post_message(
            &key.team,
            &key.channel,
            Some(&key.thread_ts),
            text,
            Some(metadata),
        );
        self.write(claim, post).await
    }

    /// Runs a Slack call while renewing the claim every third of the lease, so a call that
    /// waits out rate limits keeps it. Fails when another process took the claim over.
    async fn renewing<T>(
        &self,
        token: ClaimToken,
        call: impl std::future::Future<Output = T>,
    ) -> Result<T, PostError> {
        let mut call = std::pin::pin!(call);
        let period = (self.lease / 3).max(Duration::from_millis(10));
        let mut next = tokio::time::Instant::now() + period;
        loop {
            tokio::select! {
                out = &mut call => return Ok(out),
                () = tokio::time::sleep_until(next) => {
                    next += period;
                    match self.store.advance_intent(token, IntentStep::Renew, self.lease).await {
                        Ok(true) => {}
                        Ok(false) => return Err(PostError::ClaimLost(token.intent)),
                        // Keep waiting for the call: the lease may still hold, and giving up
                        // now would not undo a post already sent.
                        Err(e) => warn!(intent_id = %token.intent, error = %e, "could not renew the reply intent's claim"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names_the_intent_and_part() {
        let id = ReplyIntentId::new_random();
        let m = intent_metadata(id, 2);
        assert_eq!(m.event_type, REPLY_EVENT_TYPE);
        assert_eq!(part_of(Some(&m), id), Some(2));
        assert_eq!(part_of(Some(&m), ReplyIntentId::new_random()), None);
        assert_eq!(part_of(None, id), None);
        let mut text = m.clone();
        text.event_payload
            .insert("part".into(), serde_json::Value::String("3".into()));
        assert_eq!(part_of(Some(&text), id), Some(3));
        let other = MessageMetadata {
            event_type: "something_else".into(),
            ..m
        };
        assert_eq!(part_of(Some(&other), id), None);
    }
}
