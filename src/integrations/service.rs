//! The integration lifecycle (plain logic behind the REST routes): initiate with a signed
//! state, complete at the callback, list/get, validate live, refresh, delete (revoke at the
//! provider), and the GitHub event listing. Every change writes its audit entry in the
//! transaction of the change (through the store), so a change whose entry cannot be written
//! does not happen either.
//!
//! Provider calls cannot join a database transaction, so each one comes before the
//! transaction that records its outcome and is ordered so that a failed transaction leaves a
//! state the same request, retried, finishes:
//!
//! * callback: state consumed → provider exchange → one transaction (credentials replaced,
//!   integration active, `integration.connected`) → the connector's `after_stored`. A failed
//!   transaction leaves the integration as it was (pending, or its previous credentials); the
//!   user starts the install again (the state and the provider's code are single use).
//! * refresh: provider refresh → one transaction (credentials, `integration.refreshed`); see
//!   [`super::vault::OrgVault`] for what a failed transaction costs.
//! * delete: provider revocation (best effort) → one transaction (credentials deleted,
//!   integration revoked, `integration.deleted`). A failed transaction leaves the integration
//!   and its credentials as they were; deleting again revokes again and finishes.

use std::sync::Arc;

use chrono::Utc;
use infragpt_actors::audit::AuditEntry;
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use super::connector::{
    CallbackParams, ConnectorError, ConnectorRegistry, StoredAuthorization, Validation,
};
use super::principal::Principal;
use super::store::{GithubEventRow, Integration, IntegrationStore, status};
use super::vault::{CredentialError, CredentialStore, VaultRegistry};
use crate::crypto::state::{NonceLedger, StateClaims, StateError, StateSigner};
use crate::db::StoreError;

/// How long a state is accepted.
pub(crate) const STATE_TTL_MINUTES: i64 = 10;
/// Largest page of events.
pub(crate) const MAX_EVENTS_PAGE: i64 = 100;

/// Lifecycle failures, mapped to HTTP statuses by the routes.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Unknown connector type.
    #[error("unknown connector type {0:?}")]
    UnknownConnector(String),
    /// Not found in the caller's organization.
    #[error("integration not found")]
    NotFound,
    /// The organization already has a live integration of this type.
    #[error("a {connector_type} integration already exists ({id})")]
    Exists {
        /// Type.
        connector_type: String,
        /// The existing integration.
        id: Uuid,
    },
    /// The state is missing or for another connector.
    #[error("invalid state: {0}")]
    BadState(String),
    /// The state is forged, expired or replayed.
    #[error("invalid state: {0}")]
    InvalidState(#[source] StateError),
    /// A state could not be issued, or its nonce could not be recorded.
    #[error("oauth state: {0}")]
    State(#[source] StateError),
    /// The operation does not apply in the integration's current status.
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The provider refused.
    #[error(transparent)]
    Provider(ConnectorError),
    /// A credential operation failed.
    #[error(transparent)]
    Credential(CredentialError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<CredentialError> for ServiceError {
    fn from(e: CredentialError) -> Self {
        match e {
            CredentialError::NotFound(_) => Self::NotFound,
            CredentialError::NotActive { status, .. } => {
                Self::Conflict(format!("the integration is {status}"))
            }
            CredentialError::Refresh(c) => Self::Provider(c),
            other => Self::Credential(other),
        }
    }
}

impl From<ConnectorError> for ServiceError {
    fn from(e: ConnectorError) -> Self {
        match e {
            ConnectorError::BadCallback(m) => Self::BadRequest(m),
            other => Self::Provider(other),
        }
    }
}

/// Answer of `POST /integrations`.
#[derive(Debug, Clone, Serialize)]
pub struct Initiated {
    /// Connector type.
    #[serde(rename = "type")]
    pub connector_type: String,
    /// Where to send the user.
    pub url: String,
    /// The pending integration.
    pub integration_id: Uuid,
}

/// Answer of `GET /integrations/{id}/status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The integration.
    pub integration: Integration,
    /// Live check result.
    pub validation: Validation,
}

/// Answer of `DELETE /integrations/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct Deleted {
    /// The integration, now revoked.
    pub integration: Integration,
    /// Whether the provider confirmed the revocation.
    pub provider_revoked: bool,
    /// Credentials deleted.
    pub credentials_deleted: usize,
}

/// A page of events.
#[derive(Debug, Clone, Serialize)]
pub struct EventsPage {
    /// Newest first.
    pub events: Vec<GithubEventRow>,
    /// Pass as `before` for the next page; absent on the last page.
    pub next_before: Option<i64>,
}

/// The lifecycle service. Cheap to clone.
#[derive(Clone)]
pub struct IntegrationService {
    /// Integration rows.
    pub store: IntegrationStore,
    /// Credential rows.
    pub credentials: CredentialStore,
    /// Connectors.
    pub connectors: ConnectorRegistry,
    /// Vault actors.
    pub vaults: VaultRegistry,
    /// State signing.
    pub signer: Arc<StateSigner>,
    /// Single use of states.
    pub ledger: Arc<dyn NonceLedger>,
}

impl std::fmt::Debug for IntegrationService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegrationService")
            .field("connectors", &self.connectors)
            .finish_non_exhaustive()
    }
}

/// An audit entry about integration `target`.
fn integration_entry(
    organization_id: Uuid,
    actor: String,
    action: &str,
    target: Uuid,
    details: serde_json::Value,
) -> AuditEntry {
    AuditEntry {
        organization_id: Some(organization_id),
        actor,
        action: action.to_owned(),
        target: Some(target.to_string()),
        details,
    }
}

impl IntegrationService {
    /// `POST /integrations`: a pending integration and the provider URL with a signed state.
    pub async fn initiate(
        &self,
        principal: &Principal,
        connector_type: &str,
    ) -> Result<Initiated, ServiceError> {
        let connector = self
            .connectors
            .get(connector_type)
            .ok_or_else(|| ServiceError::UnknownConnector(connector_type.to_owned()))?
            .clone();
        let claims = StateClaims::new(
            principal.organization_id,
            principal.user_id.clone(),
            connector_type,
            Utc::now(),
            chrono::Duration::minutes(STATE_TTL_MINUTES),
        )
        .map_err(ServiceError::State)?;
        let state = self.signer.issue(&claims).map_err(ServiceError::State)?;
        // Fail on configuration before creating anything.
        let url = connector.authorization_url(&state)?;
        let actor = principal.audit_actor();
        let integration = match self
            .store
            .begin(
                principal.organization_id,
                connector_type,
                &principal.user_id,
                // Recorded with the pending row, in its transaction.
                |row| {
                    Some(integration_entry(
                        principal.organization_id,
                        actor,
                        "integration.initiated",
                        row.id,
                        json!({ "connector_type": connector_type }),
                    ))
                },
            )
            .await?
        {
            Ok(row) => row,
            Err(existing) => {
                return Err(ServiceError::Exists {
                    connector_type: connector_type.to_owned(),
                    id: existing.id,
                });
            }
        };
        Ok(Initiated {
            connector_type: connector_type.to_owned(),
            url,
            integration_id: integration.id,
        })
    }

    /// The callback: verifies and consumes the state (before any provider call), completes
    /// the authorization, stores the credentials encrypted and activates the integration.
    pub async fn complete(
        &self,
        connector_type: &str,
        state: Option<&str>,
        params: &CallbackParams,
    ) -> Result<Integration, ServiceError> {
        let state = state
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ServiceError::BadState("state is required".to_owned()))?;
        let connector = self
            .connectors
            .get(connector_type)
            .ok_or_else(|| ServiceError::UnknownConnector(connector_type.to_owned()))?
            .clone();
        // MAC and expiry first, then the connector, then consume: a state sent to the wrong
        // callback is refused without being used up.
        let claims = self
            .signer
            .verify(state, Utc::now())
            .map_err(ServiceError::InvalidState)?;
        if claims.connector != connector_type {
            return Err(ServiceError::BadState(format!(
                "state was issued for {}",
                claims.connector
            )));
        }
        let claims = self
            .signer
            .verify_and_consume(state, Utc::now(), self.ledger.as_ref())
            .await
            .map_err(|e| match e {
                StateError::Ledger(_) => ServiceError::State(e),
                other => ServiceError::InvalidState(other),
            })?;
        let authorized = connector.complete_authorization(params).await?;
        let integration = match self
            .store
            .find_for_org(claims.organization_id, connector_type)
            .await?
        {
            Some(row) => row,
            None => match self
                .store
                // Only when the pending row vanished; `integration.connected` below records it.
                .begin(
                    claims.organization_id,
                    connector_type,
                    &claims.user_id,
                    |_| None,
                )
                .await?
            {
                Ok(row) | Err(row) => row,
            },
        };
        let sealed = self
            .credentials
            .seal_all(integration.id, &authorized.credentials)?;
        // A reinstall replaces the old credentials entirely, under the refresh lock: a refresh
        // on another replica that read the old refresh token must not store its answer after
        // the new credentials (it re-reads them once it holds the lock).
        let lock = self.vaults.refresh_lock(integration.id).await?;
        let connected = self
            .store
            .connect(
                integration.id,
                &authorized.external_id,
                &authorized.metadata,
                &sealed,
                // Recorded with the credentials and the activation, in their transaction.
                |row, ids| {
                    integration_entry(
                        claims.organization_id,
                        format!("user/{}", claims.user_id),
                        "integration.connected",
                        row.id,
                        json!({
                            "connector_type": connector_type,
                            "external_id": authorized.external_id,
                            "credential_types": ids.keys().collect::<Vec<_>>(),
                        }),
                    )
                },
            )
            .await;
        if let Err(error) = lock.release().await {
            // The transaction is over (through the pool); only the lock's session was lost.
            tracing::warn!(%error, integration_id = %integration.id, "releasing the refresh lock failed");
        }
        let (integration, credential_ids) = connected?;
        self.vaults
            .invalidate(integration.organization_id, integration.id);
        // After the commit: what it records (the Slack workspace, the GitHub repositories)
        // follows from the stored authorization, and a failure here is answered as an error
        // with the integration connected; installing again records it again.
        connector
            .after_stored(StoredAuthorization {
                integration: &integration,
                authorized: &authorized,
                credential_ids: &credential_ids,
            })
            .await?;
        Ok(integration)
    }

    /// The organization's integrations.
    pub async fn list(
        &self,
        principal: &Principal,
        connector_type: Option<&str>,
    ) -> Result<Vec<Integration>, ServiceError> {
        // A filter naming no connector is the caller's mistake (422), not a query: text the
        // database cannot hold (a NUL byte) made it a 500 before (found by schemathesis).
        if let Some(t) = connector_type
            && self.connectors.get(t).is_none()
        {
            return Err(ServiceError::UnknownConnector(t.to_owned()));
        }
        Ok(self
            .store
            .list(principal.organization_id, connector_type)
            .await?)
    }

    /// One integration of the caller's organization.
    pub async fn get(&self, principal: &Principal, id: Uuid) -> Result<Integration, ServiceError> {
        self.store
            .get(principal.organization_id, id)
            .await?
            .ok_or(ServiceError::NotFound)
    }

    /// Validates the credential live at the provider.
    pub async fn status(
        &self,
        principal: &Principal,
        id: Uuid,
    ) -> Result<StatusReport, ServiceError> {
        let integration = self.get(principal, id).await?;
        let connector = self
            .connectors
            .get(&integration.connector_type)
            .ok_or_else(|| ServiceError::UnknownConnector(integration.connector_type.clone()))?
            .clone();
        if integration.status != status::ACTIVE {
            return Ok(StatusReport {
                validation: Validation {
                    valid: false,
                    detail: json!({ "error": format!("integration is {}", integration.status) }),
                },
                integration,
            });
        }
        let credential = self
            .vaults
            .credential(principal.organization_id, id)
            .await?;
        let validation = connector.validate(&integration, &credential).await?;
        Ok(StatusReport {
            integration,
            validation,
        })
    }

    /// Refreshes the credentials now.
    pub async fn refresh(
        &self,
        principal: &Principal,
        id: Uuid,
    ) -> Result<Integration, ServiceError> {
        // 404 for another organization's id before anything else.
        let integration = self.get(principal, id).await?;
        // Written with the refreshed credentials, in their transaction.
        let entry = integration_entry(
            principal.organization_id,
            principal.audit_actor(),
            "integration.refreshed",
            id,
            json!({ "connector_type": integration.connector_type }),
        );
        self.vaults
            .refresh(principal.organization_id, id, Some(entry))
            .await?;
        self.get(principal, id).await
    }

    /// Revokes at the provider, deletes the credentials, marks the integration revoked.
    pub async fn delete(&self, principal: &Principal, id: Uuid) -> Result<Deleted, ServiceError> {
        let integration = self.get(principal, id).await?;
        let connector = self
            .connectors
            .get(&integration.connector_type)
            .ok_or_else(|| ServiceError::UnknownConnector(integration.connector_type.clone()))?
            .clone();
        let current = self
            .credentials
            .load_set(id)
            .await
            .map_err(ServiceError::from)?;
        let revoke_error = if current.is_empty() {
            None
        } else {
            connector.revoke(&integration, &current).await.err()
        };
        drop(current);
        if let Some(error) = &revoke_error {
            // The user asked for the credentials to be gone: delete them anyway and record
            // that the provider did not confirm.
            tracing::warn!(%error, integration_id = %id, "provider revocation failed; deleting credentials anyway");
        }
        // The credentials' deletion, the revoked status and the entry commit together;
        // deleting what was revoked already (no credentials left) records nothing.
        let actor = principal.audit_actor();
        let revoked = self
            .store
            .revoke(id, |revoked| {
                revoked.changed().then(|| {
                    integration_entry(
                        principal.organization_id,
                        actor,
                        "integration.deleted",
                        id,
                        json!({
                            "connector_type": integration.connector_type,
                            "provider_revoked": revoke_error.is_none(),
                            "revoke_error": revoke_error.as_ref().map(ToString::to_string),
                            "credentials_deleted": revoked.credentials_deleted,
                        }),
                    )
                })
            })
            .await?
            .ok_or(ServiceError::NotFound)?;
        self.vaults.invalidate(principal.organization_id, id);
        Ok(Deleted {
            integration: revoked.integration,
            provider_revoked: revoke_error.is_none(),
            credentials_deleted: revoked.credentials_deleted,
        })
    }

    /// Recent normalized GitHub events of an integration's installation.
    pub async fn events(
        &self,
        principal: &Principal,
        id: Uuid,
        before: Option<i64>,
        limit: Option<i64>,
    ) -> Result<EventsPage, ServiceError> {
        let integration = self.get(principal, id).await?;
        let limit = limit.unwrap_or(50);
        if !(1..=MAX_EVENTS_PAGE).contains(&limit) {
            return Err(ServiceError::BadRequest(format!(
                "limit must be between 1 and {MAX_EVENTS_PAGE}"
            )));
        }
        let Some(installation_id) = integration
            .external_id
            .as_deref()
            .filter(|_| integration.connector_type == super::providers::GITHUB)
            .and_then(|s| s.parse::<i64>().ok())
        else {
            return Ok(EventsPage {
                events: Vec::new(),
                next_before: None,
            });
        };
        let events = self.store.events(installation_id, before, limit).await?;
        let next_before = (i64::try_from(events.len()).unwrap_or(0) == limit)
            .then(|| events.last().map(|e| e.id))
            .flatten();
        Ok(EventsPage {
            events,
            next_before,
        })
    }
}
