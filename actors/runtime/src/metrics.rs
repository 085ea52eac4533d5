//! Prometheus metrics of the actor cluster. The HTTP layer registers its own metrics on the
//! same [`Metrics::registry`] and serves [`Metrics::encode_text`].

use std::fmt;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::health::{ActorKind, ActorState};
use crate::inbox::EventStatus;

/// The cluster's metrics. Cheap to clone; clones share the same collectors.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    actors_live: IntGaugeVec,
    actors_by_state: IntGaugeVec,
    messages_handled: IntCounterVec,
    failures: IntCounterVec,
    restarts: IntCounterVec,
    handling_seconds: HistogramVec,
    dead_letters_total: IntCounterVec,
    router_backlog: IntGaugeVec,
    deferred_total: IntCounterVec,
    inbox_events: IntGaugeVec,
    fenced_total: IntCounterVec,
    partitions_owned: IntGauge,
    replicas_live: IntGauge,
    rebalances_total: IntCounter,
    failover_seconds: Histogram,
    notify_lag_seconds: Histogram,
    stage_seconds: HistogramVec,
    inbox_batch_size: Histogram,
    /// Kinds `actors_live` has a series for (kept at zero when none is live).
    live_kinds: std::sync::Arc<parking_lot::Mutex<std::collections::BTreeSet<ActorKind>>>,
}

/// The bound of `infragpt_stage_seconds` above which an observation counts as a stall
/// ([`StageTotal::over_100ms`]); one of the histogram's buckets.
pub const STAGE_STALL_SECONDS: f64 = 0.1;

/// One stage's `infragpt_stage_seconds`, cumulative since the process started.
#[derive(Debug, Clone, PartialEq)]
pub struct StageTotal {
    pub stage: String,
    pub count: u64,
    pub seconds: f64,
    /// Observations above 100 ms: stalls that a mean hides.
    pub over_100ms: u64,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics on a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        Self::with_registry(Registry::new())
    }

    /// Metrics registered on `registry`.
    pub(crate) fn with_registry(registry: Registry) -> Result<Self, prometheus::Error> {
        let kind = &["kind"];
        let actors_live = IntGaugeVec::new(
            Opts::new("infragpt_actors_live", "Live actors per kind"),
            kind,
        )?;
        let actors_by_state = IntGaugeVec::new(
            Opts::new(
                "infragpt_actors",
                "Actors per kind and state (starting, running, restarting, stopped, failed), as /actors counts them",
            ),
            &["kind", "state"],
        )?;
        let messages_handled = IntCounterVec::new(
            Opts::new(
                "infragpt_actor_messages_handled_total",
                "Events handled (done or ignored) per actor kind",
            ),
            kind,
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "infragpt_actor_failures_total",
                "Handler errors and panics per actor kind",
            ),
            kind,
        )?;
        let restarts = IntCounterVec::new(
            Opts::new("infragpt_actor_restarts_total", "Actor restarts per kind"),
            kind,
        )?;
        let handling_seconds = HistogramVec::new(
            HistogramOpts::new(
                "infragpt_actor_handling_seconds",
                "Time to handle one event per actor kind",
            )
            .buckets(vec![
                0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            kind,
        )?;
        let dead_letters_total = IntCounterVec::new(
            Opts::new(
                "infragpt_dead_letters_total",
                "Events that became dead letters per actor kind",
            ),
            kind,
        )?;
        let router_backlog = IntGaugeVec::new(
            Opts::new(
                "infragpt_inbox_backlog",
                "Events dispatched to a stream's workers and not yet finished",
            ),
            &["stream"],
        )?;
        let deferred_total = IntCounterVec::new(
            Opts::new(
                "infragpt_inbox_deferred_total",
                "Events left in the inbox by backpressure, dispatched later by the drain loop",
            ),
            &["stream"],
        )?;
        let inbox_events = IntGaugeVec::new(
            Opts::new(
                "infragpt_inbox_events",
                "Stored inbound events per status (failed = dead letters)",
            ),
            &["status"],
        )?;
        let fenced_total = IntCounterVec::new(
            Opts::new(
                "infragpt_actor_fenced_total",
                "Attempts that ended because the event's partition or claim moved to another replica",
            ),
            kind,
        )?;
        let partitions_owned = IntGauge::new(
            "infragpt_cluster_partitions_owned",
            "Inbox partitions this replica holds a lease on",
        )?;
        let replicas_live = IntGauge::new(
            "infragpt_cluster_replicas_live",
            "Live replicas this replica saw at its last heartbeat (itself included unless draining)",
        )?;
        let rebalances_total = IntCounter::new(
            "infragpt_cluster_rebalances_total",
            "Times this replica acquired or handed over partitions",
        )?;
        let failover_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "infragpt_cluster_failover_seconds",
                "From the last renewal of a lapsed lease to its takeover by this replica",
            )
            .buckets(vec![0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0]),
        )?;
        let notify_lag_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "infragpt_cluster_notify_lag_seconds",
                "From recording an event on another replica to its notice reaching the owner",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )?;
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new(
                "infragpt_stage_seconds",
                "Time spent in one stage of handling an event (inbox_write, ack, claim, mark, and \
                 the conversation's begin_turn, start_turn, agent_call, deliver, send_reply)",
            )
            .buckets(vec![
                0.0001,
                0.00025,
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                STAGE_STALL_SECONDS,
                0.25,
                1.0,
                5.0,
            ]),
            &["stage"],
        )?;
        let inbox_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "infragpt_inbox_batch_size",
                "Events written by one group-committed inbox insert",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )?;
        registry.register(Box::new(inbox_batch_size.clone()))?;
        registry.register(Box::new(stage_seconds.clone()))?;
        registry.register(Box::new(fenced_total.clone()))?;
        registry.register(Box::new(partitions_owned.clone()))?;
        registry.register(Box::new(replicas_live.clone()))?;
        registry.register(Box::new(rebalances_total.clone()))?;
        registry.register(Box::new(failover_seconds.clone()))?;
        registry.register(Box::new(notify_lag_seconds.clone()))?;
        registry.register(Box::new(actors_live.clone()))?;
        registry.register(Box::new(actors_by_state.clone()))?;
        registry.register(Box::new(messages_handled.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(restarts.clone()))?;
        registry.register(Box::new(handling_seconds.clone()))?;
        registry.register(Box::new(dead_letters_total.clone()))?;
        registry.register(Box::new(router_backlog.clone()))?;
        registry.register(Box::new(deferred_total.clone()))?;
        registry.register(Box::new(inbox_events.clone()))?;
        let m = Self {
            registry,
            actors_live,
            actors_by_state,
            messages_handled,
            failures,
            restarts,
            handling_seconds,
            dead_letters_total,
            router_backlog,
            deferred_total,
            inbox_events,
            fenced_total,
            partitions_owned,
            replicas_live,
            rebalances_total,
            failover_seconds,
            notify_lag_seconds,
            stage_seconds,
            inbox_batch_size,
            live_kinds: Default::default(),
        };
        m.declare_kind(ActorKind::SUPERVISOR);
        Ok(m)
    }

    /// Creates the per-kind series of `kind` at zero, so dashboards and tests see zeros, not
    /// gaps. The cluster declares the supervisor kind and each registered stream's worker kind.
    pub(crate) fn declare_kind(&self, kind: ActorKind) {
        let k = kind.as_str();
        self.actors_live.with_label_values(&[k]);
        self.live_kinds.lock().insert(kind);
        self.messages_handled.with_label_values(&[k]);
        self.failures.with_label_values(&[k]);
        self.restarts.with_label_values(&[k]);
        self.dead_letters_total.with_label_values(&[k]);
        self.fenced_total.with_label_values(&[k]);
    }

    /// The registry (register more collectors here).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Everything in the Prometheus text format.
    pub fn encode_text(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on inconsistent metric families, which the typed
        // collectors above cannot produce; keep whatever was written.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Sets `infragpt_actors_live` (not stopped or failed) and `infragpt_actors{kind,state}`
    /// from the counts per kind and state (kinds seen before and absent now, and states with
    /// no actor, go to zero: alerts see a 0, not a gap). The health registry is the one
    /// source of these counts, so the gauges always agree with `/actors`.
    pub(crate) fn set_counts(
        &self,
        counts: &std::collections::BTreeMap<ActorKind, std::collections::BTreeMap<ActorState, u64>>,
    ) {
        let mut known = self.live_kinds.lock();
        known.extend(counts.keys().copied());
        for kind in known.iter() {
            let by_state = counts.get(kind);
            let n = |state: ActorState| by_state.and_then(|m| m.get(&state)).copied().unwrap_or(0);
            let live: u64 = ActorState::ALL
                .into_iter()
                .filter(|s| !s.is_terminal())
                .map(n)
                .sum();
            self.actors_live
                .with_label_values(&[kind.as_str()])
                .set(i64::try_from(live).unwrap_or(i64::MAX));
            for state in ActorState::ALL {
                self.actors_by_state
                    .with_label_values(&[kind.as_str(), state.as_str()])
                    .set(i64::try_from(n(state)).unwrap_or(i64::MAX));
            }
        }
    }

    pub(crate) fn handled(&self, kind: ActorKind, seconds: f64) {
        self.messages_handled
            .with_label_values(&[kind.as_str()])
            .inc();
        self.handling_seconds
            .with_label_values(&[kind.as_str()])
            .observe(seconds);
    }

    pub(crate) fn failure(&self, kind: ActorKind) {
        self.failures.with_label_values(&[kind.as_str()]).inc();
    }

    /// A failure retried after a backoff (the `restarts` series).
    pub(crate) fn retry(&self, kind: ActorKind) {
        self.restarts.with_label_values(&[kind.as_str()]).inc();
    }

    pub(crate) fn dead_letter(&self, kind: ActorKind) {
        self.dead_letters_total
            .with_label_values(&[kind.as_str()])
            .inc();
    }

    pub(crate) fn set_backlog(&self, stream: &str, backlog: usize) {
        self.router_backlog
            .with_label_values(&[stream])
            .set(i64::try_from(backlog).unwrap_or(i64::MAX));
        // The stream's deferred counter exists from its first backlog report, at zero, so a
        // rate over it is 0 rather than absent.
        self.deferred_total.with_label_values(&[stream]);
    }

    pub(crate) fn fenced(&self, kind: ActorKind) {
        self.fenced_total.with_label_values(&[kind.as_str()]).inc();
    }

    pub(crate) fn set_replicas_live(&self, n: usize) {
        self.replicas_live.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(crate) fn set_partitions_owned(&self, n: usize) {
        self.partitions_owned
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(crate) fn rebalanced(&self) {
        self.rebalances_total.inc();
    }

    pub(crate) fn failover(&self, seconds: f64) {
        self.failover_seconds.observe(seconds);
    }

    pub(crate) fn notify_lag(&self, seconds: f64) {
        self.notify_lag_seconds.observe(seconds);
    }

    /// Records the time one stage of handling an event took (`infragpt_stage_seconds`):
    /// where a turn's time goes, stage by stage.
    pub fn observe_stage(&self, stage: &str, elapsed: std::time::Duration) {
        self.stage_seconds
            .with_label_values(&[stage])
            .observe(elapsed.as_secs_f64());
    }

    /// The size of one group-committed inbox batch.
    pub(crate) fn observe_batch(&self, events: usize) {
        self.inbox_batch_size.observe(events as f64);
    }

    /// What each stage observed so far, by stage name.
    pub fn stage_totals(&self) -> Vec<StageTotal> {
        use prometheus::core::Collector;
        let mut out = Vec::new();
        for family in self.stage_seconds.collect() {
            for metric in family.get_metric() {
                let stage = metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "stage")
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default();
                let h = metric.get_histogram();
                let within_100ms = h
                    .get_bucket()
                    .iter()
                    .find(|b| b.upper_bound() == STAGE_STALL_SECONDS)
                    .map_or(0, |b| b.cumulative_count());
                out.push(StageTotal {
                    stage,
                    count: h.get_sample_count(),
                    seconds: h.get_sample_sum(),
                    over_100ms: h.get_sample_count().saturating_sub(within_100ms),
                });
            }
        }
        out.sort_by(|a, b| a.stage.cmp(&b.stage));
        out
    }

    pub(crate) fn deferred(&self, stream: &str) {
        self.deferred_total.with_label_values(&[stream]).inc();
    }

    /// Sets `infragpt_inbox_events` from stored rows per status (statuses absent from
    /// `counts` go to zero). The cluster refreshes it periodically; the application's inbox
    /// housekeeping after it changes the table.
    pub fn set_inbox_counts(&self, counts: &[(EventStatus, i64)]) {
        for status in [
            EventStatus::Pending,
            EventStatus::Processing,
            EventStatus::Done,
            EventStatus::Failed,
            EventStatus::Ignored,
        ] {
            let n = counts
                .iter()
                .filter(|(s, _)| *s == status)
                .map(|(_, n)| *n)
                .sum();
            self.inbox_events
                .with_label_values(&[status.as_str()])
                .set(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_zeroed_series_and_moves() {
        let m = Metrics::new().unwrap();
        let thread = ActorKind::new("conversation_thread");
        m.declare_kind(thread);
        let text = m.encode_text();
        assert!(
            text.contains("infragpt_actor_messages_handled_total{kind=\"conversation_thread\"} 0")
        );
        m.handled(thread, 0.01);
        m.set_inbox_counts(&[(EventStatus::Failed, 3)]);
        let text = m.encode_text();
        assert!(
            text.contains("infragpt_actor_messages_handled_total{kind=\"conversation_thread\"} 1")
        );
        assert!(text.contains("infragpt_inbox_events{status=\"failed\"} 3"));
        assert!(text.contains("infragpt_actor_handling_seconds_bucket"));
    }

    #[test]
    fn two_metrics_on_one_registry_conflict() {
        let m = Metrics::new().unwrap();
        assert!(Metrics::with_registry(m.registry().clone()).is_err());
    }
}
