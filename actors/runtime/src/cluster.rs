//! The facade HTTP and gRPC handlers hold: record-then-dispatch ingestion, recovery, dead
//! letters, health, metrics, readiness and shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use actix::prelude::*;
use futures::FutureExt as _;
use parking_lot::RwLock;

use crate::config::{ClusterConfig, ConfigError};
use crate::coordinator::{Coordinator, Drain, FirstRound, Leave, ReplicaStatus};
use crate::group_commit::{GroupCommit, MarkCommit};
use crate::handler::EventHandler;
use crate::health::{ActorHealth, ActorId, ActorKind, ActorState, HealthRegistry};
use crate::inbox::{
    Claim, EventRowId, EventSource, EventStatus, InboundEvent, InboundEvents, NewInboundEvent,
    Partition, RecordOutcome, Recording, RoutingKey, StoreError,
};
use crate::metrics::Metrics;
use crate::partitions::{ClusterView, Membership, Ownership, RecordedNotice, ReplicationConfig};
use crate::router::{
    ClaimedAtRecord, Dispatch, InFlightIn, Recover, Router, RouterShared, RunningClaims, Shutdown,
    StreamCtx,
};

/// A stream of events of one source, handled by one keyed router.
#[derive(Clone)]
pub struct StreamSpec {
    /// Router name, shown in the actor tree and metrics (e.g. `conversations`).
    pub name: String,
    /// Kind of the per-key workers (an application-defined kind, e.g. `conversation_thread`).
    pub kind: ActorKind,
    /// The events this stream handles.
    pub source: EventSource,
    /// The logic every worker of the stream runs.
    pub handler: Arc<dyn EventHandler>,
}

impl std::fmt::Debug for StreamSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSpec")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Errors of cluster operations.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The metrics could not be registered.
    #[error("registering metrics failed: {0}")]
    Metrics(String),
    /// A stream for this source is registered already.
    #[error("a stream for source {0} is registered already")]
    DuplicateStream(&'static str),
    /// The cluster is shutting down.
    #[error("the actor cluster is shutting down")]
    ShuttingDown,
    /// The inbox failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The first membership round (heartbeat and leases) failed.
    #[error("joining the replicas failed: {0}")]
    Membership(String),
}

/// Errors of [`Cluster::ingest`].
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The cluster is shutting down; the event was not recorded (the sender should retry).
    #[error("the actor cluster is shutting down")]
    ShuttingDown,
    /// No stream handles this source; the event was not recorded.
    #[error("no stream handles events from {0}")]
    NoStream(&'static str),
    /// The routing key is empty; the event was not recorded.
    #[error("an event needs a routing key")]
    EmptyRoutingKey,
    /// The inbox failed; the event was not recorded (do not acknowledge it).
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct StreamEntry {
    name: String,
    addr: Addr<Router>,
    shared: Arc<RouterShared>,
    running: Arc<RunningClaims>,
}

/// What [`Cluster::check_ingest`] decided for an event to claim as it is recorded.
#[derive(Debug, Clone, Copy)]
struct Claiming {
    /// Scans started when it was decided ([`RouterShared::scans`]).
    scans: u64,
    /// The claim its key's worker was handling then ([`Recording::behind`]).
    behind: Option<Claim>,
}

struct Inner {
    config: ClusterConfig,
    inbox: Arc<dyn InboundEvents>,
    /// The writer that group-commits records (`inbox_group_commit`); `None`: each event is
    /// recorded by its own insert.
    group_commit: Option<GroupCommit>,
    /// The writer that group-commits done marks (with `inbox_group_commit`).
    marks: Option<MarkCommit>,
    health: HealthRegistry,
    metrics: Metrics,
    root_id: ActorId,
    root: Addr<RootSupervisor>,
    streams: RwLock<HashMap<EventSource, StreamEntry>>,
    accepting: AtomicBool,
    ownership: Arc<Ownership>,
    replication: Option<Replication>,
}

/// What a replica among others adds.
struct Replication {
    membership: Arc<dyn Membership>,
    config: ReplicationConfig,
    status: Arc<RwLock<ReplicaStatus>>,
    coordinator: parking_lot::Mutex<Option<Addr<Coordinator>>>,
}

/// The actor cluster. Cheap to clone. Create it inside an actix system (e.g. in the
/// `actix_web::main` function); its actors run on the arbiter that calls
/// [`Cluster::start`] and [`Cluster::register_stream`].
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("streams", &self.inner.streams.read().len())
            .field("accepting", &self.is_accepting())
            .finish_non_exhaustive()
    }
}

/// Outcome of [`Cluster::recover`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Unfinished (`pending` + `processing`) events in the inbox when recovery began.
    pub unfinished: i64,
}

impl Cluster {
    /// Starts the root supervisor of a process alone on its inbox (it handles every
    /// partition). Must be called inside an actix system.
    pub fn start(
        config: ClusterConfig,
        inbox: Arc<dyn InboundEvents>,
        health: HealthRegistry,
        metrics: Metrics,
    ) -> Result<Self, ClusterError> {
        Self::start_with(config, inbox, health, metrics, None)
    }

    /// Starts the root supervisor of one replica among others sharing the inbox through
    /// `membership` (see [`crate::partitions`]). It holds no partition until
    /// [`Cluster::recover`] has run the first membership round.
    pub fn start_replicated(
        config: ClusterConfig,
        replication: ReplicationConfig,
        inbox: Arc<dyn InboundEvents>,
        health: HealthRegistry,
        metrics: Metrics,
        membership: Arc<dyn Membership>,
    ) -> Result<Self, ClusterError> {
        replication.validate()?;
        let status = Coordinator::shared_status(membership.replica().clone());
        Self::start_with(
            config,
            inbox,
            health,
            metrics,
            Some(Replication {
                membership,
                config: replication,
                status,
                coordinator: parking_lot::Mutex::new(None),
            }),
        )
    }

    fn start_with(
        config: ClusterConfig,
        inbox: Arc<dyn InboundEvents>,
        health: HealthRegistry,
        metrics: Metrics,
        replication: Option<Replication>,
    ) -> Result<Self, ClusterError> {
        config.validate()?;
        let ownership = if replication.is_some() {
            Ownership::leased()
        } else {
            Ownership::everything()
        };
        let root_id = ActorId::new(ActorKind::SUPERVISOR, "root");
        let root_health = health.register(root_id.clone(), None);
        let root = RootSupervisor {
            health: root_health,
            registry: health.clone(),
            inbox: inbox.clone(),
            metrics: metrics.clone(),
            config: config.clone(),
        }
        .start();
        let group_commit = config.inbox_group_commit.then(|| {
            let writer_health = health.register(
                ActorId::new(ActorKind::SUPERVISOR, "inbox_writer"),
                Some(root_id.clone()),
            );
            GroupCommit::start(
                inbox.clone(),
                config.inbox_batch_max,
                metrics.clone(),
                writer_health,
            )
        });
        let marks = config.inbox_group_commit.then(|| {
            let writer_health = health.register(
                ActorId::new(ActorKind::SUPERVISOR, "inbox_marks"),
                Some(root_id.clone()),
            );
            MarkCommit::start(inbox.clone(), config.inbox_batch_max, writer_health)
        });
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                inbox,
                group_commit,
                marks,
                health,
                metrics,
                root_id,
                root,
                streams: RwLock::new(HashMap::new()),
                accepting: AtomicBool::new(true),
                ownership,
                replication,
            }),
        })
    }

    /// Adds a keyed router for one source. Call before [`Cluster::recover`].
    pub fn register_stream(&self, spec: StreamSpec) -> Result<(), ClusterError> {
        if !self.is_accepting() {
            return Err(ClusterError::ShuttingDown);
        }
        let mut streams = self.inner.streams.write();
        if streams.contains_key(&spec.source) {
            return Err(ClusterError::DuplicateStream(spec.source.as_str()));
        }
        let running = Arc::new(RunningClaims::default());
        let stream = Arc::new(StreamCtx {
            router_id: ActorId::new(ActorKind::SUPERVISOR, spec.name.clone()),
            name: spec.name.clone(),
            kind: spec.kind,
            source: spec.source,
            handler: spec.handler,
            inbox: self.inner.inbox.clone(),
            marks: self.inner.marks.clone(),
            config: self.inner.config.clone(),
            metrics: self.inner.metrics.clone(),
            health: self.inner.health.clone(),
            ownership: self.inner.ownership.clone(),
            running: running.clone(),
        });
        let shared = Arc::new(RouterShared::new(self.inner.config.high_water_mark));
        self.inner.metrics.declare_kind(spec.kind);
        let addr = Router::spawn(stream, shared.clone(), self.inner.root_id.clone());
        tracing::info!(stream = %spec.name, source = spec.source.as_str(), kind = %spec.kind, "stream registered");
        streams.insert(
            spec.source,
            StreamEntry {
                name: spec.name,
                addr,
                shared,
                running,
            },
        );
        Ok(())
    }

    /// Records the event (idempotent on `(source, source_id)`), then dispatches it to its
    /// key's worker when it is new. A duplicate is never dispatched. Once this returns `Ok`
    /// the event is durable and may be acknowledged; if dispatch has to wait (backpressure),
    /// the drain loop picks it up from the inbox.
    ///
    /// The event is handed to the inbox writer when this is called, not when the future is
    /// first polled: events ingested one after another are recorded in that order even when
    /// their futures run concurrently (a Socket Mode connection acknowledges each envelope
    /// when its own record commits, without waiting for the envelopes before it).
    pub fn ingest(
        &self,
        event: NewInboundEvent,
    ) -> impl Future<Output = Result<RecordOutcome, IngestError>> + Send + use<> {
        let started = std::time::Instant::now();
        let recording = self
            .check_ingest(&event)
            .map(|claiming| match &self.inner.group_commit {
                Some(writer) => {
                    let recording = Recording {
                        event,
                        claim: claiming.is_some(),
                        behind: claiming.and_then(|c| c.behind),
                    };
                    (writer.submit(recording).boxed(), claiming)
                }
                None => {
                    let inbox = self.inner.inbox.clone();
                    (async move { inbox.record(event).await }.boxed(), None)
                }
            });
        let this = self.clone();
        async move {
            let (recording, claiming) = recording?;
            let mut outcome = recording.await?;
            this.inner
                .metrics
                .observe_stage("inbox_write", started.elapsed());
            match &mut outcome {
                RecordOutcome::Recorded(e) => {
                    tracing::debug!(
                        source = e.source.as_str(),
                        source_id = %e.source_id,
                        event_id = %e.id,
                        routing_key = %e.routing_key,
                        claimed = e.status == EventStatus::Processing,
                        "event recorded"
                    );
                    // The claimed event goes to its worker with its payload; the caller's
                    // outcome keeps the rest (it never needs the payload).
                    let claimed = claiming
                        .filter(|_| e.status == EventStatus::Processing)
                        .map(|c| {
                            let payload = std::mem::take(&mut e.payload);
                            ClaimedAtRecord {
                                event: Box::new(InboundEvent {
                                    payload,
                                    ..e.clone()
                                }),
                                scans: c.scans,
                                behind: c.behind,
                            }
                        });
                    this.route(e.id, e.source, &e.routing_key, e.partition, false, claimed)
                        .await;
                }
                RecordOutcome::Duplicate(e) => {
                    tracing::debug!(
                        source = e.source.as_str(),
                        source_id = %e.source_id,
                        event_id = %e.id,
                        "duplicate event ignored"
                    );
                }
            }
            Ok(outcome)
        }
    }

    /// Why `event` cannot be ingested now, if it cannot; else whether to claim it in the
    /// same write: when it will be dispatched here at once (its partition is held here and
    /// its stream is not deferring or full, so no scan is running), with the number of
    /// scans started so far ([`RouterShared::scans`]) and the claim its key's worker is
    /// handling ([`RunningClaims`]). A claimed event that is not dispatched with its claim
    /// after all (the partition moved, the stream started deferring, a scan started
    /// meanwhile, the worker it was let behind is gone) is claimed again from the inbox, as
    /// after a crash.
    fn check_ingest(&self, event: &NewInboundEvent) -> Result<Option<Claiming>, IngestError> {
        if !self.is_accepting() {
            return Err(IngestError::ShuttingDown);
        }
        if event.routing_key.0.is_empty() {
            return Err(IngestError::EmptyRoutingKey);
        }
        let streams = self.inner.streams.read();
        let Some(stream) = streams.get(&event.source) else {
            return Err(IngestError::NoStream(event.source.as_str()));
        };
        let claim = self.inner.config.inbox_claim_at_record
            && !stream.shared.is_overloaded()
            && self.inner.ownership.owns(Partition::of(&event.routing_key));
        Ok(claim.then(|| Claiming {
            scans: stream
                .shared
                .scans
                .load(std::sync::atomic::Ordering::SeqCst),
            behind: stream.running.of(&event.routing_key),
        }))
    }

    /// Dispatches a recorded event here when this replica holds its partition, else tells
    /// the replicas that it was recorded (its owner dispatches it; if the announcement is
    /// lost, the owner's rescan finds it).
    async fn route(
        &self,
        id: EventRowId,
        source: EventSource,
        key: &RoutingKey,
        partition: Partition,
        requeued: bool,
        claimed: Option<ClaimedAtRecord>,
    ) {
        if self.inner.ownership.owns(partition) {
            self.dispatch(id, source, key.clone(), partition, requeued, claimed);
            return;
        }
        let Some(replication) = &self.inner.replication else {
            return;
        };
        let notice = RecordedNotice {
            source: source.as_str().to_owned(),
            partition,
            id,
            routing_key: key.clone(),
            sent_at_ms: chrono::Utc::now().timestamp_millis(),
        };
        if let Err(e) = replication.membership.announce(&notice).await {
            tracing::warn!(event_id = %id, partition = %partition, error = %e, "announcing an event failed; its owner's rescan picks it up");
        }
    }

    /// An event another replica recorded, for a partition this one holds.
    pub(crate) fn dispatch_notice(&self, notice: &RecordedNotice) {
        let source = self
            .inner
            .streams
            .read()
            .keys()
            .copied()
            .find(|s| s.as_str() == notice.source);
        match source {
            Some(source) => self.dispatch(
                notice.id,
                source,
                notice.routing_key.clone(),
                notice.partition,
                false,
                None,
            ),
            None => {
                tracing::warn!(event_id = %notice.id, source = %notice.source, "announced event of a source without a stream here")
            }
        }
    }

    /// Every router rescans the partitions this replica holds (acquired partitions, a
    /// reconnected announcement stream, the periodic fallback).
    pub(crate) fn rescan(&self) {
        for addr in self.routers() {
            addr.do_send(Recover);
        }
    }

    /// Every stream's router.
    fn routers(&self) -> Vec<Addr<Router>> {
        self.inner
            .streams
            .read()
            .values()
            .map(|s| s.addr.clone())
            .collect()
    }

    /// Dispatched, unfinished events of `partitions` over every stream.
    pub(crate) async fn in_flight_in(&self, partitions: &[Partition]) -> usize {
        let addrs = self.routers();
        let mut n = 0;
        for addr in addrs {
            n += addr
                .send(InFlightIn(partitions.to_vec()))
                .await
                .unwrap_or(0);
        }
        n
    }

    fn dispatch(
        &self,
        id: EventRowId,
        source: EventSource,
        key: RoutingKey,
        partition: Partition,
        requeued: bool,
        claimed: Option<ClaimedAtRecord>,
    ) {
        let streams = self.inner.streams.read();
        let Some(stream) = streams.get(&source) else {
            tracing::error!(event_id = %id, source = source.as_str(), "no stream for a recorded event");
            return;
        };
        if let Err(e) = stream.addr.try_send(Dispatch {
            id,
            key,
            partition,
            requeued,
            claimed,
        }) {
            // Full mailbox (or a stopped router): the event is durable; the drain loop
            // dispatches it in order later.
            let full = matches!(e, SendError::Full(_));
            tracing::debug!(event_id = %id, stream = %stream.name, full, "dispatch deferred");
            stream.shared.defer();
            self.inner.metrics.deferred(&stream.name);
        }
    }

    /// Re-dispatches every unfinished event in the inbox (in id order per key) and reports
    /// how many there were. Every router also recovers by itself when it is registered, before
    /// it dispatches any new event, so this is a report plus an immediate rescan; events
    /// already in flight are never dispatched twice.
    ///
    /// A replica first joins the others: it starts its coordinator and waits for the first
    /// membership round, so it holds its partitions before it scans.
    pub async fn recover(&self) -> Result<RecoveryReport, ClusterError> {
        if !self.is_accepting() {
            return Err(ClusterError::ShuttingDown);
        }
        if let Some(replication) = &self.inner.replication {
            let addr = {
                let mut slot = replication.coordinator.lock();
                slot.get_or_insert_with(|| {
                    let health = self.inner.health.register(
                        crate::health::ActorId::new(ActorKind::SUPERVISOR, "cluster"),
                        Some(self.inner.root_id.clone()),
                    );
                    Coordinator::new(
                        self.clone(),
                        replication.membership.clone(),
                        self.inner.ownership.clone(),
                        replication.config.clone(),
                        health,
                        self.inner.metrics.clone(),
                        replication.status.clone(),
                    )
                    .start()
                })
                .clone()
            };
            addr.send(FirstRound)
                .await
                .map_err(|_| ClusterError::ShuttingDown)?
                .map_err(ClusterError::Membership)?;
        }
        let counts = self.inner.inbox.count_by_status().await?;
        let unfinished = counts
            .iter()
            .filter(|(s, _)| s.is_unfinished())
            .map(|(_, n)| n)
            .sum();
        let addrs = self.routers();
        for addr in addrs {
            if addr.send(Recover).await.is_err() {
                return Err(ClusterError::ShuttingDown);
            }
        }
        tracing::info!(unfinished, "recovery started");
        Ok(RecoveryReport { unfinished })
    }

    /// Puts a dead letter back to `pending` and dispatches it; `None` when it is not a dead
    /// letter.
    pub async fn requeue_dead_letter(
        &self,
        id: EventRowId,
    ) -> Result<Option<InboundEvent>, ClusterError> {
        if !self.is_accepting() {
            return Err(ClusterError::ShuttingDown);
        }
        let Some(event) = self.inner.inbox.requeue(id).await? else {
            return Ok(None);
        };
        tracing::info!(event_id = %id, "dead letter requeued");
        self.route(
            event.id,
            event.source,
            &event.routing_key,
            event.partition,
            true,
            None,
        )
        .await;
        Ok(Some(event))
    }

    /// Discards a dead letter (→ `ignored`); false when it is not a dead letter.
    pub async fn discard_dead_letter(&self, id: EventRowId) -> Result<bool, ClusterError> {
        let discarded = self.inner.inbox.discard(id).await?;
        if discarded {
            tracing::info!(event_id = %id, "dead letter discarded");
        }
        Ok(discarded)
    }

    /// Dead letters, newest first.
    pub async fn dead_letters(
        &self,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<InboundEvent>, ClusterError> {
        Ok(self.inner.inbox.list_failed(limit, offset).await?)
    }

    /// The health registry (actor tree).
    pub fn health(&self) -> &HealthRegistry {
        &self.inner.health
    }

    /// Every metric in the Prometheus text format, with the live-actor gauge taken from the
    /// health registry at this moment (so `/metrics` and `/actors` always agree).
    pub fn encode_metrics(&self) -> String {
        self.inner
            .metrics
            .set_counts(&self.inner.health.state_counts());
        self.inner.metrics.encode_text()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The inbox.
    pub fn inbox(&self) -> &Arc<dyn InboundEvents> {
        &self.inner.inbox
    }

    /// The configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// Which partitions this process handles.
    pub fn ownership(&self) -> &Arc<Ownership> {
        &self.inner.ownership
    }

    /// This replica's view of itself; `None` for a process alone on its inbox.
    pub fn replica_status(&self) -> Option<ReplicaStatus> {
        self.inner
            .replication
            .as_ref()
            .map(|r| r.status.read().clone())
    }

    /// False when this replica has not renewed its leases within the lease (it lost the
    /// database and holds nothing); always true for a process alone on its inbox.
    pub fn is_in_contact(&self) -> bool {
        self.inner
            .replication
            .as_ref()
            .is_none_or(|r| r.status.read().in_contact(&r.config))
    }

    /// True while this replica has been in contact with the cluster without a break since
    /// `since` (its own monotonic clock; see [`ReplicaStatus::in_contact_since`]); always
    /// true for a process alone on its inbox.
    pub fn in_contact_since(&self, since: Instant) -> bool {
        self.inner
            .replication
            .as_ref()
            .is_none_or(|r| r.status.read().in_contact_since(since, &r.config))
    }

    /// Replicas, leases and backlogs as the database has them; `None` for a process alone on
    /// its inbox.
    pub async fn cluster_view(&self) -> Result<Option<ClusterView>, ClusterError> {
        match &self.inner.replication {
            Some(r) => Ok(Some(r.membership.view(r.config.lease()).await?)),
            None => Ok(None),
        }
    }

    /// True while some stream defers dispatch (backlog above the high-water mark, or
    /// deferred events not yet drained). Readiness should report not ready.
    pub fn is_overloaded(&self) -> bool {
        self.inner
            .streams
            .read()
            .values()
            .any(|s| s.shared.is_overloaded())
    }

    /// False once [`Cluster::shutdown`] began.
    pub fn is_accepting(&self) -> bool {
        self.inner.accepting.load(Ordering::SeqCst)
    }

    /// Hands every partition this replica holds over to the others: nothing new is
    /// dispatched here, the events in flight get `shutdown_timeout_ms` to finish, then the
    /// leases are released and the others take them at once. Events recorded here meanwhile
    /// are announced to their new owners. A graceful stop calls it while the listeners still
    /// serve (so a turn in flight can still receive its SendReply); a no-op for a process
    /// alone on its inbox, and idempotent.
    pub async fn drain(&self) {
        let coordinator = self
            .inner
            .replication
            .as_ref()
            .and_then(|r| r.coordinator.lock().clone());
        if let Some(coordinator) = coordinator {
            let timeout = self.inner.config.shutdown_timeout();
            let _ = coordinator.send(Drain { timeout }).await;
        }
    }

    /// Stops accepting events, lets the events being handled finish (bounded by
    /// `shutdown_timeout_ms`), stops every worker and router. Queued events stay in the
    /// inbox for the next start. Idempotent.
    pub async fn shutdown(&self) {
        if !self.inner.accepting.swap(false, Ordering::SeqCst) {
            return;
        }
        tracing::info!("actor cluster shutting down");
        self.drain().await;
        let coordinator = self
            .inner
            .replication
            .as_ref()
            .and_then(|r| r.coordinator.lock().clone());
        let addrs = self.routers();
        let waits = addrs.iter().map(|a| a.send(Shutdown));
        // A router that is already gone has nothing left to finish.
        let _ = futures::future::join_all(waits).await;
        if let Some(coordinator) = coordinator {
            let _ = coordinator.send(Leave).await;
        }
        if let Some(r) = &self.inner.replication {
            // Breaks the coordinator's reference cycle with the cluster.
            r.coordinator.lock().take();
        }
        let _ = self.inner.root.send(StopRoot).await;
        tracing::info!("actor cluster stopped");
    }
}

/// Stop the root supervisor.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct StopRoot;

/// The root of the supervision tree: reports itself, prunes the registry and refreshes the
/// inbox gauges.
struct RootSupervisor {
    health: ActorHealth,
    registry: HealthRegistry,
    inbox: Arc<dyn InboundEvents>,
    metrics: Metrics,
    config: ClusterConfig,
}

impl RootSupervisor {
    fn housekeeping(&mut self, ctx: &mut Context<Self>) {
        let pruned = self.registry.prune(self.config.stopped_retention());
        if pruned > 0 {
            tracing::debug!(pruned, "stopped actors pruned from the registry");
        }
        let inbox = self.inbox.clone();
        ctx.spawn(
            async move { inbox.count_by_status().await }
                .into_actor(self)
                .map(|counts, act, _ctx| match counts {
                    Ok(c) => {
                        act.metrics.set_inbox_counts(&c);
                        let unfinished: i64 = c
                            .iter()
                            .filter(|(s, _)| s.is_unfinished())
                            .map(|(_, n)| n)
                            .sum();
                        let failed: i64 = c
                            .iter()
                            .filter(|(s, _)| *s == EventStatus::Failed)
                            .map(|(_, n)| n)
                            .sum();
                        act.health.set_detail(serde_json::json!({
                            "inbox_unfinished": unfinished,
                            "dead_letters": failed,
                        }));
                        act.health.record_message();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "counting inbox events failed");
                        act.health.record_error(&e.to_string());
                    }
                }),
        );
    }
}

impl Actor for RootSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.health.set_state(ActorState::Running);
        self.housekeeping(ctx);
        ctx.run_interval(self.config.housekeeping_interval(), |act, ctx| {
            act.housekeeping(ctx)
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.health.set_state(ActorState::Stopped);
    }
}

impl std::fmt::Debug for RootSupervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootSupervisor").finish_non_exhaustive()
    }
}

impl Handler<StopRoot> for RootSupervisor {
    type Result = ();
    fn handle(&mut self, _: StopRoot, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
