//! The integration tests: one binary (`cargo test --test it`), a module per feature area.
//! Shared helpers live in [`support`]: the test-app builder, the one polling helper and the
//! fixtures in `tests/data`.

// Tests read rows after the service has committed them; `get_result` (which answers
// before a commit, clippy.toml) is fine for them.
#![allow(clippy::disallowed_methods)]

mod agent;
mod approvals;
mod cluster;
mod config;
mod conversations;
mod db;
mod deploy;
mod e2e;
mod edge;
mod events;
mod fuzz_corpora;
mod github;
mod identity;
mod integrations;
mod observability;
mod openapi;
mod ops_page;
mod server;
mod slack;
mod support;
mod telemetry;
