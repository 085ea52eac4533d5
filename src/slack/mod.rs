//! Slack adapters: request signatures, the slack-morphism connector and a local simulator.

pub mod connector;
pub mod events_http;
pub mod module;
pub mod signature;
pub mod sim;
pub mod socket;
pub mod web;
pub mod workspaces;
