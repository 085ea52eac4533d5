//! The `GitHubWebhookStream` handler: one keyed worker per repository (installation-level
//! deliveries: per installation; see [`super::routing`]) handles its deliveries in order.
//!
//! * `installation`: created → the integration linked to the installation becomes active with
//!   the account facts and the granted repositories; deleted → revoked (credentials deleted,
//!   repositories removed); suspend/unsuspend → status.
//! * `installation_repositories`: repositories added/removed.
//! * Every supported event (including the two above) is stored once as a normalized row in
//!   `github_events` (idempotent on the delivery id).
//! * Unknown events → `ignored`.
//! * With event routing wired ([`GithubStreamHandler::with_events`]), deliveries of an
//!   installation linked to an organization go through its routing rules ([`GithubEvents`]).
//!
//! Each integration change writes its audit entry (actor `github`) in the change's
//! transaction, only when the row changed: a failed entry fails the delivery (retryable) with
//! nothing changed, and a redelivery that changes nothing records nothing.

use std::sync::Arc;

use async_trait::async_trait;
use infragpt_actors::audit::AuditEntry;
use infragpt_actors::group_commit::Batcher;
use infragpt_actors::inbox::InboundEvent;
use infragpt_actors::{EventHandler, HandleOutcome, HandlerError, StreamSpec};
use infragpt_actors::{HealthRegistry, kinds, sources};
use serde_json::json;

use super::normalize::{
    InstallationChange, NormalizeError, Normalized, installation_change, normalize,
    repositories_change,
};
use crate::db::StoreError;
use crate::github::app_client::GITHUB;
use crate::integrations::store::{GithubEventBatch, Integration, IntegrationStore, status};
use crate::integrations::vault::VaultRegistry;

/// Event routing, as the GitHub stream sees it (implemented by the events slice, which the
/// composition root plugs in; this slice does not depend on it).
#[async_trait]
pub trait GithubEvents: Send + Sync + 'static {
    /// Whether deliveries of `event_name` (`X-GitHub-Event`) can reach a channel.
    fn routes(&self, event_name: &str) -> bool;
    /// Routes the delivery `event` of `organization` through its rules.
    async fn route(
        &self,
        organization: uuid::Uuid,
        event_name: &str,
        event: &InboundEvent,
    ) -> Result<(), HandlerError>;
}

/// Name of the stream (router) in the actor tree.
pub(crate) const STREAM_NAME: &str = "github_webhooks";

/// The handler.
#[derive(Clone)]
pub struct GithubStreamHandler {
    store: IntegrationStore,
    vaults: Option<VaultRegistry>,
    events: Option<Arc<dyn GithubEvents>>,
    /// Stores the normalized rows of the deliveries handled together in one statement.
    event_rows: Batcher<GithubEventBatch>,
}

impl std::fmt::Debug for GithubStreamHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubStreamHandler")
            .finish_non_exhaustive()
    }
}

fn retryable(e: StoreError) -> HandlerError {
    HandlerError::retryable(e)
}

impl GithubStreamHandler {
    /// A handler writing (and auditing) through `store`; `vaults` (when given) has its cache
    /// dropped when an installation is deleted. Its event rows' writer shows in `health` as
    /// `supervisor/github_events` under the cluster's root. Needs a running actix system.
    pub fn new(
        store: IntegrationStore,
        vaults: Option<VaultRegistry>,
        health: &HealthRegistry,
    ) -> Self {
        let writer = health.register_supervisor("github_events");
        let event_rows = GithubEventBatch::start(store.pool().clone(), writer);
        Self {
            store,
            vaults,
            events: None,
            event_rows,
        }
    }

    /// Routes deliveries of linked installations through their organization's rules.
    pub fn with_events(mut self, events: Arc<dyn GithubEvents>) -> Self {
        self.events = Some(events);
        self
    }

    /// The stream registration for [`infragpt_actors::Cluster::register_stream`].
    pub fn stream_spec(self) -> StreamSpec {
        StreamSpec {
            name: STREAM_NAME.to_owned(),
            kind: kinds::GITHUB_WEBHOOK_STREAM,
            source: sources::GITHUB,
            handler: Arc::new(self),
        }
    }

    async fn installation(
        &self,
        change: InstallationChange,
    ) -> Result<Option<String>, HandlerError> {
        match change {
            InstallationChange::Created {
                installation_id,
                account_login,
                account_type,
                permissions,
                repositories,
            } => {
                self.store
                    .add_repositories(installation_id, &repositories)
                    .await
                    .map_err(retryable)?;
                let Some(integration) = self
                    .store
                    .find_by_external(GITHUB, &installation_id.to_string())
                    .await
                    .map_err(retryable)?
                else {
                    // The install callback (with our state) links it; it may come later.
                    return Ok(Some(format!(
                        "installation {installation_id} is not linked to an integration yet"
                    )));
                };
                let mut metadata = integration.metadata.clone();
                if let Some(obj) = metadata.as_object_mut() {
                    obj.insert("installation_id".into(), json!(installation_id));
                    obj.insert("account_login".into(), json!(account_login));
                    obj.insert("account_type".into(), json!(account_type));
                    obj.insert("permissions".into(), json!(permissions));
                }
                self.store
                    .activate(
                        integration.id,
                        &installation_id.to_string(),
                        &metadata,
                        |before, after| {
                            changed(before, after).then(|| {
                                entry(
                                    after,
                                    "integration.linked",
                                    json!({ "installation_id": installation_id }),
                                )
                            })
                        },
                    )
                    .await
                    .map_err(retryable)?;
                Ok(None)
            }
            InstallationChange::Deleted {
                installation_id, ..
            } => {
                self.store
                    .remove_all_repositories(installation_id)
                    .await
                    .map_err(retryable)?;
                let Some(integration) = self
                    .store
                    .find_by_external(GITHUB, &installation_id.to_string())
                    .await
                    .map_err(retryable)?
                else {
                    return Ok(Some(format!(
                        "installation {installation_id} has no integration"
                    )));
                };
                // Credentials deleted, status revoked and the entry in one transaction.
                self.store
                    .revoke(integration.id, |revoked| {
                        revoked.changed().then(|| {
                            entry(
                                &revoked.integration,
                                "integration.revoked",
                                json!({ "installation_id": installation_id, "reason": "installation.deleted" }),
                            )
                        })
                    })
                    .await
                    .map_err(retryable)?;
                if let Some(vaults) = &self.vaults {
                    vaults.invalidate(integration.organization_id, integration.id);
                }
                tracing::info!(installation_id, integration_id = %integration.id, "github installation deleted; integration revoked");
                Ok(None)
            }
            InstallationChange::Suspended { installation_id } => {
                self.set_status(installation_id, status::SUSPENDED).await
            }
            InstallationChange::Unsuspended { installation_id } => {
                self.set_status(installation_id, status::ACTIVE).await
            }
            InstallationChange::NewPermissionsAccepted {
                installation_id,
                permissions,
            } => {
                if let Some(integration) = self
                    .store
                    .find_by_external(GITHUB, &installation_id.to_string())
                    .await
                    .map_err(retryable)?
                {
                    self.store
                        .merge_metadata(integration.id, &json!({ "permissions": permissions }))
                        .await
                        .map_err(retryable)?;
                }
                Ok(None)
            }
            InstallationChange::Other {
                installation_id,
                action,
            } => {
                tracing::info!(installation_id, %action, "unhandled installation action");
                Ok(None)
            }
        }
    }

    async fn set_status(
        &self,
        installation_id: i64,
        new_status: &str,
    ) -> Result<Option<String>, HandlerError> {
        let Some(integration) = self
            .store
            .find_by_external(GITHUB, &installation_id.to_string())
            .await
            .map_err(retryable)?
        else {
            return Ok(Some(format!(
                "installation {installation_id} has no integration"
            )));
        };
        if integration.status == status::REVOKED {
            return Ok(Some("integration is revoked".to_owned()));
        }
        self.store
            .set_status_audited(integration.id, new_status, |before, after| {
                (before.status != after.status).then(|| {
                    entry(
                        after,
                        &format!("integration.{new_status}"),
                        json!({ "installation_id": installation_id }),
                    )
                })
            })
            .await
            .map_err(retryable)?;
        Ok(None)
    }
}

/// An entry of a change GitHub made to `integration`.
fn entry(integration: &Integration, action: &str, details: serde_json::Value) -> AuditEntry {
    AuditEntry {
        organization_id: Some(integration.organization_id),
        actor: "github".to_owned(),
        action: action.to_owned(),
        target: Some(integration.id.to_string()),
        details,
    }
}

/// Whether an activation changed the row (a redelivered `installation.created` does not).
fn changed(before: &Integration, after: &Integration) -> bool {
    before.status != after.status
        || before.external_id != after.external_id
        || before.metadata != after.metadata
}

fn permanent(e: NormalizeError) -> HandlerError {
    HandlerError::permanent(e)
}

#[async_trait]
impl EventHandler for GithubStreamHandler {
    async fn handle(&self, event: &InboundEvent) -> Result<HandleOutcome, HandlerError> {
        let name = event.kind.split('.').next().unwrap_or_default();
        let normalized = match normalize(name, &event.payload).map_err(permanent)? {
            Normalized::Event(e) => e,
            Normalized::Ignored(reason) => return Ok(HandleOutcome::Ignored(reason)),
        };
        let note = match name {
            "installation" => {
                let change = installation_change(name, &event.payload).map_err(permanent)?;
                self.installation(change).await?
            }
            "installation_repositories" => {
                let change = repositories_change(name, &event.payload).map_err(permanent)?;
                self.store
                    .add_repositories(change.installation_id, &change.added)
                    .await
                    .map_err(retryable)?;
                let removed: Vec<i64> = change.removed.iter().map(|r| r.id).collect();
                self.store
                    .remove_repositories(change.installation_id, &removed)
                    .await
                    .map_err(retryable)?;
                None
            }
            _ => None,
        };
        self.event_rows
            .submit((event.source_id.clone(), *normalized))
            .await
            .map_err(retryable)?;
        if let Some(note) = note {
            tracing::debug!(delivery_id = %event.source_id, %note, "github event stored");
        }
        if let Some(events) = &self.events
            && events.routes(name)
            && let Some(installation) = event
                .payload
                .get("installation")
                .and_then(|i| i.get("id"))
                .and_then(serde_json::Value::as_i64)
            && let Some(integration) = self
                .store
                .find_by_external(GITHUB, &installation.to_string())
                .await
                .map_err(retryable)?
            && integration.status != status::REVOKED
        {
            events
                .route(integration.organization_id, name, event)
                .await?;
        }
        Ok(HandleOutcome::Done)
    }
}
