//! Group commit of inbox records: one writer actor turns the records that arrive while a
//! batch is being written into the next batch ([`InboundEvents::record_batch`], one
//! statement), and answers each caller when its batch has committed. An acknowledgement
//! therefore still waits for a durable write, but concurrent events share its round trip
//! instead of queueing for connections one by one.
//!
//! One batch is in flight at a time: ids are assigned in submission order, so two events of
//! one key submitted in order are recorded (and handled) in that order. A batch that fails
//! fails every event in it, and none of them is acknowledged; the sender redelivers them.
//!
//! Done marks go the same way through a writer of their own ([`MarkCommit`],
//! [`InboundEvents::mark_done_batch`]): the events that finish together are marked in one
//! statement, each only under its own claim.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;

use actix::prelude::*;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use tokio::sync::oneshot;

use crate::health::ActorHealth;
use crate::inbox::{Claim, InboundEvents, RecordOutcome, Recording, StoreError};
use crate::metrics::Metrics;

/// How long one batch may take. Every record waits for the batch before it, so a statement
/// on a connection that hangs (a peer gone without a reset) must not stall all of them: the
/// batch fails, none of its events is acknowledged, and their senders redeliver them (a
/// duplicate if the insert did commit after all).
const BATCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a submitted item has no outcome of its store's own.
#[derive(Debug, thiserror::Error)]
pub enum BatchFailure {
    /// The batch took longer than the writer's timeout ([`BATCH_TIMEOUT`] for the inbox).
    #[error("the store did not answer in time for a batch")]
    TimedOut,
    /// The writer stopped before the item's batch was written.
    #[error("the batch writer stopped before the batch was written")]
    WriterStopped,
}

impl From<BatchFailure> for StoreError {
    fn from(failure: BatchFailure) -> Self {
        StoreError::Unavailable(Box::new(failure))
    }
}

/// What a [`BatchWriter`] writes: items handed over one by one, written as one statement.
pub trait BatchWrite: Send + Sync + 'static {
    type Item: Send + Unpin + 'static;
    type Out: Send + Unpin + 'static;
    /// The store's error; a batch that timed out or never ran fails with a [`BatchFailure`].
    type Error: From<BatchFailure> + std::fmt::Display + Send + Unpin + 'static;
    /// Writes `items`; one outcome per item, in the same order.
    fn write(
        &self,
        items: Vec<Self::Item>,
    ) -> BoxFuture<'static, Vec<Result<Self::Out, Self::Error>>>;
    /// A batch of `n` items is being written (metrics).
    fn observe(&self, _n: usize) {}
}

/// A [`BatchWriter`] of any [`BatchWrite`]: what adapters outside the inbox use to group
/// their own statements (the GitHub events' inserts). Cheap to clone.
pub struct Batcher<B: BatchWrite> {
    writer: Addr<BatchWriter<B>>,
}

impl<B: BatchWrite> Clone for Batcher<B> {
    fn clone(&self) -> Self {
        Self {
            writer: self.writer.clone(),
        }
    }
}

impl<B: BatchWrite> std::fmt::Debug for Batcher<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<B: BatchWrite> Batcher<B> {
    /// Starts the writer on an arbiter (a thread) of its own: batches of at most `max_batch`
    /// items, each allowed `timeout`. For writers whose callers must never wait for the
    /// workers' turns on the arbiter that started them (the inbox's acknowledgements).
    pub fn start(
        what: B,
        max_batch: usize,
        health: ActorHealth,
        timeout: std::time::Duration,
    ) -> Self {
        let writer = BatchWriter::new(what, max_batch, health, timeout);
        let arbiter = Arbiter::new();
        Self {
            writer: BatchWriter::start_in_arbiter(&arbiter.handle(), move |_| writer),
        }
    }

    /// Starts the writer on the caller's arbiter: no thread of its own, for a writer its
    /// callers can share a thread with (the GitHub events' rows).
    pub fn start_here(
        what: B,
        max_batch: usize,
        health: ActorHealth,
        timeout: std::time::Duration,
    ) -> Self {
        Self {
            writer: BatchWriter::new(what, max_batch, health, timeout).start(),
        }
    }

    /// Queues `item` now (so items submitted one after another are written in that order)
    /// and returns its outcome once its batch has been written.
    pub fn submit(
        &self,
        item: B::Item,
    ) -> impl Future<Output = Result<B::Out, B::Error>> + Send + use<B> {
        let (reply, outcome) = oneshot::channel();
        self.writer.do_send(Submit(Pending { item, reply }));
        async move {
            outcome
                .await
                .unwrap_or_else(|_| Err(BatchFailure::WriterStopped.into()))
        }
    }
}

/// Inbox records ([`InboundEvents::record_batch`]).
struct Records {
    inbox: Arc<dyn InboundEvents>,
    metrics: Metrics,
}

impl BatchWrite for Records {
    type Item = Recording;
    type Out = RecordOutcome;
    type Error = StoreError;
    fn write(
        &self,
        events: Vec<Recording>,
    ) -> BoxFuture<'static, Vec<Result<RecordOutcome, StoreError>>> {
        let inbox = self.inbox.clone();
        async move { inbox.record_batch(events).await }.boxed()
    }
    fn observe(&self, n: usize) {
        self.metrics.observe_batch(n);
    }
}

/// Done marks ([`InboundEvents::mark_done_batch`]).
struct DoneMarks {
    inbox: Arc<dyn InboundEvents>,
}

impl BatchWrite for DoneMarks {
    type Item = Claim;
    type Out = ();
    type Error = StoreError;
    fn write(&self, claims: Vec<Claim>) -> BoxFuture<'static, Vec<Result<(), StoreError>>> {
        let inbox = self.inbox.clone();
        async move { inbox.mark_done_batch(claims).await }.boxed()
    }
}

/// Hands events to the inbox's record writer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct GroupCommit {
    writer: Batcher<Records>,
}

impl GroupCommit {
    /// Starts the writer on an arbiter of its own: batches of at most `max_batch` events.
    pub fn start(
        inbox: Arc<dyn InboundEvents>,
        max_batch: usize,
        metrics: Metrics,
        health: ActorHealth,
    ) -> Self {
        Self::start_with_timeout(inbox, max_batch, metrics, health, BATCH_TIMEOUT)
    }

    fn start_with_timeout(
        inbox: Arc<dyn InboundEvents>,
        max_batch: usize,
        metrics: Metrics,
        health: ActorHealth,
        timeout: std::time::Duration,
    ) -> Self {
        let records = Records {
            inbox,
            metrics: metrics.clone(),
        };
        Self {
            writer: Batcher::start(records, max_batch, health, timeout),
        }
    }

    /// Queues `event` now (so events submitted one after another are written in that order)
    /// and returns the outcome once its batch has committed (claimed in the same write when
    /// it asks for it and the store can: [`Recording::claim`]).
    pub fn submit(
        &self,
        event: Recording,
    ) -> impl Future<Output = Result<RecordOutcome, StoreError>> + Send + use<> {
        self.writer.submit(event)
    }
}

/// Hands done marks to their writer, which marks the claims that finish together in one
/// statement. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MarkCommit {
    writer: Batcher<DoneMarks>,
}

impl MarkCommit {
    /// Starts the writer on an arbiter of its own: batches of at most `max_batch` marks.
    pub fn start(inbox: Arc<dyn InboundEvents>, max_batch: usize, health: ActorHealth) -> Self {
        Self {
            writer: Batcher::start(DoneMarks { inbox }, max_batch, health, BATCH_TIMEOUT),
        }
    }

    /// Marks `claim` done in the next batch; `Err(Fenced)` when the claim no longer holds,
    /// like [`InboundEvents::mark_done`].
    pub fn submit(
        &self,
        claim: Claim,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + use<> {
        self.writer.submit(claim)
    }
}

struct Pending<B: BatchWrite> {
    item: B::Item,
    reply: oneshot::Sender<Result<B::Out, B::Error>>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Submit<B: BatchWrite>(Pending<B>);

/// The actor that writes what it is handed in batches: one batch in flight, what arrives
/// meanwhile goes in the next one.
pub struct BatchWriter<B: BatchWrite> {
    what: Arc<B>,
    /// How long one batch may take ([`BATCH_TIMEOUT`]).
    timeout: std::time::Duration,
    max_batch: usize,
    queue: VecDeque<Pending<B>>,
    /// Items in the batch being written (0: none); what arrives meanwhile waits for the
    /// next batch.
    writing: usize,
    /// Batches written (or tried) so far.
    batches: u64,
    health: ActorHealth,
}

impl<B: BatchWrite> BatchWriter<B> {
    fn new(what: B, max_batch: usize, health: ActorHealth, timeout: std::time::Duration) -> Self {
        Self {
            what: Arc::new(what),
            timeout,
            max_batch: max_batch.max(1),
            queue: VecDeque::new(),
            writing: 0,
            batches: 0,
            health,
        }
    }

    /// Writes the next batch unless one is being written.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.writing > 0 || self.queue.is_empty() {
            return;
        }
        let n = self.queue.len().min(self.max_batch);
        let (items, waiting): (Vec<_>, Vec<_>) =
            self.queue.drain(..n).map(|p| (p.item, p.reply)).unzip();
        self.writing = n;
        self.batches += 1;
        self.publish();
        self.what.observe(n);
        let write = self.what.write(items);
        let timeout = self.timeout;
        let written = async move {
            match tokio::time::timeout(timeout, write).await {
                Ok(outcomes) => outcomes,
                Err(_) => (0..n).map(|_| Err(BatchFailure::TimedOut.into())).collect(),
            }
        };
        ctx.spawn(written.into_actor(self).map(move |results, act, ctx| {
            act.writing = 0;
            act.publish();
            let mut failed = None;
            for (reply, result) in waiting.into_iter().zip(results) {
                if let Err(e) = &result {
                    failed.get_or_insert_with(|| e.to_string());
                }
                // The caller may have given up (its request timed out); the batch is written
                // all the same (a redelivered event is a duplicate, a mark stays made).
                let _ = reply.send(result);
            }
            match failed {
                Some(error) => act.health.record_error(&error),
                None => act.health.record_message(),
            }
            act.flush(ctx);
        }));
    }

    /// The writer's state in the actor tree: the batch being written (0: none), what waits
    /// for the next one, and how many batches it has written.
    fn publish(&self) {
        self.health.set_backlog(self.queue.len() as u64);
        self.health.set_detail(serde_json::json!({
            "writing": self.writing,
            "queued": self.queue.len(),
            "batches": self.batches,
        }));
    }
}

impl<B: BatchWrite> std::fmt::Debug for BatchWriter<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchWriter")
            .field("queued", &self.queue.len())
            .field("writing", &self.writing)
            .field("batches", &self.batches)
            .finish_non_exhaustive()
    }
}

impl<B: BatchWrite> Actor for BatchWriter<B> {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        self.health.set_state(crate::health::ActorState::Running);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.health.set_state(crate::health::ActorState::Stopped);
    }
}

impl<B: BatchWrite> Handler<Submit<B>> for BatchWriter<B> {
    type Result = ();

    fn handle(&mut self, Submit(pending): Submit<B>, ctx: &mut Context<Self>) {
        self.queue.push_back(pending);
        if self.writing > 0 {
            // It waits for the next batch: the tree shows the queue growing.
            self.publish();
        }
        self.flush(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{ActorId, ActorKind, HealthRegistry};
    use crate::inbox::{EventPayload, EventSource, NewInboundEvent, RoutingKey};
    use crate::testing::MemoryInbox;

    fn event(key: &str, n: u32) -> NewInboundEvent {
        NewInboundEvent {
            source: EventSource::new("slack"),
            source_id: format!("{key}-{n}"),
            routing_key: RoutingKey(key.to_owned()),
            kind: "message".to_owned(),
            payload: EventPayload::Json(serde_json::json!({ "n": n })),
        }
    }

    fn writer(inbox: Arc<MemoryInbox>, max_batch: usize) -> GroupCommit {
        let health = HealthRegistry::new()
            .register(ActorId::new(ActorKind::SUPERVISOR, "inbox_writer"), None);
        GroupCommit::start(inbox, max_batch, Metrics::new().unwrap(), health)
    }

    async fn first_batch_started(inbox: &MemoryInbox) {
        while inbox.batch_sizes().is_empty() {
            tokio::task::yield_now().await;
        }
    }

    #[actix_rt::test]
    async fn records_arriving_during_a_write_go_in_the_next_batch_in_order() {
        let inbox = MemoryInbox::new();
        let gate = inbox.hold_batches();
        let gc = writer(inbox.clone(), 3);
        // The first event is written alone (nothing else is waiting); the next five arrive
        // while it is held and are written as batches of 3 and 2.
        let first = tokio::spawn(gc.submit(event("k", 0).into()));
        first_batch_started(&inbox).await;
        let rest: Vec<_> = (1..6)
            .map(|n| tokio::spawn(gc.submit(event("k", n).into())))
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            !first.is_finished(),
            "answered before its batch was written"
        );
        gate.add_permits(10);
        let first = first.await.unwrap().unwrap();
        let mut ids = vec![first.event().id];
        for r in rest {
            let outcome = r.await.unwrap().unwrap();
            assert!(matches!(outcome, RecordOutcome::Recorded(_)));
            ids.push(outcome.event().id);
        }
        assert_eq!(inbox.batch_sizes(), vec![1, 3, 2]);
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "ids follow the order of submission");
    }

    #[actix_rt::test]
    async fn a_failed_batch_fails_every_event_in_it_and_the_next_batch_still_runs() {
        let inbox = MemoryInbox::new();
        inbox.set_unavailable(true);
        let gc = writer(inbox.clone(), 10);
        let failed = gc.submit(event("k", 1).into()).await;
        assert!(matches!(failed, Err(StoreError::Unavailable(_))));
        inbox.set_unavailable(false);
        let ok = gc.submit(event("k", 1).into()).await.unwrap();
        assert!(matches!(ok, RecordOutcome::Recorded(_)));
    }

    #[actix_rt::test]
    async fn a_batch_that_hangs_fails_and_the_writer_goes_on() {
        let inbox = MemoryInbox::new();
        let gate = inbox.hold_batches();
        let health = HealthRegistry::new()
            .register(ActorId::new(ActorKind::SUPERVISOR, "inbox_writer"), None);
        let gc = GroupCommit::start_with_timeout(
            inbox.clone(),
            10,
            Metrics::new().unwrap(),
            health,
            std::time::Duration::from_millis(50),
        );
        let hung = gc.submit(event("k", 1).into()).await;
        assert!(matches!(hung, Err(StoreError::Unavailable(_))), "{hung:?}");
        gate.add_permits(10);
        let next = gc.submit(event("k", 2).into()).await.unwrap();
        assert!(matches!(next, RecordOutcome::Recorded(_)));
        assert_eq!(inbox.batch_sizes(), vec![1, 1]);
    }

    /// Marks handed over together are answered each with its own outcome: a claim that was
    /// taken over since is fenced, the others are done.
    #[actix_rt::test]
    async fn done_marks_are_answered_each_with_its_own_outcome() {
        let inbox = MemoryInbox::new();
        let mut claims = Vec::new();
        for n in 0..3 {
            let id = inbox
                .record(event(&format!("k{n}"), n))
                .await
                .unwrap()
                .event()
                .id;
            claims.push(inbox.claim(id).await.unwrap().expect("claimable").claim());
        }
        // The second event is claimed again: its first claim no longer marks it.
        let retaken = inbox.claim(claims[1].id).await.unwrap().unwrap().claim();
        let health = HealthRegistry::new()
            .register(ActorId::new(ActorKind::SUPERVISOR, "inbox_marks"), None);
        let marks = MarkCommit::start(inbox.clone(), 2, health);
        let pending: Vec<_> = claims.iter().map(|c| marks.submit(*c)).collect();
        let outcomes = futures::future::join_all(pending).await;
        assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
        assert!(matches!(outcomes[1], Err(StoreError::Fenced(id)) if id == claims[1].id));
        marks
            .submit(retaken)
            .await
            .expect("the current claim marks it");
        assert_eq!(inbox.count(crate::inbox::EventStatus::Done), 3);
    }

    #[actix_rt::test]
    async fn twins_in_one_batch_are_recorded_once() {
        let inbox = MemoryInbox::new();
        let gate = inbox.hold_batches();
        let gc = writer(inbox.clone(), 10);
        let hold = tokio::spawn(gc.submit(event("k", 0).into()));
        first_batch_started(&inbox).await;
        let a = tokio::spawn(gc.submit(event("k", 7).into()));
        let b = tokio::spawn(gc.submit(event("k", 7).into()));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        gate.add_permits(10);
        hold.await.unwrap().unwrap();
        let a = a.await.unwrap().unwrap();
        let b = b.await.unwrap().unwrap();
        assert!(matches!(a, RecordOutcome::Recorded(_)));
        assert!(matches!(b, RecordOutcome::Duplicate(_)));
        assert_eq!(a.event().id, b.event().id);
    }
}
