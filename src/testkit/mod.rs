//! Development and test support, apart from the service: a local Slack simulator
//! ([`slack_sim`]), a development agent ([`devagent`]) and the per-test database harness
//! ([`test_db`]). The demo (`infragpt demo`) and the tests use them; no service
//! module imports this tree (a unit test in `lib.rs` checks that).

pub mod devagent;
pub mod slack_sim;
pub mod test_db;
