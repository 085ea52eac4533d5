//! What the provider-neutral integrations core knows about its providers: the connector type
//! names (the `integrations.connector_type` column) and the GitHub records the store keeps in
//! `github_events` and `github_repositories`. The provider slices produce these values
//! (`github::normalize` builds [`NormalizedEvent`]s); they live here so that the core never
//! imports a provider slice.

use serde::Serialize;
use serde_json::Value;

/// The Slack connector's type.
pub const SLACK: &str = "slack";
/// The GitHub App connector's type.
pub const GITHUB: &str = "github";

/// The facts every consumer wants from a delivery, whatever the event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NormalizedEvent {
    /// `X-GitHub-Event` (`pull_request`, `push`, ...).
    pub event: String,
    /// `action`, when the event has one.
    pub action: Option<String>,
    /// `installation.id` (GitHub App deliveries).
    pub installation_id: Option<i64>,
    /// `repository.full_name`.
    pub repository: Option<String>,
    /// `sender.login`.
    pub actor: Option<String>,
    /// The branch or tag concerned (push `ref`, PR head branch, run head branch, tag name...).
    pub git_ref: Option<String>,
    /// PR or issue number; run number for workflow runs.
    pub number: Option<i64>,
    /// PR/issue title, workflow/job/check name, release name or tag.
    pub title: Option<String>,
    /// PR/issue state, run/job/check status, deployment status state.
    pub state: Option<String>,
    /// Run/job/check conclusion.
    pub conclusion: Option<String>,
    /// A few more event-specific facts (URLs, SHAs, flags); an object, never null.
    pub summary: Value,
}

/// A repository as listed in installation events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepoRef {
    /// GitHub repository id.
    pub id: i64,
    /// `owner/name`.
    pub full_name: String,
    /// Whether it is private.
    pub private: bool,
}
