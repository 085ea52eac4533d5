//! Integrations: the REST API and GitHub App flow, who may call it (roles), and the
//! credential vault; audit entries committed with the changes they record.

mod api;
mod audit;
mod roles;
mod vault;
mod vault_crypto;
