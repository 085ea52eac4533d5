//! Turns a verified GitHub webhook payload into a small, uniform record
//! ([`NormalizedEvent`]) for storage and routing, plus typed views of the installation
//! lifecycle events ([`InstallationChange`], [`RepositoriesChange`]).
//!
//! The event name comes from the `X-GitHub-Event` header. Known events must carry the object
//! they are about (`pull_request`, `issue`, `workflow_run`, ...) or normalization fails with a
//! clear reason; anything else is optional. Unknown event names are not errors: they become
//! [`Normalized::Ignored`] so the delivery can be acknowledged.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value, json};

// The records the integrations store keeps; defined there so the store never imports this slice.
pub use crate::integrations::providers::{NormalizedEvent, RepoRef};

/// Events [`normalize`] understands.
pub const SUPPORTED_EVENTS: &[&str] = &[
    "push",
    "pull_request",
    "issues",
    "issue_comment",
    "workflow_run",
    "workflow_job",
    "check_run",
    "check_suite",
    "release",
    "ping",
    "installation",
    "installation_repositories",
    "create",
    "delete",
    "repository",
    "deployment",
    "deployment_status",
    "star",
];

/// Why a payload could not be normalized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    /// The body is not JSON.
    #[error("github payload is not valid JSON: {0}")]
    InvalidJson(String),
    /// The payload is JSON but not an object (for example `null`).
    #[error("github {event} payload must be a JSON object, got {found}")]
    NotAnObject {
        event: String,
        /// The JSON type found.
        found: &'static str,
    },
    /// The event name header is empty.
    #[error("github event name is empty")]
    MissingEventName,
    /// A field the event must have is absent or has the wrong type.
    #[error("github {event} payload lacks {field}")]
    MissingField {
        event: String,
        /// Dotted path of the field.
        field: &'static str,
    },
    /// A lifecycle extractor was given another event.
    #[error("expected a {expected} event, got {actual}")]
    WrongEvent {
        /// The event the extractor handles.
        expected: &'static str,
        /// The event given.
        actual: String,
    },
}

/// Result of [`normalize`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Normalized {
    /// A supported event.
    Event(Box<NormalizedEvent>),
    /// An event this service does not handle; acknowledge and store nothing else.
    Ignored(String),
}

/// Typed view of an `installation` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum InstallationChange {
    /// The app was installed.
    Created {
        /// `installation.id`
        installation_id: i64,
        /// `installation.account.login`
        account_login: String,
        /// `installation.account.type` (`User`, `Organization`)
        account_type: String,
        /// `installation.permissions` (permission → `read`/`write`)
        permissions: BTreeMap<String, String>,
        /// Repositories granted at install time (empty when all repositories are selected
        /// and GitHub did not list them).
        repositories: Vec<RepoRef>,
    },
    /// The app was uninstalled.
    Deleted {
        /// `installation.id`
        installation_id: i64,
        /// `installation.account.login`
        account_login: String,
    },
    /// The installation was suspended (`action: suspend`).
    Suspended {
        /// `installation.id`
        installation_id: i64,
    },
    /// The installation was unsuspended (`action: unsuspend`).
    Unsuspended {
        /// `installation.id`
        installation_id: i64,
    },
    /// The account accepted new permissions.
    NewPermissionsAccepted {
        /// `installation.id`
        installation_id: i64,
        /// The permissions now granted.
        permissions: BTreeMap<String, String>,
    },
    /// An action GitHub may add later; logged and otherwise ignored.
    Other {
        /// `installation.id`
        installation_id: i64,
        action: String,
    },
}

/// Typed view of an `installation_repositories` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepositoriesChange {
    /// `installation.id`
    pub installation_id: i64,
    /// `repositories_added`
    pub added: Vec<RepoRef>,
    /// `repositories_removed`
    pub removed: Vec<RepoRef>,
    /// `repository_selection` (`all` or `selected`)
    pub repository_selection: Option<String>,
}

/// Parses a raw body and normalizes it (see [`normalize`]).
pub fn normalize_bytes(event_name: &str, raw_body: &[u8]) -> Result<Normalized, NormalizeError> {
    let payload: Value =
        serde_json::from_slice(raw_body).map_err(|e| NormalizeError::InvalidJson(e.to_string()))?;
    normalize(event_name, &payload)
}

/// Normalizes a payload for the event named in `X-GitHub-Event`.
pub fn normalize(event_name: &str, payload: &Value) -> Result<Normalized, NormalizeError> {
    let event = event_name.trim();
    if event.is_empty() {
        return Err(NormalizeError::MissingEventName);
    }
    let root = as_object(event, payload)?;
    if !SUPPORTED_EVENTS.contains(&event) {
        return Ok(Normalized::Ignored(format!(
            "github event {event:?} is not handled"
        )));
    }
    let p = Payload { event, root };
    // SUPPORTED_EVENTS and the match in `details` list the same names; keep them in step.
    let Some(details) = details(&p, payload)? else {
        return Ok(Normalized::Ignored(format!(
            "github event {event:?} is not handled"
        )));
    };
    Ok(Normalized::Event(Box::new(NormalizedEvent {
        event: event.to_owned(),
        action: str_at(payload, &["action"]),
        installation_id: i64_at(payload, &["installation", "id"]),
        repository: str_at(payload, &["repository", "full_name"]),
        actor: str_at(payload, &["sender", "login"]),
        git_ref: details.git_ref,
        number: details.number,
        title: details.title,
        state: details.state,
        conclusion: details.conclusion,
        summary: details.summary,
    })))
}

/// The event-specific fields of a [`NormalizedEvent`]; each event fills in what it has.
struct Details {
    git_ref: Option<String>,
    number: Option<i64>,
    title: Option<String>,
    state: Option<String>,
    conclusion: Option<String>,
    summary: Value,
}

impl Details {
    fn new(summary: Value) -> Self {
        Self {
            git_ref: None,
            number: None,
            title: None,
            state: None,
            conclusion: None,
            summary,
        }
    }
}

/// The event-specific fields, or `None` for an event this module does not handle.
fn details(p: &Payload<'_>, payload: &Value) -> Result<Option<Details>, NormalizeError> {
    let details = match p.event {
        "push" => push(p, payload)?,
        "pull_request" => pull_request(p, payload)?,
        "issues" => issues(p)?,
        "issue_comment" => issue_comment(p)?,
        "workflow_run" => workflow_run(p, payload)?,
        "workflow_job" => workflow_job(p)?,
        "check_run" => check_run(p)?,
        "check_suite" => check_suite(p)?,
        "release" => release(p)?,
        "ping" => ping(payload),
        "installation" => installation(p, payload)?,
        "installation_repositories" => installation_repositories(p, payload)?,
        "create" | "delete" => ref_created_or_deleted(p, payload)?,
        "repository" => repository(p, payload)?,
        "deployment" => deployment(p)?,
        "deployment_status" => deployment_status(p)?,
        "star" => star(p, payload)?,
        _ => return Ok(None),
    };
    Ok(Some(details))
}

fn push(p: &Payload<'_>, payload: &Value) -> Result<Details, NormalizeError> {
    p.require_str("ref", &["ref"])?;
    Ok(Details {
        git_ref: str_at(payload, &["ref"]),
        ..Details::new(json!({
            "before": payload.get("before"),
            "after": payload.get("after"),
            "created": payload.get("created"),
            "deleted": payload.get("deleted"),
            "forced": payload.get("forced"),
            "commit_count": payload.get("commits").and_then(Value::as_array).map(Vec::len),
            "head_commit_message": payload.pointer("/head_commit/message"),
            "compare": payload.get("compare"),
        }))
    })
}

fn pull_request(p: &Payload<'_>, payload: &Value) -> Result<Details, NormalizeError> {
    let pr = p.require_object("pull_request", "pull_request")?;
    Ok(Details {
        number: i64_at(payload, &["number"]).or_else(|| i64_at(pr, &["number"])),
        title: str_at(pr, &["title"]),
        state: str_at(pr, &["state"]),
        git_ref: str_at(pr, &["head", "ref"]),
        ..Details::new(json!({
            "url": pr.get("html_url"),
            "base_ref": pr.pointer("/base/ref"),
            "head_sha": pr.pointer("/head/sha"),
            "draft": pr.get("draft"),
            "merged": pr.get("merged"),
            "author": pr.pointer("/user/login"),
        }))
    })
}

fn issues(p: &Payload<'_>) -> Result<Details, NormalizeError> {
    let issue = p.require_object("issue", "issue")?;
    Ok(Details {
        number: i64_at(issue, &["number"]),
        title: str_at(issue, &["title"]),
        state: str_at(issue, &["state"]),
        ..Details::new(json!({
            "url": issue.get("html_url"),
            "author": issue.pointer("/user/login"),
            "is_pull_request": issue.get("pull_request").is_some(),
        }))
    })
}

fn issue_comment(p: &Payload<'_>) -> Result<Details, NormalizeError> {
    let issue = p.require_object("issue", "issue")?;
    let comment = p.require_object("comment", "comment")?;
    Ok(Details {
        number: i64_at(issue, &["number"]),
        title: str_at(issue, &["title"]),
        state: str_at(issue, &["state"]),
        ..Details::new(json!({
            "comment_id": comment.get("id"),
            "comment_url": comment.get("html_url"),
            "comment_author": comment.pointer("/user/login"),
            "is_pull_request": issue.get("pull_request").is_some(),
        }))
    })
}

fn workflow_run(p: &Payload<'_>, payload: &Value) -> Result<Details, NormalizeError> {
    let run = p.require_object("workflow_run", "workflow_run")?;
    Ok(Details {
        number: i64_at(run, &["run_number"]),
        title: first_non_empty(&[str_at(run, &["name"]), str_at(run, &["display_title"])]),
        state: str_at(run, &["status"]),
        conclusion: str_at(run, &["conclusion"]),
        git_ref: str_at(run, &["head_branch"]),
        ..Details::new(json!({
            "run_id": run.get("id"),
            "url": run.get("html_url"),
            "head_sha": run.get("head_sha"),
            "display_title": run.get("display_title"),
            "event": run.get("event"),
            "workflow": payload.pointer("/workflow/name"),
        }))
    })
}

fn workflow_job(p: &Payload<'_>) -> Result<Details, NormalizeError> {
    let job = p.require_object("workflow_job", "workflow_job")?;
    Ok(Details {
        title: str_at(job, &["name"]),
        state: str_at(job, &["status"]),
        conclusion: str_at(job, &["conclusion"]),
        git_ref: str_at(job, &["head_branch"]),
        ..Details::new(json!({
            "job_id": job.get("id"),
            "run_id": job.get("run_id"),
            "url": job.get("html_url"),
            "head_sha": job.get("head_sha"),
            "workflow_name": job.get("workflow_name"),
            "runner_name": job.get("runner_name"),
        }))
    })
}

fn check_run(p: &Payload<'_>) -> Result<Details, NormalizeError> {
    let run = p.require_object("check_run", "check_run")?;
    Ok(Details {
        title: str_at(run, &["name"]),
        state: str_at(run, &["status"]),
        conclusion: str_at(run, &["conclusion"]),
        git_ref: str_at(run, &["check_suite", "head_branch"]),
        ..Details::new(json!({
            "check_run_id": run.get("id"),
            "url": run.get("html_url"),
            "head_sha": run.get("head_sha"),
            "app": run.pointer("/app/slug"),
        }))
    })
}

fn check_suite(p: &Payload<'_>) -> Result<Details, NormalizeError> {
    let suite = p.require_object("check_suite", "check_suite")?;
    Ok(Details {
        title: str_at(suite, &["app", "name"]),
        state: str_at(suite, &["status"]),
        conclusion: str_at(suite, &["conclusion"]),
        git_ref: str_at(suite, &["head_branch"]),
        ..Details::new(json!({
            "check_suite_id": suite.get("id"),
            "head_sha": suite.get("head_sha"),
            "app": suite.pointer("/app/slug"),
        }))
    })
}

fn release(p: &Payload<'_>) -> Result<Details, NormalizeError> {
    let release = p.require_object("release", "release")?;
    let tag = str_at(release, &["tag_name"]);
    Ok(Details {
        title: first_non_empty(&[str_at(release, &["name"]), tag.clone()]),
        git_ref: tag,
        ..Details::new(json!({
            "release_id": release.get("id"),
            "url": release.get("html_url"),
            "draft": release.get("draft"),
            "prerelease": release.get("prerelease"),
        }))
    })
}

fn ping(payload: &Value) -> Details {
    Details::new(json!({
        "zen": payload.get("zen"),
        "hook_id": payload.get("hook_id"),
        "hook_type": payload.pointer("/hook/type"),
        "app_id": payload.pointer("/hook/app_id"),
    }))
}

fn installation(p: &Payload<'_>, payload: &Value) -> Result<Details, NormalizeError> {
    p.require_object("installation", "installation")?;
    p.require_i64("installation.id", &["installation", "id"])?;
    Ok(Details::new(json!({
        "account": payload.pointer("/installation/account/login"),
        "account_type": payload.pointer("/installation/account/type"),
        "repository_selection": payload.pointer("/installation/repository_selection"),
        "repository_count": payload.get("repositories").and_then(Value::as_array).map(Vec::len),
    })))
}

fn installation_repositories(p: &Payload<'_>, payload: &Value) -> Result<Details, NormalizeError> {
    p.require_i64("installation.id", &["installation", "id"])?;
    Ok(Details::new(json!({
        "account": payload.pointer("/installation/account/login"),
        "repository_selection": payload.get("repository_selection"),
        "added": repo_names(payload.get("repositories_added")),
        "removed": repo_names(payload.get("repositories_removed")),
    })))
}

/// `create` and `delete` (a branch or tag).
fn ref_created_or_deleted(p: &Payload<'_>, payload: &Value) -> Result<Details, NormalizeError> {
    p.require_str("ref", &["ref"])?;
    Ok(Details {
        git_ref: str_at(payload, &["ref"]),
        ..Details::new(json!({
            "ref_type": payload.get("ref_type"),
            "pusher_type": payload.get("pusher_type"),
        }))
    })
}

fn repository(p: &Payload<'_>, payload: &Value) -> Result<Details, NormalizeError> {
    let repo = p.require_object("repository", "repository")?;
    Ok(Details::new(json!({
        "url": repo.get("html_url"),
        "private": repo.get("private"),
        "default_branch": repo.get("default_branch"),
        "changes": payload.get("changes"),
    })))
}

fn deployment(p: &Payload<'_>) -> Result<Details, NormalizeError> {
    let deployment = p.require_object("deployment", "deployment")?;
    Ok(Details {
        git_ref: str_at(deployment, &["ref"]),
        title: str_at(deployment, &["environment"]),
        ..Details::new(json!({
            "deployment_id": deployment.get("id"),
            "environment": deployment.get("environment"),
            "task": deployment.get("task"),
            "sha": deployment.get("sha"),
        }))
    })
}

fn deployment_status(p: &Payload<'_>) -> Result<Details, NormalizeError> {
    let status = p.require_object("deployment_status", "deployment_status")?;
    let deployment = p.require_object("deployment", "deployment")?;
    Ok(Details {
        git_ref: str_at(deployment, &["ref"]),
        title: str_at(status, &["environment"]).or_else(|| str_at(deployment, &["environment"])),
        state: str_at(status, &["state"]),
        ..Details::new(json!({
            "deployment_id": deployment.get("id"),
            "deployment_status_id": status.get("id"),
            "environment": status.get("environment"),
            "target_url": status.get("target_url"),
            "description": status.get("description"),
        }))
    })
}

fn star(p: &Payload<'_>, payload: &Value) -> Result<Details, NormalizeError> {
    p.require_object("repository", "repository")?;
    Ok(Details::new(
        json!({ "starred_at": payload.get("starred_at") }),
    ))
}

/// Typed view of an `installation` event payload.
pub fn installation_change(
    event_name: &str,
    payload: &Value,
) -> Result<InstallationChange, NormalizeError> {
    if event_name != "installation" {
        return Err(NormalizeError::WrongEvent {
            expected: "installation",
            actual: event_name.to_owned(),
        });
    }
    let root = as_object(event_name, payload)?;
    let p = Payload {
        event: event_name,
        root,
    };
    let action = p.require_str("action", &["action"])?;
    let installation_id = p.require_i64("installation.id", &["installation", "id"])?;
    let account_login = || {
        p.require_str(
            "installation.account.login",
            &["installation", "account", "login"],
        )
    };
    let permissions = || permissions(payload.pointer("/installation/permissions"));
    Ok(match action.as_str() {
        "created" => InstallationChange::Created {
            installation_id,
            account_login: account_login()?,
            account_type: p.require_str(
                "installation.account.type",
                &["installation", "account", "type"],
            )?,
            permissions: permissions(),
            repositories: repo_refs(event_name, payload.get("repositories"), "repositories")?,
        },
        "deleted" => InstallationChange::Deleted {
            installation_id,
            account_login: account_login()?,
        },
        "suspend" => InstallationChange::Suspended { installation_id },
        "unsuspend" => InstallationChange::Unsuspended { installation_id },
        "new_permissions_accepted" => InstallationChange::NewPermissionsAccepted {
            installation_id,
            permissions: permissions(),
        },
        _ => InstallationChange::Other {
            installation_id,
            action,
        },
    })
}

/// Typed view of an `installation_repositories` event payload.
pub fn repositories_change(
    event_name: &str,
    payload: &Value,
) -> Result<RepositoriesChange, NormalizeError> {
    if event_name != "installation_repositories" {
        return Err(NormalizeError::WrongEvent {
            expected: "installation_repositories",
            actual: event_name.to_owned(),
        });
    }
    let root = as_object(event_name, payload)?;
    let p = Payload {
        event: event_name,
        root,
    };
    Ok(RepositoriesChange {
        installation_id: p.require_i64("installation.id", &["installation", "id"])?,
        added: repo_refs(
            event_name,
            payload.get("repositories_added"),
            "repositories_added",
        )?,
        removed: repo_refs(
            event_name,
            payload.get("repositories_removed"),
            "repositories_removed",
        )?,
        repository_selection: str_at(payload, &["repository_selection"]),
    })
}

struct Payload<'a> {
    event: &'a str,
    root: &'a Map<String, Value>,
}

impl<'a> Payload<'a> {
    fn missing(&self, field: &'static str) -> NormalizeError {
        NormalizeError::MissingField {
            event: self.event.to_owned(),
            field,
        }
    }

    fn require_object(&self, field: &'static str, key: &str) -> Result<&'a Value, NormalizeError> {
        self.root
            .get(key)
            .filter(|v| v.is_object())
            .ok_or_else(|| self.missing(field))
    }

    fn require_str(&self, field: &'static str, path: &[&str]) -> Result<String, NormalizeError> {
        let root = self.root;
        walk_map(root, path)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| self.missing(field))
    }

    fn require_i64(&self, field: &'static str, path: &[&str]) -> Result<i64, NormalizeError> {
        walk_map(self.root, path)
            .and_then(Value::as_i64)
            .ok_or_else(|| self.missing(field))
    }
}

fn as_object<'a>(
    event: &str,
    payload: &'a Value,
) -> Result<&'a Map<String, Value>, NormalizeError> {
    payload
        .as_object()
        .ok_or_else(|| NormalizeError::NotAnObject {
            event: event.to_owned(),
            found: json_type(payload),
        })
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn walk_map<'a>(root: &'a Map<String, Value>, path: &[&str]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut current = root.get(*first)?;
    for key in rest {
        current = current.get(*key)?;
    }
    Some(current)
}

fn walk<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

fn str_at(value: &Value, path: &[&str]) -> Option<String> {
    walk(value, path).and_then(Value::as_str).map(str::to_owned)
}

fn i64_at(value: &Value, path: &[&str]) -> Option<i64> {
    walk(value, path).and_then(Value::as_i64)
}

fn first_non_empty(candidates: &[Option<String>]) -> Option<String> {
    candidates.iter().flatten().find(|s| !s.is_empty()).cloned()
}

fn repo_names(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .map(|repos| {
            repos
                .iter()
                .filter_map(|r| r.get("full_name").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn repo_refs(
    event: &str,
    list: Option<&Value>,
    field: &'static str,
) -> Result<Vec<RepoRef>, NormalizeError> {
    let missing = || NormalizeError::MissingField {
        event: event.to_owned(),
        field,
    };
    match list {
        // GitHub omits the list (or sends null) when every repository is selected.
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(repos)) => repos
            .iter()
            .map(|r| {
                Ok(RepoRef {
                    id: r.get("id").and_then(Value::as_i64).ok_or_else(missing)?,
                    full_name: r
                        .get("full_name")
                        .and_then(Value::as_str)
                        .ok_or_else(missing)?
                        .to_owned(),
                    private: r
                        .get("private")
                        .and_then(Value::as_bool)
                        .ok_or_else(missing)?,
                })
            })
            .collect(),
        Some(_) => Err(missing()),
    }
}

fn permissions(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}
