//! InfraGPT core: domain types, ports (traits the outside world implements), actors and
//! supervisors. This crate does no I/O of its own and does not depend on diesel, actix-web,
//! tonic, slack-morphism or octocrab.
//!
//! # The actor model in short
//!
//! * [`Cluster`] is the facade: `ingest` records an event in the durable inbox
//!   ([`inbox::InboundEvents`]) and, only when it is new, dispatches it to the router of its
//!   source. A duplicate is never dispatched.
//! * One router (a supervisor, [`ActorKind::Supervisor`]) per stream starts a worker per
//!   routing key on demand and stops it after `idle_timeout_ms`. A key's events run one at a
//!   time, lowest id first; keys run concurrently.
//! * A worker claims the event, runs the [`EventHandler`] with panics caught, and records
//!   `done`/`ignored`. A failure restarts the worker (counted, exponential backoff) and
//!   retries the event up to `retry_budget`; then it is a dead letter (`failed`). Too many
//!   restarts within `restart_window_ms` mark the worker `failed` and quarantine its key for
//!   one window; its events wait in the inbox.
//! * Backpressure: above `high_water_mark` dispatched-but-unfinished events (or a full router
//!   mailbox) new events stay in the inbox and a drain scan dispatches them later, in id order.
//!   Every router starts with such a scan, which is the recovery after a restart.
//! * The plain logic (queue, backoff, restart accounting) is in [`supervision`] and
//!   [`handler`]; the actors only schedule it.

pub mod audit;
pub mod circuit;
pub mod cluster;
pub mod config;
pub mod conversation;
pub mod handler;
pub mod health;
pub mod ids;
pub mod inbox;
pub mod metrics;
mod router;
pub mod secret;
pub mod slack_connection;
pub mod slack_events;
pub mod supervision;
pub mod testing;
mod worker;

pub use cluster::{Cluster, ClusterError, IngestError, RecoveryReport, StreamSpec};
pub use config::ClusterConfig;
pub use handler::{EventHandler, HandleOutcome, HandlerError};
pub use health::{ActorKind, ActorState, HealthRegistry};
pub use metrics::Metrics;
pub use secret::Secret;
