//! Integrations: the REST API and GitHub App flow, who may call it (roles), and the
//! credential vault; audit entries committed with the changes they record; refreshes
//! single-flight across replicas sharing one database.

mod api;
mod audit;
mod replicas;
mod roles;
mod vault;
mod vault_crypto;
