//! Wiring of the integrations with their providers (part of the composition root, since it
//! joins [`crate::integrations`] with the Slack and GitHub slices): [`IntegrationParts::build`]
//! assembles the stores, connectors, vault registry, service, webhook endpoint and stream
//! handler from a pool; [`IntegrationsModule`] plugs them into the server
//! ([`crate::server::Module`]).

use std::sync::Arc;

use actix_web::web;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use infragpt_actors::{Cluster, Secret};
use ring::hkdf;

use crate::config::{Config, VaultConfig};
use crate::crypto::state::{StateError, StateSigner};
use crate::crypto::vault::{DEV_KEY_ID, KeyRing, VaultError, VaultKeysConfig};
use crate::db::Pool;
use crate::db::nonces::PgNonceLedger;
use crate::github::integration::GithubConnector;
use crate::github::stream::GithubStreamHandler;
use crate::github::webhook::{self, GithubWebhook};
use crate::http::HttpShell;
use crate::http::side::SideListener;
use crate::integrations::connector::{ConnectorError, ConnectorRegistry};
use crate::integrations::credentials::PgCredentials;
use crate::integrations::routes;
use crate::integrations::service::IntegrationService;
use crate::integrations::store::IntegrationStore;
use crate::integrations::vault::{CredentialStore, VaultDeps, VaultRegistry, VaultTuning};
use crate::server::{AppState, Module};
use crate::slack::integration::{SlackConnector, SlackConnectorConfig};

/// Why the integrations could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Neither `vault.keys` nor `vault.dev_key_file` is configured.
    #[error(
        "no credential encryption key: configure vault.keys and vault.active_key (or vault.dev_key_file for local development)"
    )]
    NoVaultKey,
    /// The key ring is invalid.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The state key could not be derived.
    #[error("state signing key: {0}")]
    State(#[from] StateError),
    /// A connector could not be built.
    #[error(transparent)]
    Connector(#[from] ConnectorError),
}

/// The key ring from the `vault` section. Refuses to run without a key unless
/// `vault.dev_key_file` is set (then the file is created with a random key on first start).
pub fn load_keyring(vault: &VaultConfig) -> Result<KeyRing, SetupError> {
    if let Some(keys) = VaultKeysConfig::from_vault_config(vault) {
        return Ok(KeyRing::from_config(&keys)?);
    }
    match &vault.dev_key_file {
        Some(path) => Ok(KeyRing::dev_key_file(path)?),
        None => Err(SetupError::NoVaultKey),
    }
}

/// The HMAC key of OAuth `state` values, derived with HKDF-SHA256 from the active vault key
/// (domain-separated, so the state key reveals nothing about the encryption key). Every
/// instance sharing the vault keys accepts each other's states; rotating the active key
/// invalidates states in flight (they live ten minutes).
pub fn state_key(vault: &VaultConfig) -> Result<Secret, SetupError> {
    let encoded: String = if let Some(keys) = VaultKeysConfig::from_vault_config(vault) {
        keys.keys
            .get(&keys.active)
            .ok_or_else(|| VaultError::ActiveKeyMissing(keys.active.clone()))?
            .expose()
            .trim()
            .to_owned()
    } else {
        let path = vault.dev_key_file.as_ref().ok_or(SetupError::NoVaultKey)?;
        // Validates (and creates) the file exactly as the key ring does.
        KeyRing::dev_key_file(path)?;
        std::fs::read_to_string(path)
            .map_err(|source| VaultError::KeyFileIo {
                path: path.clone(),
                source,
            })?
            .trim()
            .to_owned()
    };
    let ikm = STANDARD
        .decode(encoded)
        .map_err(|_| VaultError::KeyNotBase64 {
            key_id: vault
                .active_key
                .clone()
                .unwrap_or_else(|| DEV_KEY_ID.to_owned()),
        })?;
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"infragpt-oauth-state-v1");
    let prk = salt.extract(&ikm);
    let mut out = [0u8; 32];
    prk.expand(&[b"state-hmac"], hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut out))
        .map_err(|_| StateError::KeyTooShort)?;
    Ok(Secret::new(hex::encode(out)))
}

/// Everything the integrations need, built from a pool.
#[derive(Clone)]
pub struct IntegrationParts {
    /// The lifecycle service (REST routes).
    pub service: IntegrationService,
    /// The webhook endpoint.
    pub webhook: GithubWebhook,
    /// The `GitHubWebhookStream` handler (register its [`GithubStreamHandler::stream_spec`]).
    pub stream: GithubStreamHandler,
}

impl std::fmt::Debug for IntegrationParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegrationParts")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl IntegrationParts {
    /// Builds the parts. `connectors` (optional) replaces the default registry (Slack and
    /// GitHub from `config`), e.g. with fakes in tests. Must run inside an actix system
    /// (vault actors start on demand).
    pub fn build(
        pool: Pool,
        config: &Config,
        cluster: &Cluster,
        keyring: Arc<KeyRing>,
        state_key: &Secret,
        connectors: Option<ConnectorRegistry>,
    ) -> Result<Self, SetupError> {
        let store = IntegrationStore::new(pool.clone());
        let credentials = CredentialStore::new(keyring, PgCredentials::new(pool.clone()));
        let connectors = match connectors {
            Some(c) => c,
            None => default_connectors(config, &store)?,
        };
        let vaults = VaultRegistry::new(
            VaultDeps {
                store: store.clone(),
                credentials: credentials.clone(),
                connectors: connectors.clone(),
                tuning: VaultTuning::default(),
            },
            cluster.health().clone(),
        );
        let service = IntegrationService {
            store: store.clone(),
            credentials,
            connectors,
            vaults: vaults.clone(),
            signer: Arc::new(StateSigner::new(state_key)?),
            ledger: Arc::new(PgNonceLedger::new(pool)),
        };
        let webhook = GithubWebhook::new(
            config.integrations.github.webhook_secret.as_ref(),
            cluster.clone(),
        );
        let stream = GithubStreamHandler::new(store, Some(vaults), cluster.health());
        Ok(Self {
            service,
            webhook,
            stream,
        })
    }

    /// Adds the REST routes and `POST /webhooks/github`.
    pub fn configure(&self, cfg: &mut web::ServiceConfig) {
        routes::configure(cfg, self.service.clone());
        webhook::configure(cfg, self.webhook.clone());
    }
}

/// The Slack and GitHub connectors from configuration. Adding a connector: one module and
/// one `register` line here.
pub(crate) fn default_connectors(
    config: &Config,
    store: &IntegrationStore,
) -> Result<ConnectorRegistry, SetupError> {
    let mut registry = ConnectorRegistry::new();
    registry.register(SlackConnector::new(
        SlackConnectorConfig::from_config(&config.integrations.slack, &config.slack.api_url),
        store.clone(),
    )?);
    registry.register(GithubConnector::new(
        &config.integrations.github,
        store.clone(),
    )?);
    Ok(registry)
}

/// The integrations as a server module: registers the GitHub webhook stream with the
/// cluster, adds the routes, and serves `POST /webhooks/github` on
/// `integrations.github.webhook_port` too when it is set.
///
/// The REST routes expect a [`crate::integrations::Principal`] in the request extensions (put
/// there by the authentication middleware).
pub struct IntegrationsModule {
    config: Arc<Config>,
    cluster: Cluster,
    keyring: Arc<KeyRing>,
    parts: Option<IntegrationParts>,
    webhook_server: Option<SideListener>,
}

impl std::fmt::Debug for IntegrationsModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegrationsModule")
            .field("started", &self.parts.is_some())
            .finish_non_exhaustive()
    }
}

impl IntegrationsModule {
    /// A module for `config`, recording into `cluster`, sealing with `keyring` (see
    /// [`load_keyring`]).
    pub fn new(config: Arc<Config>, cluster: Cluster, keyring: Arc<KeyRing>) -> Self {
        Self {
            config,
            cluster,
            keyring,
            parts: None,
            webhook_server: None,
        }
    }

    /// A module over parts built beforehand (the composition root builds them early so the
    /// Slack adapter can use the vault-backed token source).
    pub(crate) fn with_parts(mut self, parts: IntegrationParts) -> Self {
        self.parts = Some(parts);
        self
    }

    /// The parts, once started.
    pub fn parts(&self) -> Option<&IntegrationParts> {
        self.parts.as_ref()
    }
}

#[async_trait::async_trait]
impl Module for IntegrationsModule {
    fn name(&self) -> &str {
        "integrations"
    }

    async fn start(
        &mut self,
        state: &AppState,
        http: &mut HttpShell,
        _grpc: &mut crate::grpc::server::GrpcShell,
    ) -> anyhow::Result<()> {
        let parts = match self.parts.take() {
            Some(parts) => parts,
            None => IntegrationParts::build(
                state.db.pool().clone(),
                &self.config,
                &self.cluster,
                self.keyring.clone(),
                &state_key(&self.config.vault)?,
                None,
            )?,
        };
        self.cluster
            .register_stream(parts.stream.clone().stream_spec())?;
        let hook_parts = parts.clone();
        http.add_routes(Arc::new(move |cfg| hook_parts.configure(cfg)));
        if let Some(port) = self.config.integrations.github.webhook_port {
            let hook = parts.webhook.clone();
            let shell = HttpShell::new(
                crate::http::Readiness::default(),
                self.config.http_log,
                self.config.cors.clone(),
            )
            // The main shell's webhook budget: one per process, whatever the port.
            .with_webhooks(http.webhooks.clone())
            .with_routes(move |cfg| webhook::configure(cfg, hook.clone()));
            self.webhook_server = Some(SideListener::start(
                "github webhook",
                self.config.bind_ip()?,
                port,
                shell,
                self.config.shutdown_grace_ms,
            )?);
        }
        self.parts = Some(parts);
        Ok(())
    }

    async fn stop(&mut self) {
        if let Some(server) = self.webhook_server.take() {
            server.stop().await;
        }
        if let Some(parts) = &self.parts {
            parts.service.vaults.stop_all();
        }
    }
}
