//! Credentials at rest and in use.
//!
//! * [`CredentialStore`]: seals credentials with the key ring (AAD = integration id +
//!   credential type) into `integration_credentials`, and opens them.
//! * [`OrgVault`]: the plain logic of one organization's vault (no state, no actix): loads the
//!   primary credential of an integration and refreshes it through its connector when it is
//!   missing or expires within [`VaultTuning::refresh_margin`]. A refresh runs under the
//!   integration's [`RefreshLock`] (single flight across replicas) and re-reads the stored
//!   credential once it holds it: another replica may have refreshed it meanwhile.
//! * [`CredentialVault`]: the actix actor (one per organization). It owns what must be
//!   serialized per organization: the cache of decrypted credentials and, per integration, a
//!   queue of operations of which at most one (a load or a refresh) runs at a time. Its mailbox
//!   is what orders them: a request that finds a load under way waits in the queue and is then
//!   answered from the cache, so concurrent requests for an expiring token refresh it once.
//!   Different integrations load concurrently (the work runs as futures of the actor's
//!   context; only the bookkeeping is in the handlers).
//! * [`VaultRegistry`]: the supervisor that creates vault actors on demand and registers them
//!   in the health registry (kind `credential_vault`, key = organization id).
//!
//! Plaintext exists only inside [`Secret`] values; errors name ids and types, never values.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use infragpt_actors::audit::AuditEntry;
use infragpt_actors::health::{ActorHealth, ActorId};
use infragpt_actors::kinds;
use infragpt_actors::{ActorState, HealthRegistry, Secret};
use parking_lot::Mutex;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::connector::{
    Connector, ConnectorError, ConnectorRegistry, CredentialSet, IssuedCredential, Validation,
};
use super::credentials::SealedCredential;
use super::refresh_lock::{LockBounds, RefreshLock, RefreshLockError, RefreshLocks};
use super::store::{Integration, IntegrationStore, status};
use crate::crypto::vault::{CredentialAad, KeyRing, VaultError};
use crate::db::StoreError;
use crate::integrations::credentials::PgCredentials;

/// Why a credential could not be served or stored. Never carries plaintext.
#[derive(Debug, thiserror::Error)]
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
    Crypto(#[from] VaultError),
    /// The database failed.
    #[error("credential storage failed: {0}")]
    Storage(#[from] StoreError),
    /// The provider refused or failed the refresh.
    #[error("refreshing the credential failed: {0}")]
    Refresh(#[from] ConnectorError),
    /// The cluster-wide refresh lock could not be had (another replica's refresh outlasted
    /// [`LockBounds::wait`], or the database failed).
    #[error(transparent)]
    RefreshLock(#[from] RefreshLockError),
    /// The vault actor is gone (shutting down).
    #[error("credential vault unavailable")]
    VaultStopped,
}

/// A decrypted credential with its timing.
#[derive(Debug, Clone)]
pub(crate) struct OpenedCredential {
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

    /// Seals credentials of an integration for storing (each under its own AAD).
    pub(crate) fn seal_all<'a>(
        &self,
        integration_id: Uuid,
        credentials: &'a [IssuedCredential],
    ) -> Result<Vec<SealedCredential<'a>>, CredentialError> {
        Ok(credentials
            .iter()
            .map(|c| {
                let aad = CredentialAad {
                    integration_id,
                    credential_type: &c.credential_type,
                };
                Ok(SealedCredential {
                    credential_type: &c.credential_type,
                    sealed: self.keyring.seal(&aad, &c.secret)?,
                    expires_at: c.expires_at,
                })
            })
            .collect::<Result<Vec<_>, VaultError>>()?)
    }

    /// [`CredentialStore::put`] for several, in one transaction ([`PgCredentials::upsert_all`])
    /// with `audit` when given; returns type → row id.
    pub(crate) async fn put_all(
        &self,
        integration_id: Uuid,
        credentials: &[IssuedCredential],
        audit: Option<&AuditEntry>,
    ) -> Result<BTreeMap<String, Uuid>, CredentialError> {
        let sealed = self.seal_all(integration_id, credentials)?;
        let ids = self.db.upsert_all(integration_id, &sealed, audit).await?;
        Ok(credentials
            .iter()
            .map(|c| c.credential_type.clone())
            .zip(ids)
            .collect())
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
    pub(crate) async fn open_one(
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
    /// Longest provider call of a refresh (and of a re-check's validation); shorter than
    /// `lock.hold`, so a live holder never loses the lock to the server's cut-off.
    pub refresh_timeout: Duration,
    /// The cross-replica refresh lock: how long a replica waits for another's refresh, and
    /// how long a holder may keep the lock before the server ends its session.
    pub lock: LockBounds,
    /// Refreshes of one process that take or wait for a lock at once (each ties up a pooled
    /// connection): well below the pool size.
    pub refresh_slots: usize,
}

impl Default for VaultTuning {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(60),
            refresh_margin: chrono::Duration::minutes(5),
            refresh_timeout: Duration::from_secs(20),
            lock: LockBounds {
                wait: Duration::from_secs(60),
                hold: Duration::from_secs(45),
            },
            refresh_slots: 4,
        }
    }
}

/// A provider call of the vault got no answer within [`VaultTuning::refresh_timeout`].
#[derive(Debug, thiserror::Error)]
#[error("{operation} got no answer within {after:?}")]
pub struct ProviderTimeout {
    /// `refresh` or `validate`.
    pub operation: &'static str,
    /// The limit.
    pub after: Duration,
}

/// What a replica saw before it asked for the refresh lock: decides whether the credential
/// it finds stored once it holds the lock already is the refresh it wanted.
#[derive(Debug, Clone, Copy)]
enum Wanted {
    /// A usable credential (the stored one was missing or due).
    Usable,
    /// One stored after this time (an explicit refresh; `None`: nothing was stored).
    StoredAfter(Option<DateTime<Utc>>),
}

/// A decrypted credential held by the vault actor.
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

/// A credential as loaded or refreshed, with when it is due for a refresh.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The value.
    pub secret: Secret,
    /// When it should be refreshed (`None`: it does not expire).
    pub refresh_at: Option<DateTime<Utc>>,
}

/// One organization's vault logic (no state, no actix). Its methods must not run
/// concurrently for one integration: [`CredentialVault`] makes sure they do not.
pub struct OrgVault {
    organization_id: Uuid,
    deps: VaultDeps,
    locks: RefreshLocks,
}

impl std::fmt::Debug for OrgVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgVault")
            .field("organization_id", &self.organization_id)
            .finish_non_exhaustive()
    }
}

impl OrgVault {
    /// The vault of one organization, taking refresh locks from `locks` (shared by every
    /// organization of the process).
    pub fn new(organization_id: Uuid, deps: VaultDeps, locks: RefreshLocks) -> Self {
        Self {
            organization_id,
            deps,
            locks,
        }
    }

    /// The organization.
    pub fn organization_id(&self) -> Uuid {
        self.organization_id
    }

    /// How long a decrypted credential may be served from memory.
    fn cache_ttl(&self) -> Duration {
        self.deps.tuning.cache_ttl
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

    /// True while a credential due at `refresh_at` may still be served.
    fn usable(refresh_at: Option<DateTime<Utc>>) -> bool {
        refresh_at.is_none_or(|at| Utc::now() < at)
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

    fn connector(&self, integration: &Integration) -> Result<Arc<dyn Connector>, CredentialError> {
        self.deps
            .connectors
            .get(&integration.connector_type)
            .cloned()
            .ok_or_else(|| CredentialError::NoConnector(integration.connector_type.clone()))
    }

    /// The primary credential of an integration as stored, refreshed first when it is missing
    /// or about to expire.
    pub async fn load(&self, integration_id: Uuid) -> Result<Loaded, CredentialError> {
        let integration = self.active_integration(integration_id).await?;
        let connector = self.connector(&integration)?;
        let primary = connector.primary_credential();
        if let Some(stored) = self
            .deps
            .credentials
            .open_one(integration_id, primary)
            .await?
        {
            let refresh_at = self.refresh_at(stored.stored_at, stored.expires_at);
            if Self::usable(refresh_at) {
                self.touch(integration_id).await;
                return Ok(Loaded {
                    secret: stored.secret,
                    refresh_at,
                });
            }
        }
        let loaded = self
            .refresh_single_flight(&integration, connector.as_ref(), Wanted::Usable, None)
            .await?;
        self.touch(integration_id).await;
        Ok(loaded)
    }

    /// Refreshes the credentials of an integration now (`POST /integrations/{id}/refresh`).
    /// A refresh another replica stored while this one waited for the lock counts: it
    /// happened after the request. `audit` is written with the credentials this refresh
    /// stores, in their transaction; a refresh found stored meanwhile stored nothing here and
    /// records nothing.
    pub(crate) async fn force_refresh(
        &self,
        integration_id: Uuid,
        audit: Option<AuditEntry>,
    ) -> Result<(Integration, Loaded), CredentialError> {
        let integration = self.active_integration(integration_id).await?;
        let connector = self.connector(&integration)?;
        let seen = self
            .deps
            .credentials
            .db()
            .get(integration_id, connector.primary_credential())
            .await?
            .map(|row| row.updated_at);
        let loaded = self
            .refresh_single_flight(
                &integration,
                connector.as_ref(),
                Wanted::StoredAfter(seen),
                audit.as_ref(),
            )
            .await?;
        Ok((integration, loaded))
    }

    /// Refreshes under the integration's cluster-wide lock, unless the credential stored by
    /// the time this replica holds it is already what it wanted.
    async fn refresh_single_flight(
        &self,
        integration: &Integration,
        connector: &dyn Connector,
        wanted: Wanted,
        audit: Option<&AuditEntry>,
    ) -> Result<Loaded, CredentialError> {
        let lock = self.locks.acquire(integration.id).await?;
        let result = self
            .refresh_locked(integration, connector, wanted, audit)
            .await;
        if let Err(error) = lock.release().await {
            // What the refresh issued is stored already (through the pool, not the lock's
            // session), so the result stands; only the lock's session was lost.
            tracing::warn!(
                %error,
                organization_id = %self.organization_id,
                integration_id = %integration.id,
                "releasing the refresh lock failed"
            );
        }
        result
    }

    async fn refresh_locked(
        &self,
        integration: &Integration,
        connector: &dyn Connector,
        wanted: Wanted,
        audit: Option<&AuditEntry>,
    ) -> Result<Loaded, CredentialError> {
        let primary = connector.primary_credential();
        if let Some(stored) = self
            .deps
            .credentials
            .open_one(integration.id, primary)
            .await?
        {
            let refresh_at = self.refresh_at(stored.stored_at, stored.expires_at);
            let wanted = match wanted {
                Wanted::Usable => true,
                Wanted::StoredAfter(seen) => seen.is_none_or(|seen| stored.stored_at > seen),
            };
            if wanted && Self::usable(refresh_at) {
                tracing::info!(
                    organization_id = %self.organization_id,
                    integration_id = %integration.id,
                    credential_type = primary,
                    "credential replaced meanwhile (another replica's refresh, a reinstall); not calling the provider"
                );
                return Ok(Loaded {
                    secret: stored.secret,
                    refresh_at,
                });
            }
        }
        self.refresh(integration, connector, audit).await
    }

    /// Calls the provider (within [`VaultTuning::refresh_timeout`]) and stores what it
    /// issued, with `audit` in the same transaction. Only under the integration's
    /// [`RefreshLock`].
    ///
    /// The provider call comes first and cannot be undone: when the transaction fails (the
    /// credentials or the entry), what the provider issued is lost and the stored credentials
    /// stay as they were, exactly as for any failed credential write. A GitHub installation
    /// token is simply minted again by the next refresh; a rotated Slack refresh token was
    /// spent, so the next refresh is refused and the integration needs a reinstall.
    async fn refresh(
        &self,
        integration: &Integration,
        connector: &dyn Connector,
        audit: Option<&AuditEntry>,
    ) -> Result<Loaded, CredentialError> {
        let primary = connector.primary_credential();
        // Read under the lock: a rotated refresh token is single use.
        let current = self.deps.credentials.load_set(integration.id).await?;
        let after = self.deps.tuning.refresh_timeout;
        let issued = tokio::time::timeout(after, connector.refresh(integration, &current))
            .await
            .map_err(|_| ConnectorError::Unavailable {
                connector: connector.connector_type(),
                source: Box::new(ProviderTimeout {
                    operation: "refresh",
                    after,
                }),
            })??;
        self.deps
            .credentials
            .put_all(integration.id, &issued, audit)
            .await?;
        let fresh = issued
            .iter()
            .find(|c| c.credential_type == primary)
            .ok_or_else(|| {
                CredentialError::Refresh(ConnectorError::MissingCredential(primary.to_owned()))
            })?;
        tracing::info!(
            organization_id = %self.organization_id,
            integration_id = %integration.id,
            credential_type = primary,
            "credential refreshed"
        );
        Ok(Loaded {
            secret: fresh.secret.clone(),
            refresh_at: self.refresh_at(Utc::now(), fresh.expires_at),
        })
    }

    async fn touch(&self, integration_id: Uuid) {
        if let Err(error) = self.deps.store.touch(integration_id).await {
            tracing::debug!(%error, integration_id = %integration_id, "recording credential use failed");
        }
    }
}

/// Asks a vault for the primary credential of an integration.
#[derive(Debug)]
pub(crate) struct GetCredential {
    /// The integration.
    pub integration_id: Uuid,
}

impl Message for GetCredential {
    type Result = Result<Secret, CredentialError>;
}

/// Asks a vault to refresh an integration's credentials now.
#[derive(Debug)]
pub(crate) struct RefreshCredential {
    /// The integration.
    pub integration_id: Uuid,
    /// Written with the refreshed credentials, in their transaction.
    pub audit: Option<AuditEntry>,
}

impl Message for RefreshCredential {
    type Result = Result<Integration, CredentialError>;
}

/// Drops an integration's cached credential.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct InvalidateCredential {
    /// The integration.
    pub integration_id: Uuid,
}

/// A request waiting for its integration's turn.
enum Op {
    Get(oneshot::Sender<Result<Secret, CredentialError>>),
    Refresh(
        oneshot::Sender<Result<Integration, CredentialError>>,
        Option<AuditEntry>,
    ),
}

/// The operations of one integration: at most one runs (`busy`), the others wait in order.
#[derive(Default)]
struct Lane {
    busy: bool,
    /// Invalidated while an operation ran: what it loaded is not cached.
    stale: bool,
    waiting: VecDeque<Op>,
}

/// The vault actor of one organization: owns the cache and the per-integration order.
pub struct CredentialVault {
    logic: Arc<OrgVault>,
    health: ActorHealth,
    cache: HashMap<Uuid, Cached>,
    lanes: HashMap<Uuid, Lane>,
}

impl std::fmt::Debug for CredentialVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialVault")
            .field("logic", &self.logic)
            .field("cached", &self.cache.len())
            .field("lanes", &self.lanes.len())
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
    /// A vault actor (not started) over `logic`, reporting to `health`.
    pub fn new(logic: OrgVault, health: ActorHealth) -> Self {
        Self {
            logic: Arc::new(logic),
            health,
            cache: HashMap::new(),
            lanes: HashMap::new(),
        }
    }

    /// The cached value of an integration while it is fresh and not due for a refresh.
    fn cached(&self, integration_id: Uuid) -> Option<Secret> {
        let entry = self.cache.get(&integration_id)?;
        (entry.fetched.elapsed() < self.logic.cache_ttl() && OrgVault::usable(entry.refresh_at))
            .then(|| entry.secret.clone())
    }

    fn remember(&mut self, integration_id: Uuid, loaded: &Loaded) {
        self.cache.insert(
            integration_id,
            Cached {
                secret: loaded.secret.clone(),
                refresh_at: loaded.refresh_at,
                fetched: Instant::now(),
            },
        );
    }

    /// Records a failure worth seeing in `/actors`; expected refusals (not found, not
    /// active) are the caller's business.
    fn report<T>(&self, result: &Result<T, CredentialError>) {
        if let Err(
            e @ (CredentialError::Refresh(_)
            | CredentialError::RefreshLock(_)
            | CredentialError::Crypto(_)
            | CredentialError::Storage(_)),
        ) = result
        {
            self.health.record_error(&e.to_string());
        }
    }

    fn update_backlog(&self) {
        let waiting: usize = self.lanes.values().map(|l| l.waiting.len()).sum();
        self.health.set_backlog(waiting as u64);
    }

    /// Queues `op` behind the integration's running operation, or starts it.
    fn enqueue(&mut self, integration_id: Uuid, op: Op, ctx: &mut Context<Self>) {
        let lane = self.lanes.entry(integration_id).or_default();
        lane.waiting.push_back(op);
        if !lane.busy {
            self.run_next(integration_id, ctx);
        }
        self.update_backlog();
    }

    /// Starts the next waiting operation of an idle integration. A `Get` queued behind a
    /// finished load is answered from the cache without running anything.
    fn run_next(&mut self, integration_id: Uuid, ctx: &mut Context<Self>) {
        loop {
            let Some(op) = self
                .lanes
                .get_mut(&integration_id)
                .and_then(|lane| lane.waiting.pop_front())
            else {
                self.lanes.remove(&integration_id);
                return;
            };
            let op = match op {
                Op::Get(reply) => match self.cached(integration_id) {
                    Some(secret) => {
                        let _ = reply.send(Ok(secret));
                        continue;
                    }
                    None => Op::Get(reply),
                },
                refresh @ Op::Refresh(..) => refresh,
            };
            self.start(integration_id, op, ctx);
            return;
        }
    }

    /// Runs `op` as a future of the actor's context; [`CredentialVault::finish`] takes the
    /// result back in the actor.
    fn start(&mut self, integration_id: Uuid, op: Op, ctx: &mut Context<Self>) {
        if let Some(lane) = self.lanes.get_mut(&integration_id) {
            lane.busy = true;
            lane.stale = false;
        }
        let logic = self.logic.clone();
        let work = async move {
            match op {
                Op::Get(reply) => Done::Get {
                    result: logic.load(integration_id).await,
                    reply,
                },
                Op::Refresh(reply, audit) => Done::Refresh {
                    result: logic.force_refresh(integration_id, audit).await,
                    reply,
                },
            }
        };
        ctx.spawn(
            work.into_actor(self)
                .map(move |done, act, ctx| act.finish(integration_id, done, ctx)),
        );
    }

    /// Caches what an operation loaded, answers its request, and starts the next one.
    fn finish(&mut self, integration_id: Uuid, done: Done, ctx: &mut Context<Self>) {
        let stale = self
            .lanes
            .get(&integration_id)
            .is_some_and(|lane| lane.stale);
        match done {
            Done::Get { result, reply } => {
                if let Ok(loaded) = &result
                    && !stale
                {
                    self.remember(integration_id, loaded);
                }
                let result = result.map(|loaded| loaded.secret);
                self.report(&result);
                let _ = reply.send(result);
            }
            Done::Refresh { result, reply } => {
                if let Ok((_, loaded)) = &result
                    && !stale
                {
                    self.remember(integration_id, loaded);
                }
                let result = result.map(|(integration, _)| integration);
                self.report(&result);
                let _ = reply.send(result);
            }
        }
        if let Some(lane) = self.lanes.get_mut(&integration_id) {
            lane.busy = false;
        }
        self.run_next(integration_id, ctx);
        self.update_backlog();
    }
}

/// A finished operation with the request it answers.
enum Done {
    Get {
        result: Result<Loaded, CredentialError>,
        reply: oneshot::Sender<Result<Secret, CredentialError>>,
    },
    Refresh {
        result: Result<(Integration, Loaded), CredentialError>,
        reply: oneshot::Sender<Result<Integration, CredentialError>>,
    },
}

impl Handler<GetCredential> for CredentialVault {
    type Result = ResponseFuture<Result<Secret, CredentialError>>;

    fn handle(&mut self, msg: GetCredential, ctx: &mut Self::Context) -> Self::Result {
        self.health.record_message();
        if let Some(secret) = self.cached(msg.integration_id) {
            return Box::pin(std::future::ready(Ok(secret)));
        }
        let (reply, answer) = oneshot::channel();
        self.enqueue(msg.integration_id, Op::Get(reply), ctx);
        Box::pin(async move { answer.await.unwrap_or(Err(CredentialError::VaultStopped)) })
    }
}

impl Handler<RefreshCredential> for CredentialVault {
    type Result = ResponseFuture<Result<Integration, CredentialError>>;

    fn handle(&mut self, msg: RefreshCredential, ctx: &mut Self::Context) -> Self::Result {
        self.health.record_message();
        let (reply, answer) = oneshot::channel();
        self.enqueue(msg.integration_id, Op::Refresh(reply, msg.audit), ctx);
        Box::pin(async move { answer.await.unwrap_or(Err(CredentialError::VaultStopped)) })
    }
}

impl Handler<InvalidateCredential> for CredentialVault {
    type Result = ();

    fn handle(&mut self, msg: InvalidateCredential, _ctx: &mut Self::Context) {
        self.cache.remove(&msg.integration_id);
        if let Some(lane) = self.lanes.get_mut(&msg.integration_id)
            && lane.busy
        {
            lane.stale = true;
        }
    }
}

struct RegistryInner {
    deps: VaultDeps,
    locks: RefreshLocks,
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
        let supervisor_health = health.register_supervisor(&supervisor.key);
        supervisor_health.set_state(ActorState::Running);
        Self {
            inner: Arc::new(RegistryInner {
                locks: RefreshLocks::new(
                    deps.credentials.db().pool().clone(),
                    deps.tuning.lock,
                    deps.tuning.refresh_slots,
                ),
                deps,
                health,
                supervisor,
                _supervisor_health: supervisor_health,
                vaults: Mutex::new(HashMap::new()),
            }),
        }
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
        let addr = CredentialVault::new(
            OrgVault::new(
                organization_id,
                self.inner.deps.clone(),
                self.inner.locks.clone(),
            ),
            health,
        )
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

    /// Refreshes an integration's credentials now; `audit` is written with the credentials
    /// the refresh stores, in their transaction.
    pub async fn refresh(
        &self,
        organization_id: Uuid,
        integration_id: Uuid,
        audit: Option<AuditEntry>,
    ) -> Result<Integration, CredentialError> {
        self.vault(organization_id)
            .send(RefreshCredential {
                integration_id,
                audit,
            })
            .await
            .map_err(|_| CredentialError::VaultStopped)?
    }

    /// The provider refused the credential this process served: drops the cached value,
    /// loads the stored one again (another replica may have replaced it; refreshed first
    /// when due) and checks it live at the provider. Whether the integration is really
    /// refused is decided by the credential stored now, not by one this process had cached.
    pub async fn recheck(
        &self,
        organization_id: Uuid,
        integration_id: Uuid,
    ) -> Result<Validation, CredentialError> {
        let vault = self.vault(organization_id);
        // The mailbox is first in, first out: the load below runs after the invalidation.
        vault.do_send(InvalidateCredential { integration_id });
        let secret = vault
            .send(GetCredential { integration_id })
            .await
            .map_err(|_| CredentialError::VaultStopped)??;
        let deps = &self.inner.deps;
        let integration = deps
            .store
            .get(organization_id, integration_id)
            .await?
            .ok_or(CredentialError::NotFound(integration_id))?;
        let connector = deps
            .connectors
            .get(&integration.connector_type)
            .ok_or_else(|| CredentialError::NoConnector(integration.connector_type.clone()))?;
        let after = deps.tuning.refresh_timeout;
        let validation = tokio::time::timeout(after, connector.validate(&integration, &secret))
            .await
            .map_err(|_| ConnectorError::Unavailable {
                connector: connector.connector_type(),
                source: Box::new(ProviderTimeout {
                    operation: "validate",
                    after,
                }),
            })??;
        tracing::info!(
            organization_id = %organization_id,
            integration_id = %integration_id,
            valid = validation.valid,
            "stored credential re-checked after the provider refused a served one"
        );
        Ok(validation)
    }

    /// Takes the cross-replica refresh lock of an integration for a write outside a refresh
    /// (a reinstall replacing its credentials), with the vault's bounds.
    pub(crate) async fn refresh_lock(
        &self,
        integration_id: Uuid,
    ) -> Result<RefreshLock, CredentialError> {
        Ok(self.inner.locks.acquire(integration_id).await?)
    }

    /// Drops the cached credential of an integration (no-op when its vault is not running).
    pub(crate) fn invalidate(&self, organization_id: Uuid, integration_id: Uuid) {
        if let Some(addr) = self.inner.vaults.lock().get(&organization_id) {
            addr.do_send(InvalidateCredential { integration_id });
        }
    }

    /// Stops every vault actor.
    pub(crate) fn stop_all(&self) {
        for (_, addr) in self.inner.vaults.lock().drain() {
            drop(addr);
        }
    }
}
