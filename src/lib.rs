//! InfraGPT service: adapters (HTTP, gRPC, PostgreSQL, Slack, GitHub, crypto) and the
//! composition root around the `infragpt-actors` core.

pub mod app;
pub mod config;
pub mod crypto;
pub mod db;
pub mod demo;
pub mod devagent;
pub mod error;
pub mod github;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod integrations;
pub mod server;
pub mod slack;
pub mod telemetry;
