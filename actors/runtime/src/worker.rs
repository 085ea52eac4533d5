//! The keyed worker actor: a thin actix shell over [`WorkerCore`] and [`attempt`]. One worker
//! per routing key; it handles its key's events one at a time, lowest id first.

use std::sync::Arc;
use std::time::Instant;

use actix::WeakAddr;
use actix::prelude::*;
use tokio::sync::oneshot;

use crate::handler::{Attempted, attempt};
use crate::health::{ActorHealth, ActorId, ActorState};
use crate::inbox::{Claim, EventRowId, InboundEvent, RoutingKey};
use crate::router::{Adopted, Router, StreamCtx, WorkerFailed, WorkerFinished, WorkerIdle};
use crate::supervision::{AttemptResult, FailureWindow, Next, WorkerCore};

/// Queue an event (router → worker), with its claim when it was claimed as it was recorded.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Enqueue {
    pub id: EventRowId,
    pub claimed: Option<Box<InboundEvent>>,
    /// The claim of the older event of the key that the record let `claimed` pass: only the
    /// worker that started that event may use `claimed` (it handles the two in order).
    pub behind: Option<Claim>,
}

/// Stop now: idle and nothing outstanding (router → worker).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct StopIdle;

/// Finish the event being handled, then stop; queued events stay in the inbox (shutdown).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct DrainAndStop(pub oneshot::Sender<()>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Idle,
    Shutdown,
    Failed,
}

/// One key's worker.
pub(crate) struct Worker {
    key: RoutingKey,
    generation: u64,
    stream: Arc<StreamCtx>,
    router: WeakAddr<Router>,
    core: WorkerCore,
    health: Option<ActorHealth>,
    /// The queued event that was claimed as it was recorded, handled under that claim. One
    /// slot: an event is claimed at record only when nothing older of its key is unfinished
    /// but the event this worker is running, so a key has at most one such event queued.
    claimed: Option<Box<InboundEvent>>,
    /// The highest event id this worker has started an attempt for. A claim at record for
    /// an event at or below it is stale (the event was adopted, or reached this worker from
    /// a scan, and handled under a claim of its own), so the event is claimed afresh.
    last_started: Option<EventRowId>,
    /// An attempt is running.
    running: bool,
    /// Waiting for a backoff delay to pass before the next attempt.
    backing_off: bool,
    idle_epoch: u64,
    /// The armed idle timer.
    idle_timer: Option<SpawnHandle>,
    exit: Option<Exit>,
    drain_waiters: Vec<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("key", &self.key)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Worker {
    pub(crate) fn new(
        key: RoutingKey,
        generation: u64,
        stream: Arc<StreamCtx>,
        router: WeakAddr<Router>,
    ) -> Self {
        let c = &stream.config;
        let core = WorkerCore::new(
            c.backoff(),
            FailureWindow::new(c.restart_limit, c.restart_window()),
        );
        Self {
            key,
            generation,
            stream,
            router,
            core,
            health: None,
            claimed: None,
            last_started: None,
            running: false,
            backing_off: false,
            idle_epoch: 0,
            idle_timer: None,
            exit: None,
            drain_waiters: Vec::new(),
        }
    }

    fn send_router<M>(&self, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        Router: Handler<M>,
    {
        if let Some(router) = self.router.upgrade() {
            router.do_send(msg);
        }
    }

    fn update_backlog(&self) {
        if let Some(h) = &self.health {
            h.set_backlog(self.core.queued() as u64);
        }
    }

    /// Starts the next queued event unless one is running, a retry is backing off, or the
    /// worker is stopping.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.running || self.backing_off || self.exit.is_some() {
            return;
        }
        match self.core.start_next() {
            Some(id) => self.run(id, ctx),
            None => self.arm_idle_timer(ctx),
        }
        self.update_backlog();
    }

    fn run(&mut self, id: EventRowId, ctx: &mut Context<Self>) {
        self.running = true;
        // Only the first attempt uses the record's claim; a retry claims the event again.
        let claimed = self.claimed.take_if(|e| e.id == id);
        self.last_started = self.last_started.max(Some(id));
        let fut = attempt(self.stream.clone(), (id, claimed), self.key.clone());
        ctx.spawn(
            fut.into_actor(self)
                .map(|attempted, act, ctx| act.on_attempted(attempted, ctx)),
        );
    }

    fn on_attempted(&mut self, attempted: Attempted, ctx: &mut Context<Self>) {
        self.running = false;
        let kind = self.stream.kind;
        let metrics = &self.stream.metrics;
        match &attempted.result {
            AttemptResult::Finished => {
                if let Some(t) = attempted.handler_time {
                    metrics.handled(kind, t.as_secs_f64());
                }
                if let Some(h) = &self.health {
                    h.record_message();
                }
            }
            AttemptResult::AlreadyFinished | AttemptResult::Behind(_) => {}
            AttemptResult::Fenced => metrics.fenced(kind),
            AttemptResult::Rejected(e) => {
                metrics.failure(kind);
                metrics.dead_letter(kind);
                if let Some(h) = &self.health {
                    h.record_error(e);
                }
            }
            AttemptResult::DeadLetter(_)
            | AttemptResult::Failed(_)
            | AttemptResult::StoreFailed(_) => {
                metrics.failure(kind);
                if matches!(attempted.result, AttemptResult::DeadLetter(_)) {
                    metrics.dead_letter(kind);
                }
            }
        }
        let error = match &attempted.result {
            AttemptResult::DeadLetter(e)
            | AttemptResult::Failed(e)
            | AttemptResult::StoreFailed(e) => Some(e.clone()),
            _ => None,
        };
        let next = self.core.on_attempt(&attempted.result, Instant::now());

        if self.exit == Some(Exit::Shutdown) {
            // Shutting down: report what finished, leave the rest in the inbox.
            match next {
                Next::Continue { finished } | Next::ContinueAfter { finished, .. } => {
                    self.report_finished(finished)
                }
                Next::Storm {
                    finished: Some(f), ..
                } => self.report_finished(f),
                _ => {}
            }
            self.finish_drain(ctx);
            return;
        }

        match next {
            Next::Continue { finished } => {
                self.report_finished(finished);
                self.pump(ctx);
            }
            Next::Adopt(ids) => {
                if !ids.is_empty() {
                    self.send_router(Adopted {
                        key: self.key.clone(),
                        generation: self.generation,
                        ids,
                    });
                }
                self.pump(ctx);
            }
            Next::RetryAfter(delay) => {
                self.back_off(error.as_deref().unwrap_or("failure"));
                self.backing_off = true;
                ctx.run_later(delay, |act, ctx| {
                    act.backing_off = false;
                    if act.exit.is_some() {
                        return;
                    }
                    act.set_state(ActorState::Running);
                    match act.core.current() {
                        Some(id) => act.run(id, ctx),
                        None => act.pump(ctx),
                    }
                });
            }
            Next::ContinueAfter { finished, delay } => {
                self.report_finished(finished);
                self.back_off(error.as_deref().unwrap_or("failure"));
                self.backing_off = true;
                ctx.run_later(delay, |act, ctx| {
                    act.backing_off = false;
                    if act.exit.is_some() {
                        return;
                    }
                    act.set_state(ActorState::Running);
                    act.pump(ctx);
                });
            }
            Next::Storm { released, .. } => {
                let error = format!(
                    "restart limit reached ({} failures within {:?}): {}",
                    self.stream.config.restart_limit,
                    self.stream.config.restart_window(),
                    error.as_deref().unwrap_or("failure")
                );
                // The queued events wait in the inbox (the key is quarantined).
                tracing::error!(routing_key = %self.key, stream = %self.stream.name, error = %error, waiting = released.len(), "worker failed");
                self.stream.metrics.retry(kind);
                if let Some(h) = &self.health {
                    h.retrying(&error);
                    h.failed(&error);
                }
                self.exit = Some(Exit::Failed);
                self.send_router(WorkerFailed {
                    key: self.key.clone(),
                    generation: self.generation,
                });
                ctx.stop();
            }
        }
    }

    /// A failure the worker retries after a backoff delay (counted as a restart in health
    /// and metrics; the actor itself keeps running).
    fn back_off(&mut self, error: &str) {
        tracing::info!(routing_key = %self.key, stream = %self.stream.name, error = %error, "worker backing off before the next attempt");
        self.stream.metrics.retry(self.stream.kind);
        if let Some(h) = &self.health {
            h.retrying(error);
        }
    }

    fn set_state(&self, state: ActorState) {
        if let Some(h) = &self.health {
            h.set_state(state);
        }
    }

    fn report_finished(&self, id: EventRowId) {
        self.send_router(WorkerFinished {
            key: self.key.clone(),
            generation: self.generation,
            id,
        });
    }

    fn arm_idle_timer(&mut self, ctx: &mut Context<Self>) {
        // One timer at a time: a superseded one would keep its boxed future (and its tokio
        // timer entry) in the context until it fired, an idle timeout later.
        if let Some(stale) = self.idle_timer.take() {
            ctx.cancel_future(stale);
        }
        self.idle_epoch += 1;
        let epoch = self.idle_epoch;
        let timer = ctx.run_later(self.stream.config.idle_timeout(), move |act, _ctx| {
            if act.idle_epoch == epoch
                && act.core.is_idle()
                && !act.running
                && !act.backing_off
                && act.exit.is_none()
            {
                act.send_router(WorkerIdle {
                    key: act.key.clone(),
                    generation: act.generation,
                });
            }
        });
        self.idle_timer = Some(timer);
    }

    fn finish_drain(&mut self, ctx: &mut Context<Self>) {
        // Queued events stay in the inbox for the next start (`pending`, or `processing` when
        // claimed at record: claimed again then). The drain waiters hear from `stopped`, once
        // the worker's health and metrics are final.
        self.claimed = None;
        self.core.release_all();
        ctx.stop();
    }
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let h = self.stream.health.register(
            ActorId::new(self.stream.kind, self.key.0.clone()),
            Some(self.stream.router_id.clone()),
        );
        h.set_state(ActorState::Running);
        self.health = Some(h);
        self.pump(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if let Some(h) = self.health.take() {
            match self.exit {
                // Idle threads leave no trace: their state is in the database.
                Some(Exit::Idle) => h.deregister(),
                Some(Exit::Failed) => {}
                Some(Exit::Shutdown) | None => h.set_state(ActorState::Stopped),
            }
        }
        for w in self.drain_waiters.drain(..) {
            let _ = w.send(());
        }
    }
}

impl Handler<Enqueue> for Worker {
    type Result = ();
    fn handle(&mut self, msg: Enqueue, ctx: &mut Self::Context) {
        if self.exit.is_some() {
            return;
        }
        self.idle_epoch += 1;
        // An event let past an older one is this worker's only if it started that one: a new
        // worker (the one that started it stopped) claims it afresh, behind whatever older
        // event is still unfinished then.
        let started_behind = msg
            .behind
            .is_none_or(|b| self.last_started.is_some_and(|last| last >= b.id));
        if msg.claimed.is_some()
            && started_behind
            && self.last_started.is_none_or(|last| msg.id > last)
        {
            // One replacing another would mean two unfinished events of the key claimed at
            // record (replicas racing): the earlier is claimed again when its turn comes.
            self.claimed = msg.claimed;
        }
        self.core.enqueue(msg.id);
        self.pump(ctx);
    }
}

impl Handler<StopIdle> for Worker {
    type Result = ();
    fn handle(&mut self, _: StopIdle, ctx: &mut Self::Context) {
        tracing::debug!(routing_key = %self.key, stream = %self.stream.name, "idle worker stopped");
        self.exit = Some(Exit::Idle);
        ctx.stop();
    }
}

impl Handler<DrainAndStop> for Worker {
    type Result = ();
    fn handle(&mut self, msg: DrainAndStop, ctx: &mut Self::Context) {
        self.drain_waiters.push(msg.0);
        if self.exit.is_none() {
            self.exit = Some(Exit::Shutdown);
        }
        if !self.running {
            self.finish_drain(ctx);
        }
    }
}
