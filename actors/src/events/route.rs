//! The event router: an event's matching rules, then for each one the message of the thing
//! in the rule's channel, posted exactly once and updated in place.
//!
//! **One message per thing and channel.** The row `(team, channel, thing)` is unique in the
//! store, so two replicas handling updates of one workflow run share it. What the message
//! should show is recorded on the row first (with a version: the inbox event's id, so a late
//! older event never overwrites a newer one); then whoever claims the row makes Slack show
//! it: posts it when it has no ts yet, `chat.update`s it otherwise.
//!
//! **Exactly once across crashes.** As for replies (`conversation::once`): the claim is a
//! lease with a number (fencing token); before posting, the row is marked "posting"; the post
//! carries the row's id in Slack's message metadata; the ts is recorded right after. A claim
//! that finds the mark without a ts looks in the channel (`conversations.history` with
//! metadata) before posting again. Updates are idempotent and need none of that.
//!
//! **Storms.** New things count per rule in a one-minute window (once per thing, so a retried
//! event does not count twice); past the threshold they are folded into one digest message
//! per rule and window, updated at most once per `digest_interval` (the rest is left to the
//! flusher, [`EventRouter::flush_lagging`]).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tracing::{debug, info, warn};

use super::blocks;
use super::model::OpsEvent;
use super::ports::{
    Desired, EventMessageKey, EventMessageStore, EventSlack, MessageClaim, RuleStore, StoreFailure,
    TriageQueue, TriageRequest,
};
use crate::conversation::{
    Alone, BeforePost, FenceError, MessageMetadata, NoFence, SlackApiError, Standing, fenced_write,
};
use crate::ids::{ChannelId, MessageTs, TeamId};

/// `metadata.event_type` of the messages posted for events.
pub const EVENT_MESSAGE_TYPE: &str = "infragpt_event";

/// Tuning (`events:` in the configuration).
#[derive(Debug, Clone)]
pub struct RouterSettings {
    /// More new things than this for one rule within a window go into one digest.
    pub storm_threshold: i64,
    /// How long a claim on a message lasts.
    pub lease: Duration,
    /// How long to wait for another claim on the same message before giving up (the event
    /// is retried).
    pub busy_wait: Duration,
    /// Least time between two updates of a digest (`chat.update` is Tier 3; a storm must not
    /// spend the channel's budget).
    pub digest_interval: Duration,
}

impl Default for RouterSettings {
    fn default() -> Self {
        Self {
            storm_threshold: 10,
            lease: Duration::from_secs(30),
            busy_wait: Duration::from_secs(10),
            digest_interval: Duration::from_secs(2),
        }
    }
}

/// Why routing an event failed (the inbox retries the event).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Store(#[from] StoreFailure),
    #[error(transparent)]
    Slack(#[from] SlackApiError),
    /// Another process holds the message's claim.
    #[error("another process is posting or updating event message {0}")]
    Busy(uuid::Uuid),
    /// The claim ran out and was taken over.
    #[error("the claim on event message {0} was taken over")]
    ClaimLost(uuid::Uuid),
    #[error(transparent)]
    Fenced(#[from] FenceError),
    /// A rule names a workspace or channel that is not a Slack id.
    #[error("rule {rule}: {reason}")]
    BadRule { rule: uuid::Uuid, reason: String },
}

impl RouteError {
    /// True when a later attempt may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Slack(e) => e.is_transient(),
            Self::BadRule { .. } => false,
            _ => true,
        }
    }
}

/// What routing one event did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteReport {
    /// Rules that matched.
    pub matched: usize,
    /// New messages posted.
    pub posted: usize,
    /// Messages updated in place.
    pub updated: usize,
    /// Events folded into a digest.
    pub digested: usize,
}

/// What one sync of a message did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Synced {
    pub posted: bool,
    pub updated: bool,
    /// An update left for later (a digest updated moments ago).
    pub deferred: bool,
}

/// The router over its ports.
#[derive(Clone)]
pub struct EventRouter {
    rules: Arc<dyn RuleStore>,
    messages: Arc<dyn EventMessageStore>,
    slack: Arc<dyn EventSlack>,
    triage: Arc<dyn TriageQueue>,
    settings: RouterSettings,
    /// Asked right before each Slack write (see [`Self::with_standing`]).
    standing: Arc<dyn Standing>,
}

impl std::fmt::Debug for EventRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRouter")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The metadata of the message of row `id`.
pub fn event_metadata(id: uuid::Uuid) -> MessageMetadata {
    let payload = json!({ "event_message_id": id.to_string() });
    MessageMetadata {
        event_type: EVENT_MESSAGE_TYPE.to_owned(),
        event_payload: payload.as_object().cloned().unwrap_or_default(),
    }
}

fn names_row(metadata: Option<&MessageMetadata>, id: uuid::Uuid) -> bool {
    metadata.is_some_and(|m| {
        m.event_type == EVENT_MESSAGE_TYPE
            && m.event_payload
                .get("event_message_id")
                .and_then(|v| v.as_str())
                == Some(id.to_string().as_str())
    })
}

/// An annotation (a PagerDuty note) shows on the incident's message with what it showed.
fn merge_note(previous: &serde_json::Value, note: &OpsEvent) -> Option<OpsEvent> {
    let mut shown: OpsEvent = serde_json::from_value(previous.clone()).ok()?;
    let text = note
        .fields
        .iter()
        .find(|(k, _)| k == "Note")
        .map(|(_, v)| v.clone())?;
    shown.fields.retain(|(k, _)| k != "Latest note");
    shown.fields.push(("Latest note".to_owned(), text));
    Some(shown)
}

impl EventRouter {
    /// A router over its ports.
    pub fn new(
        rules: Arc<dyn RuleStore>,
        messages: Arc<dyn EventMessageStore>,
        slack: Arc<dyn EventSlack>,
        triage: Arc<dyn TriageQueue>,
        settings: RouterSettings,
    ) -> Self {
        Self {
            rules,
            messages,
            slack,
            triage,
            settings,
            standing: Arc::new(Alone),
        }
    }

    /// An event message claimed by this process is not posted or updated once its contact
    /// with the cluster broke after the claim (see [`Standing`]); the service passes its
    /// cluster.
    pub fn with_standing(mut self, standing: Arc<dyn Standing>) -> Self {
        self.standing = standing;
        self
    }

    /// The settings.
    pub fn settings(&self) -> &RouterSettings {
        &self.settings
    }

    /// Routes `event` of `organization` (recorded as inbox event `version`): posts or updates
    /// the message of each matching rule. `fence` is checked right before each post.
    pub async fn route(
        &self,
        organization: uuid::Uuid,
        event: &OpsEvent,
        version: i64,
        fence: &dyn BeforePost,
    ) -> Result<RouteReport, RouteError> {
        let mut report = RouteReport::default();
        let rules = self.rules.rules_for(organization, event.source).await?;
        for rule in rules {
            let bad = |reason: String| RouteError::BadRule {
                rule: rule.id,
                reason,
            };
            let key = EventMessageKey {
                team: TeamId::parse(rule.spec.slack.team_id.as_str())
                    .map_err(|e| bad(e.to_string()))?,
                channel: ChannelId::parse(rule.spec.slack.channel_id.as_str())
                    .map_err(|e| bad(e.to_string()))?,
                thing: event.thing_key.clone(),
            };
            let existing = self.messages.find(&key).await?;
            if !rule.matches(event, existing.is_some()) {
                continue;
            }
            report.matched += 1;
            if let Some(slot) = existing {
                let shown = if event.status == "annotated" {
                    slot.event
                        .as_ref()
                        .and_then(|prev| merge_note(prev, event))
                        .unwrap_or_else(|| event.clone())
                } else {
                    event.clone()
                };
                let desired = Desired {
                    organization_id: organization,
                    rendered: blocks::event_message(&shown),
                    event: serde_json::to_value(&shown).ok(),
                    version,
                    triage: None,
                };
                let id = self.messages.upsert(&key, &desired).await?;
                let synced = self.sync(id, fence).await?;
                if synced.posted {
                    report.posted += 1;
                } else {
                    report.updated += 1;
                }
                continue;
            }
            let hit = self
                .messages
                .storm_hit(rule.id, &event.thing_key, &event.title)
                .await?;
            if hit.ordinal > self.settings.storm_threshold {
                let state = self
                    .messages
                    .digest_state(rule.id, hit.window_start, self.settings.storm_threshold)
                    .await?;
                let window = hit.window_start.to_rfc3339();
                let digest_key = EventMessageKey {
                    thing: format!("digest:{}:{}", rule.id, hit.window_start.timestamp()),
                    ..key
                };
                let desired = Desired {
                    organization_id: organization,
                    rendered: blocks::digest_message(
                        &rule.spec.name,
                        &window,
                        state.count,
                        &state.recent,
                    ),
                    event: None,
                    version: state.count,
                    triage: None,
                };
                let id = self.messages.upsert(&digest_key, &desired).await?;
                debug!(rule_id = %rule.id, ordinal = hit.ordinal, digest = %id, "event folded into the storm digest");
                self.sync(id, fence).await?;
                report.digested += 1;
                continue;
            }
            let desired = Desired {
                organization_id: organization,
                rendered: blocks::event_message(event),
                event: serde_json::to_value(event).ok(),
                version,
                triage: rule.spec.triage.then(|| TriageRequest {
                    organization_id: organization,
                    description: event.description.clone(),
                    event: event.agent_context(),
                }),
            };
            let id = self.messages.upsert(&key, &desired).await?;
            let synced = self.sync(id, fence).await?;
            if synced.posted {
                report.posted += 1;
            } else {
                report.updated += 1;
            }
        }
        Ok(report)
    }

    /// Brings deferred or interrupted updates up to date (any replica may run it: claims
    /// keep two from updating one message at once). Returns how many messages were synced.
    pub async fn flush_lagging(&self, limit: i64) -> Result<usize, RouteError> {
        let mut done = 0;
        for id in self.messages.lagging(limit).await? {
            match self.sync(id, &NoFence).await {
                Ok(s) if s.updated => done += 1,
                Ok(_) => {}
                Err(RouteError::Busy(_)) => {}
                Err(e) => {
                    warn!(event_message_id = %id, error = %e, "could not update an event message")
                }
            }
        }
        Ok(done)
    }

    async fn claim(&self, id: uuid::Uuid) -> Result<MessageClaim, RouteError> {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            if let Some(c) = self.messages.claim(id, self.settings.lease).await? {
                return Ok(c);
            }
            if started.elapsed() + pause > self.settings.busy_wait {
                return Err(RouteError::Busy(id));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Makes Slack show what row `id` records: claims it, posts or updates, releases.
    pub async fn sync(&self, id: uuid::Uuid, fence: &dyn BeforePost) -> Result<Synced, RouteError> {
        let since = std::time::Instant::now();
        let mut claim = self.claim(id).await?;
        let number = claim.claim;
        let mut uncertain = false;
        let result = self.drive(&mut claim, (fence, since), &mut uncertain).await;
        match &result {
            Err(RouteError::ClaimLost(_)) => {}
            _ => {
                if let Err(e) = self.messages.release(id, number, uncertain).await {
                    warn!(event_message_id = %id, error = %e, "could not release the event message's claim; its lease ends it");
                }
            }
        }
        result
    }

    async fn drive(
        &self,
        c: &mut MessageClaim,
        (fence, since): (&dyn BeforePost, std::time::Instant),
        uncertain: &mut bool,
    ) -> Result<Synced, RouteError> {
        let mut synced = Synced::default();
        if c.slack_ts.is_none()
            && c.uncertain
            && let Some(ts) = self.find_posted(c).await?
        {
            info!(event_message_id = %c.id, ts = %ts, "found the event message an earlier attempt posted; recorded it");
            // What it shows is unknown: an update follows.
            self.messages.record_posted(c.id, &ts, -1).await?;
            c.slack_ts = Some(ts);
            c.shown_version = -1;
        }
        if c.slack_ts.is_none() {
            fence.check().await?;
            if !self
                .messages
                .mark_posting(c.id, c.claim, self.settings.lease)
                .await?
            {
                return Err(RouteError::ClaimLost(c.id));
            }
            let metadata = event_metadata(c.id);
            let post = self.slack.post_event(
                &c.key.team,
                &c.key.channel,
                &c.rendered.text,
                &c.rendered.blocks,
                &metadata,
            );
            *uncertain = true;
            let posted = fenced_write(&self.standing, since, post)
                .await
                .inspect_err(|_| *uncertain = false)?;
            let ts = match posted {
                Ok(ts) => ts,
                Err(e) => {
                    *uncertain = e.may_have_taken_effect();
                    return Err(e.into());
                }
            };
            self.messages.record_posted(c.id, &ts, c.version).await?;
            *uncertain = false;
            c.slack_ts = Some(ts);
            c.shown_version = c.version;
            synced.posted = true;
        }
        let Some(ts) = c.slack_ts.clone() else {
            return Ok(synced);
        };
        if let Some(request) = c.triage.take() {
            self.triage
                .enqueue(c.id, &c.key.team, &c.key.channel, &ts, &request)
                .await?;
            self.messages.triage_queued(c.id).await?;
        }
        if c.shown_version < c.version {
            if c.digest
                && !synced.posted
                && c.shown_at.is_some_and(|at| {
                    (chrono::Utc::now() - at)
                        .to_std()
                        .is_ok_and(|d| d < self.settings.digest_interval)
                })
            {
                synced.deferred = true;
                return Ok(synced);
            }
            let update = self.slack.update_event(
                &c.key.team,
                &c.key.channel,
                &ts,
                &c.rendered.text,
                &c.rendered.blocks,
            );
            fenced_write(&self.standing, since, update).await??;
            if !self.messages.record_shown(c.id, c.claim, c.version).await? {
                return Err(RouteError::ClaimLost(c.id));
            }
            synced.updated = true;
        }
        Ok(synced)
    }

    /// An earlier attempt's post of row `c`, if it is in the channel.
    async fn find_posted(&self, c: &MessageClaim) -> Result<Option<MessageTs>, RouteError> {
        let since = (c.created_at.timestamp() - 60).max(0);
        let oldest = MessageTs::parse(format!("{since}.000000"))
            .map_err(|e| RouteError::Slack(SlackApiError::Api(e.to_string())))?;
        let found = self
            .slack
            .bot_messages_in_channel(&c.key.team, &c.key.channel, &oldest)
            .await?;
        Ok(found
            .into_iter()
            .find(|m| names_row(m.metadata.as_ref(), c.id))
            .map(|m| m.ts))
    }
}
