//! Tuning of the actor cluster. Embedded by the service configuration under `actors:`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;

/// Timeouts, retry policy and queue bounds of the actor cluster. Every field has a default, so
/// an empty `actors:` section (or none) is valid; unknown keys are rejected. Durations are in
/// milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// A keyed worker (e.g. a conversation thread) with nothing to do for this long is stopped;
    /// the next event for its key starts it again.
    pub idle_timeout_ms: u64,
    /// How many times a failed event is retried after its first attempt before it becomes a
    /// dead letter (so an event is handled at most `1 + retry_budget` times).
    pub retry_budget: u32,
    /// Delay before a failed event is retried; doubles with each consecutive failure.
    pub backoff_base_ms: u64,
    /// Upper bound of the retry delay.
    pub backoff_max_ms: u64,
    /// A worker with this many failures (each retried after a backoff, counted as restarts)
    /// within `restart_window_ms` is reported `failed` and stopped; its key is quarantined
    /// for one window (its events stay in the inbox).
    pub restart_limit: u32,
    /// The window of `restart_limit`.
    pub restart_window_ms: u64,
    /// Capacity of each router's mailbox. When it is full, an ingested event stays recorded in
    /// the inbox and is dispatched later by the drain loop.
    pub mailbox_capacity: usize,
    /// When a router has this many dispatched but unfinished events, new events are left in
    /// the inbox (deferred) until the backlog falls; the router then reports overloaded.
    pub high_water_mark: usize,
    /// How often a router with deferred events scans the inbox for them.
    pub drain_interval_ms: u64,
    /// Page size of inbox scans (recovery and drain).
    pub drain_page_size: i64,
    /// How long `Cluster::shutdown` waits for events being handled to finish.
    pub shutdown_timeout_ms: u64,
    /// How long stopped and failed actors stay visible in the health registry.
    pub stopped_retention_ms: u64,
    /// How often the root supervisor prunes the registry and refreshes inbox gauges.
    pub housekeeping_interval_ms: u64,
    /// Group commit: events recorded concurrently are written by one writer in one statement
    /// per batch, each acknowledged when its batch commits; events that finish together are
    /// marked done in one statement too. Off: each event is its own insert and its own mark.
    pub inbox_group_commit: bool,
    /// Most events (or done marks) in one group-committed batch.
    pub inbox_batch_max: usize,
    /// With group commit, the insert that records an event also claims it when it is
    /// dispatched here at once, and its worker skips the claim (one statement less per
    /// event). Off: every event is claimed by its worker, as without group commit.
    pub inbox_claim_at_record: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            idle_timeout_ms: 5 * 60 * 1000,
            retry_budget: 5,
            backoff_base_ms: 200,
            backoff_max_ms: 30_000,
            restart_limit: 20,
            restart_window_ms: 60_000,
            mailbox_capacity: 1024,
            high_water_mark: 10_000,
            drain_interval_ms: 1_000,
            drain_page_size: 500,
            shutdown_timeout_ms: 10_000,
            stopped_retention_ms: 15 * 60 * 1000,
            housekeeping_interval_ms: 15_000,
            inbox_group_commit: true,
            inbox_batch_max: 256,
            inbox_claim_at_record: true,
        }
    }
}

/// Why a configuration is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid actors configuration: {0}")]
pub struct ConfigError(pub String);

impl ClusterConfig {
    /// Rejects values that would make the cluster stall or spin.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("backoff_max_ms", self.backoff_max_ms),
            ("restart_limit", u64::from(self.restart_limit)),
            ("restart_window_ms", self.restart_window_ms),
            ("mailbox_capacity", self.mailbox_capacity as u64),
            ("high_water_mark", self.high_water_mark as u64),
            ("drain_interval_ms", self.drain_interval_ms),
            ("housekeeping_interval_ms", self.housekeeping_interval_ms),
            ("inbox_batch_max", self.inbox_batch_max as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError(format!("{name} must be greater than 0")));
            }
        }
        if self.drain_page_size <= 0 {
            return Err(ConfigError("drain_page_size must be greater than 0".into()));
        }
        if self.backoff_base_ms > self.backoff_max_ms {
            return Err(ConfigError(
                "backoff_base_ms must not exceed backoff_max_ms".into(),
            ));
        }
        Ok(())
    }

    /// `idle_timeout_ms` as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    /// The retry backoff of a worker (`backoff_base_ms` doubling up to `backoff_max_ms`).
    pub fn backoff(&self) -> Backoff {
        Backoff::new(
            Duration::from_millis(self.backoff_base_ms),
            Duration::from_millis(self.backoff_max_ms),
        )
    }
    /// `restart_window_ms` as a duration.
    pub(crate) fn restart_window(&self) -> Duration {
        Duration::from_millis(self.restart_window_ms)
    }
    /// `drain_interval_ms` as a duration.
    pub(crate) fn drain_interval(&self) -> Duration {
        Duration::from_millis(self.drain_interval_ms)
    }
    /// `shutdown_timeout_ms` as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
    /// `stopped_retention_ms` as a duration.
    pub(crate) fn stopped_retention(&self) -> Duration {
        Duration::from_millis(self.stopped_retention_ms)
    }
    /// `housekeeping_interval_ms` as a duration.
    pub(crate) fn housekeeping_interval(&self) -> Duration {
        Duration::from_millis(self.housekeeping_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_section_gives_defaults_and_unknown_keys_fail() {
        let c: ClusterConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, ClusterConfig::default());
        c.validate().unwrap();
        let c: ClusterConfig = serde_json::from_str(r#"{"idle_timeout_ms": 5}"#).unwrap();
        assert_eq!(c.idle_timeout(), Duration::from_millis(5));
        let err = serde_json::from_str::<ClusterConfig>(r#"{"idle_timeout": 5}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn validate_rejects_zero_and_inverted_backoff() {
        let c = ClusterConfig {
            high_water_mark: 0,
            ..ClusterConfig::default()
        };
        assert!(c.validate().unwrap_err().0.contains("high_water_mark"));
        let c = ClusterConfig {
            backoff_base_ms: 10,
            backoff_max_ms: 5,
            ..ClusterConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
