//! [`IdentityModule`]: plugs identity into the server (Clerk stream, webhook, JWT auth, API).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use infragpt_actors::audit::AuditLog;
use infragpt_actors::{Cluster, StreamSpec};
use infragpt_actors::{kinds, sources};

use super::api::{self, IdentityApi};
use super::store::IdentityStore;
use super::sync::IdentitySync;
use super::webhook::{self, ClerkWebhook};
use crate::config::IdentityConfig;
use crate::db::PgAudit;
use crate::grpc::server::GrpcShell;
use crate::http::HttpShell;
use crate::identity::auth::Authenticator;
use crate::server::{AppState, Module};

/// Name of the Clerk stream's router (actor tree, metrics).
pub const STREAM_NAME: &str = "identity-sync";

/// The identity module. On start it
///
/// * registers the Clerk stream (`IdentitySync` workers) on the cluster,
/// * adds `POST /webhooks/clerk`, the `/identity` API and the app-wide [`Authenticator`]
///   (so other modules' routes can use [`crate::identity::auth::OrgPrincipal`]),
/// * when `identity.clerk.port` is set, also serves the webhook on that port (its own small
///   HTTP server, stopped in [`Module::stop`]),
/// * warns when the webhook secret or the JWT settings are missing (those endpoints then
///   refuse every request: fail closed).
pub struct IdentityModule {
    config: IdentityConfig,
    cluster: Cluster,
    webhook_server: Option<WebhookServer>,
}

struct WebhookServer {
    addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
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
        self.webhook_server.as_ref().map(|s| s.addr)
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
        let audit: Arc<dyn AuditLog> = Arc::new(PgAudit::new(pool));

        self.cluster
            .register_stream(StreamSpec {
                name: STREAM_NAME.to_owned(),
                kind: kinds::IDENTITY_SYNC,
                source: sources::CLERK,
                handler: Arc::new(IdentitySync::new(store.clone(), audit.clone())),
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
        let api = IdentityApi::new(store, audit);

        let routes_hook = hook.clone();
        http.add_routes(Arc::new(move |cfg| {
            auth.configure(cfg);
            webhook::configure(cfg, routes_hook.clone());
            api::configure(cfg, api.clone());
        }));

        if let Some(port) = clerk.port {
            let ip: std::net::IpAddr = state.config.bind_address.parse().with_context(|| {
                format!(
                    "bind_address `{}` is not an IP address",
                    state.config.bind_address
                )
            })?;
            let addr = SocketAddr::new(ip, port);
            let listener =
                std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
            let addr = listener.local_addr()?;
            // The main shell's webhook budget: one per process, whatever the port.
            let shell = HttpShell::from_config(&state.config, state.readiness.clone())
                .with_webhooks(http.webhooks.clone())
                .with_routes(move |cfg| webhook::configure(cfg, hook.clone()));
            let grace_secs = state.config.shutdown_grace_ms.div_ceil(1000).max(1);
            let server = actix_web::HttpServer::new(move || crate::http::app(shell.clone()))
                .workers(1)
                .disable_signals()
                .shutdown_timeout(grace_secs)
                .listen(listener)
                .context("starting the Clerk webhook listener")?
                .run();
            let handle = server.handle();
            let task = tokio::spawn(server);
            tracing::info!(%addr, "clerk webhook listener started");
            self.webhook_server = Some(WebhookServer { addr, handle, task });
        }
        Ok(())
    }

    async fn stop(&mut self) {
        if let Some(server) = self.webhook_server.take() {
            server.handle.stop(true).await;
            match server.task.await {
                Ok(Ok(())) => tracing::info!("clerk webhook listener stopped"),
                Ok(Err(e)) => tracing::error!(error = %e, "clerk webhook listener failed"),
                Err(e) => tracing::error!(error = %e, "clerk webhook listener task failed"),
            }
        }
    }
}
