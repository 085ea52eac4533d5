//! Metrics of event routing: events routed (matched a rule), messages posted, updated in
//! place, and events folded into a storm digest, per source.

use infragpt_actors::Metrics;
use infragpt_actors::events::{RouteReport, SourceKind};
use prometheus::{IntCounterVec, Opts};

/// The counters.
#[derive(Clone, Debug)]
pub struct EventMetrics {
    routed: IntCounterVec,
    posted: IntCounterVec,
    updated: IntCounterVec,
    digested: IntCounterVec,
}

fn counter(name: &str, help: &str) -> Result<IntCounterVec, prometheus::Error> {
    IntCounterVec::new(Opts::new(name, help), &["source"])
}

impl EventMetrics {
    /// Registers the counters (every source exported from the start, so a rate is 0 rather
    /// than absent).
    pub fn register(metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let this = Self {
            routed: counter(
                "infragpt_events_routed_total",
                "Events that matched at least one routing rule",
            )?,
            posted: counter(
                "infragpt_events_posted_total",
                "Event messages posted in Slack",
            )?,
            updated: counter(
                "infragpt_events_updated_total",
                "Event messages updated in place (the same run, alert group or incident)",
            )?,
            digested: counter(
                "infragpt_events_digested_total",
                "Events folded into a storm digest instead of a message of their own",
            )?,
        };
        for c in [&this.routed, &this.posted, &this.updated, &this.digested] {
            metrics.registry().register(Box::new(c.clone()))?;
            for s in [
                SourceKind::Github,
                SourceKind::Alertmanager,
                SourceKind::Pagerduty,
            ] {
                c.with_label_values(&[s.as_str()]);
            }
        }
        Ok(this)
    }

    /// Counts what routing one event did.
    pub fn record(&self, source: SourceKind, report: &RouteReport) {
        let s = [source.as_str()];
        if report.matched > 0 {
            self.routed.with_label_values(&s).inc();
        }
        self.posted
            .with_label_values(&s)
            .inc_by(report.posted as u64);
        self.updated
            .with_label_values(&s)
            .inc_by(report.updated as u64);
        self.digested
            .with_label_values(&s)
            .inc_by(report.digested as u64);
    }
}
