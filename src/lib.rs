//! InfraGPT service: adapters (HTTP, gRPC, PostgreSQL, Slack, GitHub, crypto) and the
//! composition root around the `infragpt-actors` core.

pub mod config;
pub mod db;
pub mod error;
pub mod grpc;
pub mod http;
pub mod server;
pub mod telemetry;
