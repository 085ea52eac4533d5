//! Slack adapters: request signatures, the slack-morphism connector and a local simulator.

pub mod connector;
pub mod signature;
pub mod sim;
