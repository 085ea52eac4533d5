//! Integrations: connectors an organization installs (Slack, GitHub App), their encrypted
//! credentials and the per-organization `CredentialVault` actors, the install/authorize/
//! revoke lifecycle behind the REST API, and the vault CLI.
//!
//! * [`connector`]: the [`connector::Connector`] port and registry; [`slack_connector`],
//!   [`github_connector`] (+ [`github_app`], the octocrab client) implement it.
//! * [`store`]: integration rows, GitHub repositories/events, Slack workspaces.
//! * [`vault`]: sealing into `integration_credentials`, the vault actors, single-flight
//!   refresh.
//! * [`service`] + [`routes`]: the lifecycle and its HTTP routes; [`principal`] is the caller.
//! * [`module`]: wiring ([`module::IntegrationsModule`], [`module::load_keyring`]).
//! * [`vault_cli`]: `vault rotate` / `vault status`.
//!
//! GitHub webhooks live in [`crate::github::webhook`] and [`crate::github::stream`].

pub mod connector;
pub mod github_app;
pub mod github_connector;
pub mod module;
pub mod principal;
pub mod routes;
pub mod service;
pub mod slack_connector;
pub mod store;
pub mod vault;
pub mod vault_cli;

pub use module::{IntegrationParts, IntegrationsModule, load_keyring, state_key};
pub use principal::Principal;
