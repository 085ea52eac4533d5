//! The Slack module: Socket Mode connections, `POST /slack/events`, the `slack` readiness
//! check, and the Web API adapter the conversation handler uses.
//!
//! Wiring (composition root):
//!
//! ```text
//! let web = SlackModule::build_web(&config.slack, Some(db.pool().clone()), None)?;
//! // hand `web.clone()` (an Arc<SlackWeb>, which is an Arc<dyn SlackApi>) to the conversation handler
//! let module = SlackModule::new(config.slack.clone(), cluster.clone(), web);
//! ```

use std::sync::Arc;

use actix::Addr;
use infragpt_actors::cluster::Cluster;
use infragpt_actors::health::HealthRegistry;

use super::events_http::{self, EventsEndpoint};
use super::socket::{
    SlackConnection, SocketContext, SocketSettings, StopConnection, fatal_connections,
    start_connections,
};
use super::web::{ConfigBotToken, SlackWeb, WebError, WebSettings, web_client};
use super::workspaces::{
    PgWorkspaces, RecheckingDirectory, TokenChain, WorkspaceBoard, WorkspaceTokens,
};
use crate::config::SlackConfig;
use crate::db::Pool;
use crate::grpc::server::GrpcShell;
use crate::http::{HttpShell, ReadinessCheck};
use crate::server::{AppState, Module};

/// `slack` readiness: fails while a Socket Mode connection is in a fatal state
/// (`link_disabled`). Reconnecting connections do not fail it: the HTTP and gRPC APIs (and
/// the agent's SendReply) keep working while Slack is briefly unreachable.
#[derive(Debug, Clone)]
pub struct SlackReadiness {
    registry: HealthRegistry,
}

impl SlackReadiness {
    /// A check over the Slack connection actors in `registry`.
    pub fn new(registry: HealthRegistry) -> Self {
        Self { registry }
    }
}

#[async_trait::async_trait]
impl ReadinessCheck for SlackReadiness {
    fn name(&self) -> &str {
        "slack"
    }

    async fn check(&self) -> Result<(), String> {
        let fatal = fatal_connections(&self.registry);
        if fatal.is_empty() {
            Ok(())
        } else {
            Err(format!("socket mode failed: {}", fatal.join("; ")))
        }
    }
}

/// The Slack side of the service.
pub struct SlackModule {
    config: SlackConfig,
    cluster: Cluster,
    web: Arc<SlackWeb>,
    socket: SocketSettings,
    connections: Vec<Addr<SlackConnection>>,
    /// The thread the connections run on.
    socket_arbiter: Option<actix::Arbiter>,
}

impl std::fmt::Debug for SlackModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackModule")
            .field("socket_mode", &self.config.socket_mode)
            .field("connections", &self.connections.len())
            .finish_non_exhaustive()
    }
}

impl SlackModule {
    /// The module. `web` is the adapter from [`SlackModule::build_web`] (its client opens
    /// the Socket Mode connections; its workspace board shows in the connections' detail).
    pub fn new(config: SlackConfig, cluster: Cluster, web: Arc<SlackWeb>) -> Self {
        let socket = SocketSettings {
            connections: config.connections,
            ..SocketSettings::default()
        };
        Self {
            config,
            cluster,
            web,
            socket,
            connections: Vec::new(),
            socket_arbiter: None,
        }
    }

    /// Overrides the Socket Mode timing (tests use short backoffs).
    pub fn with_socket_settings(mut self, socket: SocketSettings) -> Self {
        self.socket = socket;
        self
    }

    /// The Web API adapter for `config`: tokens from `slack.bot_token` (single workspace,
    /// team from `auth.test`) and then `extra_tokens` (e.g. the vault-backed multi-workspace
    /// source); workspaces recorded in `slack_workspaces` when `pool` is given, inactive only
    /// once the token stored now is refused too ([`RecheckingDirectory`]).
    pub fn build_web(
        config: &SlackConfig,
        pool: Option<Pool>,
        extra_tokens: Option<Arc<dyn WorkspaceTokens>>,
    ) -> Result<Arc<SlackWeb>, WebError> {
        let settings = WebSettings {
            throttle: config.throttle,
            ..WebSettings::default()
        };
        Self::build_web_with(config, pool, extra_tokens, settings)
    }

    /// [`SlackModule::build_web`] with explicit adapter settings.
    pub fn build_web_with(
        config: &SlackConfig,
        pool: Option<Pool>,
        extra_tokens: Option<Arc<dyn WorkspaceTokens>>,
        settings: WebSettings,
    ) -> Result<Arc<SlackWeb>, WebError> {
        let client = Arc::new(web_client(&config.api_url, &settings)?);
        let board = WorkspaceBoard::new();
        let directory = pool.map(|p| {
            Arc::new(PgWorkspaces::new(p)) as Arc<dyn super::workspaces::WorkspaceDirectory>
        });
        let mut chain = TokenChain::new();
        if let Some(token) = &config.bot_token {
            chain = chain.with(Arc::new(ConfigBotToken::new(
                token.clone(),
                client.clone(),
                settings.clone(),
                directory.clone(),
                board.clone(),
            )));
        }
        if let Some(extra) = extra_tokens {
            chain = chain.with(extra);
        }
        let chain: Arc<dyn WorkspaceTokens> = Arc::new(chain);
        let mut web = SlackWeb::new(client, chain.clone(), settings).with_board(board.clone());
        if let Some(dir) = directory {
            // A refused token is re-read before the workspace is recorded inactive: another
            // replica may have replaced it.
            web = web.with_directory(Arc::new(RecheckingDirectory::new(dir, chain, board)));
        }
        Ok(Arc::new(web))
    }

    /// The Web API adapter.
    pub fn web(&self) -> Arc<SlackWeb> {
        self.web.clone()
    }

    /// The `slack` readiness check.
    pub fn readiness(&self) -> SlackReadiness {
        SlackReadiness::new(self.cluster.health().clone())
    }

    /// The `POST /slack/events` endpoint state.
    pub fn events_endpoint(&self) -> Arc<EventsEndpoint> {
        Arc::new(EventsEndpoint::new(
            self.config.signing_secret.as_ref(),
            self.cluster.clone(),
        ))
    }

    /// Starts the Socket Mode connections (when `slack.socket_mode` and `slack.app_token`
    /// are set); returns how many. Must run inside an actix system.
    pub fn start_socket_mode(&mut self) -> usize {
        if !self.connections.is_empty() {
            return self.connections.len();
        }
        let Some(app_token) = self
            .config
            .app_token
            .clone()
            .filter(|_| self.config.socket_mode)
        else {
            return 0;
        };
        let ctx = SocketContext {
            cluster: self.cluster.clone(),
            client: self.web.client().clone(),
            web_settings: WebSettings::default(),
            app_token,
            board: self.web.board().clone(),
        };
        let (arbiter, connections) = start_connections(ctx, &self.socket, None);
        self.connections = connections;
        self.socket_arbiter = Some(arbiter);
        tracing::info!(
            connections = self.connections.len(),
            "slack socket mode started"
        );
        self.connections.len()
    }

    /// Stops the Socket Mode connections (closing their sockets).
    pub async fn stop_socket_mode(&mut self) {
        let conns = std::mem::take(&mut self.connections);
        futures::future::join_all(conns.iter().map(|a| a.send(StopConnection))).await;
        if let Some(arbiter) = self.socket_arbiter.take() {
            arbiter.stop();
        }
    }
}

#[async_trait::async_trait]
impl Module for SlackModule {
    fn name(&self) -> &str {
        "slack"
    }

    async fn start(
        &mut self,
        state: &AppState,
        http: &mut HttpShell,
        _grpc: &mut GrpcShell,
    ) -> anyhow::Result<()> {
        let endpoint = self.events_endpoint();
        let interactions = endpoint.clone();
        let commands = endpoint.clone();
        http.add_routes(Arc::new(move |cfg| {
            events_http::configure(cfg, endpoint.clone())
        }));
        http.add_routes(Arc::new(move |cfg| {
            super::commands::configure(cfg, commands.clone())
        }));
        http.add_routes(Arc::new(move |cfg| {
            super::interactions_http::configure(cfg, interactions.clone())
        }));
        state.readiness.add(self.readiness());
        if self.config.socket_mode {
            self.start_socket_mode();
        } else {
            tracing::info!("slack socket mode off: events arrive on POST /slack/events");
        }
        Ok(())
    }

    async fn stop(&mut self) {
        self.stop_socket_mode().await;
    }
}
