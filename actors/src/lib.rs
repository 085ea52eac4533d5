//! InfraGPT domain: identifiers, Slack event parsing and decisions, the Socket Mode connection
//! state machine, the conversation logic and the ports (traits) the outside world implements.
//! It does no I/O of its own and does not depend on diesel, actix-web, tonic, slack-morphism
//! or octocrab.
//!
//! The generic actor runtime (durable inbox, keyed routers and workers, supervision, health,
//! metrics, circuit breaker) is the `infragpt-runtime` crate; this crate names the
//! application's event [`sources`] and actor [`kinds`] and re-exports the runtime's modules
//! under their usual paths, so the service depends on this crate alone.

pub mod approvals;
pub mod audit;
pub mod conversation;
pub mod events;
pub mod ids;
pub mod slack_alerts;
pub mod slack_connection;
pub mod slack_events;
pub mod slash;
pub mod testing;

pub use infragpt_runtime::{
    ActorKind, ActorState, Backoff, Cluster, ClusterConfig, ClusterError, EventHandler,
    EventSource, HandleOutcome, HandlerError, HealthRegistry, IngestError, Metrics, RecoveryReport,
    Secret, StreamSpec,
};
pub use infragpt_runtime::{
    backoff, circuit, cluster, config, group_commit, handler, health, inbox, metrics, partitions,
    secret, supervision,
};

/// The application's actor kinds (the runtime itself only defines
/// [`ActorKind::SUPERVISOR`]).
pub mod kinds {
    use infragpt_runtime::ActorKind;
    use infragpt_runtime::health::UnknownName;

    /// Owns and supervises other actors (the root and one router per stream).
    pub const SUPERVISOR: ActorKind = ActorKind::SUPERVISOR;
    /// One Slack Socket Mode connection.
    pub const SLACK_CONNECTION: ActorKind = ActorKind::new("slack_connection");
    /// The webhook stream of one GitHub installation.
    pub const GITHUB_WEBHOOK_STREAM: ActorKind = ActorKind::new("github_webhook_stream");
    /// One Slack thread.
    pub const CONVERSATION_THREAD: ActorKind = ActorKind::new("conversation_thread");
    /// Credentials of one organization.
    pub const CREDENTIAL_VAULT: ActorKind = ActorKind::new("credential_vault");
    /// The gRPC client of the agent: not an actor, a component that reports its health (circuit
    /// state) in the same registry.
    pub const AGENT_CLIENT: ActorKind = ActorKind::new("agent_client");
    /// Clerk identity synchronisation.
    pub const IDENTITY_SYNC: ActorKind = ActorKind::new("identity_sync");
    /// Periodic database housekeeping (retention of the inbox and of conversations); one per
    /// process, and one process at a time deletes (advisory lock).
    pub const HOUSEKEEPING: ActorKind = ActorKind::new("housekeeping");
    /// The webhook stream of one Alertmanager or PagerDuty source of an organization.
    pub const EVENT_SOURCE_STREAM: ActorKind = ActorKind::new("event_source_stream");
    /// One triage turn queue (a posted event message's thread).
    pub const EVENT_TRIAGE: ActorKind = ActorKind::new("event_triage");

    /// Every kind, in display order.
    pub const ALL: [ActorKind; 10] = [
        SUPERVISOR,
        SLACK_CONNECTION,
        GITHUB_WEBHOOK_STREAM,
        CONVERSATION_THREAD,
        CREDENTIAL_VAULT,
        AGENT_CLIENT,
        IDENTITY_SYNC,
        HOUSEKEEPING,
        EVENT_SOURCE_STREAM,
        EVENT_TRIAGE,
    ];

    /// The kind named `name` (as in URLs and JSON).
    pub fn parse(name: &str) -> Result<ActorKind, UnknownName> {
        ActorKind::find(name, &ALL)
    }
}

/// The application's event sources (stored spelling in `inbound_events.source`).
pub mod sources {
    use infragpt_runtime::EventSource;
    use infragpt_runtime::inbox::StoreError;

    /// Slack Socket Mode or Events API (`event_id`).
    pub const SLACK: EventSource = EventSource::new("slack");
    /// GitHub App webhooks (`X-GitHub-Delivery`).
    pub const GITHUB: EventSource = EventSource::new("github");
    /// Clerk webhooks through Svix (`svix-id`).
    pub const CLERK: EventSource = EventSource::new("clerk");
    /// Alertmanager webhooks of an organization's source (group key, status, start times).
    pub const ALERTMANAGER: EventSource = EventSource::new("alertmanager");
    /// PagerDuty v3 webhooks of an organization's source (`event.id`).
    pub const PAGERDUTY: EventSource = EventSource::new("pagerduty");
    /// Triage turns queued for posted event messages (one per message).
    pub const TRIAGE: EventSource = EventSource::new("triage");

    /// Every source.
    pub const ALL: [EventSource; 6] = [SLACK, GITHUB, CLERK, ALERTMANAGER, PAGERDUTY, TRIAGE];

    /// The source stored as `name`; anything else is a corrupt row.
    pub fn parse(name: &str) -> Result<EventSource, StoreError> {
        EventSource::find(name, &ALL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_sources_round_trip() {
        for k in kinds::ALL {
            assert_eq!(kinds::parse(k.as_str()).unwrap(), k);
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
        assert!(kinds::parse("nope").is_err());
        for s in sources::ALL {
            assert_eq!(sources::parse(s.as_str()).unwrap(), s);
        }
        assert!(sources::parse("gitlab").is_err());
    }
}
