//! [`TestApp`]: the one way tests assemble the service. Always a fresh migrated database and
//! the actor core on it; the builder adds the Slack simulator, identity (a JWKS server and the
//! Clerk stream), the development agent, configuration changes or custom modules.
//!
//! - [`TestAppBuilder::start`] serves the service on loopback ports, assembled by the
//!   composition root (`app::start`) unless the test supplies its modules.
//! - [`TestAppBuilder::build`] starts no listener: the test plugs the routes it exercises into
//!   an in-process actix service, on the same database and cluster.

use std::net::SocketAddr;
use std::sync::Arc;

use infragpt::app::{Core, CoreModule};
use infragpt::config::{self, Config, CorsConfig};
use infragpt::db::{Database, Pool};
use infragpt::http::{HttpShell, Readiness};
use infragpt::identity::api::{self, IdentityApi};
use infragpt::identity::auth::Authenticator;
use infragpt::identity::jwt::ClerkJwtVerifier;
use infragpt::identity::store::IdentityStore;
use infragpt::identity::sync::IdentitySync;
use infragpt::identity::webhook::{self, ClerkWebhook};
use infragpt::server::{self, Module, RunningServer};
use infragpt::testkit::devagent::{DevAgent, DevAgentConfig, DevAgentHandle};
use infragpt::testkit::slack_sim::{SimConfig, SlackSim};
use infragpt::testkit::test_db::TestDb;
use infragpt_actors::inbox::EventStatus;
use infragpt_actors::{Cluster, Secret, StreamSpec};
use infragpt_actors::{kinds, sources};
use serde_json::Value;

use super::identity::{AZP, ISSUER, JwksServer, KEY_A, KID_A, SVIX_SECRET, jwks, jwt_verifier};
use super::wait::{GUARD, eventually};

/// The admin token of every served test app.
pub const ADMIN: &str = "test-admin-token-0123456789";
/// A test-only vault key (32 bytes, base64).
pub const VAULT_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// Builds the modules of a served app from its configuration, database and core.
type Modules = dyn Fn(&Config, &Database, &Core) -> anyhow::Result<Vec<Box<dyn Module>>>;
type Tweak = Box<dyn FnOnce(&mut Config)>;

/// What the test wants in its app; see [`TestApp::builder`].
#[must_use]
pub struct TestAppBuilder {
    sim: Option<SimConfig>,
    connections: u32,
    identity: bool,
    dev_agent: bool,
    modules: Option<Arc<Modules>>,
    tweaks: Vec<Tweak>,
}

impl TestAppBuilder {
    /// A Slack simulator. Served, the service uses it over Socket Mode (one connection) with
    /// the first workspace's bot token, and [`start`](Self::start) waits until it is connected.
    pub fn with_slack_sim(mut self, sim: SimConfig) -> Self {
        self.sim = Some(sim);
        self
    }

    /// Socket Mode connections of a served app (default 1).
    pub fn with_connections(mut self, connections: u32) -> Self {
        self.connections = connections;
        self
    }

    /// Identity: a JWKS server with [`KEY_A`] as [`KID_A`]. Served, Clerk is configured with
    /// it and [`SVIX_SECRET`]; built, the app has the identity store and the Clerk stream
    /// (see [`TestApp::identity_shell`]).
    pub fn with_identity(mut self) -> Self {
        self.identity = true;
        self
    }

    /// The development agent, started once the service serves and replying through its
    /// gRPC port (served apps only).
    pub fn with_dev_agent(mut self) -> Self {
        self.dev_agent = true;
        self
    }

    /// A last change to the configuration (applied in order).
    pub fn configure(mut self, tweak: impl FnOnce(&mut Config) + 'static) -> Self {
        self.tweaks.push(Box::new(tweak));
        self
    }

    /// Serves only the actor core's module (ops routes, overload check): the tests plug
    /// their own streams into the cluster.
    pub fn core_only(self) -> Self {
        self.with_modules(|_, _, core| Ok(vec![Box::new(CoreModule::new(core.clone()))]))
    }

    /// Serves these modules instead of the composition root's.
    pub fn with_modules(
        mut self,
        modules: impl Fn(&Config, &Database, &Core) -> anyhow::Result<Vec<Box<dyn Module>>> + 'static,
    ) -> Self {
        self.modules = Some(Arc::new(modules));
        self
    }

    /// The app in process, without listeners. Must run inside an actix system.
    pub async fn build(self) -> TestApp {
        assert!(
            !self.dev_agent,
            "the dev agent needs a served app: use start()"
        );
        let identity = self.identity;
        let mut app = self.prepare().await;
        let core = Core::start(&app.config, &app.db.database()).expect("core");
        // Join the (one-replica) cluster: its partitions are leased before anything is
        // ingested. Streams registered later scan what this replica holds when they start.
        core.cluster.recover().await.expect("join the cluster");
        if identity {
            let store = IdentityStore::new(app.pool().clone());
            core.cluster
                .register_stream(StreamSpec {
                    name: "identity-sync".into(),
                    kind: kinds::IDENTITY_SYNC,
                    source: sources::CLERK,
                    handler: Arc::new(IdentitySync::new(store.clone())),
                })
                .expect("identity stream");
            app.identity = Some(store);
        }
        app.core = Some(core);
        app
    }

    /// The service on loopback ports (with the dev agent if asked for), connected to the
    /// simulator if there is one. Must run inside an actix system.
    pub async fn start(self) -> TestApp {
        let (dev_agent, connections) = (self.dev_agent, self.connections);
        let mut app = self.prepare().await;
        let held = dev_agent.then(|| app.agent_listener());
        app.start_service().await;
        if let Some(listener) = held {
            let config = app.dev_agent_config();
            app.agent = Some(DevAgent::start_on(config, listener).expect("dev agent"));
        }
        if app.sim.is_some() && app.config.slack.socket_mode {
            app.wait_connected(connections as usize).await;
        }
        app
    }

    /// The database, the simulator, the JWKS server and the configuration.
    async fn prepare(self) -> TestApp {
        let db = TestDb::new().await;
        let jwks = if self.identity {
            Some(JwksServer::start(jwks(&[(KEY_A, KID_A)])).await)
        } else {
            None
        };
        let agent_port = AgentPort::bind();
        let agent_addr = agent_port.addr;
        let mut yaml = format!(
            "bind_address: 127.0.0.1\nport: 0\ngrpc_port: 0\nlog_level: warn\nhttp_log: false\n\
             admin:\n  token: {ADMIN}\n\
             ops:\n  port: 0\n\
             agent:\n  endpoint: \"http://{agent_addr}\"\n  connect_timeout_ms: 1000\n  call_timeout_ms: 20000\n  retry_attempts: 2\n\
             vault:\n  active_key: k1\n  keys:\n    k1: \"{VAULT_KEY}\"\n\
             database:\n  url: \"{}\"\n",
            db.url.expose()
        );
        if let Some(jwks) = &jwks {
            yaml.push_str(&format!(
                "identity:\n  clerk:\n    webhook_secret: \"{SVIX_SECRET}\"\n    jwks_url: \"{}\"\n    issuer: \"{ISSUER}\"\n    authorized_parties: [\"{AZP}\"]\n",
                jwks.url
            ));
        }
        let mut config = config::load_str(&yaml, "test-app.yaml").expect("test app config");
        let sim = self
            .sim
            .map(|sim| SlackSim::start(sim).expect("Slack simulator"));
        if let Some(sim) = &sim {
            let sim_config = sim.config();
            config.slack.api_url = sim.base_url();
            config.slack.app_token = Some(sim_config.apps[0].app_token.clone());
            config.slack.signing_secret = Some(sim_config.apps[0].signing_secret.clone());
            config.slack.bot_token = Some(sim_config.teams[0].bot_token.clone());
            config.slack.socket_mode = true;
            config.slack.connections = self.connections;
        }
        for tweak in self.tweaks {
            tweak(&mut config);
        }
        TestApp {
            db,
            config,
            modules: self.modules,
            sim,
            jwks,
            identity: None,
            core: None,
            running: None,
            agent: None,
            agent_addr,
            agent_port: Some(agent_port),
            http: reqwest::Client::new(),
        }
    }
}

/// A fresh database, the actor core, and what the builder added.
pub struct TestApp {
    /// The app's own database.
    pub db: TestDb,
    config: Config,
    modules: Option<Arc<Modules>>,
    sim: Option<SlackSim>,
    jwks: Option<JwksServer>,
    identity: Option<IdentityStore>,
    core: Option<Core>,
    running: Option<RunningServer>,
    agent: Option<DevAgentHandle>,
    agent_addr: SocketAddr,
    /// The agent's port, held until an agent first serves on it.
    agent_port: Option<AgentPort>,
    http: reqwest::Client,
}

/// A loopback port bound but not listening: held for the dev agent from the moment the
/// service's configuration names it, so that no outgoing connection of the service or of a
/// parallel test takes it as its ephemeral port meanwhile (reserved and released, it was
/// taken now and then), while a call to it is still refused at once, as to a stopped agent.
struct AgentPort {
    socket: socket2::Socket,
    addr: SocketAddr,
}

impl AgentPort {
    fn bind() -> Self {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .expect("a socket for the dev agent");
        // The agent may be stopped and started again on the same address.
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("loopback");
        socket.bind(&any.into()).expect("bind the dev agent's port");
        let addr = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("the dev agent's port");
        Self { socket, addr }
    }

    /// Starts listening on the held port.
    fn listen(self) -> std::net::TcpListener {
        self.socket
            .listen(128)
            .expect("listen on the dev agent's port");
        self.socket.into()
    }
}

impl TestApp {
    /// Nothing but the database and the core; add parts with the builder's methods.
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            sim: None,
            connections: 1,
            identity: false,
            dev_agent: false,
            modules: None,
            tweaks: Vec::new(),
        }
    }

    pub fn pool(&self) -> &Pool {
        self.db.pool()
    }

    pub fn core(&self) -> &Core {
        self.core.as_ref().expect("the core runs")
    }

    pub fn cluster(&self) -> &Cluster {
        &self.core().cluster
    }

    pub fn sim(&self) -> &SlackSim {
        self.sim.as_ref().expect("built with_slack_sim")
    }

    pub fn jwks(&self) -> &JwksServer {
        self.jwks.as_ref().expect("built with_identity")
    }

    /// A verifier of the app's JWKS server (refetching on an unknown kid at once).
    pub fn jwt_verifier(&self) -> Arc<ClerkJwtVerifier> {
        jwt_verifier(self.jwks().url.clone())
    }

    // ----- served --------------------------------------------------------------------------

    fn running(&self) -> &RunningServer {
        self.running.as_ref().expect("the service is served")
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.running().http_addr
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.running().grpc_addr
    }

    /// `http://<http addr>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.http_addr())
    }

    /// `http://<ops listener addr>`: `/actors` and `/metrics` without a token (every served
    /// test app has an ops listener on a free loopback port).
    pub fn ops_url(&self) -> String {
        format!(
            "http://{}",
            self.running()
                .ops_addr
                .expect("the test app serves an ops listener")
        )
    }

    /// `/metrics` from the ops listener, as text.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.ops_url()))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body")
    }

    /// The sum of the samples of `metric` on the ops listener's `/metrics` (counters, gauges,
    /// and a histogram's `_count` and `_sum`, which parse as untyped), only those with `label`
    /// when given; 0 when there are none.
    pub async fn metric(&self, metric: &str, label: Option<(&str, &str)>) -> f64 {
        let text = self.metrics_text().await;
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("Prometheus text");
        scrape
            .samples
            .iter()
            .filter(|s| {
                s.metric == metric
                    && label.is_none_or(|(name, value)| s.labels.get(name) == Some(value))
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .sum()
    }

    /// The served HTTP app's shell (its routes).
    pub fn http_shell(&self) -> HttpShell {
        self.running().http.clone()
    }

    /// A client for the served app.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// GET `path` with the admin token: status and JSON body (null when not JSON).
    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base_url()))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("http");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Starts the service (again, after [`stop_service`](Self::stop_service)) on the same
    /// database and configuration.
    pub async fn start_service(&mut self) {
        assert!(self.running.is_none(), "the service already runs");
        let config = self.config.clone();
        let (running, core) = match &self.modules {
            None => infragpt::app::start(config).await.expect("service starts"),
            Some(modules) => {
                let database = server::open_database(&config).await.expect("database");
                let core = Core::start(&config, &database).expect("core");
                let modules = modules(&config, &database, &core).expect("modules");
                let running = server::start_prepared(config, modules, database)
                    .await
                    .expect("service starts");
                (running, core)
            }
        };
        self.running = Some(running);
        self.core = Some(core);
    }

    /// Another replica of the served app: the same configuration (so the same database and
    /// simulator) on new loopback ports, assembled by `app::start` like the first.
    pub async fn start_replica(&self) -> (RunningServer, Core) {
        infragpt::app::start(self.config.clone())
            .await
            .expect("replica starts")
    }

    /// Stops the service (cleanly); the database, simulator and agent stay.
    pub async fn stop_service(&mut self) {
        let running = self.running.take().expect("the service runs");
        running.stop().await.expect("clean stop");
    }

    /// Stops the service and the agent.
    pub async fn stop(mut self) {
        if self.running.is_some() {
            self.stop_service().await;
        }
        if let Some(agent) = self.agent.take() {
            agent.stop();
        }
    }

    /// The dev agent's settings for this app: on the port the service calls, replying
    /// through the service's gRPC port.
    pub fn dev_agent_config(&self) -> DevAgentConfig {
        DevAgentConfig {
            bind: self.agent_addr,
            reply_endpoint: Some(format!("http://{}", self.grpc_addr())),
            ..DevAgentConfig::default()
        }
    }

    /// Starts the dev agent with `config` (see [`dev_agent_config`](Self::dev_agent_config)).
    pub fn start_agent(&mut self, config: DevAgentConfig) {
        assert!(self.agent.is_none(), "the agent already runs");
        let agent = match self.agent_port.take() {
            Some(port) if config.bind == port.addr => DevAgent::start_on(config, port.listen()),
            _ => DevAgent::start(config),
        };
        self.agent = Some(agent.expect("dev agent"));
    }

    /// The held agent port, listening (a new listener on its address once it was used).
    fn agent_listener(&mut self) -> std::net::TcpListener {
        match self.agent_port.take() {
            Some(port) => port.listen(),
            None => {
                std::net::TcpListener::bind(self.agent_addr).expect("bind the dev agent's port")
            }
        }
    }

    /// Stops the dev agent (the service then finds it unreachable).
    pub fn stop_agent(&mut self) {
        if let Some(agent) = self.agent.take() {
            agent.stop();
        }
    }

    pub fn agent(&self) -> &DevAgentHandle {
        self.agent.as_ref().expect("agent running")
    }

    /// Waits until `n` Socket Mode connections are open and greeted.
    pub async fn wait_connected(&self, n: usize) {
        self.sim()
            .wait_for(
                |s| {
                    s.open_connections().len() >= n
                        && s.frames().iter().filter(|f| f.kind == "hello").count() >= n
                },
                GUARD,
            )
            .await
            .expect("socket mode connected");
    }

    // ----- inbox ---------------------------------------------------------------------------

    /// Waits until no event is pending or processing.
    pub async fn wait_idle(&self) {
        eventually("no event is pending or processing", async || {
            let counts = self
                .cluster()
                .inbox()
                .count_by_status()
                .await
                .expect("counts");
            if counts.iter().all(|(s, n)| !s.is_unfinished() || *n == 0) {
                Ok(())
            } else {
                Err(counts)
            }
        })
        .await
    }

    /// Number of inbox rows with `status`.
    pub async fn count(&self, status: EventStatus) -> i64 {
        self.cluster()
            .inbox()
            .count_by_status()
            .await
            .expect("counts")
            .into_iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| n)
    }

    /// Total inbox rows.
    pub async fn recorded(&self) -> i64 {
        self.cluster()
            .inbox()
            .count_by_status()
            .await
            .expect("counts")
            .into_iter()
            .map(|(_, n)| n)
            .sum()
    }

    // ----- identity, in process ------------------------------------------------------------

    pub fn identity_store(&self) -> &IdentityStore {
        self.identity.as_ref().expect("built with_identity")
    }

    /// Appends an audit entry on its own, as a seed for the audit routes' tests (the
    /// service writes entries only in the transaction of the change they record).
    pub async fn seed_audit_entry(&self, entry: infragpt_actors::audit::AuditEntry) {
        let mut conn = self.pool().get().await.expect("connection");
        infragpt::db::audit::insert_entry(&mut conn, &entry)
            .await
            .expect("audit entry");
    }

    /// The Clerk webhook with `secret` (none: refuses every delivery).
    pub fn clerk_webhook(&self, secret: Option<&str>) -> ClerkWebhook {
        ClerkWebhook::new(secret.map(Secret::new).as_ref(), self.cluster().clone())
            .expect("webhook")
    }

    /// An HTTP shell with the Clerk webhook (test secret), the authenticator, the identity
    /// API and `GET /audit`.
    pub fn identity_shell(&self, verifier: Option<Arc<ClerkJwtVerifier>>) -> HttpShell {
        self.identity_shell_with(self.clerk_webhook(Some(SVIX_SECRET)), verifier)
    }

    /// [`identity_shell`](Self::identity_shell) with this webhook.
    pub fn identity_shell_with(
        &self,
        hook: ClerkWebhook,
        verifier: Option<Arc<ClerkJwtVerifier>>,
    ) -> HttpShell {
        let auth = Authenticator::new(verifier, self.identity_store().clone());
        let api = IdentityApi::new(self.identity_store().clone());
        let audit_log = (*self.core().audit).clone();
        HttpShell::new(Readiness::default(), false, CorsConfig::default()).with_routes(move |cfg| {
            auth.configure(cfg);
            webhook::configure(cfg, hook.clone());
            api::configure(cfg, api.clone());
            infragpt::identity::audit::configure(cfg, audit_log.clone());
        })
    }
}

/// A free loopback port: the service is configured with the agent's address before the dev
/// agent (which needs the service's gRPC port for SendReply) starts on it.
pub fn reserve_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}
