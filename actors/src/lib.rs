//! InfraGPT core: domain types, ports (traits the outside world implements), actors and
//! supervisors. This crate does no I/O of its own and does not depend on diesel, actix-web,
//! tonic, slack-morphism or octocrab.

pub mod audit;
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
