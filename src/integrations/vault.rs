//! Credentials at rest and in use.
//!
//! * [`CredentialStore`]: seals credentials with the key ring (AAD = integration id +
//!   credential type) into `integration_credentials`, and opens them.
//! * [`OrgVault`]: the plain logic of one organization's vault: serves the primary credential
//!   of an integration, caches it briefly, and refreshes it through its connector when it is
//!   missing or expires within [`VaultTuning::refresh_margin`]. Refreshes are single-flight per
//!   integration: callers queue on a per-integration lock and the ones behind the first find
//!   the fresh value in the cache.
//! * [`CredentialVault`]: the actix actor (one per organization) around an [`OrgVault`];
//!   requests run concurrently (`ResponseFuture`), the lock gives the per-integration order.
//! * [`VaultRegistry`]: the supervisor that creates vault actors on demand and registers them
//!   in the health registry (kind `credential_vault`, key = organization id).
//!
//! Plaintext exists only inside [`Secret`] values; errors name ids and types, never values.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use infragpt_actors::health::{ActorHealth, ActorId};
use infragpt_actors::kinds;
use infragpt_actors::{ActorState, HealthRegistry, Secret};
use parking_lot::Mutex;
use uuid::Uuid;

use super::connector::{ConnectorError, ConnectorRegistry, CredentialSet, IssuedCredential};
use super::store::{Integration, IntegrationStore, StoreError, status};
use crate::crypto::vault::{CredentialAad, KeyRing, VaultError};
use crate::db::credentials::{CredentialDbError, PgCredentials};

/// Why a credential could not be served or stored. Never carries plaintext.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialError {
    /// No such integration in this organization.
    #[error("integration {0} not found")]
    NotFound(Uuid),
    /// The integration is not active (pending, revoked, suspended...).
    #[error("integration {id} is {status}")]
    NotActive {
        /// Integration.
        id: Uuid,
        /// Its status.
        status: String,
    },
    /// No connector handles the integration's type.
    #[error("no connector for {0}")]
    NoConnector(String),
    /// Sealing or opening failed (wrong key, tampered row...).
    #[error("credential crypto failed: {0}")]
    Crypto(String),
    /// The database failed.
    #[error("credential storage failed: {0}")]
    Storage(String),
    /// The provider refused or failed the refresh.
    #[error("refreshing the credential failed: {0}")]
    Refresh(#[from] ConnectorError),
    /// The vault actor is gone (shutting down).
    #[error("credential vault unavailable")]
    VaultStopped,
}

impl From<VaultError> for CredentialError {
    fn from(e: VaultError) -> Self {
        Self::Crypto(e.to_string())
    }
}

impl From<CredentialDbError> for CredentialError {
    fn from(e: CredentialDbError) -> Self {
        Self::Storage(e.to_string())
    }
}

impl From<StoreError> for CredentialError {
    fn from(e: StoreError) -> Self {
        Self::Storage(e.to_string())
    }
}

/// A decrypted credential with its timing.
#[derive(Debug, Clone)]
pub struct OpenedCredential {
    /// The value.
    pub secret: Secret,
    /// When it stops working, if it expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was stored (about when it was issued).
    pub stored_at: DateTime<Utc>,
}

/// Seals and stores credentials; loads and opens them.
#[derive(Clone)]
pub struct CredentialStore {
    keyring: Arc<KeyRing>,
    db: PgCredentials,
}

impl std::fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialStore")
            .field("keyring", &self.keyring)
            .finish_non_exhaustive()
    }
}

impl CredentialStore {
    /// A store sealing with `keyring` into `db`.
    pub fn new(keyring: Arc<KeyRing>, db: PgCredentials) -> Self {
        Self { keyring, db }
    }

    /// The table adapter.
    pub fn db(&self) -> &PgCredentials {
        &self.db
    }

    /// The key ring.
    pub fn keyring(&self) -> &Arc<KeyRing> {
        &self.keyring
    }

    /// Seals and stores one credential (replacing the one of the same type); returns its id.
    pub async fn put(
        &self,
        integration_id: Uuid,
        credential: &IssuedCredential,
    ) -> Result<Uuid, CredentialError> {
        let aad = CredentialAad {
            integration_id,
            credential_type: &credential.credential_type,
        };
        let sealed = self.keyring.seal(&aad, &credential.secret)?;
        Ok(self
            .db
            .upsert(
                integration_id,
                &credential.credential_type,
                &sealed,
                credential.expires_at,
            )
            .await?)
    }

    /// [`CredentialStore::put`] for several; returns type → row id.
    pub async fn put_all(
        &self,
        integration_id: Uuid,
        credentials: &[IssuedCredential],
    ) -> Result<BTreeMap<String, Uuid>, CredentialError> {
        let mut ids = BTreeMap::new();
        for c in credentials {
            ids.insert(
                c.credential_type.clone(),
                self.put(integration_id, c).await?,
            );
        }
        Ok(ids)
    }

    /// Opens one credential: `(value, expires_at)`.
    pub async fn get(
        &self,
        integration_id: Uuid,
        credential_type: &str,
    ) -> Result<Option<(Secret, Option<DateTime<Utc>>)>, CredentialError> {
        Ok(self
            .open_one(integration_id, credential_type)
            .await?
            .map(|c| (c.secret, c.expires_at)))
    }

    /// Opens one credential with its timing.
    pub async fn open_one(
        &self,
        integration_id: Uuid,
        credential_type: &str,
    ) -> Result<Option<OpenedCredential>, CredentialError> {
        let Some(row) = self.db.get(integration_id, credential_type).await? else {
            return Ok(None);
        };
        let aad = CredentialAad {
            integration_id,
            credential_type,
        };
        Ok(Some(OpenedCredential {
            secret: self.keyring.open(&aad, &row.sealed)?,
            expires_at: row.expires_at,
            stored_at: row.updated_at,
        }))
    }

    /// Opens every credential of an integration.
    pub async fn load_set(&self, integration_id: Uuid) -> Result<CredentialSet, CredentialError> {
        let mut set = CredentialSet::default();
        for row in self.db.list(integration_id).await? {
            let aad = CredentialAad {
                integration_id,
                credential_type: &row.credential_type,
            };
            let secret = self.keyring.open(&aad, &row.sealed)?;
            set.insert(row.credential_type.clone(), secret, row.expires_at);
        }
        Ok(set)
    }

    /// Deletes every credential of an integration.
    pub async fn delete_all(&self, integration_id: Uuid) -> Result<usize, CredentialError> {
        Ok(self.db.delete_all(integration_id).await?)
    }
}

/// Timing of the vault.
#[derive(Debug, Clone, Copy)]
pub struct VaultTuning {
    /// A decrypted credential is served from memory for at most this long.
    pub cache_ttl: Duration,
    /// A credential expiring within this margin is refreshed before it is served. For
    /// short-lived credentials the margin is at most half their lifetime, so a fresh one is
    /// never "about to expire" at once.
    pub refresh_margin: chrono::Duration,
}

impl Default for VaultTuning {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(60),
            refresh_margin: chrono::Duration::minutes(5),
        }
    }
}

struct Cached {
    secret: Secret,
    refresh_at: Option<DateTime<Utc>>,
    fetched: Instant,
}

/// What every organization's vault shares.
#[derive(Clone)]
pub struct VaultDeps {
    /// Integration rows.
    pub store: IntegrationStore,
    /// Credential rows.
    pub credentials: CredentialStore,
    /// Connectors (for refreshes).
    pub connectors: ConnectorRegistry,
    /// Timing.
    pub tuning: VaultTuning,
}

impl std::fmt::Debug for VaultDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultDeps")
            .field("connectors", &self.connectors)
            .field("tuning", &self.tuning)
            .finish_non_exhaustive()
    }
}

/// One organization's vault logic (no actix).
pub struct OrgVault {
    organization_id: Uuid,
    deps: VaultDeps,
    cache: Mutex<HashMap<Uuid, Cached>>,
    locks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for OrgVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgVault")
            .field("organization_id", &self.organization_id)
            .field("cached", &self.cache.lock().len())
            .finish_non_exhaustive()
    }
}

impl OrgVault {
    /// The vault of one organization.
    pub fn new(organization_id: Uuid, deps: VaultDeps) -> Self {
        Self {
            organization_id,
            deps,
            cache: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The organization.
    pub fn organization_id(&self) -> Uuid {
        self.organization_id
    }

    /// When a credential issued at `issued_at` and expiring at `expires_at` is due for a
    /// refresh: `refresh_margin` before expiry, or half-way for short-lived ones.
    fn refresh_at(
        &self,
        issued_at: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        let expires_at = expires_at?;
        let half_life = (expires_at - issued_at) / 2;
        Some(expires_at - self.deps.tuning.refresh_margin.min(half_life))
    }

    fn usable(refresh_at: Option<DateTime<Utc>>) -> bool {
        refresh_at.is_none_or(|at| Utc::now() < at)
    }

    fn cached(&self, integration_id: Uuid) -> Option<Secret> {
        let cache = self.cache.lock();
        let entry = cache.get(&integration_id)?;
        (entry.fetched.elapsed() < self.deps.tuning.cache_ttl && Self::usable(entry.refresh_at))
            .then(|| entry.secret.clone())
    }

    fn remember(&self, integration_id: Uuid, secret: &Secret, refresh_at: Option<DateTime<Utc>>) {
        self.cache.lock().insert(
            integration_id,
            Cached {
                secret: secret.clone(),
                refresh_at,
                fetched: Instant::now(),
            },
        );
    }

    fn lock_for(&self, integration_id: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().entry(integration_id).or_default().clone()
    }

    /// Drops the cached value of an integration (after a delete or a webhook revoke).
    pub fn invalidate(&self, integration_id: Uuid) {
        self.cache.lock().remove(&integration_id);
    }

    async fn active_integration(
        &self,
        integration_id: Uuid,
    ) -> Result<Integration, CredentialError> {
        let integration = self
            .deps
            .store
            .get(self.organization_id, integration_id)
            .await?
            .ok_or(CredentialError::NotFound(integration_id))?;
        if integration.status != status::ACTIVE {
            return Err(CredentialError::NotActive {
                id: integration_id,
                status: integration.status,
            });
        }
        Ok(integration)
    }

    /// The primary credential of an integration, refreshed first when it is missing or about
    /// to expire.
    pub async fn credential(&self, integration_id: Uuid) -> Result<Secret, CredentialError> {
        if let Some(secret) = self.cached(integration_id) {
            return Ok(secret);
        }
        let lock = self.lock_for(integration_id);
        let _guard = lock.lock().await;
        // Whoever held the lock before us may have refreshed it.
        if let Some(secret) = self.cached(integration_id) {
            return Ok(secret);
        }
        let integration = self.active_integration(integration_id).await?;
        let connector = self
            .deps
            .connectors
            .get(&integration.connector_type)
            .ok_or_else(|| CredentialError::NoConnector(integration.connector_type.clone()))?
            .clone();
        let primary = connector.primary_credential();
        if let Some(stored) = self
            .deps
            .credentials
            .open_one(integration_id, primary)
            .await?
        {
            let refresh_at = self.refresh_at(stored.stored_at, stored.expires_at);
            if Self::usable(refresh_at) {
                self.remember(integration_id, &stored.secret, refresh_at);
                self.touch(integration_id).await;
                return Ok(stored.secret);
            }
        }
        let secret = self.refresh_locked(&integration).await?;
        self.touch(integration_id).await;
        Ok(secret)
    }

    /// Refreshes the credentials of an integration now (`POST /integrations/{id}/refresh`).
    pub async fn force_refresh(
        &self,
        integration_id: Uuid,
    ) -> Result<Integration, CredentialError> {
        let lock = self.lock_for(integration_id);
        let _guard = lock.lock().await;
        let integration = self.active_integration(integration_id).await?;
        self.refresh_locked(&integration).await?;
        Ok(integration)
    }

    /// Refresh with the integration's lock held.
    async fn refresh_locked(&self, integration: &Integration) -> Result<Secret, CredentialError> {
        let connector = self
            .deps
            .connectors
            .get(&integration.connector_type)
            .ok_or_else(|| CredentialError::NoConnector(integration.connector_type.clone()))?
            .clone();
        let primary = connector.primary_credential();
        let current = self.deps.credentials.load_set(integration.id).await?;
        let issued = connector.refresh(integration, &current).await?;
        self.deps
            .credentials
            .put_all(integration.id, &issued)
            .await?;
        let fresh = issued
            .iter()
            .find(|c| c.credential_type == primary)
            .ok_or_else(|| {
                CredentialError::Refresh(ConnectorError::MissingCredential(primary.to_owned()))
            })?;
        self.remember(
            integration.id,
            &fresh.secret,
            self.refresh_at(Utc::now(), fresh.expires_at),
        );
        tracing::info!(
            organization_id = %self.organization_id,
            integration_id = %integration.id,
            credential_type = primary,
            "credential refreshed"
        );
        Ok(fresh.secret.clone())
    }

    async fn touch(&self, integration_id: Uuid) {
        if let Err(error) = self.deps.store.touch(integration_id).await {
            tracing::debug!(%error, integration_id = %integration_id, "recording credential use failed");
        }
    }
}

/// Asks a vault for the primary credential of an integration.
#[derive(Debug)]
pub struct GetCredential {
    /// The integration.
    pub integration_id: Uuid,
}

impl Message for GetCredential {
    type Result = Result<Secret, CredentialError>;
}

/// Asks a vault to refresh an integration's credentials now.
#[derive(Debug)]
pub struct RefreshCredential {
    /// The integration.
    pub integration_id: Uuid,
}

impl Message for RefreshCredential {
    type Result = Result<Integration, CredentialError>;
}

/// Drops an integration's cached credential.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct InvalidateCredential {
    /// The integration.
    pub integration_id: Uuid,
}

/// The vault actor of one organization.
pub struct CredentialVault {
    logic: Arc<OrgVault>,
    health: Arc<ActorHealth>,
}

impl std::fmt::Debug for CredentialVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialVault")
            .field("logic", &self.logic)
            .finish_non_exhaustive()
    }
}

impl Actor for CredentialVault {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        self.health.set_state(ActorState::Running);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.health.set_state(ActorState::Stopped);
    }
}

impl CredentialVault {
    fn report<T>(health: &ActorHealth, result: &Result<T, CredentialError>) {
        health.record_message();
        if let Err(e) = result {
            // Expected refusals (not found, not active) are the caller's business.
            if matches!(
                e,
                CredentialError::Refresh(_)
                    | CredentialError::Crypto(_)
                    | CredentialError::Storage(_)
            ) {
                health.record_error(&e.to_string());
            }
        }
    }
}

impl Handler<GetCredential> for CredentialVault {
    type Result = ResponseFuture<Result<Secret, CredentialError>>;

    fn handle(&mut self, msg: GetCredential, _ctx: &mut Self::Context) -> Self::Result {
        let logic = self.logic.clone();
        let health = self.health.clone();
        Box::pin(async move {
            let result = logic.credential(msg.integration_id).await;
            Self::report(&health, &result);
            result
        })
    }
}

impl Handler<RefreshCredential> for CredentialVault {
    type Result = ResponseFuture<Result<Integration, CredentialError>>;

    fn handle(&mut self, msg: RefreshCredential, _ctx: &mut Self::Context) -> Self::Result {
        let logic = self.logic.clone();
        let health = self.health.clone();
        Box::pin(async move {
            let result = logic.force_refresh(msg.integration_id).await;
            Self::report(&health, &result);
            result
        })
    }
}

impl Handler<InvalidateCredential> for CredentialVault {
    type Result = ();

    fn handle(&mut self, msg: InvalidateCredential, _ctx: &mut Self::Context) {
        self.logic.invalidate(msg.integration_id);
    }
}

struct RegistryInner {
    deps: VaultDeps,
    health: HealthRegistry,
    supervisor: ActorId,
    _supervisor_health: ActorHealth,
    vaults: Mutex<HashMap<Uuid, Addr<CredentialVault>>>,
}

/// Creates and finds the vault actor of each organization. Cheap to clone.
#[derive(Clone)]
pub struct VaultRegistry {
    inner: Arc<RegistryInner>,
}

impl std::fmt::Debug for VaultRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultRegistry")
            .field("vaults", &self.inner.vaults.lock().len())
            .finish_non_exhaustive()
    }
}

impl VaultRegistry {
    /// A registry reporting to `health` under a `credential_vaults` supervisor node (child of
    /// the cluster's `root`).
    pub fn new(deps: VaultDeps, health: HealthRegistry) -> Self {
        let supervisor = ActorId::new(kinds::SUPERVISOR, "credential_vaults");
        let supervisor_health = health.register(
            supervisor.clone(),
            Some(ActorId::new(kinds::SUPERVISOR, "root")),
        );
        supervisor_health.set_state(ActorState::Running);
        Self {
            inner: Arc::new(RegistryInner {
                deps,
                health,
                supervisor,
                _supervisor_health: supervisor_health,
                vaults: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The shared dependencies.
    pub fn deps(&self) -> &VaultDeps {
        &self.inner.deps
    }

    /// The vault actor of an organization, started on first use (or again after it stopped).
    /// Must be called inside an actix system.
    pub fn vault(&self, organization_id: Uuid) -> Addr<CredentialVault> {
        let mut vaults = self.inner.vaults.lock();
        if let Some(addr) = vaults.get(&organization_id)
            && addr.connected()
        {
            return addr.clone();
        }
        let health = self.inner.health.register(
            ActorId::new(kinds::CREDENTIAL_VAULT, organization_id.to_string()),
            Some(self.inner.supervisor.clone()),
        );
        let addr = CredentialVault {
            logic: Arc::new(OrgVault::new(organization_id, self.inner.deps.clone())),
            health: Arc::new(health),
        }
        .start();
        vaults.insert(organization_id, addr.clone());
        addr
    }

    /// The primary credential of an integration of `organization_id`.
    pub async fn credential(
        &self,
        organization_id: Uuid,
        integration_id: Uuid,
    ) -> Result<Secret, CredentialError> {
        self.vault(organization_id)
            .send(GetCredential { integration_id })
            .await
            .map_err(|_| CredentialError::VaultStopped)?
    }

    /// Refreshes an integration's credentials now.
    pub async fn refresh(
        &self,
        organization_id: Uuid,
        integration_id: Uuid,
    ) -> Result<Integration, CredentialError> {
        self.vault(organization_id)
            .send(RefreshCredential { integration_id })
            .await
            .map_err(|_| CredentialError::VaultStopped)?
    }

    /// Drops the cached credential of an integration (no-op when its vault is not running).
    pub fn invalidate(&self, organization_id: Uuid, integration_id: Uuid) {
        if let Some(addr) = self.inner.vaults.lock().get(&organization_id) {
            addr.do_send(InvalidateCredential { integration_id });
        }
    }

    /// Stops every vault actor.
    pub fn stop_all(&self) {
        for (_, addr) in self.inner.vaults.lock().drain() {
            drop(addr);
        }
    }
}
