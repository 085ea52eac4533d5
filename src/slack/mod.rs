//! Slack: the conversation transport (Socket Mode, `POST /slack/events`, request signatures),
//! the Web API adapter and its workspace tokens, and the Slack integration (OAuth install).
//!
//! * [`transport`]: [`transport::SlackModule`] plugs the transport into the server and builds
//!   the Web API adapter; [`socket`] and [`events_http`] are the two transports.
//! * [`web`] + [`workspaces`]: the Web API adapter and where its tokens come from;
//!   [`http_connector`] builds the slack-morphism HTTP client.
//! * [`integration`]: the Slack connector of [`crate::integrations`] and the vault-backed
//!   token source.

pub mod commands;
pub mod events_http;
pub mod http_connector;
pub mod integration;
pub mod interactions_http;
pub mod signature;
pub mod socket;
pub mod transport;
pub mod web;
pub mod workspaces;
