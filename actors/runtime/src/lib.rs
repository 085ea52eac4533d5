//! The InfraGPT actor runtime: a durable-inbox, keyed-worker actor system on actix. It knows
//! nothing of Slack, GitHub or conversations: event sources and actor kinds are open names
//! that the application defines, handlers are [`EventHandler`] trait objects.
//!
//! # The actor model in short
//!
//! * [`Cluster`] is the facade: `ingest` records an event in the durable inbox
//!   ([`inbox::InboundEvents`]) and, only when it is new, dispatches it to the router of its
//!   source. A duplicate is never dispatched.
//! * One router (a supervisor, [`ActorKind::SUPERVISOR`]) per stream starts a worker per
//!   routing key on demand and stops it after `idle_timeout_ms`. A key's events run one at a
//!   time, lowest id first; keys run concurrently.
//! * A worker claims the event, runs the [`EventHandler`] with panics caught, and records
//!   `done`/`ignored`. A failure is retried after an exponential backoff (the worker actor
//!   itself keeps running) up to `retry_budget`; then it is a dead letter (`failed`). Too many
//!   failures within `restart_window_ms` mark the worker `failed` and quarantine its key for
//!   one window; its events wait in the inbox.
//! * Backpressure: above `high_water_mark` dispatched-but-unfinished events (or a full router
//!   mailbox) new events stay in the inbox and a drain scan dispatches them later, in id order.
//!   Every router starts with such a scan, which is the recovery after a restart.
//! * Replicas: several processes share one inbox by partitioning the routing keys and
//!   leasing each partition to one of them ([`partitions`]); a lone process holds them all.
//! * The plain logic (queue, backoff, failure accounting) is in [`supervision`], [`backoff`]
//!   and [`handler`]; the actors only schedule it.

pub mod backoff;
pub mod circuit;
pub mod cluster;
pub mod config;
mod coordinator;
pub mod group_commit;
pub mod handler;
pub mod health;
pub mod inbox;
pub mod metrics;
pub mod partitions;
mod router;
pub mod secret;
pub mod supervision;
pub mod testing;
mod worker;

pub use backoff::Backoff;
pub use cluster::{Cluster, ClusterError, IngestError, RecoveryReport, StreamSpec};
pub use config::ClusterConfig;
pub use coordinator::ReplicaStatus;
pub use handler::{EventHandler, HandleOutcome, HandlerError};
pub use health::{ActorKind, ActorState, HealthRegistry};
pub use inbox::EventSource;
pub use metrics::{Metrics, StageTotal};
pub use secret::Secret;
