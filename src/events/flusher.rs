//! The flusher: an actor that, every `events.flush_interval_ms`, brings event messages whose
//! Slack copy lags what is recorded up to date (digest updates spaced out to respect
//! `chat.update`'s rate tier, and updates interrupted by a crash). Every replica runs one;
//! the messages' claims keep two from updating one message at once.

use std::time::Duration;

use actix::{Actor, ActorFutureExt as _, AsyncContext, Context, Handler, Message, WrapFuture as _};
use infragpt_actors::events::EventRouter;

/// Messages looked at per tick.
const BATCH: i64 = 50;

/// The actor.
pub struct Flusher {
    router: EventRouter,
    interval: Duration,
    running: bool,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Flusher {
    /// A flusher over `router`, ticking every `interval`.
    pub fn new(router: EventRouter, interval: Duration) -> Self {
        Self {
            router,
            interval,
            running: false,
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
            ctx.spawn(
                async move {
                    match router.flush_lagging(BATCH).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(updated = n, "event messages brought up to date"),
                        Err(e) => tracing::warn!(error = %e, "flushing event messages failed"),
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
