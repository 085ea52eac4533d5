//! The coordinator actor: this replica's side of the lease protocol described in
//! [`crate::partitions`]. It heartbeats, renews and acquires leases, hands partitions over
//! when another replica should hold them (or when draining), listens for announcements of
//! events recorded elsewhere, and rescans the inbox as the fallback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::WeakAddr;
use actix::prelude::*;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use parking_lot::RwLock;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::backoff::Backoff;
use crate::cluster::Cluster;
use crate::health::{ActorHealth, ActorState};
use crate::inbox::{Partition, StoreError};
use crate::metrics::Metrics;
use crate::partitions::{
    ClusterSignal, LeaseReport, Membership, Ownership, ReplicaId, ReplicationConfig,
    preferred_share, surplus,
};

/// What this replica knows about itself, readable without a message round trip (readiness,
/// `/actors`, `/cluster`).
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaStatus {
    pub replica: ReplicaId,
    /// Live replicas at the last heartbeat (this one included unless draining).
    pub live_replicas: Vec<ReplicaId>,
    /// Partitions held now.
    pub partitions: Vec<u16>,
    /// Partitions being handed over.
    pub releasing: Vec<u16>,
    pub draining: bool,
    /// The last successful heartbeat and renewal.
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// The last time partitions were acquired, handed over or lost.
    pub last_rebalance: Option<DateTime<Utc>>,
    /// The last failed round, if the latest failed.
    pub last_error: Option<String>,
    #[serde(skip)]
    pub(crate) last_ok: Option<Instant>,
    /// When the current unbroken stretch of contact began: the first round that succeeded
    /// after a round's gap longer than the local validity (observed when its answer came,
    /// so any moment at which others may have seen this replica's heartbeat as stale lies
    /// before it).
    #[serde(skip)]
    pub(crate) in_contact_since: Option<Instant>,
}

impl ReplicaStatus {
    fn new(replica: ReplicaId) -> Self {
        Self {
            replica,
            live_replicas: Vec::new(),
            partitions: Vec::new(),
            releasing: Vec::new(),
            draining: false,
            last_heartbeat: None,
            last_rebalance: None,
            last_error: None,
            last_ok: None,
            in_contact_since: None,
        }
    }

    /// True while the last successful renewal is recent enough for this replica to hold its
    /// leases: a replica cut off from the database is not ready.
    pub fn in_contact(&self, config: &ReplicationConfig) -> bool {
        self.last_ok
            .is_some_and(|t| t.elapsed() < config.local_validity())
    }

    /// True while in contact ([`Self::in_contact`]) without a break since `since`: nothing
    /// this replica claimed at `since` can have been taken over for a silent heartbeat.
    pub fn in_contact_since(&self, since: Instant, config: &ReplicationConfig) -> bool {
        self.in_contact(config) && self.in_contact_since.is_some_and(|t| t <= since)
    }
}

/// Run a heartbeat round now.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct TickNow;

/// Wait for the first heartbeat round (start-up).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), String>")]
pub(crate) struct FirstRound;

/// Hand every partition over, then answer (graceful stop). The events in flight get
/// `timeout` to finish before the leases are released anyway.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Drain {
    pub timeout: Duration,
}

/// Mark the replica stopped and stop.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Leave;

/// This replica's coordinator.
pub struct Coordinator {
    cluster: Cluster,
    membership: Arc<dyn Membership>,
    ownership: Arc<Ownership>,
    config: ReplicationConfig,
    health: ActorHealth,
    metrics: Metrics,
    status: Arc<RwLock<ReplicaStatus>>,
    draining: bool,
    /// How long a drain's hand-over waits for events in flight.
    drain_timeout: Duration,
    ticking: bool,
    tick_again: bool,
    handing_over: bool,
    rounds: u64,
    first_round: Vec<oneshot::Sender<Result<(), String>>>,
    drained: Vec<oneshot::Sender<()>>,
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("replica", self.membership.replica())
            .field("draining", &self.draining)
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    pub(crate) fn new(
        cluster: Cluster,
        membership: Arc<dyn Membership>,
        ownership: Arc<Ownership>,
        config: ReplicationConfig,
        health: ActorHealth,
        metrics: Metrics,
        status: Arc<RwLock<ReplicaStatus>>,
    ) -> Self {
        Self {
            cluster,
            membership,
            ownership,
            config,
            health,
            metrics,
            status,
            draining: false,
            drain_timeout: Duration::ZERO,
            ticking: false,
            tick_again: false,
            handing_over: false,
            rounds: 0,
            first_round: Vec::new(),
            drained: Vec::new(),
            listener: None,
        }
    }

    pub(crate) fn shared_status(replica: ReplicaId) -> Arc<RwLock<ReplicaStatus>> {
        Arc::new(RwLock::new(ReplicaStatus::new(replica)))
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.ticking {
            self.tick_again = true;
            return;
        }
        self.ticking = true;
        let membership = self.membership.clone();
        let draining = self.draining;
        let lease = self.config.lease();
        let started = Instant::now();
        let round = async move {
            let live = membership.heartbeat(draining, lease).await?;
            let wanted = if draining {
                Vec::new()
            } else {
                preferred_share(membership.replica(), &live)
            };
            let report = membership.renew_and_acquire(&wanted, lease).await?;
            Ok::<_, StoreError>((live, wanted, report))
        };
        ctx.spawn(round.into_actor(self).map(move |res, act, ctx| {
            act.ticking = false;
            act.after_round(res, started, ctx);
            if std::mem::take(&mut act.tick_again) {
                act.tick(ctx);
            }
        }));
    }

    fn after_round(
        &mut self,
        res: Result<(Vec<ReplicaId>, Vec<Partition>, LeaseReport), StoreError>,
        started: Instant,
        ctx: &mut Context<Self>,
    ) {
        self.rounds += 1;
        match res {
            Ok((live, wanted, report)) => {
                let was_in_contact = self.status.read().in_contact(&self.config);
                let reconnected = self.rounds > 1 && !was_in_contact;
                if reconnected {
                    // Back after losing the database: announcements sent meanwhile were
                    // dropped (this replica held nothing), and the listener's connection may
                    // be half-open. A fresh listener rescans when it subscribes.
                    tracing::info!("the database answers again: rejoining");
                    if let Some(l) = self.listener.take() {
                        l.abort();
                    }
                    self.start_listener(ctx);
                }
                let lost = self
                    .ownership
                    .renewed(&report.held, started + self.config.local_validity());
                let mut rebalanced = false;
                if !lost.is_empty() {
                    tracing::warn!(partitions = ?lost, "partition leases lost to another replica");
                    rebalanced = true;
                }
                if !report.acquired.is_empty() {
                    for a in &report.acquired {
                        if let Some(lapsed) = a.lapsed_for {
                            self.metrics.failover(lapsed.as_secs_f64());
                        }
                    }
                    let partitions: Vec<u16> = report
                        .acquired
                        .iter()
                        .map(|a| a.lease.partition.0)
                        .collect();
                    let taken_over = report
                        .acquired
                        .iter()
                        .filter(|a| a.lapsed_for.is_some())
                        .count();
                    tracing::info!(?partitions, taken_over, "partitions acquired");
                    // Their unfinished events (a dead owner's included) are picked up in id
                    // order before anything new of theirs is dispatched.
                    self.cluster.rescan();
                    rebalanced = true;
                }
                let surplus = surplus(&report.held, &wanted);
                if !surplus.is_empty() && !self.handing_over {
                    self.hand_over(surplus, ctx);
                }
                if rebalanced {
                    self.metrics.rebalanced();
                }
                self.metrics.set_partitions_owned(report.held.len());
                self.metrics.set_replicas_live(live.len());
                {
                    let mut st = self.status.write();
                    st.live_replicas = live;
                    st.partitions = report.held.iter().map(|l| l.partition.0).collect();
                    st.releasing = self.ownership.releasing().iter().map(|p| p.0).collect();
                    st.draining = self.draining;
                    st.last_heartbeat = Some(Utc::now());
                    st.last_ok = Some(started);
                    if !was_in_contact {
                        // Now, not `started`: the gap may have ended while this round ran.
                        st.in_contact_since = Some(Instant::now());
                    }
                    st.last_error = None;
                    if rebalanced {
                        st.last_rebalance = Some(Utc::now());
                    }
                }
                self.health.record_message();
                self.health.set_state(ActorState::Running);
                self.update_detail();
                for w in self.first_round.drain(..) {
                    let _ = w.send(Ok(()));
                }
                if self.draining && report.held.is_empty() {
                    for w in self.drained.drain(..) {
                        let _ = w.send(());
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster heartbeat failed");
                self.health.record_error(&e.to_string());
                let in_contact = self.status.read().in_contact(&self.config);
                if !in_contact {
                    let dropped = self.ownership.drop_all();
                    if dropped > 0 {
                        tracing::error!(
                            partitions = dropped,
                            "no lease renewal within the lease: partitions given up until the database answers again"
                        );
                        self.metrics.rebalanced();
                        self.status.write().last_rebalance = Some(Utc::now());
                    }
                    self.metrics.set_partitions_owned(0);
                    let mut st = self.status.write();
                    st.partitions.clear();
                    st.releasing.clear();
                }
                self.status.write().last_error = Some(e.to_string());
                self.update_detail();
                for w in self.first_round.drain(..) {
                    let _ = w.send(Err(e.to_string()));
                }
            }
        }
    }

    fn update_detail(&self) {
        let st = self.status.read();
        self.health.set_detail(serde_json::json!({
            "replica": st.replica,
            "live_replicas": st.live_replicas.len(),
            "partitions": st.partitions.len(),
            "releasing": st.releasing.len(),
            "draining": st.draining,
            "last_heartbeat": st.last_heartbeat,
            "last_rebalance": st.last_rebalance,
            "last_error": st.last_error,
        }));
        self.health.set_backlog(st.releasing.len() as u64);
    }

    /// Stops dispatching `partitions`, and releases each one's lease as soon as its own events
    /// in flight have finished (bounded by the timeout, after which the rest go anyway). One
    /// slow event (a reply waiting out another process's claim) then holds back only its own
    /// partition, not every partition of a draining replica.
    fn hand_over(&mut self, partitions: Vec<Partition>, ctx: &mut Context<Self>) {
        self.handing_over = true;
        self.ownership.begin_release(&partitions);
        tracing::info!(partitions = ?partitions.iter().map(|p| p.0).collect::<Vec<_>>(), draining = self.draining, "handing partitions over");
        let cluster = self.cluster.clone();
        let membership = self.membership.clone();
        let timeout = if self.draining {
            self.drain_timeout
        } else {
            self.config.handover_timeout()
        };
        let work = async move {
            let deadline = Instant::now() + timeout;
            let mut waiting = partitions.clone();
            loop {
                let mut idle = Vec::new();
                let mut busy = Vec::new();
                for p in waiting {
                    if cluster.in_flight_in(&[p]).await == 0 {
                        idle.push(p);
                    } else {
                        busy.push(p);
                    }
                }
                if !idle.is_empty() {
                    membership.release(&idle).await?;
                }
                waiting = busy;
                if waiting.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(
                        partitions = ?waiting.iter().map(|p| p.0).collect::<Vec<_>>(),
                        "hand-over timed out: releasing anyway (the new owner redoes what did not finish)"
                    );
                    membership.release(&waiting).await?;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<_, crate::inbox::StoreError>(partitions)
        };
        ctx.spawn(work.into_actor(self).map(|res, act, _ctx| {
            act.handing_over = false;
            match res {
                Ok(partitions) => {
                    act.ownership.released(&partitions);
                    act.metrics.rebalanced();
                    let held = act.ownership.held();
                    act.metrics.set_partitions_owned(held.len());
                    {
                        let mut st = act.status.write();
                        st.partitions = held.iter().map(|l| l.partition.0).collect();
                        st.releasing = act.ownership.releasing().iter().map(|p| p.0).collect();
                        st.last_rebalance = Some(Utc::now());
                    }
                    act.update_detail();
                    tracing::info!(
                        released = partitions.len(),
                        held = held.len(),
                        "partitions handed over"
                    );
                    if act.draining && held.is_empty() {
                        for w in act.drained.drain(..) {
                            let _ = w.send(());
                        }
                    }
                }
                Err(e) => {
                    // Still held and marked releasing: the next round tries again.
                    tracing::warn!(error = %e, "releasing partitions failed");
                    act.health.record_error(&e.to_string());
                }
            }
        }));
    }

    fn start_listener(&mut self, ctx: &mut Context<Self>) {
        let addr = ctx.address().downgrade();
        let membership = self.membership.clone();
        let cluster = self.cluster.clone();
        let ownership = self.ownership.clone();
        let metrics = self.metrics.clone();
        self.listener = Some(actix::spawn(listen(
            addr, membership, cluster, ownership, metrics,
        )));
    }
}

/// Follows the announcement stream, resubscribing (and rescanning) when it breaks.
async fn listen(
    addr: WeakAddr<Coordinator>,
    membership: Arc<dyn Membership>,
    cluster: Cluster,
    ownership: Arc<Ownership>,
    metrics: Metrics,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        if addr.upgrade().is_none() {
            return;
        }
        match membership.subscribe().await {
            Ok(mut signals) => {
                backoff.reset();
                // Announcements sent while nobody listened are gone.
                cluster.rescan();
                while let Some(signal) = signals.next().await {
                    match signal {
                        Ok(ClusterSignal::Recorded(notice)) => {
                            let lag_ms = Utc::now().timestamp_millis() - notice.sent_at_ms;
                            metrics.notify_lag(lag_ms.max(0) as f64 / 1000.0);
                            if ownership.owns(notice.partition) {
                                cluster.dispatch_notice(&notice);
                            }
                        }
                        Ok(ClusterSignal::Released) => match addr.upgrade() {
                            Some(a) => a.do_send(TickNow),
                            None => return,
                        },
                        Err(e) => {
                            tracing::warn!(error = %e, "announcement stream failed");
                            break;
                        }
                    }
                }
                tracing::warn!("announcement stream ended; subscribing again");
            }
            Err(e) => tracing::warn!(error = %e, "subscribing to announcements failed"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

impl Actor for Coordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.health.set_state(ActorState::Starting);
        self.update_detail();
        self.start_listener(ctx);
        self.tick(ctx);
        ctx.run_interval(self.config.heartbeat(), |act, ctx| act.tick(ctx));
        ctx.run_interval(self.config.rescan_interval(), |act, _ctx| {
            act.cluster.rescan()
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if let Some(l) = self.listener.take() {
            l.abort();
        }
        self.health.set_state(ActorState::Stopped);
    }
}

impl Handler<TickNow> for Coordinator {
    type Result = ();
    fn handle(&mut self, _: TickNow, ctx: &mut Self::Context) {
        self.tick(ctx);
    }
}

impl Handler<FirstRound> for Coordinator {
    type Result = ResponseFuture<Result<(), String>>;
    fn handle(&mut self, _: FirstRound, _ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        if self.rounds > 0 && self.status.read().last_error.is_none() {
            let _ = tx.send(Ok(()));
        } else {
            self.first_round.push(tx);
        }
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err("the coordinator stopped".to_owned()))
        })
    }
}

impl Handler<Drain> for Coordinator {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, msg: Drain, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.draining = true;
        self.drain_timeout = msg.timeout;
        self.status.write().draining = true;
        if self.ownership.held().is_empty() {
            let _ = tx.send(());
        } else {
            self.drained.push(tx);
        }
        self.tick(ctx);
        let bound = msg.timeout + self.config.lease();
        Box::pin(async move {
            if tokio::time::timeout(bound, rx).await.is_err() {
                tracing::warn!("drain timed out: the remaining leases lapse instead");
            }
        })
    }
}

impl Handler<Leave> for Coordinator {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, _: Leave, _ctx: &mut Self::Context) -> Self::Result {
        // Claims of a replica marked stopped lapse at once: from the moment the statement
        // may reach the database, nothing claimed here is vouched for any more.
        self.status.write().in_contact_since = None;
        let membership = self.membership.clone();
        Box::pin(
            async move {
                if let Err(e) = membership.leave().await {
                    tracing::warn!(error = %e, "marking the replica stopped failed");
                }
            }
            .into_actor(self)
            .map(|(), act, ctx| {
                act.ownership.drop_all();
                ctx.stop();
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claim is vouched for only inside one unbroken stretch of contact that is still on.
    #[test]
    fn contact_since_a_claim_needs_the_stretch_to_cover_it() {
        let config = ReplicationConfig::default();
        let mut st = ReplicaStatus::new(ReplicaId("r1".into()));
        let claim = Instant::now();
        assert!(!st.in_contact_since(claim, &config), "no round yet");
        st.last_ok = Some(Instant::now());
        st.in_contact_since = Some(claim - Duration::from_millis(1));
        assert!(st.in_contact_since(claim, &config));
        // The stretch began after the claim: the contact broke in between.
        st.in_contact_since = Some(claim + Duration::from_millis(1));
        assert!(!st.in_contact_since(claim, &config));
        // The last renewal is older than the local validity: out of contact now.
        st.in_contact_since = Some(claim - Duration::from_millis(1));
        st.last_ok = Instant::now().checked_sub(config.local_validity());
        assert!(!st.in_contact_since(claim, &config));
    }
}
