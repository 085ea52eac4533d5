//! The facade HTTP and gRPC handlers hold: record-then-dispatch ingestion, recovery, dead
//! letters, health, metrics, readiness and shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix::prelude::*;
use parking_lot::RwLock;

use crate::config::{ClusterConfig, ConfigError};
use crate::handler::EventHandler;
use crate::health::{ActorHealth, ActorId, ActorKind, ActorState, HealthRegistry};
use crate::inbox::{
    EventRowId, EventSource, EventStatus, InboundEvent, InboundEvents, NewInboundEvent,
    RecordOutcome, RoutingKey, StoreError,
};
use crate::metrics::Metrics;
use crate::router::{Dispatch, Recover, Router, RouterShared, Shutdown, StreamCtx};

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
}

struct Inner {
    config: ClusterConfig,
    inbox: Arc<dyn InboundEvents>,
    health: HealthRegistry,
    metrics: Metrics,
    root_id: ActorId,
    root: Addr<RootSupervisor>,
    streams: RwLock<HashMap<EventSource, StreamEntry>>,
    accepting: AtomicBool,
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
    /// Starts the root supervisor. Must be called inside an actix system.
    pub fn start(
        config: ClusterConfig,
        inbox: Arc<dyn InboundEvents>,
        health: HealthRegistry,
        metrics: Metrics,
    ) -> Result<Self, ClusterError> {
        config.validate()?;
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
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                inbox,
                health,
                metrics,
                root_id,
                root,
                streams: RwLock::new(HashMap::new()),
                accepting: AtomicBool::new(true),
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
        let stream = Arc::new(StreamCtx {
            router_id: ActorId::new(ActorKind::SUPERVISOR, spec.name.clone()),
            name: spec.name.clone(),
            kind: spec.kind,
            source: spec.source,
            handler: spec.handler,
            inbox: self.inner.inbox.clone(),
            config: self.inner.config.clone(),
            metrics: self.inner.metrics.clone(),
            health: self.inner.health.clone(),
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
            },
        );
        Ok(())
    }

    /// Records the event (idempotent on `(source, source_id)`), then dispatches it to its
    /// key's worker when it is new. A duplicate is never dispatched. Once this returns `Ok`
    /// the event is durable and may be acknowledged; if dispatch has to wait (backpressure),
    /// the drain loop picks it up from the inbox.
    pub async fn ingest(&self, event: NewInboundEvent) -> Result<RecordOutcome, IngestError> {
        if !self.is_accepting() {
            return Err(IngestError::ShuttingDown);
        }
        if event.routing_key.0.is_empty() {
            return Err(IngestError::EmptyRoutingKey);
        }
        let source = event.source;
        if !self.inner.streams.read().contains_key(&source) {
            return Err(IngestError::NoStream(source.as_str()));
        }
        let outcome = self.inner.inbox.record(event).await?;
        match &outcome {
            RecordOutcome::Recorded(e) => {
                tracing::debug!(
                    source = e.source.as_str(),
                    source_id = %e.source_id,
                    event_id = %e.id,
                    routing_key = %e.routing_key,
                    "event recorded"
                );
                self.dispatch(e.id, e.source, e.routing_key.clone(), false);
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

    fn dispatch(&self, id: EventRowId, source: EventSource, key: RoutingKey, requeued: bool) {
        let streams = self.inner.streams.read();
        let Some(stream) = streams.get(&source) else {
            tracing::error!(event_id = %id, source = source.as_str(), "no stream for a recorded event");
            return;
        };
        if let Err(e) = stream.addr.try_send(Dispatch { id, key, requeued }) {
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
    pub async fn recover(&self) -> Result<RecoveryReport, ClusterError> {
        if !self.is_accepting() {
            return Err(ClusterError::ShuttingDown);
        }
        let counts = self.inner.inbox.count_by_status().await?;
        let unfinished = counts
            .iter()
            .filter(|(s, _)| s.is_unfinished())
            .map(|(_, n)| n)
            .sum();
        let addrs: Vec<Addr<Router>> = self
            .inner
            .streams
            .read()
            .values()
            .map(|s| s.addr.clone())
            .collect();
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
        self.dispatch(event.id, event.source, event.routing_key.clone(), true);
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
            .set_live(&self.inner.health.live_counts());
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

    /// Stops accepting events, lets the events being handled finish (bounded by
    /// `shutdown_timeout_ms`), stops every worker and router. Queued events stay in the
    /// inbox for the next start. Idempotent.
    pub async fn shutdown(&self) {
        if !self.inner.accepting.swap(false, Ordering::SeqCst) {
            return;
        }
        tracing::info!("actor cluster shutting down");
        let addrs: Vec<Addr<Router>> = self
            .inner
            .streams
            .read()
            .values()
            .map(|s| s.addr.clone())
            .collect();
        let waits = addrs.iter().map(|a| a.send(Shutdown));
        // A router that is already gone has nothing left to finish.
        let _ = futures::future::join_all(waits).await;
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
