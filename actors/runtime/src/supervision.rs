//! Plain supervision logic, free of actix so it can be unit-tested: failure-storm detection
//! and the per-key worker queue state machine (retry delays come from [`Backoff`]).
//!
//! A "restart" here (and in the `restarts` counters and the `restarting` state the health
//! registry and metrics expose) is a retry after a backoff delay: the worker actor keeps its
//! queue and runs the failed event again, nothing is torn down and rebuilt.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::inbox::EventRowId;

/// Counts failures (each one retried after a backoff) in a sliding window; a storm is `limit`
/// of them within `window`.
#[derive(Debug, Clone)]
pub struct FailureWindow {
    limit: u32,
    window: Duration,
    recent: VecDeque<Instant>,
    total: u64,
}

impl FailureWindow {
    /// A tracker for `limit` restarts per `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            recent: VecDeque::new(),
            total: 0,
        }
    }

    /// Records a failure at `now`; true when it completes a storm.
    pub fn record(&mut self, now: Instant) -> bool {
        self.total += 1;
        self.recent.push_back(now);
        while let Some(first) = self.recent.front() {
            if now.duration_since(*first) > self.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.recent.len() >= self.limit as usize
    }

    /// All failures recorded so far.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// How one attempt at an event ended (as seen by the worker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// Handled (`done`) or deliberately ignored (`ignored`).
    Finished,
    /// The event was already finished (or gone) when claimed; nothing ran.
    AlreadyFinished,
    /// The handler failed (error or panic); the event is pending again for a retry.
    Failed(String),
    /// The handler failed and the retry budget is spent: the event is a dead letter.
    DeadLetter(String),
    /// The inbox could not be read or written; the event is retried.
    StoreFailed(String),
    /// The handler refused the event for good: a dead letter at once, no restart.
    Rejected(String),
    /// The event's partition (or its claim) belongs to another replica now: it left this
    /// worker without an outcome of its own; the owner handles it.
    Fenced,
    /// Older events of the key are unfinished: they are queued ahead of it (the event waits
    /// in the queue, nothing ran).
    Behind(Vec<EventRowId>),
}

/// What the worker does after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Take the next queued event now (the finished one is reported to the router).
    Continue {
        /// The event that left the worker.
        finished: EventRowId,
    },
    /// Back off, then retry the same event.
    RetryAfter(Duration),
    /// Back off, then continue with the next event (the failed one left).
    ContinueAfter {
        /// The event that left the worker (a dead letter).
        finished: EventRowId,
        /// Backoff delay.
        delay: Duration,
    },
    /// Older events of the key were queued ahead of the current one (which went back into
    /// the queue): tell the router it now owes them, then take the next (oldest) event.
    Adopt(Vec<EventRowId>),
    /// Too many failures in the window: report `failed`, release every queued event and stop.
    Storm {
        /// The event that left the worker, if the last attempt finished it.
        finished: Option<EventRowId>,
        /// Events still owed to the key, to be left in the inbox for later.
        released: Vec<EventRowId>,
    },
}

/// The queue and failure accounting of one keyed worker. Events are taken lowest id first
/// (arrival order), one at a time.
#[derive(Debug)]
pub struct WorkerCore {
    queue: BTreeSet<EventRowId>,
    current: Option<EventRowId>,
    failures: FailureWindow,
    /// Counts consecutive failures; a success resets it.
    backoff: Backoff,
}

impl WorkerCore {
    /// An idle worker.
    pub fn new(backoff: Backoff, failures: FailureWindow) -> Self {
        Self {
            queue: BTreeSet::new(),
            current: None,
            failures,
            backoff,
        }
    }

    /// Queues an event; false when it is already queued or being handled.
    pub fn enqueue(&mut self, id: EventRowId) -> bool {
        if self.current == Some(id) {
            return false;
        }
        self.queue.insert(id)
    }

    /// Takes the next event if none is being handled.
    pub fn start_next(&mut self) -> Option<EventRowId> {
        if self.current.is_some() {
            return None;
        }
        let id = self.queue.pop_first()?;
        if self.queue.is_empty() {
            // An emptied BTreeSet keeps its root node (about 100 bytes): an idle worker,
            // which is most of them, holds none.
            self.queue = BTreeSet::new();
        }
        self.current = Some(id);
        Some(id)
    }

    /// The event being handled (or waiting for its retry).
    pub fn current(&self) -> Option<EventRowId> {
        self.current
    }

    /// Queued events, not counting the current one.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Nothing queued and nothing being handled.
    pub fn is_idle(&self) -> bool {
        self.current.is_none() && self.queue.is_empty()
    }

    /// Failures retried (or given up on) so far.
    pub fn restarts(&self) -> u64 {
        self.failures.total()
    }

    /// Removes and returns every event still owed (current first, then the queue), e.g. on
    /// shutdown. They stay unfinished in the inbox.
    pub fn release_all(&mut self) -> Vec<EventRowId> {
        let mut out: Vec<EventRowId> = self.current.take().into_iter().collect();
        out.extend(std::mem::take(&mut self.queue));
        out
    }

    /// Accounts for the end of an attempt at the current event and says what comes next.
    /// Every failure backs off before the worker goes on.
    pub fn on_attempt(&mut self, result: &AttemptResult, now: Instant) -> Next {
        let Some(current) = self.current else {
            // Nothing was running: a stale result, ignore it.
            return Next::RetryAfter(Duration::ZERO);
        };
        let failed = match result {
            AttemptResult::Behind(older) => {
                self.current = None;
                self.queue.insert(current);
                let adopted: Vec<EventRowId> = older
                    .iter()
                    .copied()
                    .filter(|id| self.queue.insert(*id))
                    .collect();
                return Next::Adopt(adopted);
            }
            AttemptResult::Finished
            | AttemptResult::AlreadyFinished
            | AttemptResult::Fenced
            | AttemptResult::Rejected(_) => {
                if matches!(result, AttemptResult::Finished) {
                    self.backoff.reset();
                }
                self.current = None;
                return Next::Continue { finished: current };
            }
            AttemptResult::DeadLetter(_) => Some(current),
            AttemptResult::Failed(_) | AttemptResult::StoreFailed(_) => None,
        };
        let delay = self.backoff.next_delay();
        let storm = self.failures.record(now);
        if failed.is_some() {
            self.current = None;
        }
        if storm {
            return Next::Storm {
                finished: failed,
                released: self.release_all(),
            };
        }
        match failed {
            Some(finished) => Next::ContinueAfter { finished, delay },
            None => Next::RetryAfter(delay),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn restart_storm_needs_limit_within_window() {
        let mut t = FailureWindow::new(3, ms(1000));
        let t0 = Instant::now();
        assert!(!t.record(t0));
        assert!(!t.record(t0 + ms(10)));
        // The first two leave the window before the third arrives.
        assert!(!t.record(t0 + ms(1500)));
        assert!(!t.record(t0 + ms(1600)));
        assert!(t.record(t0 + ms(1700)));
        assert_eq!(t.total(), 5);
    }

    fn core(limit: u32) -> WorkerCore {
        WorkerCore::new(
            Backoff::new(ms(10), ms(100)),
            FailureWindow::new(limit, ms(60_000)),
        )
    }

    #[test]
    fn queue_is_lowest_id_first_and_one_at_a_time() {
        let mut c = core(10);
        assert!(c.enqueue(EventRowId(5)));
        assert!(c.enqueue(EventRowId(3)));
        assert!(!c.enqueue(EventRowId(3)));
        assert_eq!(c.start_next(), Some(EventRowId(3)));
        assert_eq!(c.start_next(), None, "one at a time");
        assert!(!c.enqueue(EventRowId(3)), "current is not queued twice");
        let now = Instant::now();
        assert_eq!(
            c.on_attempt(&AttemptResult::Finished, now),
            Next::Continue {
                finished: EventRowId(3)
            }
        );
        assert_eq!(c.start_next(), Some(EventRowId(5)));
        c.on_attempt(&AttemptResult::AlreadyFinished, now);
        assert!(c.is_idle());
        c.enqueue(EventRowId(6));
        c.start_next();
        assert_eq!(
            c.on_attempt(&AttemptResult::Rejected("bad".into()), now),
            Next::Continue {
                finished: EventRowId(6)
            }
        );
        assert_eq!(c.restarts(), 0, "a rejection is not a restart");
    }

    #[test]
    fn failures_retry_with_backoff_then_dead_letter_continues() {
        let mut c = core(10);
        c.enqueue(EventRowId(1));
        c.enqueue(EventRowId(2));
        let now = Instant::now();
        assert_eq!(c.start_next(), Some(EventRowId(1)));
        assert_eq!(
            c.on_attempt(&AttemptResult::Failed("x".into()), now),
            Next::RetryAfter(ms(10))
        );
        assert_eq!(c.current(), Some(EventRowId(1)), "same event is retried");
        assert_eq!(
            c.on_attempt(&AttemptResult::Failed("x".into()), now),
            Next::RetryAfter(ms(20))
        );
        assert_eq!(
            c.on_attempt(&AttemptResult::DeadLetter("x".into()), now),
            Next::ContinueAfter {
                finished: EventRowId(1),
                delay: ms(40)
            }
        );
        assert_eq!(c.restarts(), 3);
        assert_eq!(c.start_next(), Some(EventRowId(2)));
        c.on_attempt(&AttemptResult::Finished, now);
        // A success resets the backoff.
        c.enqueue(EventRowId(3));
        c.start_next();
        assert_eq!(
            c.on_attempt(&AttemptResult::StoreFailed("db".into()), now),
            Next::RetryAfter(ms(10))
        );
    }

    #[test]
    fn storm_releases_everything() {
        let mut c = core(2);
        for i in 1..=3 {
            c.enqueue(EventRowId(i));
        }
        let now = Instant::now();
        c.start_next();
        assert!(matches!(
            c.on_attempt(&AttemptResult::Failed("x".into()), now),
            Next::RetryAfter(_)
        ));
        assert_eq!(
            c.on_attempt(&AttemptResult::Failed("x".into()), now),
            Next::Storm {
                finished: None,
                released: vec![EventRowId(1), EventRowId(2), EventRowId(3)]
            }
        );
        assert!(c.is_idle());
    }
}
