//! Routing rules: which events of an organization go to which Slack channel, and whether
//! the agent triages them. [`RuleSpec`] is what the REST API reads (validated field by
//! field, errors naming the field); [`EventRule`] is a stored rule; [`EventRule::matches`]
//! is the one decision.
//!
//! Event patterns: `name[.action][/conclusion]`, each part `*` for any, e.g.
//! `workflow_run.completed/failure`, `deployment_status/failure`, `check_run/failure`,
//! `pull_request.opened`, `pull_request.merged`, `release.published`, `alert.firing`,
//! `alert` (firing and resolved), `incident.triggered`, `incident` (every incident event).

use serde::{Deserialize, Serialize};

use super::model::{OpsEvent, SourceKind};

/// Longest rule name.
pub const MAX_NAME: usize = 200;
/// Most patterns, matchers, repositories or services in one rule.
pub const MAX_LIST: usize = 50;
/// Longest pattern, label, value, repository or service name.
pub const MAX_ITEM: usize = 200;

/// Which source a rule listens to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleSource {
    /// `github`, `alertmanager` or `pagerduty`.
    pub kind: String,
    /// One of the organization's Alertmanager or PagerDuty sources; absent: every source of
    /// that kind. Not allowed for GitHub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<uuid::Uuid>,
}

/// How a label matcher compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum MatchOp {
    /// The label equals the value.
    #[default]
    #[serde(rename = "=")]
    Eq,
    /// The label is absent or differs.
    #[serde(rename = "!=")]
    Ne,
}

/// A label matcher, like Alertmanager's `severity="critical"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelMatcher {
    pub label: String,
    #[serde(default)]
    pub op: MatchOp,
    pub value: String,
}

impl LabelMatcher {
    fn matches(&self, event: &OpsEvent) -> bool {
        let found = event.labels.get(&self.label).or(match self.label.as_str() {
            "severity" => event.severity.as_ref(),
            "service" => event.service.as_ref(),
            _ => None,
        });
        match self.op {
            MatchOp::Eq => found.is_some_and(|v| v == &self.value),
            MatchOp::Ne => found.is_none_or(|v| v != &self.value),
        }
    }
}

/// The Slack channel a rule posts in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SlackTarget {
    /// The workspace (`T…`).
    pub team_id: String,
    /// The channel (`C…`, `G…`).
    pub channel_id: String,
}

/// A rule as the API reads and answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub source: RuleSource,
    /// Event patterns; empty: every event of the source.
    #[serde(default)]
    pub events: Vec<String>,
    /// Every matcher must hold.
    #[serde(default)]
    pub matchers: Vec<LabelMatcher>,
    /// GitHub `owner/name`s; empty: any.
    #[serde(default)]
    pub repositories: Vec<String>,
    /// Services (PagerDuty service names, an alert's `service` or `job` label); empty: any.
    #[serde(default)]
    pub services: Vec<String>,
    pub slack: SlackTarget,
    /// The agent investigates each new message in its thread.
    #[serde(default)]
    pub triage: bool,
}

fn yes() -> bool {
    true
}

/// A rule field that does not validate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RuleValidationError {
    /// The field's path (`events[2]`, `slack.channel_id`).
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> RuleValidationError {
    RuleValidationError {
        field: field.into(),
        reason: reason.into(),
    }
}

fn check_text(field: String, value: &str) -> Result<(), RuleValidationError> {
    if value.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.chars().count() > MAX_ITEM {
        return Err(invalid(field, format!("longer than {MAX_ITEM} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "contains a control character"));
    }
    Ok(())
}

fn check_slack_id(field: &str, value: &str, prefixes: &[char]) -> Result<(), RuleValidationError> {
    let ok = value.len() >= 2
        && value.len() <= 32
        && value.starts_with(prefixes)
        && value
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "must be a Slack id starting with {} (upper-case letters and digits)",
                prefixes
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        ))
    }
}

/// A parsed event pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern<'a> {
    name: &'a str,
    action: Option<&'a str>,
    conclusion: Option<&'a str>,
}

fn parse_pattern(p: &str) -> Option<Pattern<'_>> {
    let (head, conclusion) = match p.split_once('/') {
        Some((h, c)) => (h, Some(c)),
        None => (p, None),
    };
    let (name, action) = match head.split_once('.') {
        Some((n, a)) => (n, Some(a)),
        None => (head, None),
    };
    let part_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '*')
    };
    if !part_ok(name) || !action.is_none_or(part_ok) || !conclusion.is_none_or(part_ok) {
        return None;
    }
    Some(Pattern {
        name,
        action,
        conclusion,
    })
}

fn part_matches(pattern: Option<&str>, value: Option<&str>) -> bool {
    match pattern {
        None | Some("*") => true,
        Some(p) => value == Some(p),
    }
}

fn pattern_matches(pattern: &str, event: &OpsEvent) -> bool {
    let Some(p) = parse_pattern(pattern) else {
        return false;
    };
    let (name, action) = match event.event.split_once('.') {
        Some((n, a)) => (n, Some(a)),
        None => (event.event.as_str(), None),
    };
    (p.name == "*" || p.name == name)
        && part_matches(p.action, action)
        && part_matches(p.conclusion, event.conclusion.as_deref())
}

impl RuleSpec {
    /// Checks every field; the first invalid one is named. Whether `source.source_id` is one
    /// of the organization's sources and the team one of its workspaces is the store's part.
    pub fn validate(&self) -> Result<(), RuleValidationError> {
        check_text("name".into(), &self.name)?;
        if self.name.chars().count() > MAX_NAME {
            return Err(invalid(
                "name",
                format!("longer than {MAX_NAME} characters"),
            ));
        }
        let Some(kind) = SourceKind::parse(&self.source.kind) else {
            return Err(invalid(
                "source.kind",
                "must be github, alertmanager or pagerduty",
            ));
        };
        if kind == SourceKind::Github && self.source.source_id.is_some() {
            return Err(invalid(
                "source.source_id",
                "GitHub events come through the GitHub App: leave it out",
            ));
        }
        for (list, name) in [
            (self.events.len(), "events"),
            (self.matchers.len(), "matchers"),
            (self.repositories.len(), "repositories"),
            (self.services.len(), "services"),
        ] {
            if list > MAX_LIST {
                return Err(invalid(name, format!("at most {MAX_LIST} entries")));
            }
        }
        for (i, e) in self.events.iter().enumerate() {
            let field = format!("events[{i}]");
            check_text(field.clone(), e)?;
            if parse_pattern(e).is_none() {
                return Err(invalid(
                    field,
                    "must be name[.action][/conclusion] in lower case (e.g. workflow_run.completed/failure, alert.firing)",
                ));
            }
        }
        for (i, m) in self.matchers.iter().enumerate() {
            check_text(format!("matchers[{i}].label"), &m.label)?;
            if m.value.chars().count() > MAX_ITEM || m.value.chars().any(char::is_control) {
                return Err(invalid(
                    format!("matchers[{i}].value"),
                    format!("at most {MAX_ITEM} characters, no control characters"),
                ));
            }
        }
        for (i, r) in self.repositories.iter().enumerate() {
            let field = format!("repositories[{i}]");
            check_text(field.clone(), r)?;
            let parts: Vec<&str> = r.split('/').collect();
            if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
                return Err(invalid(field, "must be owner/name"));
            }
        }
        if !self.repositories.is_empty() && kind != SourceKind::Github {
            return Err(invalid(
                "repositories",
                "only GitHub events have repositories",
            ));
        }
        for (i, s) in self.services.iter().enumerate() {
            check_text(format!("services[{i}]"), s)?;
        }
        check_slack_id("slack.team_id", &self.slack.team_id, &['T', 'E'])?;
        check_slack_id("slack.channel_id", &self.slack.channel_id, &['C', 'G'])?;
        Ok(())
    }

    /// The source kind (after [`Self::validate`]).
    pub fn source_kind(&self) -> Option<SourceKind> {
        SourceKind::parse(&self.source.kind)
    }
}

/// A stored rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRule {
    pub id: uuid::Uuid,
    pub organization_id: uuid::Uuid,
    #[serde(flatten)]
    pub spec: RuleSpec,
}

impl EventRule {
    /// Whether `event` goes to this rule's channel. `has_message`: a message for the event's
    /// thing is already in the channel, so the event updates it whatever its type (a re-run
    /// updates the failure's message, a resolved alert the firing one); source, repositories,
    /// services and matchers still apply.
    pub fn matches(&self, event: &OpsEvent, has_message: bool) -> bool {
        let spec = &self.spec;
        if !spec.enabled || spec.source_kind() != Some(event.source) {
            return false;
        }
        if let Some(id) = spec.source.source_id
            && event.source_id != Some(id)
        {
            return false;
        }
        if !spec.repositories.is_empty()
            && !event
                .repository
                .as_ref()
                .is_some_and(|r| spec.repositories.iter().any(|x| x.eq_ignore_ascii_case(r)))
        {
            return false;
        }
        if !spec.services.is_empty()
            && !event
                .service
                .as_ref()
                .is_some_and(|s| spec.services.contains(s))
        {
            return false;
        }
        if !spec.matchers.iter().all(|m| m.matches(event)) {
            return false;
        }
        has_message
            || spec.events.is_empty()
            || spec.events.iter().any(|p| pattern_matches(p, event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::model::Tone;
    use std::collections::BTreeMap;

    fn event(name: &str, conclusion: Option<&str>) -> OpsEvent {
        OpsEvent {
            source: SourceKind::Github,
            source_id: None,
            event: name.into(),
            conclusion: conclusion.map(Into::into),
            thing_key: "t".into(),
            title: "t".into(),
            status: "s".into(),
            tone: Tone::Info,
            severity: None,
            repository: Some("o/r".into()),
            service: None,
            links: vec![],
            fields: vec![],
            labels: BTreeMap::new(),
            occurred_at: None,
            description: String::new(),
        }
    }

    fn rule(events: &[&str]) -> EventRule {
        EventRule {
            id: uuid::Uuid::nil(),
            organization_id: uuid::Uuid::nil(),
            spec: RuleSpec {
                name: "r".into(),
                enabled: true,
                source: RuleSource {
                    kind: "github".into(),
                    source_id: None,
                },
                events: events.iter().map(|s| (*s).to_owned()).collect(),
                slack: SlackTarget {
                    team_id: "T1".into(),
                    channel_id: "C1".into(),
                },
                ..RuleSpec::default()
            },
        }
    }

    #[test]
    fn patterns_match_event_action_and_conclusion() {
        let r = rule(&[
            "workflow_run.completed/failure",
            "deployment_status/failure",
        ]);
        assert!(r.matches(&event("workflow_run.completed", Some("failure")), false));
        assert!(!r.matches(&event("workflow_run.completed", Some("success")), false));
        assert!(!r.matches(&event("workflow_run.requested", None), false));
        assert!(
            r.matches(&event("workflow_run.requested", None), true),
            "an update of a posted thing"
        );
        assert!(r.matches(&event("deployment_status.created", Some("failure")), false));
        assert!(rule(&["pull_request.merged"]).matches(&event("pull_request.merged", None), false));
        assert!(rule(&[]).matches(&event("release.published", None), false));
        let mut other_repo = rule(&[]);
        other_repo.spec.repositories = vec!["x/y".into()];
        assert!(!other_repo.matches(&event("release.published", None), true));
    }

    #[test]
    fn matchers_compare_labels_and_severity() {
        let mut e = event("alert.firing", None);
        e.source = SourceKind::Alertmanager;
        e.severity = Some("critical".into());
        e.labels.insert("env".into(), "prod".into());
        let mut r = rule(&["alert.firing"]);
        r.spec.source.kind = "alertmanager".into();
        r.spec.matchers = vec![
            LabelMatcher {
                label: "severity".into(),
                op: MatchOp::Eq,
                value: "critical".into(),
            },
            LabelMatcher {
                label: "env".into(),
                op: MatchOp::Ne,
                value: "dev".into(),
            },
        ];
        assert!(r.matches(&e, false));
        e.labels.insert("env".into(), "dev".into());
        assert!(!r.matches(&e, false));
    }

    #[test]
    fn validation_names_the_field() {
        let mut spec = rule(&["workflow_run.completed/failure"]).spec;
        assert_eq!(spec.validate(), Ok(()));
        spec.events.push("Not A Pattern".into());
        assert_eq!(spec.validate().unwrap_err().field, "events[1]");
        spec.events.pop();
        spec.slack.channel_id = "#ops".into();
        assert_eq!(spec.validate().unwrap_err().field, "slack.channel_id");
        spec.slack.channel_id = "C1".into();
        spec.source.kind = "gitlab".into();
        assert_eq!(spec.validate().unwrap_err().field, "source.kind");
        spec.source.kind = "github".into();
        spec.name = " ".into();
        assert_eq!(spec.validate().unwrap_err().field, "name");
    }
}
