//! Integrations: the REST API and GitHub App flow, who may call it (roles), and the
//! credential vault.

mod api;
mod roles;
mod vault;
mod vault_crypto;
