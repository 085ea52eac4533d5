//! The [`Connector`] port every provider implements, and the [`ConnectorRegistry`] that maps
//! a connector type (`slack`, `github`) to its implementation.
//!
//! Adding a connector is one module implementing [`Connector`] (in its provider slice) plus one
//! [`ConnectorRegistry::register`] line in `app::integrations::default_connectors`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use infragpt_actors::Secret;
use serde::Serialize;

use super::store::Integration;

/// Why a provider call failed. Messages never contain credentials.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The connector is not configured (missing client id, app id, key...).
    #[error("{connector} connector is not configured: {reason}")]
    NotConfigured {
        /// Connector type.
        connector: &'static str,
        /// What is missing.
        reason: String,
    },
    /// The connector's client could not be built (no root certificates, ...).
    #[error("{connector} connector cannot build its HTTP client: {source}")]
    Setup {
        /// Connector type.
        connector: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The callback lacks a parameter or has a bad one.
    #[error("invalid callback: {0}")]
    BadCallback(String),
    /// The provider rejected the request (bad code, revoked token, ...): will not work by
    /// retrying.
    #[error("{connector} rejected the request: {reason}")]
    Rejected {
        /// Connector type.
        connector: &'static str,
        /// Provider's reason (an error code, never a token).
        reason: String,
    },
    /// The provider could not be reached or failed; may work later.
    #[error("{connector} is unavailable: {source}")]
    Unavailable {
        /// Connector type.
        connector: &'static str,
        /// What happened (the transport or store error, or the provider's answer).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A credential this operation needs is not stored.
    #[error("credential {0} is missing")]
    MissingCredential(String),
    /// The provider does not support the operation.
    #[error("{connector} does not support {operation}")]
    Unsupported {
        /// Connector type.
        connector: &'static str,
        /// The operation.
        operation: &'static str,
    },
}

/// Query parameters of a provider callback.
#[derive(Debug, Clone, Default)]
pub struct CallbackParams {
    /// OAuth `code` (Slack).
    pub code: Option<String>,
    /// GitHub App `installation_id`.
    pub installation_id: Option<String>,
    /// GitHub `setup_action` (`install`, `update`).
    pub setup_action: Option<String>,
}

/// One credential a provider issued.
#[derive(Debug, Clone)]
pub struct IssuedCredential {
    /// Type, part of the encryption AAD (`bot_token`, `refresh_token`, `installation_token`).
    pub credential_type: String,
    /// The value.
    pub secret: Secret,
    /// When it stops working, if it expires.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Result of a completed authorization.
#[derive(Debug, Clone)]
pub struct Authorized {
    /// Provider-side id (Slack team id, GitHub installation id).
    pub external_id: String,
    /// Non-secret facts stored on the integration (account, permissions...).
    pub metadata: serde_json::Value,
    /// Credentials to store encrypted.
    pub credentials: Vec<IssuedCredential>,
}

/// Result of a live validation.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    /// The credential works.
    pub valid: bool,
    /// Provider facts confirmed by the call (team, account...) or the failure reason.
    pub detail: serde_json::Value,
}

/// What configuring webhooks did.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookSetup {
    /// Where the provider delivers events.
    pub delivery: String,
    /// Human-readable note.
    pub note: String,
}

/// Stored credentials of an integration, decrypted for one provider call. Dropped right after.
#[derive(Debug, Clone, Default)]
pub struct CredentialSet {
    values: BTreeMap<String, (Secret, Option<DateTime<Utc>>)>,
}

impl CredentialSet {
    /// Adds a credential.
    pub fn insert(
        &mut self,
        credential_type: impl Into<String>,
        secret: Secret,
        expires_at: Option<DateTime<Utc>>,
    ) {
        self.values
            .insert(credential_type.into(), (secret, expires_at));
    }

    /// A credential by type.
    pub fn get(&self, credential_type: &str) -> Option<&Secret> {
        self.values.get(credential_type).map(|(s, _)| s)
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// Hook run after an authorization's credentials are stored (to record workspaces,
/// repositories...). `credential_ids` maps credential type → `integration_credentials.id`.
#[derive(Debug)]
pub struct StoredAuthorization<'a> {
    /// The integration, already active.
    pub integration: &'a Integration,
    /// What the provider returned.
    pub authorized: &'a Authorized,
    /// Row ids of the stored credentials.
    pub credential_ids: &'a BTreeMap<String, uuid::Uuid>,
}

/// A provider the organization can connect.
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// The connector type (`slack`, `github`): the API's `connector_type` and the state's
    /// `connector`.
    fn connector_type(&self) -> &'static str;

    /// The credential other actors ask for ([`crate::integrations::vault`] serves it and
    /// refreshes it when it expires).
    fn primary_credential(&self) -> &'static str;

    /// Where to send the user to authorize/install, carrying `state`.
    fn authorization_url(&self, state: &str) -> Result<String, ConnectorError>;

    /// Exchanges the callback parameters for credentials and provider facts.
    async fn complete_authorization(
        &self,
        params: &CallbackParams,
    ) -> Result<Authorized, ConnectorError>;

    /// Runs after the credentials of an authorization are stored (default: nothing).
    async fn after_stored(&self, _stored: StoredAuthorization<'_>) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Checks the credential live at the provider.
    async fn validate(
        &self,
        integration: &Integration,
        credential: &Secret,
    ) -> Result<Validation, ConnectorError>;

    /// Obtains fresh credentials (rotation refresh, new installation token). Returns the
    /// credentials to store (they replace those of the same type).
    async fn refresh(
        &self,
        integration: &Integration,
        current: &CredentialSet,
    ) -> Result<Vec<IssuedCredential>, ConnectorError>;

    /// Revokes the credentials at the provider (best effort is the caller's decision).
    async fn revoke(
        &self,
        integration: &Integration,
        current: &CredentialSet,
    ) -> Result<(), ConnectorError>;

    /// Makes sure the provider delivers events to us.
    async fn configure_webhooks(
        &self,
        integration: &Integration,
    ) -> Result<WebhookSetup, ConnectorError>;
}

/// Connector type → implementation.
#[derive(Clone, Default)]
pub struct ConnectorRegistry {
    connectors: BTreeMap<&'static str, Arc<dyn Connector>>,
}

impl std::fmt::Debug for ConnectorRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.connectors.keys()).finish()
    }
}

impl ConnectorRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a connector (replacing one of the same type).
    pub fn register(&mut self, connector: Arc<dyn Connector>) -> &mut Self {
        self.connectors
            .insert(connector.connector_type(), connector);
        self
    }

    /// The connector of a type.
    pub fn get(&self, connector_type: &str) -> Option<&Arc<dyn Connector>> {
        self.connectors.get(connector_type)
    }

    /// Registered types.
    pub fn types(&self) -> Vec<&'static str> {
        self.connectors.keys().copied().collect()
    }
}
