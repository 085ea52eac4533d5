//! InfraGPT core: domain types, ports (traits the outside world implements), actors and
//! supervisors. This crate does no I/O of its own and does not depend on diesel, actix-web,
//! tonic, slack-morphism or octocrab.

pub mod audit;
pub mod inbox;
pub mod secret;
pub mod slack_events;

pub use secret::Secret;
