//! Per-source rate limits of the webhook routes (`webhooks.rate_limits`).
//!
//! A route asks [`WebhookRateLimits::admit`] once a delivery is verified and its source is
//! known (a Slack workspace, a GitHub installation, the Clerk application), and before the
//! delivery is recorded: a refused delivery was never acknowledged, so its sender retries it
//! (429 with `Retry-After`). An unverified request is never counted against a source, since
//! anyone could then use up a workspace's limit; unverified traffic is bounded by the body
//! intake instead (`webhooks.max_unverified_*`, [`super::webhook_body`]).
//!
//! Each source has a token bucket, kept as GCRA's theoretical arrival time: one `Instant` per
//! source, no background refill. At most `max_sources` sources are tracked per route; when a
//! new one would exceed that, the sources whose buckets are full again are forgotten first
//! (they are indistinguishable from new ones), and if every tracked source is still busy the
//! new source shares one overflow bucket with the others beyond the cap.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::{IntCounterVec, Opts};

use crate::config::{RateLimit, WebhookRateLimits as Config};
use crate::error::ApiError;

/// A webhook route with a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookRoute {
    /// `POST /slack/events`, per workspace.
    Slack,
    /// `POST /webhooks/github`, per installation.
    Github,
    /// `POST /webhooks/clerk`, one source.
    Clerk,
    /// `POST /webhooks/alertmanager/{id}` and `/webhooks/pagerduty/{id}`, per organization
    /// source.
    Sources,
}

impl WebhookRoute {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Slack => "slack",
            Self::Github => "github",
            Self::Clerk => "clerk",
            Self::Sources => "sources",
        }
    }

    fn all() -> [Self; 4] {
        [Self::Slack, Self::Github, Self::Clerk, Self::Sources]
    }
}

/// The key of the bucket shared by the sources beyond `max_sources`.
const OVERFLOW_KEY: &str = "\u{0}overflow";

/// A token bucket per source (one route's, or the Slack adapter's reactions per workspace).
#[derive(Debug)]
pub(crate) struct Buckets {
    /// Time between two deliveries at the sustained rate.
    interval: Duration,
    /// How far ahead of now a source's arrival time may run: `(burst - 1) * interval`.
    tolerance: Duration,
    max_sources: usize,
    /// Each source's theoretical arrival time.
    tat: Mutex<HashMap<String, Instant>>,
}

impl Buckets {
    /// Buckets of `limit` for at most `max_sources` sources; none when the limit is off.
    pub(crate) fn new(limit: &RateLimit, max_sources: usize) -> Option<Self> {
        if limit.per_second <= 0.0 {
            return None;
        }
        let interval = Duration::from_secs_f64(1.0 / limit.per_second);
        Some(Self {
            interval,
            tolerance: interval.saturating_mul(limit.burst.saturating_sub(1)),
            max_sources,
            tat: Mutex::new(HashMap::new()),
        })
    }

    /// Counts one delivery of `source` at `now`, or says how long until one would fit.
    pub(crate) fn take(&self, source: &str, now: Instant) -> Result<(), Duration> {
        let mut tats = self.tat.lock();
        if !tats.contains_key(source) && tats.len() >= self.max_sources {
            // Forget the sources whose buckets have refilled; they count as new anyway.
            tats.retain(|_, tat| *tat > now);
        }
        let key = if tats.contains_key(source) || tats.len() < self.max_sources {
            source
        } else {
            OVERFLOW_KEY
        };
        let tat = tats.get(key).copied().unwrap_or(now).max(now);
        let ahead = tat - now;
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        tats.insert(key.to_owned(), tat + self.interval);
        Ok(())
    }

    fn tracked(&self) -> usize {
        self.tat.lock().len()
    }
}

/// The rate limits of the webhook routes, shared by every webhook route of the process
/// (through [`super::WebhookIntake`]).
#[derive(Debug)]
pub struct WebhookRateLimits {
    slack: Option<Buckets>,
    github: Option<Buckets>,
    clerk: Option<Buckets>,
    sources: Option<Buckets>,
    limited: IntCounterVec,
}

impl WebhookRateLimits {
    /// The limits of `webhooks.rate_limits` (validated).
    pub fn new(config: &Config) -> Self {
        let limited = IntCounterVec::new(
            Opts::new(
                "infragpt_webhook_rate_limited_total",
                "Webhook deliveries refused with 429 by the per-source rate limit, per route",
            ),
            &["route"],
        )
        .expect("a valid metric definition");
        // Every label from the start, so a rate is 0 rather than absent.
        for route in WebhookRoute::all() {
            limited.with_label_values(&[route.label()]);
        }
        Self {
            slack: Buckets::new(&config.slack, config.max_sources),
            github: Buckets::new(&config.github, config.max_sources),
            clerk: Buckets::new(&config.clerk, config.max_sources),
            sources: Buckets::new(&config.sources, config.max_sources),
            limited,
        }
    }

    fn buckets(&self, route: WebhookRoute) -> Option<&Buckets> {
        match route {
            WebhookRoute::Slack => self.slack.as_ref(),
            WebhookRoute::Github => self.github.as_ref(),
            WebhookRoute::Clerk => self.clerk.as_ref(),
            WebhookRoute::Sources => self.sources.as_ref(),
        }
    }

    /// Counts one verified delivery of `source` on `route`; over its limit: 429
    /// `too_many_requests` with `Retry-After` (whole seconds, at least 1). Call it before
    /// recording the delivery.
    pub fn admit(&self, route: WebhookRoute, source: &str) -> Result<(), ApiError> {
        self.admit_at(route, source, Instant::now())
    }

    fn admit_at(&self, route: WebhookRoute, source: &str, now: Instant) -> Result<(), ApiError> {
        let Some(buckets) = self.buckets(route) else {
            return Ok(());
        };
        buckets.take(source, now).map_err(|wait| {
            self.limited.with_label_values(&[route.label()]).inc();
            let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            tracing::warn!(
                route = route.label(),
                source,
                retry_after_secs = retry_after.max(1),
                "webhook delivery refused: over the source's rate limit"
            );
            ApiError::too_many_requests(format!(
                "too many {} deliveries from this source; retry later",
                route.label()
            ))
            .with_retry_after(retry_after.max(1))
        })
    }

    /// Sources tracked on `route` now.
    pub fn tracked_sources(&self, route: WebhookRoute) -> usize {
        self.buckets(route).map_or(0, Buckets::tracked)
    }

    /// The `infragpt_webhook_rate_limited_total{route}` counter, for the metrics registry.
    pub fn metric(&self) -> IntCounterVec {
        self.limited.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_second: f64, burst: u32, max_sources: usize) -> WebhookRateLimits {
        let limit = RateLimit { per_second, burst };
        WebhookRateLimits::new(&Config {
            slack: limit,
            github: limit,
            clerk: RateLimit::default(),
            sources: RateLimit::default(),
            max_sources,
        })
    }

    #[test]
    fn a_source_gets_its_burst_then_the_sustained_rate() {
        let l = limits(10.0, 3, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.admit_at(WebhookRoute::Slack, "T1", t0)
                .expect("within the burst");
        }
        let refused = l.admit_at(WebhookRoute::Slack, "T1", t0).unwrap_err();
        assert_eq!(refused.status().as_u16(), 429);
        assert_eq!(refused.code(), "too_many_requests");
        // One interval later one more fits, and only one.
        let t1 = t0 + Duration::from_millis(100);
        l.admit_at(WebhookRoute::Slack, "T1", t1)
            .expect("refilled by one");
        assert!(l.admit_at(WebhookRoute::Slack, "T1", t1).is_err());
        assert_eq!(
            l.limited.with_label_values(&["slack"]).get(),
            2,
            "each refusal is counted"
        );
    }

    #[test]
    fn sources_and_routes_are_limited_apart() {
        let l = limits(1.0, 1, 100);
        let t0 = Instant::now();
        l.admit_at(WebhookRoute::Slack, "T1", t0).unwrap();
        assert!(l.admit_at(WebhookRoute::Slack, "T1", t0).is_err());
        l.admit_at(WebhookRoute::Slack, "T2", t0)
            .expect("another workspace has its own bucket");
        l.admit_at(WebhookRoute::Github, "T1", t0)
            .expect("another route has its own buckets");
        for _ in 0..100 {
            l.admit_at(WebhookRoute::Clerk, "clerk", t0)
                .expect("a route with per_second 0 is not limited");
        }
    }

    #[test]
    fn retry_after_is_the_wait_rounded_up_to_seconds() {
        let l = limits(0.1, 1, 100);
        let t0 = Instant::now();
        l.admit_at(WebhookRoute::Github, "42", t0).unwrap();
        let e = l
            .admit_at(WebhookRoute::Github, "42", t0 + Duration::from_millis(500))
            .unwrap_err();
        // 10 s between deliveries, 0.5 s gone: 9.5 s → 10.
        let body: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(body["error"]["code"], "too_many_requests");
        assert_eq!(e.retry_after(), Some(10));
    }

    #[test]
    fn sources_beyond_the_cap_share_one_bucket_and_idle_ones_are_forgotten() {
        let l = limits(1.0, 1, 2);
        let t0 = Instant::now();
        l.admit_at(WebhookRoute::Slack, "T1", t0).unwrap();
        l.admit_at(WebhookRoute::Slack, "T2", t0).unwrap();
        // Both busy: T3 and T4 share the overflow bucket.
        l.admit_at(WebhookRoute::Slack, "T3", t0).unwrap();
        assert!(l.admit_at(WebhookRoute::Slack, "T4", t0).is_err());
        assert!(l.tracked_sources(WebhookRoute::Slack) <= 3);
        // Once T1 and T2 have refilled they are forgotten and T4 gets its own bucket.
        let later = t0 + Duration::from_secs(5);
        l.admit_at(WebhookRoute::Slack, "T4", later).unwrap();
        assert!(l.tracked_sources(WebhookRoute::Slack) <= 2);
    }
}
