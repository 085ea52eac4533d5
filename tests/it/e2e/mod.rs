//! The assembled service (`app::start`), driven from outside: conversations through the
//! Slack simulator and the dev agent, the demo binary, the operations endpoints, and Clerk
//! webhooks with the authenticated REST API.

mod alerts;
mod approvals;
mod auth;
pub(crate) mod conversations;
pub(crate) mod demo;
mod direct_messages;
mod long_answers;
mod ops;
mod progress;
mod replicas;
mod slash;
