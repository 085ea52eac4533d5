//! [`IdentityModule`]: plugs identity into the server (Clerk stream, webhook, JWT auth, API).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use infragpt_actors::{Cluster, StreamSpec};
use infragpt_actors::{kinds, sources};

use super::api::{self, IdentityApi};
use super::audit;
use super::store::IdentityStore;
use super::sync::IdentitySync;
use super::webhook::{self, ClerkWebhook};
use crate::config::IdentityConfig;
use crate::db::PgAudit;
use crate::grpc::server::GrpcShell;
use crate::http::HttpShell;
use crate::http::side::SideListener;
use crate::identity::auth::Authenticator;
use crate::server::{AppState, Module};

/// Name of the Clerk stream's router (actor tree, metrics).
pub(crate) const STREAM_NAME: &str = "identity-sync";

/// The identity module. On start it
///
/// * registers the Clerk stream (`IdentitySync` workers) on the cluster,
/// * adds `POST /webhooks/clerk`, the `/identity` API, `GET /audit` and the app-wide [`Authenticator`]
///   (so other modules' routes can use [`crate::identity::auth::OrgPrincipal`]),
/// * when `identity.clerk.port` is set, also serves the webhook on that port (its own small
///   HTTP server, stopped in [`Module::stop`]),
/// * warns when the webhook secret or the JWT settings are missing (those endpoints then
///   refuse every request: fail closed).
pub struct IdentityModule {
    config: IdentityConfig,
    cluster: Cluster,
    webhook_server: Option<SideListener>,
}

impl std::fmt::Debug for IdentityModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityModule")
            .field("webhook_addr", &self.webhook_addr())
            .finish_non_exhaustive()
    }
}

impl IdentityModule {
    /// A module for `config` (the `identity:` section) recording Clerk events in `cluster`.
    pub fn new(config: IdentityConfig, cluster: Cluster) -> Self {
        Self {
            config,
            cluster,
            webhook_server: None,
        }
    }

    /// Where the separate webhook listener is bound, when `identity.clerk.port` is set and
    /// the module runs.
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook_server.as_ref().map(SideListener::addr)
    }
}

#[async_trait::async_trait]
impl Module for IdentityModule {
    fn name(&self) -> &str {
        "identity"
    }

    async fn start(
        &mut self,
        state: &AppState,
        http: &mut HttpShell,
        _grpc: &mut GrpcShell,
    ) -> anyhow::Result<()> {
        let clerk = &self.config.clerk;
        let pool = state.db.pool().clone();
        let store = IdentityStore::new(pool.clone());
        let audit_log = PgAudit::new(pool);

        self.cluster
            .register_stream(StreamSpec {
                name: STREAM_NAME.to_owned(),
                kind: kinds::IDENTITY_SYNC,
                source: sources::CLERK,
                handler: Arc::new(IdentitySync::new(store.clone())),
            })
            .context("registering the Clerk stream")?;

        let hook = ClerkWebhook::new(clerk.webhook_secret.as_ref(), self.cluster.clone())
            .context("identity.clerk.webhook_secret")?;
        if !hook.is_configured() {
            tracing::warn!(
                "identity.clerk.webhook_secret is not set: POST /webhooks/clerk refuses every request (503)"
            );
        }
        let auth = Authenticator::from_config(clerk, store.clone())
            .context("identity.clerk session token settings")?;
        if !auth.is_configured() {
            tracing::warn!(
                "identity.clerk.jwks_url or identity.clerk.issuer is not set: authenticated routes refuse every request (503)"
            );
        }
        let api = IdentityApi::new(store);

        let routes_hook = hook.clone();
        http.add_routes(Arc::new(move |cfg| {
            auth.configure(cfg);
            webhook::configure(cfg, routes_hook.clone());
            api::configure(cfg, api.clone());
            audit::configure(cfg, audit_log.clone());
        }));

        if let Some(port) = clerk.port {
            // The main shell's webhook budget: one per process, whatever the port.
            let shell = HttpShell::from_config(&state.config, state.readiness.clone())
                .with_webhooks(http.webhooks.clone())
                .with_routes(move |cfg| webhook::configure(cfg, hook.clone()));
            self.webhook_server = Some(SideListener::start(
                "clerk webhook",
                state.config.bind_ip()?,
                port,
                shell,
                state.config.shutdown_grace_ms,
            )?);
        }
        Ok(())
    }

    async fn stop(&mut self) {
        if let Some(server) = self.webhook_server.take() {
            server.stop().await;
        }
    }
}
