//! The run loop: open the database, migrate, serve HTTP and gRPC, wait for SIGINT/SIGTERM, and
//! shut down gracefully (stop accepting, finish in-flight requests within the grace period,
//! stop the plugged-in modules, close the pool, stop the private PostgreSQL if we started it).
//!
//! The composition root plugs more in through [`Module`]s: each gets the shared [`AppState`]
//! and adds routes, gRPC services and readiness checks, and is stopped on the way out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::config::Config;
use crate::db::{Database, DbSettings};
use crate::grpc::server::{GrpcHealth, GrpcShell};
use crate::http::health::{DatabaseCheck, MigrationsCheck};
use crate::http::side::SideListener;
use crate::http::{HttpShell, Readiness};

/// What every module and handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// Readiness checks behind `/readyz`.
    pub readiness: Readiness,
    /// The database (the pool is shared; the private cluster, if any, is owned by the server).
    pub db: Arc<Database>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("readiness", &self.readiness)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

/// A part of the service plugged into the run loop (the actor cluster, Slack, webhooks...).
#[async_trait::async_trait]
pub trait Module: Send {
    /// Name used in logs.
    fn name(&self) -> &str;

    /// Starts the module: add routes to `http`, services to `grpc`, checks to
    /// `state.readiness`. Runs after migrations, before the listeners open.
    async fn start(
        &mut self,
        state: &AppState,
        http: &mut HttpShell,
        grpc: &mut GrpcShell,
    ) -> anyhow::Result<()>;

    /// First step of a graceful stop, while the listeners still serve (readiness already
    /// says shutting down): hand work over to the other replicas.
    async fn drain(&mut self) {}

    /// Stops the module after the listeners have drained, before the database closes.
    async fn stop(&mut self) {}
}

/// Converts the `database` section into the db layer's settings.
pub fn db_settings(config: &Config) -> DbSettings {
    let d = &config.database;
    DbSettings {
        url: d.url.clone(),
        host: d.host.clone(),
        port: d.port,
        db_name: d.db_name.clone(),
        user: d.user.clone(),
        password: d.password.clone(),
        pool_size: d.pool_size,
        data_dir: d.data_dir.clone(),
        connect_timeout: d.connect_timeout(),
    }
}

/// Opens the database and applies pending migrations.
pub async fn open_database(config: &Config) -> anyhow::Result<Database> {
    let db = Database::open(&db_settings(config))
        .await
        .context("opening the database")?;
    match db.run_migrations().await {
        Ok(applied) => {
            tracing::info!(server = %db.describe(), applied = applied.len(), "database migrated");
            Ok(db)
        }
        Err(e) => {
            db.shutdown().await;
            Err(anyhow::Error::new(e).context("applying migrations"))
        }
    }
}

/// A started server: listeners bound, serving. Stop it with [`RunningServer::stop`].
pub struct RunningServer {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// The internal ops listener's address, when `ops.port` is set.
    pub ops_addr: Option<SocketAddr>,
    pub state: AppState,
    /// The HTTP app as served (its routes; the route test builds the app from it).
    pub http: HttpShell,
    grpc_health: GrpcHealth,
    http_handle: actix_web::dev::ServerHandle,
    http_task: tokio::task::JoinHandle<std::io::Result<()>>,
    grpc_stop: tokio::sync::oneshot::Sender<()>,
    grpc_task: tokio::task::JoinHandle<Result<(), crate::grpc::server::GrpcServerError>>,
    readiness_task: tokio::task::JoinHandle<()>,
    ops: Option<SideListener>,
    modules: Vec<Box<dyn Module>>,
    db: Database,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("http_addr", &self.http_addr)
            .field("grpc_addr", &self.grpc_addr)
            .field("ops_addr", &self.ops_addr)
            .finish_non_exhaustive()
    }
}

/// Opens the database, migrates, starts the modules and both listeners. Must run inside an
/// actix system (`actix_rt::System`), since the HTTP workers and actors need one.
pub async fn start(config: Config, modules: Vec<Box<dyn Module>>) -> anyhow::Result<RunningServer> {
    let db = open_database(&config).await?;
    match start_with_database(config, modules, db).await {
        Ok(running) => Ok(running),
        Err((e, db)) => {
            db.shutdown().await;
            Err(e)
        }
    }
}

async fn start_with_database(
    config: Config,
    mut modules: Vec<Box<dyn Module>>,
    db: Database,
) -> Result<RunningServer, (anyhow::Error, Database)> {
    let readiness = Readiness::default();
    let shared = Arc::new(Database::from_pool(
        db.pool().clone(),
        db.url().clone(),
        config.database.connect_timeout(),
    ));
    readiness.add(DatabaseCheck::new(shared.clone()));
    readiness.add(MigrationsCheck::new(shared.clone()));
    let state = AppState {
        config: Arc::new(config),
        readiness: readiness.clone(),
        db: shared,
    };
    let config = state.config.clone();

    // Bound before the modules start: the actor core starts handling recovered events at
    // once, and the agent answers them through SendReply on the gRPC port, which must accept
    // connections by then (they wait in the backlog until the server serves them).
    let sockets = match bind_listeners(&config) {
        Ok(sockets) => sockets,
        Err(e) => return Err((e, db)),
    };
    let mut http = HttpShell::from_config(&config, readiness.clone());
    let mut grpc = GrpcShell::new().await;
    grpc.set_limits(config.grpc.clone());
    for i in 0..modules.len() {
        if let Err(e) = modules[i].start(&state, &mut http, &mut grpc).await {
            let name = modules[i].name().to_owned();
            stop_modules(&mut modules[..i]).await;
            return Err((e.context(format!("starting module {name}")), db));
        }
        tracing::info!(module = modules[i].name(), "module started");
    }

    if let Err(e) = grpc_tls(&config, &mut grpc) {
        stop_modules(&mut modules).await;
        return Err((e.into(), db));
    }
    let (http_addr, grpc_addr, grpc_listener, server) = match listen(&config, &http, sockets) {
        Ok(p) => p,
        Err(e) => {
            stop_modules(&mut modules).await;
            return Err((e, db));
        }
    };
    let ops = match start_ops_listener(&config, &http) {
        Ok(ops) => ops,
        Err(e) => {
            stop_modules(&mut modules).await;
            return Err((e, db));
        }
    };
    let http_handle = server.handle();
    let http_task = tokio::spawn(server);

    let grpc_health = grpc.health();
    let (grpc_stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let grpc_task = tokio::spawn(grpc.serve(grpc_listener, async {
        // A dropped sender also means stop.
        let _ = stop_rx.await;
    }));
    let ready = follow_readiness_once(&readiness, &grpc_health, None).await;
    let readiness_task = tokio::spawn(follow_readiness(
        readiness.clone(),
        grpc_health.clone(),
        ready,
    ));
    tracing::info!(%http_addr, %grpc_addr, database = %state.db.describe(), "serving");

    Ok(RunningServer {
        http_addr,
        grpc_addr,
        ops_addr: ops.as_ref().map(SideListener::addr),
        state,
        http,
        grpc_health,
        http_handle,
        http_task,
        grpc_stop,
        grpc_task,
        readiness_task,
        ops,
        modules,
        db,
    })
}

type Listening = (
    SocketAddr,
    SocketAddr,
    tokio::net::TcpListener,
    actix_web::dev::Server,
);

/// Puts the gRPC listener behind TLS when `grpc_tls` says so.
fn grpc_tls(
    config: &Config,
    grpc: &mut GrpcShell,
) -> Result<(), crate::grpc::server::GrpcTlsError> {
    if let Some(tls) = crate::grpc::server::tls_config(&config.grpc_tls)? {
        grpc.set_tls(tls)?;
        tracing::info!(
            client_certificates = config.grpc_tls.client_certificates_required(),
            "gRPC listener uses TLS"
        );
    }
    Ok(())
}

/// Binds both listeners and builds the HTTP server (not yet polled).
/// The HTTP and gRPC sockets, bound and listening, not served yet.
struct Sockets {
    http: std::net::TcpListener,
    grpc: std::net::TcpListener,
}

fn bind_listeners(config: &Config) -> anyhow::Result<Sockets> {
    let ip: std::net::IpAddr = config.bind_address.parse().with_context(|| {
        format!(
            "bind_address `{}` is not an IP address",
            config.bind_address
        )
    })?;
    let bind = |port: u16| {
        let addr = SocketAddr::new(ip, port);
        std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))
    };
    Ok(Sockets {
        http: bind(config.port)?,
        grpc: bind(config.grpc_port)?,
    })
}

fn listen(config: &Config, http: &HttpShell, sockets: Sockets) -> anyhow::Result<Listening> {
    let Sockets {
        http: http_listener,
        grpc: grpc_listener,
    } = sockets;
    let http_addr = http_listener.local_addr()?;
    let grpc_addr = grpc_listener.local_addr()?;
    grpc_listener.set_nonblocking(true)?;
    let grpc_listener = tokio::net::TcpListener::from_std(grpc_listener)?;
    // actix counts the grace period in whole seconds.
    let grace_secs = config.shutdown_grace_ms.div_ceil(1000).max(1);
    let shell = http.clone();
    let server = actix_web::HttpServer::new(move || crate::http::app(shell.clone()))
        .disable_signals()
        .shutdown_timeout(grace_secs)
        .listen(http_listener)
        .context("starting the HTTP server")?
        .run();
    Ok((http_addr, grpc_addr, grpc_listener, server))
}

/// Starts the internal ops listener when `ops.port` is set.
fn start_ops_listener(config: &Config, http: &HttpShell) -> anyhow::Result<Option<SideListener>> {
    let Some(port) = config.ops.port else {
        return Ok(None);
    };
    let ip: std::net::IpAddr = config.ops.bind_address.parse().with_context(|| {
        format!(
            "ops.bind_address `{}` is not an IP address",
            config.ops.bind_address
        )
    })?;
    let listener =
        SideListener::start("ops", ip, port, http.ops_shell(), config.shutdown_grace_ms)?;
    if !ip.is_loopback() {
        tracing::warn!(addr = %listener.addr(), "the ops listener (actor tree, metrics) is reachable beyond this machine without a token");
    }
    Ok(Some(listener))
}

/// Stops modules in reverse start order.
async fn stop_modules(modules: &mut [Box<dyn Module>]) {
    for m in modules.iter_mut().rev() {
        m.stop().await;
        tracing::info!(module = m.name(), "module stopped");
    }
}

impl RunningServer {
    /// Where the database is, as an operator would look for it (a private cluster names its
    /// folder).
    pub fn database_description(&self) -> String {
        self.db.describe()
    }

    /// Stops gracefully: reports not ready, stops accepting, lets in-flight requests finish
    /// within `shutdown_grace_ms`, stops the modules, closes the pool and stops the private
    /// PostgreSQL if we started it.
    pub async fn stop(self) -> anyhow::Result<()> {
        let grace = self.state.config.shutdown_grace();
        tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down");
        self.state.readiness.set_shutting_down();
        self.readiness_task.abort();
        self.grpc_health.set_not_serving().await;
        let mut modules = self.modules;
        for module in modules.iter_mut() {
            module.drain().await;
        }

        let _ = self.grpc_stop.send(());
        let http_stopped = self.http_handle.stop(true);
        let ops_stopped = async {
            if let Some(ops) = self.ops {
                ops.stop().await;
            }
        };
        let mut grpc_task = self.grpc_task;
        // actix enforces the grace period itself; the extra second is a safety net.
        let (http_result, grpc_result, ()) = tokio::join!(
            tokio::time::timeout(grace + Duration::from_secs(1), async {
                http_stopped.await;
                self.http_task.await
            }),
            tokio::time::timeout(grace, &mut grpc_task),
            ops_stopped,
        );
        let mut problems = Vec::new();
        match http_result {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => problems.push(format!("HTTP server: {e}")),
            Ok(Err(e)) => problems.push(format!("HTTP server task: {e}")),
            Err(_) => problems.push("HTTP server did not stop within the grace period".into()),
        }
        match grpc_result {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => problems.push(e.to_string()),
            Ok(Err(e)) => problems.push(format!("gRPC server task: {e}")),
            // In-flight calls past the grace period are cut off.
            Err(_) => {
                grpc_task.abort();
                tracing::warn!("gRPC calls still running after the grace period were cut off");
            }
        }

        stop_modules(&mut modules).await;
        self.db.shutdown().await;
        if problems.is_empty() {
            tracing::info!("stopped");
            Ok(())
        } else {
            anyhow::bail!("shutdown: {}", problems.join("; "))
        }
    }
}

/// How often the gRPC health status is brought in line with the readiness checks.
const READINESS_POLL: Duration = Duration::from_secs(5);
/// How often readiness is re-checked while not ready.
const READINESS_POLL_NOT_READY: Duration = Duration::from_millis(250);

/// Sets the gRPC health from one readiness report; returns the new state.
async fn follow_readiness_once(
    readiness: &Readiness,
    health: &GrpcHealth,
    previous: Option<bool>,
) -> bool {
    let report = readiness.report().await;
    let ready = report.is_ready();
    if previous != Some(ready) {
        if ready {
            health.set_serving().await;
        } else {
            health.set_not_serving().await;
        }
        tracing::info!(ready, checks = ?report.checks, "gRPC health updated");
    }
    ready
}

/// Keeps `grpc.health.v1.Health` in line with `/readyz` (SERVING only while ready).
async fn follow_readiness(readiness: Readiness, health: GrpcHealth, mut ready: bool) {
    loop {
        // While not ready, look again soon: SERVING should follow /readyz closely after
        // start-up or an outage, not up to a whole poll period later.
        let wait = if ready {
            READINESS_POLL
        } else {
            READINESS_POLL_NOT_READY
        };
        tokio::time::sleep(wait).await;
        if readiness.is_shutting_down() {
            return;
        }
        ready = follow_readiness_once(&readiness, &health, Some(ready)).await;
    }
}

/// SIGINT/SIGTERM handlers, installed when created (so a signal during start-up is kept).
#[derive(Debug)]
pub struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Installs the handlers.
    pub fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// Resolves with the signal's name when SIGINT or SIGTERM arrives.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// `infragpt serve`: starts everything, waits for SIGINT/SIGTERM, stops gracefully.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    serve_with(config, Vec::new()).await
}

/// [`serve`] with modules plugged in.
pub async fn serve_with(config: Config, modules: Vec<Box<dyn Module>>) -> anyhow::Result<()> {
    // Installed before starting, so a signal during start-up is not lost.
    let mut signals = ShutdownSignals::install()?;
    let running = start(config, modules).await?;
    run_until_signal(running, &mut signals).await
}

/// Like [`start`], over a database the caller opened and migrated already (the composition
/// root needs the pool to build the modules). On failure the database is shut down.
pub async fn start_prepared(
    config: Config,
    modules: Vec<Box<dyn Module>>,
    db: Database,
) -> anyhow::Result<RunningServer> {
    match start_with_database(config, modules, db).await {
        Ok(running) => Ok(running),
        Err((e, db)) => {
            db.shutdown().await;
            Err(e)
        }
    }
}

/// Serves `running` until SIGINT/SIGTERM (or a listener failure), then stops gracefully.
pub async fn run_until_signal(
    running: RunningServer,
    signals: &mut ShutdownSignals,
) -> anyhow::Result<()> {
    let result = tokio::select! {
        name = signals.recv() => {
            tracing::info!(signal = name, "signal received");
            Ok(())
        }
        r = watch_listeners(&running) => r,
    };
    let stopped = running.stop().await;
    result.and(stopped)
}

/// Resolves only if a listener fails on its own (an error worth exiting on).
async fn watch_listeners(running: &RunningServer) -> anyhow::Result<()> {
    loop {
        if running.http_task.is_finished() {
            anyhow::bail!("the HTTP server stopped unexpectedly");
        }
        if running.grpc_task.is_finished() {
            anyhow::bail!("the gRPC server stopped unexpectedly");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
