//! Payload → [`OpsEvent`]: GitHub deliveries (the events worth a message), Alertmanager
//! notifications (webhook payload version 4) and PagerDuty v3 webhook events.
//!
//! Parsing is lenient about optional fields and strict about the ones an event cannot be
//! shown without; a payload missing them is refused with the field's path.

use std::collections::BTreeMap;

use serde_json::Value;

use super::model::{Link, OpsEvent, SourceKind, Tone};

/// Why a payload cannot become an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    /// A field the event needs is absent or of the wrong type.
    #[error("{origin} payload lacks {field}")]
    Missing {
        origin: &'static str,
        /// Dotted path.
        field: &'static str,
    },
    /// A field has a value this service does not know.
    #[error("{origin} payload: {field} is {value:?}, expected {expected}")]
    Unexpected {
        origin: &'static str,
        field: &'static str,
        value: String,
        expected: &'static str,
    },
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().filter(|x| !x.is_empty())
}

fn n(v: &Value, path: &[&str]) -> Option<i64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_i64()
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// A workflow or check run's shown status (its conclusion once completed, else its status)
/// and its conclusion (only once completed).
fn completion(run: &Value) -> (String, Option<String>) {
    let status = s(run, &["status"]).unwrap_or("unknown");
    let conclusion = s(run, &["conclusion"])
        .filter(|_| status == "completed")
        .map(str::to_owned);
    (
        conclusion.clone().unwrap_or_else(|| status.to_owned()),
        conclusion,
    )
}

fn link(label: &str, url: Option<&str>) -> Option<Link> {
    url.filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .map(|u| Link {
            label: label.to_owned(),
            url: u.to_owned(),
        })
}

fn tone_of(outcome: &str) -> Tone {
    match outcome {
        "failure" | "failed" | "error" | "timed_out" | "startup_failure" | "cancelled"
        | "action_required" | "firing" | "triggered" => Tone::Bad,
        "success" | "resolved" | "merged" => Tone::Good,
        "queued" | "in_progress" | "pending" | "requested" | "waiting" | "acknowledged"
        | "inactive" => Tone::Pending,
        _ => Tone::Info,
    }
}

// ------------------------------------------------------------------------------ GitHub

/// The GitHub events that can reach a channel.
pub const GITHUB_ROUTED_EVENTS: &[&str] = &[
    "workflow_run",
    "check_run",
    "deployment_status",
    "pull_request",
    "release",
    "issues",
];

/// A GitHub delivery (`X-GitHub-Event` `name`, its payload, its delivery id) as an event, or
/// `None` for deliveries no rule can ask for (pushes, stars, installation changes...).
pub fn github(name: &str, payload: &Value, delivery: &str) -> Option<OpsEvent> {
    if !GITHUB_ROUTED_EVENTS.contains(&name) {
        return None;
    }
    let repo = s(payload, &["repository", "full_name"])?.to_owned();
    let action = s(payload, &["action"]).map(str::to_owned);
    let sender = s(payload, &["sender", "login"]).map(str::to_owned);
    let mut event = match &action {
        Some(a) => format!("{name}.{a}"),
        None => name.to_owned(),
    };
    let mut fields: Vec<(String, String)> = vec![("Repository".into(), repo.clone())];
    let mut links = Vec::new();
    let (thing, title, status, conclusion, occurred_at);
    match name {
        "workflow_run" => {
            let run = payload.get("workflow_run")?;
            let id = n(run, &["id"])?;
            let wf = s(run, &["name"]).unwrap_or("workflow");
            let branch = s(run, &["head_branch"]).unwrap_or("?");
            (status, conclusion) = completion(run);
            thing = format!("github:{repo}:workflow_run:{id}");
            title = format!("{wf} on {branch}: {status}");
            fields.push(("Workflow".into(), wf.to_owned()));
            fields.push(("Branch".into(), branch.to_owned()));
            if let Some(sha) = s(run, &["head_sha"]) {
                fields.push(("Commit".into(), sha.chars().take(7).collect()));
            }
            if let Some(attempt) = n(run, &["run_attempt"]) {
                fields.push(("Attempt".into(), attempt.to_string()));
            }
            links.extend(link("Workflow run", s(run, &["html_url"])));
            occurred_at = s(run, &["updated_at"]).map(str::to_owned);
        }
        "check_run" => {
            let check = payload.get("check_run")?;
            let id = n(check, &["id"])?;
            let check_name = s(check, &["name"]).unwrap_or("check");
            (status, conclusion) = completion(check);
            thing = format!("github:{repo}:check_run:{id}");
            title = format!("Check {check_name}: {status}");
            fields.push(("Check".into(), check_name.to_owned()));
            if let Some(sha) = s(check, &["head_sha"]) {
                fields.push(("Commit".into(), sha.chars().take(7).collect()));
            }
            links.extend(link("Check run", s(check, &["html_url"])));
            occurred_at = s(check, &["completed_at"])
                .or_else(|| s(check, &["started_at"]))
                .map(str::to_owned);
        }
        "deployment_status" => {
            let ds = payload.get("deployment_status")?;
            let state = s(ds, &["state"]).unwrap_or("unknown").to_owned();
            let deployment_id = n(payload, &["deployment", "id"]).or_else(|| n(ds, &["id"]))?;
            let env = s(ds, &["environment"])
                .or_else(|| s(payload, &["deployment", "environment"]))
                .unwrap_or("?");
            status = state.clone();
            conclusion = Some(state);
            thing = format!("github:{repo}:deployment:{deployment_id}");
            title = format!("Deployment to {env}: {status}");
            fields.push(("Environment".into(), env.to_owned()));
            if let Some(r) = s(payload, &["deployment", "ref"]) {
                fields.push(("Ref".into(), r.to_owned()));
            }
            if let Some(d) = s(ds, &["description"]) {
                fields.push(("Description".into(), d.to_owned()));
            }
            links.extend(link(
                "Logs",
                s(ds, &["log_url"]).or_else(|| s(ds, &["target_url"])),
            ));
            links.extend(link("Environment", s(ds, &["environment_url"])));
            occurred_at = s(ds, &["updated_at"]).map(str::to_owned);
        }
        "pull_request" => {
            let pr = payload.get("pull_request")?;
            let number = n(pr, &["number"]).or_else(|| n(payload, &["number"]))?;
            let merged = pr.get("merged").and_then(Value::as_bool) == Some(true);
            let act = action.clone().unwrap_or_default();
            status = if act == "closed" && merged {
                event = "pull_request.merged".to_owned();
                "merged".to_owned()
            } else {
                act
            };
            conclusion = None;
            thing = format!("github:{repo}:pull:{number}");
            title = format!(
                "PR #{number} {}: {status}",
                s(pr, &["title"]).unwrap_or_default()
            );
            if let Some(u) = s(pr, &["user", "login"]) {
                fields.push(("Author".into(), u.to_owned()));
            }
            if let Some(b) = s(pr, &["base", "ref"]) {
                fields.push(("Base".into(), b.to_owned()));
            }
            links.extend(link("Pull request", s(pr, &["html_url"])));
            occurred_at = s(pr, &["updated_at"]).map(str::to_owned);
        }
        "release" => {
            let rel = payload.get("release")?;
            let id = n(rel, &["id"])?;
            let tag = s(rel, &["tag_name"]).unwrap_or("?");
            status = action.clone().unwrap_or_default();
            conclusion = None;
            thing = format!("github:{repo}:release:{id}");
            title = format!("Release {tag}: {status}");
            fields.push(("Tag".into(), tag.to_owned()));
            links.extend(link("Release", s(rel, &["html_url"])));
            occurred_at = s(rel, &["published_at"])
                .or_else(|| s(rel, &["created_at"]))
                .map(str::to_owned);
        }
        "issues" => {
            let issue = payload.get("issue")?;
            let number = n(issue, &["number"])?;
            status = action.clone().unwrap_or_default();
            conclusion = None;
            thing = format!("github:{repo}:issue:{number}");
            title = format!(
                "Issue #{number} {}: {status}",
                s(issue, &["title"]).unwrap_or_default()
            );
            links.extend(link("Issue", s(issue, &["html_url"])));
            occurred_at = s(issue, &["updated_at"]).map(str::to_owned);
        }
        _ => return None,
    }
    if let Some(sender) = &sender {
        fields.push(("By".into(), sender.clone()));
    }
    let description = format!(
        "GitHub {event} in {repo}: {title}. Delivery {delivery}.{}",
        links
            .first()
            .map(|l| format!(" {}: {}", l.label, l.url))
            .unwrap_or_default()
    );
    Some(OpsEvent {
        source: SourceKind::Github,
        source_id: None,
        event,
        tone: tone_of(&status),
        conclusion,
        thing_key: thing,
        title,
        status,
        severity: None,
        repository: Some(repo),
        service: None,
        links,
        fields,
        labels: BTreeMap::new(),
        occurred_at,
        description,
    })
}

// ------------------------------------------------------------------------ Alertmanager

const AM: &str = "alertmanager";

/// What deduplicates an Alertmanager notification: the group key, the status and the start
/// time of each alert (with its fingerprint), sorted. A repeat of the same notification
/// (Alertmanager's `repeat_interval`) is the same; an alert joining or leaving the group, or
/// the group resolving, is not. The route hashes it into the inbox's source id.
pub fn alertmanager_dedup_material(payload: &Value) -> Result<String, NormalizeError> {
    let group_key = s(payload, &["groupKey"]).ok_or(NormalizeError::Missing {
        origin: AM,
        field: "groupKey",
    })?;
    let status = s(payload, &["status"]).ok_or(NormalizeError::Missing {
        origin: AM,
        field: "status",
    })?;
    let alerts =
        payload
            .get("alerts")
            .and_then(Value::as_array)
            .ok_or(NormalizeError::Missing {
                origin: AM,
                field: "alerts",
            })?;
    let mut starts: Vec<String> = alerts
        .iter()
        .map(|a| {
            format!(
                "{}@{}:{}",
                s(a, &["fingerprint"]).unwrap_or_default(),
                s(a, &["startsAt"]).unwrap_or_default(),
                s(a, &["status"]).unwrap_or_default()
            )
        })
        .collect();
    starts.sort();
    Ok(format!("{group_key}\n{status}\n{}", starts.join(",")))
}

/// An Alertmanager notification (payload version 4) from `source_id`.
pub fn alertmanager(source_id: uuid::Uuid, payload: &Value) -> Result<OpsEvent, NormalizeError> {
    if let Some(version) = payload.get("version") {
        let v = version.as_str().unwrap_or_default();
        if v != "4" {
            return Err(NormalizeError::Unexpected {
                origin: AM,
                field: "version",
                value: version.to_string(),
                expected: "\"4\"",
            });
        }
    }
    let group_key = s(payload, &["groupKey"]).ok_or(NormalizeError::Missing {
        origin: AM,
        field: "groupKey",
    })?;
    let status = s(payload, &["status"]).ok_or(NormalizeError::Missing {
        origin: AM,
        field: "status",
    })?;
    if status != "firing" && status != "resolved" {
        return Err(NormalizeError::Unexpected {
            origin: AM,
            field: "status",
            value: status.to_owned(),
            expected: "firing or resolved",
        });
    }
    let alerts =
        payload
            .get("alerts")
            .and_then(Value::as_array)
            .ok_or(NormalizeError::Missing {
                origin: AM,
                field: "alerts",
            })?;
    let group_labels = string_map(payload.get("groupLabels"));
    let mut labels = string_map(payload.get("commonLabels"));
    labels.extend(group_labels.clone());
    let annotations = string_map(payload.get("commonAnnotations"));
    let first = alerts.first();
    let alertname = labels
        .get("alertname")
        .cloned()
        .or_else(|| {
            first
                .and_then(|a| s(a, &["labels", "alertname"]))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "Alert".to_owned());
    let firing = alerts
        .iter()
        .filter(|a| s(a, &["status"]) == Some("firing"))
        .count();
    let resolved = alerts.len() - firing;
    let truncated = n(payload, &["truncatedAlerts"]).unwrap_or(0);
    let summary = annotations.get("summary").cloned().or_else(|| {
        first
            .and_then(|a| s(a, &["annotations", "summary"]))
            .map(str::to_owned)
    });
    let title = match &summary {
        Some(sum) => format!("{alertname}: {sum}"),
        None => alertname.clone(),
    };
    let mut fields = vec![(
        "Alerts".to_owned(),
        format!("{firing} firing, {resolved} resolved"),
    )];
    if truncated > 0 {
        fields.push(("Truncated".into(), truncated.to_string()));
    }
    if !group_labels.is_empty() {
        fields.push((
            "Group".into(),
            group_labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    if let Some(r) = s(payload, &["receiver"]) {
        fields.push(("Receiver".into(), r.to_owned()));
    }
    if let Some(d) = annotations.get("description") {
        fields.push(("Description".into(), d.clone()));
    }
    let mut links = Vec::new();
    links.extend(link("Alertmanager", s(payload, &["externalURL"])));
    links.extend(link("Source", first.and_then(|a| s(a, &["generatorURL"]))));
    links.extend(link(
        "Runbook",
        annotations.get("runbook_url").map(String::as_str),
    ));
    let severity = labels.get("severity").cloned();
    let service = labels.get("service").or_else(|| labels.get("job")).cloned();
    let occurred_at = first.and_then(|a| s(a, &["startsAt"])).map(str::to_owned);
    let description = format!(
        "Alertmanager group {group_key} is {status}: {title} ({firing} firing, {resolved} resolved). Labels: {}.",
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(OpsEvent {
        source: SourceKind::Alertmanager,
        source_id: Some(source_id),
        event: format!("alert.{status}"),
        conclusion: None,
        thing_key: format!("alertmanager:{source_id}:{group_key}"),
        title,
        status: status.to_owned(),
        tone: tone_of(status),
        severity,
        repository: None,
        service,
        links,
        fields,
        labels,
        occurred_at,
        description,
    })
}

// --------------------------------------------------------------------------- PagerDuty

const PD: &str = "pagerduty";

/// The PagerDuty event types that reach a channel.
pub const PAGERDUTY_ROUTED_EVENTS: &[&str] = &[
    "incident.triggered",
    "incident.acknowledged",
    "incident.unacknowledged",
    "incident.resolved",
    "incident.reopened",
    "incident.escalated",
    "incident.reassigned",
    "incident.priority_updated",
    "incident.annotated",
];

/// `event.id` of a PagerDuty v3 webhook payload: what deduplicates it.
pub fn pagerduty_event_id(payload: &Value) -> Result<&str, NormalizeError> {
    s(payload, &["event", "id"]).ok_or(NormalizeError::Missing {
        origin: PD,
        field: "event.id",
    })
}

/// `event.event_type`.
pub fn pagerduty_event_type(payload: &Value) -> Result<&str, NormalizeError> {
    s(payload, &["event", "event_type"]).ok_or(NormalizeError::Missing {
        origin: PD,
        field: "event.event_type",
    })
}

/// A PagerDuty v3 webhook event from `source_id`, or `None` for event types that are not
/// about an incident (services, ...). `incident.annotated` carries the note in
/// [`OpsEvent::status`] `annotated` with the note as a field: the router merges it into the
/// incident's message.
pub fn pagerduty(
    source_id: uuid::Uuid,
    payload: &Value,
) -> Result<Option<OpsEvent>, NormalizeError> {
    let event_type = pagerduty_event_type(payload)?;
    pagerduty_event_id(payload)?;
    if !PAGERDUTY_ROUTED_EVENTS.contains(&event_type) {
        return Ok(None);
    }
    let ev = &payload["event"];
    let data = ev.get("data").ok_or(NormalizeError::Missing {
        origin: PD,
        field: "event.data",
    })?;
    let agent = s(ev, &["agent", "summary"]).map(str::to_owned);
    let occurred_at = s(ev, &["occurred_at"]).map(str::to_owned);
    let mut fields = Vec::new();
    let mut labels = BTreeMap::new();
    let (incident_id, title, status, url, service, severity);
    if event_type == "incident.annotated" {
        incident_id = s(data, &["incident", "id"]).ok_or(NormalizeError::Missing {
            origin: PD,
            field: "event.data.incident.id",
        })?;
        title = s(data, &["incident", "summary"])
            .unwrap_or("Incident")
            .to_owned();
        status = "annotated".to_owned();
        url = s(data, &["incident", "html_url"]);
        service = None;
        severity = None;
        fields.push((
            "Note".to_owned(),
            s(data, &["content"]).unwrap_or_default().to_owned(),
        ));
    } else {
        incident_id = s(data, &["id"]).ok_or(NormalizeError::Missing {
            origin: PD,
            field: "event.data.id",
        })?;
        let number = n(data, &["number"]);
        let t = s(data, &["title"]).unwrap_or("Incident");
        title = match number {
            Some(num) => format!("#{num} {t}"),
            None => t.to_owned(),
        };
        status = s(data, &["status"])
            .map(str::to_owned)
            .unwrap_or_else(|| event_type.trim_start_matches("incident.").to_owned());
        url = s(data, &["html_url"]);
        service = s(data, &["service", "summary"]).map(str::to_owned);
        severity = s(data, &["urgency"]).map(str::to_owned);
        if let Some(u) = &severity {
            labels.insert("urgency".to_owned(), u.clone());
            fields.push(("Urgency".into(), u.clone()));
        }
        if let Some(p) = s(data, &["priority", "summary"]) {
            labels.insert("priority".to_owned(), p.to_owned());
            fields.push(("Priority".into(), p.to_owned()));
        }
        if let Some(svc) = &service {
            labels.insert("service".to_owned(), svc.clone());
            fields.push(("Service".into(), svc.clone()));
        }
        let assignees: Vec<&str> = data
            .get("assignees")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|x| s(x, &["summary"])).collect())
            .unwrap_or_default();
        if !assignees.is_empty() {
            fields.push(("Assigned".into(), assignees.join(", ")));
        }
    }
    if let Some(a) = &agent {
        fields.push(("By".into(), a.clone()));
    }
    let mut links = Vec::new();
    links.extend(link("Incident", url));
    let description = format!(
        "PagerDuty {event_type} for incident {incident_id}: {title} (status {status}).{}",
        url.map(|u| format!(" {u}")).unwrap_or_default()
    );
    Ok(Some(OpsEvent {
        source: SourceKind::Pagerduty,
        source_id: Some(source_id),
        event: event_type.to_owned(),
        conclusion: None,
        thing_key: format!("pagerduty:{source_id}:{incident_id}"),
        tone: tone_of(&status),
        title,
        status,
        severity,
        repository: None,
        service,
        links,
        fields,
        labels,
        occurred_at,
        description,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_failed_workflow_run_and_its_rerun_are_one_thing() {
        let failed = json!({"action": "completed", "repository": {"full_name": "o/r"},
            "workflow_run": {"id": 7, "name": "CI", "head_branch": "main", "status": "completed",
            "conclusion": "failure", "run_attempt": 1, "html_url": "https://github.com/o/r/actions/runs/7"}});
        let e = github("workflow_run", &failed, "d1").expect("routed");
        assert_eq!(e.event, "workflow_run.completed");
        assert_eq!(e.conclusion.as_deref(), Some("failure"));
        assert_eq!(e.tone, Tone::Bad);
        let rerun = json!({"action": "requested", "repository": {"full_name": "o/r"},
            "workflow_run": {"id": 7, "name": "CI", "head_branch": "main", "status": "queued",
            "conclusion": null, "run_attempt": 2}});
        let r = github("workflow_run", &rerun, "d2").expect("routed");
        assert_eq!(r.thing_key, e.thing_key);
        assert_eq!(r.conclusion, None);
        assert_eq!(r.status, "queued");
        assert!(github("push", &failed, "d3").is_none());
    }

    #[test]
    fn merged_pull_requests_have_their_own_event() {
        let pr = json!({"action": "closed", "repository": {"full_name": "o/r"},
            "pull_request": {"number": 3, "merged": true, "title": "x"}});
        assert_eq!(
            github("pull_request", &pr, "d").unwrap().event,
            "pull_request.merged"
        );
    }

    #[test]
    fn alertmanager_needs_its_fields_and_version_4() {
        let id = uuid::Uuid::nil();
        let err = alertmanager(id, &json!({"status": "firing", "alerts": []})).unwrap_err();
        assert_eq!(
            err,
            NormalizeError::Missing {
                origin: AM,
                field: "groupKey"
            }
        );
        let err = alertmanager(
            id,
            &json!({"version": "3", "groupKey": "g", "status": "firing", "alerts": []}),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            NormalizeError::Unexpected {
                field: "version",
                ..
            }
        ));
        let ok = alertmanager(
            id,
            &json!({"version": "4", "groupKey": "g", "status": "firing",
            "commonLabels": {"alertname": "Down", "severity": "critical"},
            "alerts": [{"status": "firing", "labels": {}, "startsAt": "2026-01-01T00:00:00Z"}]}),
        )
        .unwrap();
        assert_eq!(ok.event, "alert.firing");
        assert_eq!(ok.severity.as_deref(), Some("critical"));
    }

    #[test]
    fn alert_dedup_differs_by_status_and_alerts() {
        let a = json!({"groupKey": "g", "status": "firing", "alerts": [{"fingerprint": "f1", "startsAt": "t1", "status": "firing"}]});
        let b = json!({"groupKey": "g", "status": "resolved", "alerts": [{"fingerprint": "f1", "startsAt": "t1", "status": "resolved"}]});
        let c = json!({"groupKey": "g", "status": "firing", "alerts": [{"fingerprint": "f1", "startsAt": "t1", "status": "firing"}, {"fingerprint": "f2", "startsAt": "t2", "status": "firing"}]});
        let da = alertmanager_dedup_material(&a).unwrap();
        assert_eq!(da, alertmanager_dedup_material(&a.clone()).unwrap());
        assert_ne!(da, alertmanager_dedup_material(&b).unwrap());
        assert_ne!(da, alertmanager_dedup_material(&c).unwrap());
    }
}
