//! The one way tests wait for something that happens asynchronously: poll a probe until it
//! reports success. Timeouts are hang guards only; no test measures time with them.

use std::fmt::{Debug, Display};
use std::time::Duration;

/// How long [`eventually`] waits before it fails the test. Generous: the machine is shared
/// and slow; this bounds a hang, it measures nothing.
pub const GUARD: Duration = Duration::from_secs(120);
/// Pause between two probes.
const POLL: Duration = Duration::from_millis(10);

/// What a probe reports: done (`true`, `Some(value)`, `Ok(value)`) or not yet (`false`,
/// `None`, `Err(what it saw)`).
pub trait Outcome {
    /// What a successful probe yields.
    type Value;
    /// The value, or a description of the last observation.
    fn into_result(self) -> Result<Self::Value, String>;
}

impl Outcome for bool {
    type Value = ();
    fn into_result(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("still false".to_owned())
        }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self.ok_or_else(|| "still nothing".to_owned())
    }
}

impl<T, E: Debug> Outcome for Result<T, E> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:?}"))
    }
}

/// Polls `probe` until it succeeds and returns its value; fails the test after [`GUARD`],
/// naming `what` and the last observation.
pub async fn eventually<O: Outcome>(what: impl Display, probe: impl AsyncFnMut() -> O) -> O::Value {
    match poll(GUARD, probe).await {
        Ok(value) => value,
        Err(last) => panic!("timed out after {GUARD:?} waiting until {what}; last saw: {last}"),
    }
}

/// Polls `probe` for at most `timeout`: its value, or the last observation. For the rare
/// test that checks something does *not* happen within a while.
pub async fn poll<O: Outcome>(
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> O,
) -> Result<O::Value, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match probe().await.into_result() {
            Ok(value) => return Ok(value),
            Err(last) if tokio::time::Instant::now() >= deadline => return Err(last),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}
