//! Development and test support, apart from the service: a local Slack simulator
//! ([`slack_sim`]), a development agent ([`devagent`]) and the per-test database harness
//! (`test_db`, built for tests and benches only). The demo (`infragpt demo`) and the tests use
//! them; no service module imports this tree (a unit test in `lib.rs` checks that).

pub mod devagent;
// Dev-only: the bodies of the fuzz targets (tests/fuzz) and of the corpus replay test.
pub mod fuzz;
// Dev-only: several `infragpt serve` processes on one database, and a load over them.
#[cfg(any(test, feature = "testkit"))]
pub mod replicas;
pub mod slack_sim;
// Dev-only: compiled for the tests and benches (feature `testkit`), not into the service.
#[cfg(any(test, feature = "testkit"))]
pub mod test_db;
