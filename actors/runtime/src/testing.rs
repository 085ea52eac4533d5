//! Test support, compiled always so the root crate's tests can use it too: an in-memory
//! [`InboundEvents`] with the semantics of the PostgreSQL one, and scriptable handlers.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::handler::{EventHandler, HandleOutcome, HandlerError};
use crate::inbox::{
    Claim, EventPayload, EventRowId, EventSource, EventStatus, InboundEvent, InboundEvents,
    NewInboundEvent, Partition, RecordOutcome, Recording, RoutingKey, StoreError,
};

#[derive(Debug, Default)]
struct InboxState {
    events: BTreeMap<EventRowId, InboundEvent>,
    by_source: HashMap<(EventSource, String), EventRowId>,
    next_id: i64,
    claims: HashMap<EventRowId, u32>,
}

/// An in-memory inbox: ids grow with arrival, `(source, source_id)` is unique, statuses move
/// as in the `inbound_events` table.
#[derive(Debug, Default)]
pub struct MemoryInbox {
    state: Mutex<InboxState>,
    unavailable: AtomicBool,
    /// Size of every `record_batch` call, in order.
    batches: Mutex<Vec<usize>>,
    /// When set, each `record_batch` waits for a permit before it writes.
    batch_gate: Mutex<Option<Arc<Semaphore>>>,
}

impl MemoryInbox {
    /// An empty inbox.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Makes every call fail with [`StoreError::Unavailable`] (or work again).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// Makes every later `record_batch` wait for a permit of the returned semaphore (which
    /// starts with none) before it writes.
    pub fn hold_batches(&self) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        *self.batch_gate.lock() = Some(gate.clone());
        gate
    }

    /// The size of every `record_batch` call so far, in order.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.batches.lock().clone()
    }

    /// Every stored event, by id.
    pub fn all(&self) -> Vec<InboundEvent> {
        self.state.lock().events.values().cloned().collect()
    }

    /// How many times `claim` was called for `id` (whatever it returned).
    pub fn claim_calls(&self, id: EventRowId) -> u32 {
        self.state.lock().claims.get(&id).copied().unwrap_or(0)
    }

    /// Number of events in `status`.
    pub fn count(&self, status: EventStatus) -> usize {
        self.state
            .lock()
            .events
            .values()
            .filter(|e| e.status == status)
            .count()
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.unavailable.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("memory inbox switched off".into()))
        } else {
            Ok(())
        }
    }

    /// Applies `f` to the claimed event, as the PostgreSQL inbox does: only while it is
    /// `processing` under `claim`'s attempt.
    fn update(&self, claim: Claim, f: impl FnOnce(&mut InboundEvent)) -> Result<(), StoreError> {
        self.check()?;
        match self.state.lock().events.get_mut(&claim.id) {
            Some(e) if e.status == EventStatus::Processing && e.attempts == claim.attempt => {
                f(e);
                Ok(())
            }
            _ => Err(StoreError::Fenced(claim.id)),
        }
    }
}

impl MemoryInbox {
    /// Records `event`, claimed at once when `claim` asks for it and nothing older of its
    /// source and key is unfinished but the event `processing` under `behind` (as
    /// [`Recording::claim`] and [`Recording::behind`] say).
    fn record_one(
        &self,
        event: NewInboundEvent,
        claim: bool,
        behind: Option<Claim>,
    ) -> Result<RecordOutcome, StoreError> {
        self.check()?;
        let mut st = self.state.lock();
        let dedup = (event.source, event.source_id.clone());
        if let Some(id) = st.by_source.get(&dedup) {
            let existing = st.events[id].clone();
            return Ok(RecordOutcome::Duplicate(existing));
        }
        let payload = match event.payload {
            EventPayload::Json(value) => value,
            EventPayload::Raw(text) => {
                serde_json::from_str(&text).map_err(|e| StoreError::Rejected(Box::new(e)))?
            }
        };
        let claimed = claim
            && !st.events.values().any(|o| {
                o.status.is_unfinished()
                    && o.source == event.source
                    && o.routing_key == event.routing_key
                    && !(o.status == EventStatus::Processing && Some(o.claim()) == behind)
            });
        st.next_id += 1;
        let id = EventRowId(st.next_id);
        let stored = InboundEvent {
            id,
            source: event.source,
            source_id: event.source_id,
            partition: Partition::of(&event.routing_key),
            routing_key: event.routing_key,
            kind: event.kind,
            payload,
            status: if claimed {
                EventStatus::Processing
            } else {
                EventStatus::Pending
            },
            attempts: i32::from(claimed),
            last_error: None,
            received_at: Utc::now(),
            processed_at: None,
        };
        st.by_source.insert(dedup, id);
        st.events.insert(id, stored.clone());
        Ok(RecordOutcome::Recorded(stored))
    }
}

#[async_trait]
impl InboundEvents for MemoryInbox {
    async fn record(&self, event: NewInboundEvent) -> Result<RecordOutcome, StoreError> {
        self.record_one(event, false, None)
    }

    async fn record_batch(&self, events: Vec<Recording>) -> Vec<Result<RecordOutcome, StoreError>> {
        self.batches.lock().push(events.len());
        let gate = self.batch_gate.lock().clone();
        if let Some(gate) = gate {
            gate.acquire()
                .await
                .expect("the batch gate is never closed")
                .forget();
        }
        events
            .into_iter()
            .map(|r| self.record_one(r.event, r.claim, r.behind))
            .collect()
    }

    async fn claim(&self, id: EventRowId) -> Result<Option<InboundEvent>, StoreError> {
        self.check()?;
        let mut st = self.state.lock();
        *st.claims.entry(id).or_default() += 1;
        if let Some(e) = st.events.get(&id).filter(|e| e.status.is_unfinished()) {
            let older: Vec<EventRowId> = st
                .events
                .range(..id)
                .map(|(_, o)| o)
                .filter(|o| {
                    o.status.is_unfinished()
                        && o.source == e.source
                        && o.routing_key == e.routing_key
                })
                .map(|o| o.id)
                .collect();
            if !older.is_empty() {
                return Err(StoreError::Behind { id, older });
            }
        }
        match st.events.get_mut(&id) {
            Some(e) if e.status.is_unfinished() => {
                e.status = EventStatus::Processing;
                e.attempts += 1;
                Ok(Some(e.clone()))
            }
            _ => Ok(None),
        }
    }

    async fn mark_done(&self, claim: Claim) -> Result<(), StoreError> {
        self.update(claim, |e| {
            e.status = EventStatus::Done;
            e.processed_at = Some(Utc::now());
        })
    }

    async fn mark_ignored(&self, claim: Claim, reason: &str) -> Result<(), StoreError> {
        self.update(claim, |e| {
            e.status = EventStatus::Ignored;
            e.last_error = Some(reason.to_owned());
            e.processed_at = Some(Utc::now());
        })
    }

    async fn mark_retry(&self, claim: Claim, error: &str) -> Result<(), StoreError> {
        self.update(claim, |e| {
            e.status = EventStatus::Pending;
            e.last_error = Some(error.to_owned());
        })
    }

    async fn mark_failed(&self, claim: Claim, error: &str) -> Result<(), StoreError> {
        self.update(claim, |e| {
            e.status = EventStatus::Failed;
            e.last_error = Some(error.to_owned());
            e.processed_at = Some(Utc::now());
        })
    }

    async fn confirm(&self, claim: Claim) -> Result<(), StoreError> {
        self.update(claim, |_| {})
    }

    async fn list_unfinished(
        &self,
        after: Option<EventRowId>,
        limit: i64,
        partitions: Option<&[Partition]>,
    ) -> Result<Vec<InboundEvent>, StoreError> {
        self.check()?;
        let limit = usize::try_from(limit).unwrap_or(0);
        let st = self.state.lock();
        let from = after.map_or(EventRowId(i64::MIN), |a| EventRowId(a.0.saturating_add(1)));
        Ok(st
            .events
            .range(from..)
            .map(|(_, e)| e)
            .filter(|e| e.status.is_unfinished())
            .filter(|e| partitions.is_none_or(|ps| ps.contains(&e.partition)))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn list_failed(&self, limit: i64, offset: i64) -> Result<Vec<InboundEvent>, StoreError> {
        self.check()?;
        let limit = usize::try_from(limit).unwrap_or(0);
        let offset = usize::try_from(offset).unwrap_or(0);
        let st = self.state.lock();
        Ok(st
            .events
            .values()
            .rev()
            .filter(|e| e.status == EventStatus::Failed)
            .skip(offset)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn get(&self, id: EventRowId) -> Result<Option<InboundEvent>, StoreError> {
        self.check()?;
        Ok(self.state.lock().events.get(&id).cloned())
    }

    async fn requeue(&self, id: EventRowId) -> Result<Option<InboundEvent>, StoreError> {
        self.check()?;
        let mut st = self.state.lock();
        match st.events.get_mut(&id) {
            Some(e) if e.status == EventStatus::Failed => {
                e.status = EventStatus::Pending;
                e.attempts = 0;
                e.processed_at = None;
                Ok(Some(e.clone()))
            }
            _ => Ok(None),
        }
    }

    async fn discard(&self, id: EventRowId) -> Result<bool, StoreError> {
        self.check()?;
        let mut st = self.state.lock();
        match st.events.get_mut(&id) {
            Some(e) if e.status == EventStatus::Failed => {
                e.status = EventStatus::Ignored;
                e.last_error = Some("discarded".into());
                e.processed_at = Some(Utc::now());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn count_by_status(&self) -> Result<Vec<(EventStatus, i64)>, StoreError> {
        self.check()?;
        let st = self.state.lock();
        let mut counts: HashMap<EventStatus, i64> = HashMap::new();
        for e in st.events.values() {
            *counts.entry(e.status).or_default() += 1;
        }
        Ok(counts.into_iter().collect())
    }
}

/// A handler that does nothing and succeeds.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopHandler;

#[async_trait]
impl EventHandler for NoopHandler {
    async fn handle(&self, _event: &InboundEvent) -> Result<HandleOutcome, HandlerError> {
        Ok(HandleOutcome::Done)
    }
}

/// What [`RecordingHandler`] does with an event (matched by `source_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    /// Panics with this message.
    Panic(String),
    /// Fails with [`HandlerError::Retryable`].
    Fail(String),
    /// Fails with [`HandlerError::Permanent`].
    Reject(String),
    /// Returns [`HandleOutcome::Ignored`].
    Ignore(String),
}

#[derive(Debug, Default)]
struct RecState {
    handled: Vec<InboundEvent>,
    calls: HashMap<EventRowId, u32>,
    active: HashMap<RoutingKey, usize>,
    overlaps: usize,
}

/// A handler that records what it handled (in completion order), counts calls, detects two
/// events of one key running at once, and can be scripted to fail or held at a gate.
#[derive(Debug, Default)]
pub struct RecordingHandler {
    state: Mutex<RecState>,
    scripts: Mutex<HashMap<String, Script>>,
    gates: Mutex<HashMap<RoutingKey, Arc<Semaphore>>>,
    global_gate: Mutex<Option<Arc<Semaphore>>>,
}

impl RecordingHandler {
    /// A handler that succeeds on everything.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Scripts the behaviour for the event with this source id.
    pub fn script(&self, source_id: impl Into<String>, script: Script) {
        self.scripts.lock().insert(source_id.into(), script);
    }

    /// Drops the script of the event with this source id: it succeeds from now on.
    pub fn unscript(&self, source_id: &str) {
        self.scripts.lock().remove(source_id);
    }

    /// From now on each event of `key` waits for one permit of the returned semaphore.
    pub fn gate_key(&self, key: &RoutingKey) -> Arc<Semaphore> {
        let sem = Arc::new(Semaphore::new(0));
        self.gates.lock().insert(key.clone(), sem.clone());
        sem
    }

    /// From now on every event waits for one permit of the returned semaphore.
    pub fn gate_all(&self) -> Arc<Semaphore> {
        let sem = Arc::new(Semaphore::new(0));
        *self.global_gate.lock() = Some(sem.clone());
        sem
    }

    /// Events handled successfully (done), in completion order.
    pub fn handled(&self) -> Vec<InboundEvent> {
        self.state.lock().handled.clone()
    }

    /// Number of events handled successfully.
    pub fn handled_count(&self) -> usize {
        self.state.lock().handled.len()
    }

    /// How many times the handler was called for `id`.
    pub fn calls(&self, id: EventRowId) -> u32 {
        self.state.lock().calls.get(&id).copied().unwrap_or(0)
    }

    /// Total handler calls.
    pub fn total_calls(&self) -> u64 {
        self.state
            .lock()
            .calls
            .values()
            .map(|n| u64::from(*n))
            .sum()
    }

    /// How often an event started while another of the same key was running (must be 0).
    pub fn overlaps(&self) -> usize {
        self.state.lock().overlaps
    }
}

/// Leaves the key's active count even when the handler panics.
struct ActiveGuard<'a> {
    handler: &'a RecordingHandler,
    key: RoutingKey,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.handler.state.lock();
        if let Some(n) = st.active.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.active.remove(&self.key);
            }
        }
    }
}

#[async_trait]
impl EventHandler for RecordingHandler {
    async fn handle(&self, event: &InboundEvent) -> Result<HandleOutcome, HandlerError> {
        {
            let mut st = self.state.lock();
            *st.calls.entry(event.id).or_default() += 1;
            let active = st.active.entry(event.routing_key.clone()).or_default();
            *active += 1;
            if *active > 1 {
                st.overlaps += 1;
            }
        }
        let _guard = ActiveGuard {
            handler: self,
            key: event.routing_key.clone(),
        };
        let gate = self.gates.lock().get(&event.routing_key).cloned();
        if let Some(gate) = gate {
            match gate.acquire().await {
                Ok(p) => p.forget(),
                Err(_) => return Err(HandlerError::retryable("gate closed")),
            }
        }
        let global = self.global_gate.lock().clone();
        if let Some(gate) = global {
            match gate.acquire().await {
                Ok(p) => p.forget(),
                Err(_) => return Err(HandlerError::retryable("gate closed")),
            }
        }
        let script = self.scripts.lock().get(&event.source_id).cloned();
        match script {
            Some(Script::Panic(msg)) => panic!("{msg}"),
            Some(Script::Fail(msg)) => Err(HandlerError::Retryable(msg)),
            Some(Script::Reject(msg)) => Err(HandlerError::Permanent(msg)),
            Some(Script::Ignore(reason)) => Ok(HandleOutcome::Ignored(reason)),
            None => {
                self.state.lock().handled.push(event.clone());
                Ok(HandleOutcome::Done)
            }
        }
    }
}

/// Polls `cond` every few milliseconds until it holds or `timeout` passes; returns whether
/// it held. The timeout is only a guard against hanging tests, never a speed assertion.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Like [`eventually`] with an async condition.
pub async fn eventually_async<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// An event of `source` for tests: source id `"{key}#{seq}"`, kind `test`, payload
/// `{"seq": seq}`.
pub fn keyed_event(source: EventSource, key: &str, seq: u64) -> NewInboundEvent {
    NewInboundEvent {
        source,
        source_id: format!("{key}#{seq}"),
        routing_key: RoutingKey(key.to_owned()),
        kind: "test".into(),
        payload: serde_json::json!({ "seq": seq }).into(),
    }
}

/// An event as its handler sees it on a first attempt: row `id`, claimed (`processing`,
/// attempt 1), received now.
pub fn claimed_event(
    id: i64,
    source: EventSource,
    source_id: &str,
    routing_key: &str,
    kind: &str,
    payload: serde_json::Value,
) -> InboundEvent {
    let routing_key = RoutingKey(routing_key.to_owned());
    InboundEvent {
        id: EventRowId(id),
        source,
        source_id: source_id.to_owned(),
        partition: Partition::of(&routing_key),
        routing_key,
        kind: kind.to_owned(),
        payload,
        status: EventStatus::Processing,
        attempts: 1,
        last_error: None,
        received_at: Utc::now(),
        processed_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slack_event(key: &str, seq: u64) -> NewInboundEvent {
        keyed_event(EventSource::new("slack"), key, seq)
    }

    #[tokio::test]
    async fn memory_inbox_semantics() {
        let inbox = MemoryInbox::new();
        let a = inbox.record(slack_event("k", 1)).await.unwrap();
        let RecordOutcome::Recorded(a) = a else {
            panic!("first record must be Recorded")
        };
        assert!(matches!(
            inbox.record(slack_event("k", 1)).await.unwrap(),
            RecordOutcome::Duplicate(ref d) if d.id == a.id
        ));
        let b = inbox.record(slack_event("k", 2)).await.unwrap().event().id;
        let c = inbox.claim(a.id).await.unwrap().unwrap();
        assert_eq!((c.status, c.attempts), (EventStatus::Processing, 1));
        inbox.mark_retry(c.claim(), "x").await.unwrap();
        let again = inbox.claim(a.id).await.unwrap().unwrap();
        assert_eq!(again.attempts, 2);
        // The first claim is gone: its marks change nothing.
        assert!(matches!(
            inbox.mark_done(c.claim()).await,
            Err(StoreError::Fenced(id)) if id == a.id
        ));
        inbox.mark_failed(again.claim(), "dead").await.unwrap();
        assert!(inbox.claim(a.id).await.unwrap().is_none());
        let unfinished = inbox.list_unfinished(None, 10, None).await.unwrap();
        assert_eq!(unfinished.iter().map(|e| e.id).collect::<Vec<_>>(), vec![b]);
        assert!(
            inbox
                .list_unfinished(Some(b), 10, None)
                .await
                .unwrap()
                .is_empty()
        );
        let other = Partition((Partition::of(&RoutingKey("k".into())).0 + 1) % 64);
        assert!(
            inbox
                .list_unfinished(None, 10, Some(&[other]))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(inbox.list_failed(10, 0).await.unwrap()[0].id, a.id);
        let r = inbox.requeue(a.id).await.unwrap().unwrap();
        assert_eq!((r.status, r.attempts), (EventStatus::Pending, 0));
        assert!(inbox.requeue(a.id).await.unwrap().is_none());
        assert!(!inbox.discard(a.id).await.unwrap());
        inbox.set_unavailable(true);
        assert!(inbox.get(a.id).await.is_err());
    }
}
