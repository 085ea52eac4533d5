//! Slack: fixtures and signing, the simulator, Socket Mode, the Events API endpoint, the
//! Web API adapter and the OAuth install.

mod commands_http;
mod commands_sim;
mod events_http;
mod fixtures;
mod install;
mod interactions;
mod sim;
mod socket;
mod web;
