//! Test support, compiled always so the root crate's tests can use it too: the runtime's
//! in-memory inbox and scriptable handlers, a Slack-like test event, and in-memory fakes of
//! the conversation ports.

pub use infragpt_runtime::testing::*;

use infragpt_runtime::inbox::NewInboundEvent;

use crate::sources;

/// A Slack-like event for tests: source id `"{key}#{seq}"`, kind `app_mention`, payload
/// `{"seq": seq}`.
pub fn slack_event(key: &str, seq: u64) -> NewInboundEvent {
    NewInboundEvent {
        kind: "app_mention".into(),
        ..keyed_event(sources::SLACK, key, seq)
    }
}
