//! The plain-logic side of a keyed worker: the [`EventHandler`] port and one attempt at an
//! event (claim, run with panics caught, record the outcome in the inbox).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::inbox::{EventRowId, InboundEvent, RoutingKey, StoreError};
use crate::router::StreamCtx;
use crate::supervision::AttemptResult;

/// What a handler did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandleOutcome {
    /// Handled; the event becomes `done`.
    Done,
    /// Nothing to do (unknown type, not for us, ...); the event becomes `ignored` with this
    /// reason.
    Ignored(String),
}

/// A handler failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Might work later (network, agent down, rate limit): the worker retries the event after
    /// a backoff delay, within the retry budget.
    #[error("{0}")]
    Retryable(String),
    /// Will never work (malformed payload, unknown workspace): the event becomes a dead letter
    /// at once, without a retry.
    #[error("{0}")]
    Permanent(String),
}

impl HandlerError {
    /// A retryable failure.
    pub fn retryable(msg: impl std::fmt::Display) -> Self {
        Self::Retryable(msg.to_string())
    }

    /// A permanent failure.
    pub fn permanent(msg: impl std::fmt::Display) -> Self {
        Self::Permanent(msg.to_string())
    }
}

/// Handles the events of one stream. One handler serves every key of its stream; events of
/// one key reach it one at a time in arrival order, events of different keys concurrently.
/// State that must survive a worker's idle stop belongs in the database.
///
/// Delivery is at least once: an event whose outcome could not be recorded (store down after
/// the handler ran, or the process died mid-way) is handled again, so side effects should be
/// idempotent on `event.id` / `event.source_id`.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Handles one claimed event (`status = processing`, `attempts` counts this attempt).
    async fn handle(&self, event: &InboundEvent) -> Result<HandleOutcome, HandlerError>;
}

/// The result of [`attempt`], with the time spent in the handler when it ran.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Attempted {
    pub result: AttemptResult,
    pub handler_time: Option<Duration>,
}

/// Text of a caught panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Marks with a few quick retries: the handler already ran, so a transient store error here
/// should not make the event run again.
async fn mark_with_retry<F, Fut>(mut op: F) -> Result<(), StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    let mut backoff = Backoff::uncapped(Duration::from_millis(10));
    loop {
        match op().await {
            Ok(()) => return Ok(()),
            // Another replica holds the event now: retrying cannot help.
            Err(e @ StoreError::Fenced(_)) => return Err(e),
            Err(e) if backoff.failures() >= 3 => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "marking an event failed, retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// One attempt at event `id`: claim it (unless it comes claimed, as it was recorded), run the
/// handler with panics caught, record the outcome. An event claimed more than
/// `1 + retry_budget` times becomes a dead letter when it fails.
pub(crate) async fn attempt(
    stream: Arc<StreamCtx>,
    (id, claimed): (EventRowId, Option<Box<InboundEvent>>),
    key: RoutingKey,
) -> Attempted {
    let span = tracing::info_span!(
        "inbound_event",
        event_id = %id,
        routing_key = %key,
        source = tracing::field::Empty,
        source_id = tracing::field::Empty,
        kind = tracing::field::Empty,
        attempt = tracing::field::Empty,
    );
    async move {
        let (inbox, marks, metrics) = (&stream.inbox, &stream.marks, &stream.metrics);
        let claimed = match claimed {
            Some(event) => Ok(Some(*event)),
            None => {
                let claiming = Instant::now();
                let claimed = inbox.claim(id).await;
                metrics.observe_stage("claim", claiming.elapsed());
                claimed
            }
        };
        let event = match claimed {
            Ok(Some(e)) => e,
            Ok(None) => {
                tracing::debug!("event already finished, skipped");
                return Attempted {
                    result: AttemptResult::AlreadyFinished,
                    handler_time: None,
                };
            }
            Err(StoreError::Behind { older, .. }) => {
                tracing::debug!(older = ?older, "older events of the key go first");
                return Attempted {
                    result: AttemptResult::Behind(older),
                    handler_time: None,
                };
            }
            Err(StoreError::Fenced(_)) => {
                tracing::debug!("event belongs to another replica now, skipped");
                return Attempted {
                    result: AttemptResult::Fenced,
                    handler_time: None,
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming event failed");
                return Attempted {
                    result: AttemptResult::StoreFailed(e.to_string()),
                    handler_time: None,
                };
            }
        };
        let span = tracing::Span::current();
        span.record("source", event.source.as_str());
        span.record("source_id", event.source_id.as_str());
        span.record("kind", event.kind.as_str());
        span.record("attempt", event.attempts);
        let claim = event.claim();
        // Until the outcome is recorded: the next event of the key may be claimed as it is
        // recorded meanwhile, behind this one.
        let _running = stream.running.hold(&key, claim);

        let started = Instant::now();
        let outcome = AssertUnwindSafe(stream.handler.handle(&event))
            .catch_unwind()
            .await;
        let handler_time = Some(started.elapsed());
        let error = match outcome {
            Ok(Ok(HandleOutcome::Done)) => {
                let marking = Instant::now();
                let r = mark_with_retry(|| match &marks {
                    Some(marks) => marks.submit(claim).boxed(),
                    None => inbox.mark_done(claim),
                })
                .await;
                metrics.observe_stage("mark", marking.elapsed());
                return finished(r, handler_time, "done");
            }
            Ok(Ok(HandleOutcome::Ignored(reason))) => {
                let r = mark_with_retry(|| inbox.mark_ignored(claim, &reason)).await;
                return finished(r, handler_time, "ignored");
            }
            Ok(Err(HandlerError::Permanent(msg))) => {
                let msg = format!("permanent failure: {msg}");
                tracing::warn!(error = %msg, "event rejected, dead letter");
                let r = mark_with_retry(|| inbox.mark_failed(claim, &msg)).await;
                return match r {
                    Ok(()) => Attempted {
                        result: AttemptResult::Rejected(msg),
                        handler_time,
                    },
                    Err(e) => store_failed(e, handler_time),
                };
            }
            Ok(Err(HandlerError::Retryable(msg))) => msg,
            Err(payload) => format!("handler panicked: {}", panic_message(payload.as_ref())),
        };
        let attempts = u32::try_from(event.attempts).unwrap_or(0);
        if attempts > stream.config.retry_budget {
            tracing::warn!(error = %error, attempts, "retry budget spent, dead letter");
            match mark_with_retry(|| inbox.mark_failed(claim, &error)).await {
                Ok(()) => Attempted {
                    result: AttemptResult::DeadLetter(error),
                    handler_time,
                },
                Err(e) => store_failed(e, handler_time),
            }
        } else {
            tracing::warn!(error = %error, attempts, "handler failed, will retry");
            match mark_with_retry(|| inbox.mark_retry(claim, &error)).await {
                Ok(()) => Attempted {
                    result: AttemptResult::Failed(error),
                    handler_time,
                },
                Err(e) => store_failed(e, handler_time),
            }
        }
    }
    .instrument(span)
    .await
}

fn finished(r: Result<(), StoreError>, handler_time: Option<Duration>, what: &str) -> Attempted {
    match r {
        Ok(()) => {
            tracing::debug!(outcome = what, "event handled");
            Attempted {
                result: AttemptResult::Finished,
                handler_time,
            }
        }
        Err(e) => store_failed(e, handler_time),
    }
}

fn store_failed(e: StoreError, handler_time: Option<Duration>) -> Attempted {
    if let StoreError::Fenced(_) = e {
        // The partition's lease lapsed while the handler ran and another replica claimed
        // the event: its outcome is that replica's to record.
        tracing::warn!(error = %e, "outcome not recorded: the event was taken over");
        return Attempted {
            result: AttemptResult::Fenced,
            handler_time,
        };
    }
    tracing::error!(error = %e, "recording the outcome failed; the event stays unfinished");
    Attempted {
        result: AttemptResult::StoreFailed(e.to_string()),
        handler_time,
    }
}
