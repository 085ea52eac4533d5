//! Integrations: connectors an organization installs, their encrypted credentials and the
//! per-organization `CredentialVault` actors, the install/authorize/revoke lifecycle behind the
//! REST API, and the vault CLI. The providers plug in from their own slices
//! (`slack::integration`, `github::integration`); this module imports neither, and the
//! composition root (`app::integrations`) registers them.
//!
//! * [`connector`]: the [`connector::Connector`] port and registry.
//! * [`store`]: integration rows, GitHub repositories/events, Slack workspaces; [`providers`]
//!   names the connector types and the provider records the store keeps.
//! * [`vault`] over [`credentials`]: sealing into `integration_credentials`, the vault actors,
//!   single-flight refresh; [`refresh_lock`] makes refreshes single-flight across replicas.
//! * [`service`] + [`routes`]: the lifecycle and its HTTP routes; [`principal`] is the caller.
//! * [`vault_cli`]: `vault rotate` / `vault status`.

pub mod connector;
pub mod credentials;
pub mod principal;
pub mod providers;
pub mod refresh_lock;
pub mod routes;
pub mod service;
pub mod store;
pub mod vault;
pub mod vault_cli;

pub use principal::Principal;
