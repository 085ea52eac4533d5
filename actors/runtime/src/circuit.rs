//! A circuit breaker for calls to a dependency (the agent): plain logic with an injectable
//! clock, no I/O.
//!
//! * **Closed**: calls pass. `failure_threshold` consecutive failures open the circuit.
//! * **Open**: calls are rejected at once until the cool-down has passed since it opened.
//!   The first cool-down is `initial_cool_down`; each failed probe doubles it, up to
//!   `cool_down`: a dependency that restarts in a second is probed again a second later,
//!   one that stays down is not hammered.
//! * **Half-open**: after the cool-down one call (the probe) passes; others are rejected
//!   while it runs. A successful probe closes the circuit (and resets the cool-down), a
//!   failed one opens it again for a longer one. A probe whose [`Permit`] is dropped without an outcome (a cancelled
//!   call) frees the probe slot, so the circuit can never wedge half-open.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

/// A source of monotonic time (tests use [`ManualClock`]).
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Instant>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A clock starting at the current instant.
    pub fn new() -> Self {
        Self {
            now: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        *self.now.lock() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock()
    }
}

/// Circuit breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitConfig {
    /// Consecutive failures that open the circuit (at least 1).
    pub failure_threshold: u32,
    /// How long the circuit stays open the first time before a probe is let through.
    pub initial_cool_down: Duration,
    /// The longest cool-down, reached by doubling after each failed probe.
    pub cool_down: Duration,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            initial_cool_down: Duration::from_secs(1),
            cool_down: Duration::from_secs(30),
        }
    }
}

/// The observable state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Calls pass.
    Closed,
    /// Calls are rejected.
    Open,
    /// The cool-down has passed: the next call is a probe.
    HalfOpen,
}

impl CircuitState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call was rejected because the circuit is open (or a probe is already running).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open; next probe in {retry_in:?}")]
pub struct Rejected {
    /// Time until a probe may pass (zero while another probe runs).
    pub retry_in: Duration,
}

#[derive(Debug)]
struct Inner {
    consecutive_failures: u32,
    /// Set while open (and half-open): when it opened.
    opened_at: Option<Instant>,
    /// The cool-down of the current opening.
    cool_down: Duration,
    probe_in_flight: bool,
    /// Times the circuit opened.
    opened_total: u64,
}

/// A thread-safe circuit breaker.
pub struct CircuitBreaker {
    config: CircuitConfig,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("config", &self.config)
            .field("state", &self.state())
            .finish()
    }
}

/// Leave to make one call. Report its outcome with [`Permit::success`] or
/// [`Permit::failure`]; dropping it reports nothing (and frees the probe slot).
#[must_use = "report the call's outcome"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    done: bool,
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("probe", &self.probe)
            .finish()
    }
}

impl Permit<'_> {
    /// True when this call is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The call succeeded: the circuit closes.
    pub fn success(mut self) {
        self.done = true;
        self.breaker.on_success();
    }

    /// The call failed: counts towards opening (re-opens after a failed probe). Returns the
    /// state afterwards.
    pub fn failure(mut self) -> CircuitState {
        self.done = true;
        self.breaker.on_failure(self.probe)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.breaker.inner.lock().probe_in_flight = false;
        }
    }
}

impl CircuitBreaker {
    /// A closed circuit on the system clock. A zero threshold is treated as 1.
    pub fn new(config: CircuitConfig) -> Self {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A closed circuit on `clock`.
    pub fn with_clock(mut config: CircuitConfig, clock: Arc<dyn Clock>) -> Self {
        config.failure_threshold = config.failure_threshold.max(1);
        Self {
            config,
            clock,
            inner: Mutex::new(Inner {
                consecutive_failures: 0,
                opened_at: None,
                cool_down: config.initial_cool_down.min(config.cool_down),
                probe_in_flight: false,
                opened_total: 0,
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> CircuitConfig {
        self.config
    }

    fn state_of(&self, inner: &Inner, now: Instant) -> CircuitState {
        match inner.opened_at {
            None => CircuitState::Closed,
            Some(at) if now.saturating_duration_since(at) >= inner.cool_down => {
                CircuitState::HalfOpen
            }
            Some(_) => CircuitState::Open,
        }
    }

    /// The current state.
    pub fn state(&self) -> CircuitState {
        let inner = self.inner.lock();
        self.state_of(&inner, self.clock.now())
    }

    /// Consecutive failures counted so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.inner.lock().consecutive_failures
    }

    /// How many times the circuit has opened.
    pub fn opened_total(&self) -> u64 {
        self.inner.lock().opened_total
    }

    /// Asks to make a call.
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        let now = self.clock.now();
        let mut inner = self.inner.lock();
        match self.state_of(&inner, now) {
            CircuitState::Closed => Ok(Permit {
                breaker: self,
                probe: false,
                done: false,
            }),
            CircuitState::Open => {
                let opened = inner.opened_at.unwrap_or(now);
                Err(Rejected {
                    retry_in: inner
                        .cool_down
                        .saturating_sub(now.saturating_duration_since(opened)),
                })
            }
            CircuitState::HalfOpen if inner.probe_in_flight => Err(Rejected {
                retry_in: Duration::ZERO,
            }),
            CircuitState::HalfOpen => {
                inner.probe_in_flight = true;
                Ok(Permit {
                    breaker: self,
                    probe: true,
                    done: false,
                })
            }
        }
    }

    fn on_success(&self) {
        let mut inner = self.inner.lock();
        inner.consecutive_failures = 0;
        inner.opened_at = None;
        inner.cool_down = self.config.initial_cool_down.min(self.config.cool_down);
        inner.probe_in_flight = false;
    }

    fn on_failure(&self, probe: bool) -> CircuitState {
        let now = self.clock.now();
        let mut inner = self.inner.lock();
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        if probe {
            inner.probe_in_flight = false;
            inner.opened_at = Some(now);
            inner.cool_down = inner.cool_down.saturating_mul(2).min(self.config.cool_down);
            inner.opened_total += 1;
        } else if inner.opened_at.is_none()
            && inner.consecutive_failures >= self.config.failure_threshold
        {
            inner.opened_at = Some(now);
            inner.opened_total += 1;
        }
        self.state_of(&inner, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32) -> (CircuitBreaker, ManualClock) {
        let clock = ManualClock::new();
        let b = CircuitBreaker::with_clock(
            CircuitConfig {
                failure_threshold: threshold,
                initial_cool_down: Duration::from_secs(10),
                cool_down: Duration::from_secs(10),
            },
            Arc::new(clock.clone()),
        );
        (b, clock)
    }

    #[test]
    fn opens_after_consecutive_failures() {
        let (b, _clock) = breaker(3);
        for _ in 0..2 {
            assert_eq!(b.try_acquire().unwrap().failure(), CircuitState::Closed);
        }
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.try_acquire().unwrap().failure(), CircuitState::Open);
        let rejected = b.try_acquire().unwrap_err();
        assert_eq!(rejected.retry_in, Duration::from_secs(10));
        assert_eq!(b.opened_total(), 1);
    }

    #[test]
    fn success_resets_the_count() {
        let (b, _clock) = breaker(3);
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().success();
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.consecutive_failures(), 2);
    }

    #[test]
    fn half_open_lets_one_probe_through() {
        let (b, clock) = breaker(1);
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), CircuitState::Open);
        clock.advance(Duration::from_secs(4));
        assert_eq!(
            b.try_acquire().unwrap_err().retry_in,
            Duration::from_secs(6)
        );
        clock.advance(Duration::from_secs(6));
        assert_eq!(b.state(), CircuitState::HalfOpen);
        let probe = b.try_acquire().unwrap();
        assert!(probe.is_probe());
        assert_eq!(b.try_acquire().unwrap_err().retry_in, Duration::ZERO);
        probe.success();
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(!b.try_acquire().unwrap().is_probe());
    }

    #[test]
    fn failed_probe_reopens_for_a_full_cool_down() {
        let (b, clock) = breaker(2);
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().failure();
        clock.advance(Duration::from_secs(10));
        let probe = b.try_acquire().unwrap();
        assert_eq!(probe.failure(), CircuitState::Open);
        assert_eq!(b.opened_total(), 2);
        clock.advance(Duration::from_secs(9));
        assert!(b.try_acquire().is_err());
        clock.advance(Duration::from_secs(1));
        assert!(b.try_acquire().unwrap().is_probe());
    }

    #[test]
    fn cool_down_doubles_per_failed_probe_and_resets_on_success() {
        let clock = ManualClock::new();
        let b = CircuitBreaker::with_clock(
            CircuitConfig {
                failure_threshold: 1,
                initial_cool_down: Duration::from_secs(1),
                cool_down: Duration::from_secs(5),
            },
            Arc::new(clock.clone()),
        );
        assert_eq!(b.try_acquire().unwrap().failure(), CircuitState::Open);
        for expected in [1, 2, 4, 5, 5] {
            let cool_down = Duration::from_secs(expected);
            assert_eq!(b.try_acquire().unwrap_err().retry_in, cool_down);
            clock.advance(cool_down - Duration::from_millis(1));
            assert_eq!(
                b.state(),
                CircuitState::Open,
                "still open before {expected} s"
            );
            clock.advance(Duration::from_millis(1));
            assert_eq!(b.try_acquire().unwrap().failure(), CircuitState::Open);
        }
        clock.advance(Duration::from_secs(5));
        b.try_acquire().unwrap().success();
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.try_acquire().unwrap().failure(), CircuitState::Open);
        assert_eq!(
            b.try_acquire().unwrap_err().retry_in,
            Duration::from_secs(1),
            "a success starts over from the initial cool-down"
        );
    }

    #[test]
    fn dropped_probe_frees_the_slot() {
        let (b, clock) = breaker(1);
        b.try_acquire().unwrap().failure();
        clock.advance(Duration::from_secs(10));
        drop(b.try_acquire().unwrap());
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert!(b.try_acquire().unwrap().is_probe());
    }

    #[test]
    fn zero_threshold_means_one() {
        let (b, _clock) = breaker(0);
        assert_eq!(b.config().failure_threshold, 1);
        assert_eq!(b.try_acquire().unwrap().failure(), CircuitState::Open);
    }
}
