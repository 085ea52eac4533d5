//! The durable inbox port: every inbound event is recorded (keyed by its source id) before it
//! is acknowledged, and its processing state lives on the stored row.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Primary key of a stored inbound event (`inbound_events.id`). Ids grow with arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventRowId(pub i64);

impl std::fmt::Display for EventRowId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Where an event came from; together with the source id it is the idempotency key, and it
/// selects the stream (router) that handles the event. An open name (the stored spelling);
/// the application defines its sources as constants.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventSource(&'static str);

impl EventSource {
    /// A source named `name` (its stored spelling).
    pub const fn new(name: &'static str) -> Self {
        Self(name)
    }

    /// The stored spelling.
    pub const fn as_str(self) -> &'static str {
        self.0
    }

    /// The source among `known` stored as `name`; anything else is a corrupt row.
    pub fn find(name: &str, known: &[EventSource]) -> Result<Self, StoreError> {
        known
            .iter()
            .copied()
            .find(|s| s.0 == name)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown event source {name:?}").into()))
    }
}

impl std::fmt::Debug for EventSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventSource({})", self.0)
    }
}

impl std::fmt::Display for EventSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for EventSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

/// Which keyed actor handles an event. Events with the same key are handled one at a time in
/// arrival order; different keys run in parallel. The application chooses the keys (a chat
/// thread, an installation, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RoutingKey(pub String);

impl std::fmt::Display for RoutingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How many partitions the routing keys are hashed into. Fixed: every replica and every stored
/// row must agree on it (`inbound_events.partition`), and 64 spreads evenly over up to a few
/// dozen replicas.
pub const PARTITIONS: u16 = 64;

/// One of the [`PARTITIONS`] slices of the routing keys. A partition is owned by one replica at
/// a time, which handles every event of its keys; a key never changes partition, so its order
/// holds across replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Partition(pub u16);

impl Partition {
    /// The partition of a routing key: FNV-1a (32 bit) of its UTF-8 bytes, modulo
    /// [`PARTITIONS`]. The database computes the same for rows stored before partitions
    /// existed (`infragpt_partition(text)`, migration `2026-11-30-000001_cluster`); a test keeps
    /// the two equal.
    pub fn of(key: &RoutingKey) -> Self {
        let mut hash: u32 = 0x811c_9dc5;
        for byte in key.0.as_bytes() {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        Self((hash % u32::from(PARTITIONS)) as u16)
    }

    /// Every partition, in order.
    pub fn all() -> impl Iterator<Item = Partition> {
        (0..PARTITIONS).map(Partition)
    }

    /// The stored form (`smallint`).
    pub fn stored(self) -> i16 {
        // PARTITIONS fits in an i16.
        self.0 as i16
    }

    /// A stored partition; outside `0..PARTITIONS` is a corrupt row.
    pub fn from_stored(value: i16) -> Result<Self, StoreError> {
        u16::try_from(value)
            .ok()
            .filter(|p| *p < PARTITIONS)
            .map(Self)
            .ok_or_else(|| StoreError::Corrupt(format!("partition {value} out of range").into()))
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Proof of one claim of an event: its id and the attempt number the claim set. Every mark
/// names it, so a mark from an attempt that lost its claim (another replica claimed the event
/// since, after this one's partition lease lapsed) changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Claim {
    pub id: EventRowId,
    pub attempt: i32,
}

/// Processing state of a stored event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    /// Recorded, not yet handled (or waiting for a retry).
    Pending,
    /// Claimed by a handler; after a crash it is handled again.
    Processing,
    /// Handled.
    Done,
    /// Retry budget spent: a dead letter, visible in the admin API.
    Failed,
    /// Recorded but nothing to do (unknown type, discarded dead letter, ...).
    Ignored,
}

impl EventStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Ignored => "ignored",
        }
    }

    /// True while the event still has to be handled.
    pub fn is_unfinished(self) -> bool {
        matches!(self, Self::Pending | Self::Processing)
    }
}

impl std::str::FromStr for EventStatus {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Self::Pending),
            "processing" => Ok(Self::Processing),
            "done" => Ok(Self::Done),
            "failed" => Ok(Self::Failed),
            "ignored" => Ok(Self::Ignored),
            other => Err(StoreError::Corrupt(
                format!("unknown event status {other:?}").into(),
            )),
        }
    }
}

/// An event to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewInboundEvent {
    pub source: EventSource,
    /// The origin's own id (e.g. a webhook delivery id).
    pub source_id: String,
    /// Which keyed actor handles it.
    pub routing_key: RoutingKey,
    /// Event type, e.g. `app_mention`, `pull_request.opened`, `user.created`.
    pub kind: String,
    /// The payload as received.
    pub payload: EventPayload,
}

/// An event for [`InboundEvents::record_batch`], and whether the caller wants it claimed in
/// the same write.
#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    pub event: NewInboundEvent,
    /// Claim the event for this process in the same write when it is new and could be
    /// claimed right away: nothing older of its source and routing key is unfinished (nor
    /// earlier in the same write) and, in a replicated store, its partition is leased to this
    /// replica. The caller hands a claimed event to its worker with the claim, which saves
    /// the claim's round trip and the payload's trip back. A store may decline (a large
    /// payload, an event it cannot return as stored); the event is then recorded `pending`.
    pub claim: bool,
    /// With `claim`: the claim of the older event of the same key that this process's worker
    /// for the key is handling now. That event being `processing` under exactly this claim
    /// does not stop the claim (the worker handles this one after it); any other unfinished
    /// event of the key still does. A user typing fast, or a redelivery racing its
    /// predecessor's done mark, then still saves the separate claim.
    pub behind: Option<Claim>,
}

impl From<NewInboundEvent> for Recording {
    fn from(event: NewInboundEvent) -> Self {
        Self {
            event,
            claim: false,
            behind: None,
        }
    }
}

/// The payload of an event to record.
#[derive(Debug, Clone, PartialEq)]
pub enum EventPayload {
    /// Parsed JSON.
    Json(serde_json::Value),
    /// The body as received: the text of one JSON value, already checked by the caller. The
    /// store parses it itself, so large bodies are never held as a tree here, and keeps the
    /// text verbatim when it has to alter the value to store it.
    Raw(String),
}

impl EventPayload {
    /// The payload as a JSON value (parses a raw body).
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            Self::Json(value) => Ok(value.clone()),
            Self::Raw(text) => serde_json::from_str(text),
        }
    }
}

impl From<serde_json::Value> for EventPayload {
    fn from(value: serde_json::Value) -> Self {
        Self::Json(value)
    }
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InboundEvent {
    pub id: EventRowId,
    pub source: EventSource,
    /// The origin's own id.
    pub source_id: String,
    /// Which keyed actor handles it.
    pub routing_key: RoutingKey,
    /// The partition of `routing_key`.
    pub partition: Partition,
    /// Event type.
    pub kind: String,
    /// Payload as received.
    pub payload: serde_json::Value,
    /// Processing state.
    pub status: EventStatus,
    /// How many times a handler has claimed it.
    pub attempts: i32,
    /// The last handler error (or panic message).
    pub last_error: Option<String>,
    /// When it was recorded.
    pub received_at: DateTime<Utc>,
    /// When it reached `done`, `failed` or `ignored`.
    pub processed_at: Option<DateTime<Utc>>,
}

impl InboundEvent {
    /// The claim this (claimed) event was handed out under.
    pub fn claim(&self) -> Claim {
        Claim {
            id: self.id,
            attempt: self.attempts,
        }
    }
}

/// Result of [`InboundEvents::record`].
#[derive(Debug, Clone, PartialEq)]
pub enum RecordOutcome {
    /// First time this source id was seen; the event must be dispatched. Its `payload` may
    /// be `Null` when it was given raw: a store need not parse a large body again just to
    /// return it (claim loads it). When it was claimed in the same write
    /// ([`Recording::claim`]) its status is `processing`, `attempts` is 1 and `payload` is
    /// the payload as stored.
    Recorded(InboundEvent),
    /// Seen before; nothing was changed and nothing must be dispatched.
    Duplicate(InboundEvent),
}

impl RecordOutcome {
    /// The stored event, whichever the outcome.
    pub fn event(&self) -> &InboundEvent {
        match self {
            Self::Recorded(e) | Self::Duplicate(e) => e,
        }
    }

    /// The event when it was recorded now and claimed in the same write.
    pub fn claimed(&self) -> Option<&InboundEvent> {
        match self {
            Self::Recorded(e) if e.status == EventStatus::Processing => Some(e),
            _ => None,
        }
    }
}

/// Inbox storage failures, with the adapter's error as the source.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or the statement failed.
    #[error("event store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored value could not be read back.
    #[error("event store holds an unreadable value: {0}")]
    Corrupt(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store refused the event's data (a permanent data error, not an outage): sending
    /// the same event again fails the same way.
    #[error("event store refused the event's data: {0}")]
    Rejected(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// This process may not claim or mark the event: its partition is not (or no longer)
    /// leased to this replica, or the claim was taken over by another attempt. Not a failure
    /// of the event: its partition's owner handles it.
    #[error("event {0} belongs to another replica now (partition lease or claim lost)")]
    Fenced(EventRowId),
    /// Older events of the same routing key are still unfinished: they go first (an event
    /// can reach its key's worker ahead of an older one, e.g. one recorded on another
    /// replica whose announcement is still on its way). Not a failure of the event.
    #[error("event {id} waits for older unfinished events of its key: {older:?}")]
    Behind {
        id: EventRowId,
        /// The older unfinished events, oldest first (at most a page of them).
        older: Vec<EventRowId>,
    },
}

/// The durable inbox (implemented on the `inbound_events` table in the root crate, and in
/// memory by [`crate::testing`] for tests).
#[async_trait]
pub trait InboundEvents: Send + Sync + 'static {
    /// Stores the event unless `(source, source_id)` exists; a duplicate changes nothing.
    async fn record(&self, event: NewInboundEvent) -> Result<RecordOutcome, StoreError>;
    /// [`InboundEvents::record`] for several events at once, one outcome per event in the
    /// same order; ids are assigned in that order. A store that can write them in one
    /// statement does ([`crate::group_commit`] relies on it), claiming those that ask for it
    /// ([`Recording::claim`]); this default records them one after the other and claims
    /// none.
    async fn record_batch(&self, events: Vec<Recording>) -> Vec<Result<RecordOutcome, StoreError>> {
        let mut outcomes = Vec::with_capacity(events.len());
        for recording in events {
            outcomes.push(self.record(recording.event).await);
        }
        outcomes
    }
    /// `pending`/`processing` → `processing` with `attempts + 1`; `None` when the event is
    /// already finished (done, failed or ignored) or does not exist. Refused with
    /// [`StoreError::Behind`] while an older event of the same source and routing key is
    /// unfinished (the inbox, not the dispatch path, guarantees per-key order), and, by a
    /// replicated store, with [`StoreError::Fenced`] when this replica does not hold the
    /// event's partition.
    async fn claim(&self, id: EventRowId) -> Result<Option<InboundEvent>, StoreError>;
    /// Checks that `claim` still holds (the event is `processing` under this attempt and, in
    /// a replicated store, its partition's lease has time left): [`StoreError::Fenced`]
    /// otherwise. Handlers call it right before a side effect that cannot be undone.
    async fn confirm(&self, claim: Claim) -> Result<(), StoreError>;
    /// → `done`. Every mark applies only under its claim ([`StoreError::Fenced`] otherwise).
    async fn mark_done(&self, claim: Claim) -> Result<(), StoreError>;
    /// [`InboundEvents::mark_done`] for several claims at once, one outcome per claim in the
    /// same order, each applied only under its own claim. A store that can do it in one
    /// statement does ([`crate::group_commit::MarkCommit`]); this default marks them one
    /// after the other.
    async fn mark_done_batch(&self, claims: Vec<Claim>) -> Vec<Result<(), StoreError>> {
        let mut outcomes = Vec::with_capacity(claims.len());
        for claim in claims {
            outcomes.push(self.mark_done(claim).await);
        }
        outcomes
    }
    /// → `ignored` with the reason in `last_error`.
    async fn mark_ignored(&self, claim: Claim, reason: &str) -> Result<(), StoreError>;
    /// An attempt failed and will be retried: → `pending`, `last_error` set.
    async fn mark_retry(&self, claim: Claim, error: &str) -> Result<(), StoreError>;
    /// Retry budget spent: → `failed` (dead letter) with the error.
    async fn mark_failed(&self, claim: Claim, error: &str) -> Result<(), StoreError>;
    /// Unfinished events (`pending`, `processing`) with id > `after`, oldest first; only those
    /// of `partitions` when given.
    async fn list_unfinished(
        &self,
        after: Option<EventRowId>,
        limit: i64,
        partitions: Option<&[Partition]>,
    ) -> Result<Vec<InboundEvent>, StoreError>;
    /// Dead letters, newest first.
    async fn list_failed(&self, limit: i64, offset: i64) -> Result<Vec<InboundEvent>, StoreError>;
    /// One event.
    async fn get(&self, id: EventRowId) -> Result<Option<InboundEvent>, StoreError>;
    /// A dead letter back to `pending` with `attempts = 0`; `None` when it is not `failed`.
    async fn requeue(&self, id: EventRowId) -> Result<Option<InboundEvent>, StoreError>;
    /// A dead letter → `ignored` (reason `discarded`); false when it is not `failed`.
    async fn discard(&self, id: EventRowId) -> Result<bool, StoreError>;
    /// Number of events per status (for metrics and readiness).
    async fn count_by_status(&self) -> Result<Vec<(EventStatus, i64)>, StoreError>;
}
