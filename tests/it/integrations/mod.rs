//! Integrations: the REST API and GitHub App flow, and the credential vault.

mod api;
mod vault;
mod vault_crypto;
