//! InfraGPT service: adapters (HTTP, gRPC, PostgreSQL, Slack, GitHub, crypto) and the
//! composition root around the `infragpt-actors` core.

pub mod db;
pub mod grpc;
