//! Events that reach people: GitHub deliveries, Alertmanager notifications and PagerDuty
//! incidents become one uniform [`OpsEvent`], organization rules ([`rules`]) decide which
//! Slack channel sees it, [`route::EventRouter`] posts (or updates) one Block Kit message per
//! thing exactly once across replicas and crashes, folds storms into a digest, and queues a
//! triage turn for the agent ([`triage`]) when the rule asks for one.
//!
//! Everything here is plain logic over ports ([`ports`]); the PostgreSQL stores, the Slack
//! adapter and the webhook routes live in the root crate (`src/events`).

pub mod blocks;
pub mod model;
pub mod normalize;
pub mod ports;
pub mod route;
pub mod rules;
pub mod triage;

pub use blocks::Rendered;
pub use model::{Link, OpsEvent, SourceKind, Tone};
pub use ports::{
    Desired, DigestState, EventMessageKey, EventMessageStore, EventSlack, MessageClaim,
    MessageSlot, RuleStore, StoreFailure, StormHit, TriageQueue, TriageRequest,
};
pub use route::{
    EVENT_MESSAGE_TYPE, EventRouter, RouteError, RouteReport, RouterSettings, Synced,
    event_metadata,
};
pub use rules::{
    EventRule, LabelMatcher, MatchOp, RuleSource, RuleSpec, RuleValidationError, SlackTarget,
};
pub use triage::{TriageHandler, TriagePayload};
