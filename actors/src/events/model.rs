//! The uniform shape of an event from any source, as rules match it, messages show it and
//! the agent receives it (the `event` of the triage turn's context JSON).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The GitHub App's webhooks (one stream per installation and repository).
    Github,
    /// A Prometheus Alertmanager webhook receiver created by the organization.
    Alertmanager,
    /// A PagerDuty v3 webhook subscription created by the organization.
    Pagerduty,
}

impl SourceKind {
    /// The spelling in rules, URLs and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Github => "github",
            Self::Alertmanager => "alertmanager",
            Self::Pagerduty => "pagerduty",
        }
    }

    /// Parses the spelling of [`Self::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "github" => Some(Self::Github),
            "alertmanager" => Some(Self::Alertmanager),
            "pagerduty" => Some(Self::Pagerduty),
            _ => None,
        }
    }
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A link shown on the message and given to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub label: String,
    pub url: String,
}

/// How the message shows the event's state (its colour and emoji).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tone {
    /// Something is wrong (failure, firing, triggered).
    Bad,
    /// Being handled or running (acknowledged, queued, in progress).
    Pending,
    /// Fine again (success, resolved).
    Good,
    /// Informational (opened, published).
    Info,
}

/// One event, normalized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpsEvent {
    /// Which kind of source.
    pub source: SourceKind,
    /// The organization's source it came through (Alertmanager and PagerDuty sources; none
    /// for GitHub, whose deliveries come through the App).
    pub source_id: Option<uuid::Uuid>,
    /// What happened: `workflow_run.completed`, `pull_request.merged`, `alert.firing`,
    /// `incident.triggered`. Rules match on it.
    pub event: String,
    /// The outcome where the source has one: a run's or check's conclusion (`failure`), a
    /// deployment's state. Rules match `event/conclusion`.
    pub conclusion: Option<String>,
    /// What the event is about, stable across its updates: the same workflow run (whatever
    /// the attempt), alert group or incident. One Slack message per thing and channel.
    pub thing_key: String,
    /// One line for people.
    pub title: String,
    /// The state to show: `failure`, `firing`, `resolved`, `triggered`, `acknowledged`...
    pub status: String,
    /// Colour of the message.
    pub tone: Tone,
    /// Alert severity or incident urgency, when known.
    pub severity: Option<String>,
    /// `owner/name` of a GitHub repository.
    pub repository: Option<String>,
    /// A PagerDuty service or an alert's `service`/`job` label.
    pub service: Option<String>,
    /// Links to the run, alert or incident.
    pub links: Vec<Link>,
    /// Key facts, in display order.
    pub fields: Vec<(String, String)>,
    /// Labels rules can match (alert labels, incident urgency and priority).
    pub labels: BTreeMap<String, String>,
    /// When it happened (RFC 3339), as the source says.
    pub occurred_at: Option<String>,
    /// A few sentences for the agent: what happened and where to look.
    pub description: String,
}

impl OpsEvent {
    /// The context JSON's `event` for the agent: kind, source, links, labels and the rest.
    pub fn agent_context(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": self.event,
            "source": self.source.as_str(),
            "source_id": self.source_id,
            "conclusion": self.conclusion,
            "title": self.title,
            "status": self.status,
            "severity": self.severity,
            "repository": self.repository,
            "service": self.service,
            "links": self.links,
            "labels": self.labels,
            "fields": self.fields.iter().map(|(k, v)| serde_json::json!({"name": k, "value": v})).collect::<Vec<_>>(),
            "occurred_at": self.occurred_at,
            "thing": self.thing_key,
        })
    }
}
