//! The flusher: an actor that, every `events.flush_interval_ms`, brings event messages whose
//! Slack copy lags what is recorded up to date (digest updates spaced out to respect
//! `chat.update`'s rate tier, and updates interrupted by a crash). Every replica runs one;
//! the messages' claims keep two from updating one message at once. Once a minute it also
//! deletes storm-window hits older than an hour.

use std::time::{Duration, Instant};

use actix::{Actor, ActorFutureExt as _, AsyncContext, Context, Handler, Message, WrapFuture as _};
use infragpt_actors::events::EventRouter;

use super::store::PgEvents;

/// Messages looked at per tick.
const BATCH: i64 = 50;
/// Time between two prunings of the storm windows.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The actor.
pub struct Flusher {
    router: EventRouter,
    store: PgEvents,
    interval: Duration,
    running: bool,
    last_prune: Instant,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Flusher {
    /// A flusher over `router` (and `store`, whose old storm windows it prunes), ticking
    /// every `interval`.
    pub fn new(router: EventRouter, store: PgEvents, interval: Duration) -> Self {
        Self {
            router,
            store,
            interval,
            running: false,
            last_prune: Instant::now(),
        }
    }
}

impl Actor for Flusher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.interval, |this, ctx| {
            if this.running {
                return;
            }
            this.running = true;
            let router = this.router.clone();
            let prune = (this.last_prune.elapsed() >= PRUNE_EVERY).then(|| this.store.clone());
            if prune.is_some() {
                this.last_prune = Instant::now();
            }
            ctx.spawn(
                async move {
                    match router.flush_lagging(BATCH).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(updated = n, "event messages brought up to date"),
                        Err(e) => tracing::warn!(error = %e, "flushing event messages failed"),
                    }
                    if let Some(store) = prune {
                        match store.prune_storm_windows().await {
                            Ok(0) => {}
                            Ok(n) => tracing::debug!(deleted = n, "old storm windows pruned"),
                            Err(e) => tracing::warn!(error = %e, "pruning storm windows failed"),
                        }
                    }
                }
                .into_actor(this)
                .map(|(), this, _| this.running = false),
            );
        });
    }
}

/// Stops the flusher.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopFlusher;

impl Handler<StopFlusher> for Flusher {
    type Result = ();
    fn handle(&mut self, _: StopFlusher, ctx: &mut Self::Context) {
        use actix::ActorContext as _;
        ctx.stop();
    }
}
