//! The keyed router: a supervisor for one stream (e.g. chat conversations) that starts a
//! worker per routing key on demand, stops idle workers, applies backpressure and recovers
//! unfinished events from the inbox.
//!
//! Ordering: a key's events reach its worker in id order. Events dispatched straight from
//! `ingest` arrive in recording order; once any event had to be deferred (backpressure, a full
//! mailbox, recovery), every later event of the stream is deferred too until a drain scan has
//! gone through the whole inbox in id order, so a deferred event is never overtaken.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use actix::prelude::*;
use futures::future::join_all;
use tokio::sync::oneshot;

use crate::config::ClusterConfig;
use crate::handler::EventHandler;
use crate::health::{ActorHealth, ActorId, ActorKind, ActorState, HealthRegistry};
use crate::inbox::{
    Claim, EventRowId, EventSource, InboundEvent, InboundEvents, Partition, RoutingKey, StoreError,
};
use crate::metrics::Metrics;
use crate::partitions::Ownership;
use crate::worker::{DrainAndStop, Enqueue, StopIdle, Worker};

/// Everything a stream's router and workers share.
pub(crate) struct StreamCtx {
    pub name: String,
    pub kind: ActorKind,
    pub source: EventSource,
    pub handler: Arc<dyn EventHandler>,
    pub inbox: Arc<dyn InboundEvents>,
    /// Where done marks are group-committed, when they are.
    pub marks: Option<crate::group_commit::MarkCommit>,
    pub config: ClusterConfig,
    pub metrics: Metrics,
    pub health: HealthRegistry,
    pub router_id: ActorId,
    /// Which partitions this process handles now.
    pub ownership: Arc<Ownership>,
    /// The claims this stream's workers are handling now.
    pub running: Arc<RunningClaims>,
}

/// The claims a stream's workers hold while they handle them, at most one per key (a worker
/// runs one attempt at a time), from the claim until its outcome is recorded. The ingest
/// names its key's entry in the record ([`crate::inbox::Recording::behind`]): an event that
/// arrives while the one before it is still being handled, or its done mark committed, is
/// then claimed in the same write, and its worker handles it next.
#[derive(Debug, Default)]
pub(crate) struct RunningClaims(parking_lot::Mutex<HashMap<RoutingKey, Claim>>);

impl RunningClaims {
    /// The claim `key`'s worker is handling now, if any.
    pub fn of(&self, key: &RoutingKey) -> Option<Claim> {
        self.0.lock().get(key).copied()
    }

    /// Holds `claim` as `key`'s running claim until the guard drops.
    pub fn hold(self: &Arc<Self>, key: &RoutingKey, claim: Claim) -> RunningClaim {
        self.0.lock().insert(key.clone(), claim);
        RunningClaim {
            claims: self.clone(),
            key: key.clone(),
            claim,
        }
    }
}

/// A claim in [`RunningClaims`], removed when this drops (also when the attempt panics or
/// is dropped unfinished).
#[derive(Debug)]
pub(crate) struct RunningClaim {
    claims: Arc<RunningClaims>,
    key: RoutingKey,
    claim: Claim,
}

impl Drop for RunningClaim {
    fn drop(&mut self) {
        let mut running = self.claims.0.lock();
        if running.get(&self.key) == Some(&self.claim) {
            running.remove(&self.key);
        }
    }
}

/// State the router shares with the cluster facade (readable without a message round trip).
#[derive(Debug, Default)]
pub(crate) struct RouterShared {
    /// Events not dispatched because of backpressure (monotonic).
    pub skipped: AtomicU64,
    /// Value of `skipped` when the last complete drain scan started: the stream is deferring
    /// while `skipped > drained_through`.
    pub drained_through: AtomicU64,
    /// Dispatched, unfinished events.
    pub backlog: AtomicUsize,
    pub high_water_mark: usize,
    /// Scans started (monotonic). An event claimed as it was recorded is handed to its
    /// worker with that claim only if no scan started since the ingest decided to claim it:
    /// a scan could have found the claimed row, dispatched it and seen it finish before the
    /// event's own dispatch arrives, which would then run the handler again under a claim
    /// that is no longer current.
    pub scans: AtomicU64,
}

impl RouterShared {
    pub fn new(high_water_mark: usize) -> Self {
        Self {
            high_water_mark,
            ..Self::default()
        }
    }

    pub(crate) fn is_deferring(&self) -> bool {
        self.skipped.load(Ordering::SeqCst) > self.drained_through.load(Ordering::SeqCst)
    }

    pub fn is_overloaded(&self) -> bool {
        self.is_deferring() || self.backlog.load(Ordering::SeqCst) >= self.high_water_mark
    }

    /// Records that an event was left in the inbox; a drain scan will dispatch it.
    pub(crate) fn defer(&self) {
        self.skipped.fetch_add(1, Ordering::SeqCst);
    }
}

/// Dispatch a recorded event (cluster → router).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Dispatch {
    pub id: EventRowId,
    pub key: RoutingKey,
    pub partition: Partition,
    /// A requeued dead letter: it may still be counted in flight for a moment (its worker's
    /// report can arrive after the requeue), so it must not be dropped as a duplicate.
    pub requeued: bool,
    /// The event, claimed when it was recorded ([`crate::inbox::Recording::claim`]): its
    /// worker handles it under that claim without claiming it again. Dropped when the event
    /// is not dispatched now, or when a scan started since the claim was decided
    /// ([`RouterShared::scans`]); the worker then claims it from the inbox (finding it
    /// finished if a scan's dispatch handled it meanwhile).
    pub claimed: Option<ClaimedAtRecord>,
}

/// An event claimed as it was recorded, with the number of scans started when the ingest
/// decided to claim it.
#[derive(Debug)]
pub(crate) struct ClaimedAtRecord {
    pub event: Box<InboundEvent>,
    pub scans: u64,
    /// The claim of the older event of its key that the record let it pass
    /// ([`crate::inbox::Recording::behind`]).
    pub behind: Option<Claim>,
}

/// Scan the inbox for unfinished events now (a router also does so when it starts).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Recover;

/// How many dispatched, unfinished events belong to these partitions (a hand-over waits for
/// zero).
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub(crate) struct InFlightIn(pub Vec<Partition>);

/// Let handled events finish, stop every worker, then stop (cluster → router).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Shutdown;

/// An event left the worker (done, ignored, dead letter or already finished).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct WorkerFinished {
    pub key: RoutingKey,
    pub generation: u64,
    pub id: EventRowId,
}

/// The worker queued older events of its key that the router had not dispatched (they were
/// still on their way, e.g. announced from another replica): the router counts them in
/// flight so it never dispatches them twice nor stops the worker before they are done.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Adopted {
    pub key: RoutingKey,
    pub generation: u64,
    pub ids: Vec<EventRowId>,
}

/// The worker has been idle for the idle timeout.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct WorkerIdle {
    pub key: RoutingKey,
    pub generation: u64,
}

/// The worker hit its restart limit and stopped.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct WorkerFailed {
    pub key: RoutingKey,
    pub generation: u64,
}

/// A drain scan: pages through the inbox in id order.
struct Scan {
    /// `skipped` when the scan began.
    mark: u64,
    /// Events that reached the router while the scan ran, dispatched when it ends.
    buffer: Vec<(EventRowId, RoutingKey, Partition)>,
    /// The partitions it covers (`None`: all).
    partitions: Option<Vec<Partition>>,
    /// Events this scan dispatched.
    dispatched: HashSet<EventRowId>,
}

struct Slot {
    addr: Addr<Worker>,
    generation: u64,
    outstanding: usize,
}

/// A dispatched, unfinished event: its partition, and the generation of the worker that
/// owes it.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    partition: Partition,
    generation: u64,
}

/// The router actor of one stream.
pub(crate) struct Router {
    stream: Arc<StreamCtx>,
    shared: Arc<RouterShared>,
    health: ActorHealth,
    slots: HashMap<RoutingKey, Slot>,
    in_flight: HashMap<EventRowId, InFlight>,
    next_generation: u64,
    /// The drain scan in progress.
    scan: Option<Scan>,
    /// Keys whose worker failed, until when their events wait in the inbox.
    quarantine: HashMap<RoutingKey, Instant>,
    stopping: bool,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("stream", &self.stream.name)
            .field("workers", &self.slots.len())
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl Router {
    /// Starts the router on the current arbiter with the configured mailbox bound (set
    /// before the first message can arrive). Its workers and their handler futures run on
    /// the same arbiter: a dedicated arbiter per router was measured (see the actor bench)
    /// and cost about 1.2 KB more RSS per idle worker for no throughput that stood out of
    /// the noise.
    pub(crate) fn spawn(
        stream: Arc<StreamCtx>,
        shared: Arc<RouterShared>,
        root: ActorId,
    ) -> Addr<Self> {
        let capacity = stream.config.mailbox_capacity;
        Router::create(move |ctx| {
            ctx.set_mailbox_capacity(capacity);
            Router::new(stream, shared, root)
        })
    }

    fn new(stream: Arc<StreamCtx>, shared: Arc<RouterShared>, root: ActorId) -> Self {
        let health = stream.health.register(stream.router_id.clone(), Some(root));
        Self {
            stream,
            shared,
            health,
            slots: HashMap::new(),
            in_flight: HashMap::new(),
            next_generation: 0,
            scan: None,
            quarantine: HashMap::new(),
            stopping: false,
        }
    }

    fn backlog_changed(&self) {
        let n = self.in_flight.len();
        self.shared.backlog.store(n, Ordering::SeqCst);
        self.health.set_backlog(n as u64);
        self.stream.metrics.set_backlog(&self.stream.name, n);
    }

    fn is_full(&self) -> bool {
        self.in_flight.len() >= self.stream.config.high_water_mark
    }

    fn is_quarantined(&self, key: &RoutingKey) -> bool {
        self.quarantine.contains_key(key)
    }

    /// Hands the event to its key's worker, starting one if needed.
    fn dispatch_now(
        &mut self,
        id: EventRowId,
        key: RoutingKey,
        partition: Partition,
        claimed: Option<ClaimedAtRecord>,
        ctx: &mut Context<Self>,
    ) {
        self.health.record_message();
        let slot = match self.slots.get_mut(&key) {
            Some(slot) => slot,
            None => {
                self.next_generation += 1;
                let generation = self.next_generation;
                let stream = self.stream.clone();
                let router = ctx.address().downgrade();
                let worker_key = key.clone();
                let capacity = stream.config.mailbox_capacity;
                let addr = Worker::create(move |wctx| {
                    wctx.set_mailbox_capacity(capacity);
                    Worker::new(worker_key, generation, stream, router)
                });
                self.slots.entry(key).or_insert(Slot {
                    addr,
                    generation,
                    outstanding: 0,
                })
            }
        };
        slot.outstanding += 1;
        self.in_flight.insert(
            id,
            InFlight {
                partition,
                generation: slot.generation,
            },
        );
        // `do_send` ignores the worker's mailbox bound on purpose: the high-water mark bounds
        // the events in flight, so worker queues stay bounded too.
        let (claimed, behind) = match claimed {
            Some(c) => (Some(c.event), c.behind),
            None => (None, None),
        };
        slot.addr.do_send(Enqueue {
            id,
            claimed,
            behind,
        });
        self.backlog_changed();
    }

    fn release(&mut self, id: EventRowId) {
        self.in_flight.remove(&id);
    }

    fn maybe_drain(&mut self, ctx: &mut Context<Self>) {
        if !self.stopping
            && self.scan.is_none()
            && self.shared.is_deferring()
            && self.in_flight.len() <= self.stream.config.high_water_mark / 2
        {
            self.start_drain(ctx);
        }
    }

    fn start_drain(&mut self, ctx: &mut Context<Self>) {
        if self.scan.is_some() || self.stopping {
            return;
        }
        self.shared.scans.fetch_add(1, Ordering::SeqCst);
        self.scan = Some(Scan {
            mark: self.shared.skipped.load(Ordering::SeqCst),
            buffer: Vec::new(),
            partitions: self.stream.ownership.scan_filter(),
            dispatched: HashSet::new(),
        });
        self.fetch_page(None, ctx);
    }

    /// Ends a scan early; events it buffered are left to the next scan.
    fn abort_scan(&mut self) {
        if let Some(scan) = self.scan.take()
            && !scan.buffer.is_empty()
        {
            self.shared.defer();
        }
    }

    fn fetch_page(&mut self, after: Option<EventRowId>, ctx: &mut Context<Self>) {
        let inbox = self.stream.inbox.clone();
        let limit = self.stream.config.drain_page_size;
        let partitions = self.scan.as_ref().and_then(|s| s.partitions.clone());
        ctx.spawn(
            async move {
                match partitions.as_deref() {
                    // This replica holds nothing right now: the scan is trivially complete.
                    Some([]) => Ok(Vec::new()),
                    filter => inbox.list_unfinished(after, limit, filter).await,
                }
            }
            .into_actor(self)
            .map(move |page, act, ctx| act.on_page(page, ctx)),
        );
    }

    fn on_page(&mut self, page: Result<Vec<InboundEvent>, StoreError>, ctx: &mut Context<Self>) {
        if self.stopping || self.scan.is_none() {
            self.scan = None;
            return;
        }
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                // Stay deferring; the next drain tick scans again.
                tracing::warn!(stream = %self.stream.name, error = %e, "inbox scan failed");
                self.health.record_error(&e.to_string());
                self.abort_scan();
                return;
            }
        };
        let full_page =
            i64::try_from(page.len()).unwrap_or(i64::MAX) >= self.stream.config.drain_page_size;
        let last = page.last().map(|e| e.id);
        for event in page {
            if event.source != self.stream.source
                || self.in_flight.contains_key(&event.id)
                || self.is_quarantined(&event.routing_key)
                || !self.stream.ownership.owns(event.partition)
            {
                continue;
            }
            if self.is_full() {
                // Resume from the start of the inbox next time; in-flight events are skipped.
                self.abort_scan();
                return;
            }
            if let Some(scan) = self.scan.as_mut() {
                scan.dispatched.insert(event.id);
            }
            self.dispatch_now(event.id, event.routing_key, event.partition, None, ctx);
        }
        if let Some(last) = last
            && full_page
        {
            self.fetch_page(Some(last), ctx);
            return;
        }
        // The scan saw every event recorded before its last query. Events that reached the
        // router while it ran were buffered; every older event of their keys is dispatched by
        // now, so they go next, in id order.
        let Some(mut scan) = self.scan.take() else {
            return;
        };
        scan.buffer.sort_by_key(|(id, _, _)| *id);
        for (id, key, partition) in scan.buffer {
            if self.in_flight.contains_key(&id)
                || scan.dispatched.contains(&id)
                || self.is_quarantined(&key)
                || !self.stream.ownership.owns(partition)
            {
                continue;
            }
            if self.is_full() {
                self.shared.defer();
                break;
            }
            self.dispatch_now(id, key, partition, None, ctx);
        }
        // Events deferred without reaching the router (full mailbox, recovery) before the
        // scan began are covered; later ones need another scan.
        if self.shared.skipped.load(Ordering::SeqCst) == scan.mark {
            self.shared
                .drained_through
                .store(scan.mark, Ordering::SeqCst);
            tracing::debug!(stream = %self.stream.name, "inbox drained");
        } else if !self.is_full() {
            // More was deferred while this scan ran (partitions acquired, a rescan asked
            // for): scan again now rather than at the next tick, so a takeover is not
            // delayed by the drain interval.
            self.start_drain(ctx);
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let before = self.quarantine.len();
        self.quarantine.retain(|_, until| *until > now);
        if self.quarantine.len() != before {
            // Their events waited in the inbox: pick them up in order.
            self.shared.defer();
        }
        if self.shared.is_deferring() && self.scan.is_none() && !self.is_full() {
            self.start_drain(ctx);
        }
        self.health.set_detail(serde_json::json!({
            "source": self.stream.source.as_str(),
            "worker_kind": self.stream.kind.as_str(),
            "workers": self.slots.len(),
            "in_flight": self.in_flight.len(),
            "deferring": self.shared.is_deferring(),
            "quarantined_keys": self.quarantine.len(),
        }));
        self.backlog_changed();
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.health.set_state(ActorState::Running);
        // Every router starts by recovering: unfinished events of an earlier run are
        // dispatched (in id order) before any new event can overtake them.
        self.shared.defer();
        self.start_drain(ctx);
        ctx.run_interval(self.stream.config.drain_interval(), |act, ctx| {
            act.tick(ctx)
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.health.set_state(ActorState::Stopped);
    }
}

impl Handler<Dispatch> for Router {
    type Result = ();
    fn handle(&mut self, msg: Dispatch, ctx: &mut Self::Context) {
        if self.stopping {
            return;
        }
        if !self.stream.ownership.owns(msg.partition) {
            // Another replica holds (or is taking over) the partition: it picks the event
            // up from the inbox.
            tracing::debug!(event_id = %msg.id, partition = %msg.partition, "event of a partition held elsewhere not dispatched");
            return;
        }
        if self.in_flight.contains_key(&msg.id) {
            if msg.requeued {
                // Picked up by a scan once its previous run has been reported.
                self.shared.defer();
            }
            return;
        }
        if self.is_quarantined(&msg.key) {
            // The quarantine's end triggers a scan that picks it up.
            return;
        }
        if self.shared.is_deferring() || self.is_full() {
            self.stream.metrics.deferred(&self.stream.name);
            let cap = self.stream.config.high_water_mark;
            match self.scan.as_mut() {
                Some(scan) if scan.buffer.len() < cap => {
                    scan.buffer.push((msg.id, msg.key, msg.partition))
                }
                _ => self.shared.defer(),
            }
            self.maybe_drain(ctx);
            return;
        }
        let scans = self.shared.scans.load(Ordering::SeqCst);
        let claimed = msg.claimed.filter(|c| c.scans == scans);
        self.dispatch_now(msg.id, msg.key, msg.partition, claimed, ctx);
    }
}

impl Handler<InFlightIn> for Router {
    type Result = usize;
    fn handle(&mut self, msg: InFlightIn, _ctx: &mut Self::Context) -> usize {
        self.in_flight
            .values()
            .filter(|f| msg.0.contains(&f.partition))
            .count()
    }
}

impl Handler<Recover> for Router {
    type Result = ();
    fn handle(&mut self, _: Recover, ctx: &mut Self::Context) {
        // Recovery is a drain from the start of the inbox; meanwhile new events defer so none
        // overtakes an older one of its key.
        self.shared.defer();
        if self.scan.is_none() {
            self.start_drain(ctx);
        }
    }
}

impl Handler<WorkerFinished> for Router {
    type Result = ();
    fn handle(&mut self, msg: WorkerFinished, ctx: &mut Self::Context) {
        self.release(msg.id);
        if let Some(slot) = self.slots.get_mut(&msg.key)
            && slot.generation == msg.generation
        {
            slot.outstanding = slot.outstanding.saturating_sub(1);
        }
        self.backlog_changed();
        self.maybe_drain(ctx);
    }
}

impl Handler<Adopted> for Router {
    type Result = ();
    fn handle(&mut self, msg: Adopted, _ctx: &mut Self::Context) {
        let partition = Partition::of(&msg.key);
        let Some(slot) = self
            .slots
            .get_mut(&msg.key)
            .filter(|s| s.generation == msg.generation)
        else {
            return;
        };
        for id in msg.ids {
            if let std::collections::hash_map::Entry::Vacant(e) = self.in_flight.entry(id) {
                e.insert(InFlight {
                    partition,
                    generation: msg.generation,
                });
                slot.outstanding += 1;
            }
        }
        self.backlog_changed();
    }
}

impl Handler<WorkerIdle> for Router {
    type Result = ();
    fn handle(&mut self, msg: WorkerIdle, _ctx: &mut Self::Context) {
        let idle = self
            .slots
            .get(&msg.key)
            .is_some_and(|s| s.generation == msg.generation && s.outstanding == 0);
        if idle && let Some(slot) = self.slots.remove(&msg.key) {
            slot.addr.do_send(StopIdle);
        }
    }
}

impl Handler<WorkerFailed> for Router {
    type Result = ();
    fn handle(&mut self, msg: WorkerFailed, ctx: &mut Self::Context) {
        if self
            .slots
            .get(&msg.key)
            .is_some_and(|s| s.generation == msg.generation)
        {
            self.slots.remove(&msg.key);
        }
        // Everything the failed worker owed goes back to the inbox, including events whose
        // `Enqueue` reached it after it stopped (sent before this message arrived): they are
        // picked up when the quarantine ends, not left in flight for ever.
        self.in_flight.retain(|_, f| f.generation != msg.generation);
        self.quarantine.insert(
            msg.key.clone(),
            Instant::now() + self.stream.config.restart_window(),
        );
        self.health
            .record_error(&format!("worker {} failed", msg.key));
        self.backlog_changed();
        self.maybe_drain(ctx);
    }
}

impl Handler<Shutdown> for Router {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, _: Shutdown, _ctx: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        self.health.set_state(ActorState::Stopped);
        let mut waits = Vec::with_capacity(self.slots.len());
        for (_, slot) in self.slots.drain() {
            let (tx, rx) = oneshot::channel();
            slot.addr.do_send(DrainAndStop(tx));
            waits.push(rx);
        }
        let timeout = self.stream.config.shutdown_timeout();
        let name = self.stream.name.clone();
        Box::pin(
            async move {
                if tokio::time::timeout(timeout, join_all(waits)).await.is_err() {
                    tracing::warn!(stream = %name, "shutdown timed out; unfinished events stay in the inbox");
                }
            }
            .into_actor(self)
            .map(|(), _act, ctx| ctx.stop()),
        )
    }
}
