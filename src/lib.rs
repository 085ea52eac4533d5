//! InfraGPT service: adapters (HTTP, gRPC, PostgreSQL, Slack, GitHub, crypto) and the
//! composition root around the `infragpt-actors` core.

pub mod crypto;
pub mod db;
pub mod github;
pub mod grpc;
pub mod identity;
pub mod slack;
