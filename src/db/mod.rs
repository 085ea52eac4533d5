//! PostgreSQL: settings, server resolution (configured URL, default address, or a private
//! cluster), the diesel-async connection pool and the embedded migrations.

pub mod audit;
pub(crate) mod batch;
pub mod cluster;
pub mod committed;
pub mod conversations;
pub mod error;
pub mod inbox;
pub mod nonces;
pub mod prepared;
pub mod private_pg;
pub mod progress;
pub mod retention;
pub mod schema;
pub mod slash;

use std::path::PathBuf;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use infragpt_actors::Secret;

pub use audit::PgAudit;
use committed::CommittedExt as _;
pub use conversations::PgConversationStore;
pub use error::{Conn, StoreError, conn};
pub use inbox::PgInbox;
pub use private_pg::{ClusterError, ClusterOptions, PrivateCluster};
pub use progress::PgProgressStore;

/// The connection pool every adapter uses.
pub type Pool = diesel_async::pooled_connection::deadpool::Pool<AsyncPgConnection>;

/// The migrations in `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Default address probed when nothing is configured.
const DEFAULT_HOST: &str = "127.0.0.1";
const DEFAULT_PORT: u16 = 5432;
const DEFAULT_USER: &str = "postgres";
/// The probe of the default address must not slow start-up down when nothing listens.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a caller may wait for a free pooled connection.
const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// A pooled connection unused for this long is tested before it is handed out again.
const VERIFY_IDLE_AFTER: Duration = Duration::from_secs(5);
/// Advisory lock key serialising concurrent migration runs (two service instances).
const MIGRATION_LOCK_KEY: i64 = 0x1f2a_6d62_6d69_6772;

/// Where the database is and how to connect.
#[derive(Debug, Clone)]
pub struct DbSettings {
    /// Full connection URL (`postgres://user:pass@host:port/db`); wins over everything else.
    pub url: Option<Secret>,
    /// Server host (default `127.0.0.1` when `port` or `user` is set).
    pub host: Option<String>,
    /// Server port (default 5432).
    pub port: Option<u16>,
    /// Database name (default `infragpt`); created when missing.
    pub db_name: String,
    /// User (default `postgres`).
    pub user: Option<String>,
    /// Password, if the server wants one.
    pub password: Option<Secret>,
    /// Pool size (default 16).
    pub pool_size: usize,
    /// Directory of the private cluster started when no server is configured or answers
    /// (default `.infragpt/pg`).
    pub data_dir: PathBuf,
    /// Connect timeout (default 5 s).
    pub connect_timeout: Duration,
}

impl Default for DbSettings {
    fn default() -> Self {
        Self {
            url: None,
            host: None,
            port: None,
            db_name: "infragpt".to_owned(),
            user: None,
            password: None,
            pool_size: 16,
            data_dir: PathBuf::from(".infragpt/pg"),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Database failures. Messages never contain a password.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The settings cannot describe a server.
    #[error("invalid database settings: {0}")]
    Config(String),
    /// The database URL does not parse.
    #[error("invalid database settings: the database URL is not a valid URL ({0})")]
    InvalidUrl(#[source] url::ParseError),
    /// The configured host cannot be put in a URL.
    #[error("invalid database settings: invalid database host {host:?}: {source}")]
    InvalidHost {
        /// The host as configured.
        host: String,
        /// Why the URL refused it.
        #[source]
        source: url::ParseError,
    },
    /// The server could not be reached or refused us.
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect {
        /// Redacted address.
        target: String,
        /// Why.
        #[source]
        source: diesel::ConnectionError,
    },
    /// The server did not answer within the connect timeout.
    #[error("cannot connect to PostgreSQL at {target}: no answer within {after:?}")]
    ConnectTimeout {
        /// Redacted address (or `host:port`).
        target: String,
        /// The limit.
        after: Duration,
    },
    /// Nothing accepts TCP connections at the address.
    #[error("{target}: {source}")]
    Unreachable {
        /// `host:port`.
        target: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The database did not exist and could not be created.
    #[error("cannot create database {name:?} at {target}: {source}")]
    CreateDatabase {
        /// Database name.
        name: String,
        /// Redacted address.
        target: String,
        /// Why.
        #[source]
        source: Box<DbError>,
    },
    /// The pool could not be built.
    #[error("database connection pool: {0}")]
    PoolBuild(#[source] diesel_async::pooled_connection::deadpool::BuildError),
    /// The pool gave no connection.
    #[error("database connection pool: {0}")]
    Pool(#[source] error::PoolError),
    /// A statement failed.
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    /// Applying, reverting or listing migrations failed.
    #[error("database migrations failed: {0}")]
    Migration(#[source] error::BoxError),
    /// The private cluster could not be started.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// An operation took too long.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What timed out.
        what: &'static str,
        /// The limit.
        after: Duration,
    },
    /// A helper task died.
    #[error("database background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A helper thread or its runtime could not be started.
    #[error("database background task failed: cannot {what}: {source}")]
    Thread {
        /// What could not be done (`build a runtime`, `spawn a thread`).
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A helper thread panicked.
    #[error("database background task failed: the database helper thread panicked")]
    ThreadPanicked,
}

/// Which migrations are applied and which are not (versions like `20261125000001`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationStatus {
    /// Applied versions, oldest first.
    pub applied: Vec<String>,
    /// Embedded versions not yet applied, oldest first.
    pub pending: Vec<String>,
}

/// An open database: the pool, plus the private cluster when we started one.
pub struct Database {
    pool: Pool,
    url: Secret,
    description: String,
    connect_timeout: Duration,
    cluster: Option<PrivateCluster>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("server", &self.description)
            .field("pool", &self.pool.status())
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Resolves the server (configured URL → explicit host/port/user → default address →
    /// private cluster in `data_dir`), creates the database when missing and builds the
    /// pool. Does not migrate.
    pub async fn open(settings: &DbSettings) -> Result<Database, DbError> {
        let default_url = server_url(DEFAULT_HOST, DEFAULT_PORT, DEFAULT_USER, None, "postgres")?;
        Self::open_with_default(settings, &default_url).await
    }

    /// [`Database::open`] with another default address (tests point it at a closed port).
    async fn open_with_default(
        settings: &DbSettings,
        default_url: &Secret,
    ) -> Result<Database, DbError> {
        if settings.pool_size == 0 {
            return Err(DbError::Config("pool_size must be at least 1".to_owned()));
        }
        let timeout = settings.connect_timeout;
        let (url, cluster) = if let Some(url) = settings.url.as_ref().filter(|u| !u.is_empty()) {
            (url.clone(), None)
        } else if settings.host.is_some() || settings.port.is_some() || settings.user.is_some() {
            (explicit_url(settings)?, None)
        } else {
            match probe(default_url, timeout.min(PROBE_TIMEOUT)).await {
                Ok(()) => {
                    tracing::info!(server = %redact(default_url.expose()), "using PostgreSQL on the default address");
                    (with_database(default_url, &settings.db_name)?, None)
                }
                Err(reason) => {
                    tracing::info!(
                        %reason,
                        dir = %settings.data_dir.display(),
                        "no PostgreSQL on the default address; starting a private cluster"
                    );
                    let dir = settings.data_dir.clone();
                    let cluster =
                        tokio::task::spawn_blocking(move || PrivateCluster::start(&dir)).await??;
                    (Secret::new(cluster.url(&settings.db_name)), Some(cluster))
                }
            }
        };
        let description = match &cluster {
            Some(c) => format!(
                "private cluster at {} (port {})",
                settings.data_dir.display(),
                c.port()
            ),
            None => redact(url.expose()),
        };
        ensure_database(&url, timeout).await?;
        let pool = build_pool(&url, settings.pool_size, timeout)?;
        tracing::info!(server = %description, "database ready");
        Ok(Database {
            pool,
            url,
            description,
            connect_timeout: timeout,
            cluster,
        })
    }

    /// Wraps an existing pool (the test harness uses this); no private cluster is owned.
    pub fn from_pool(pool: Pool, url: Secret, connect_timeout: Duration) -> Database {
        let description = redact(url.expose());
        Database {
            pool,
            url,
            description,
            connect_timeout,
            cluster: None,
        }
    }

    /// The connection pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// How long opening one connection may take.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The resolved connection URL (for connections of their own, outside the pool).
    pub fn url(&self) -> &Secret {
        &self.url
    }

    /// Applies pending migrations; returns the versions applied now.
    pub async fn run_migrations(&self) -> Result<Vec<String>, DbError> {
        let applied = with_sync_connection(&self.url, self.connect_timeout, |conn| {
            locked(conn, |conn| {
                conn.run_pending_migrations(MIGRATIONS)
                    .map(|versions| versions.iter().map(ToString::to_string).collect::<Vec<_>>())
                    .map_err(DbError::Migration)
            })
        })
        .await?;
        if !applied.is_empty() {
            tracing::info!(versions = ?applied, "migrations applied");
        }
        Ok(applied)
    }

    /// Applied and pending migrations.
    pub async fn migration_status(&self) -> Result<MigrationStatus, DbError> {
        with_sync_connection(&self.url, self.connect_timeout, |conn| {
            let mut applied: Vec<String> = conn
                .applied_migrations()
                .map_err(DbError::Migration)?
                .iter()
                .map(ToString::to_string)
                .collect();
            applied.sort();
            let pending = conn
                .pending_migrations(MIGRATIONS)
                .map_err(DbError::Migration)?
                .iter()
                .map(|m| m.name().version().to_string())
                .collect();
            Ok(MigrationStatus { applied, pending })
        })
        .await
    }

    /// Reverts every applied migration (newest first).
    pub async fn revert_all_migrations(&self) -> Result<(), DbError> {
        let reverted = with_sync_connection(&self.url, self.connect_timeout, |conn| {
            locked(conn, |conn| {
                conn.revert_all_migrations(MIGRATIONS)
                    .map(|versions| versions.len())
                    .map_err(DbError::Migration)
            })
        })
        .await?;
        tracing::info!(count = reverted, "migrations reverted");
        Ok(())
    }

    /// `SELECT 1` through the pool, within the connect timeout.
    pub async fn ping(&self) -> Result<(), DbError> {
        let after = self.connect_timeout;
        let check = async {
            let mut conn = self.pool.get().await.map_err(DbError::Pool)?;
            diesel::select(1_i32.into_sql::<diesel::sql_types::Integer>())
                .get_committed::<i32>(&mut conn)
                .await?;
            Ok(())
        };
        tokio::time::timeout(after, check)
            .await
            .map_err(|_| DbError::Timeout {
                what: "database ping",
                after,
            })?
    }

    /// True when this `Database` started (or adopted) a private cluster.
    pub fn started_private_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// Where the data lives, without the password.
    pub fn describe(&self) -> String {
        self.description.clone()
    }

    /// Closes the pool and stops the private cluster if we own it.
    pub async fn shutdown(mut self) {
        self.pool.close();
        if let Some(mut cluster) = self.cluster.take() {
            let stopped = tokio::task::spawn_blocking(move || cluster.stop()).await;
            match stopped {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "stopping the private cluster failed"),
                Err(e) => tracing::error!(error = %e, "stopping the private cluster panicked"),
            }
        }
    }
}

/// A URL built from explicit host/port/user/password settings.
fn explicit_url(settings: &DbSettings) -> Result<Secret, DbError> {
    server_url(
        settings.host.as_deref().unwrap_or(DEFAULT_HOST),
        settings.port.unwrap_or(DEFAULT_PORT),
        settings.user.as_deref().unwrap_or(DEFAULT_USER),
        settings.password.as_ref(),
        &settings.db_name,
    )
}

fn server_url(
    host: &str,
    port: u16,
    user: &str,
    password: Option<&Secret>,
    db: &str,
) -> Result<Secret, DbError> {
    let mut url = url::Url::parse("postgres://localhost/").map_err(DbError::InvalidUrl)?;
    url.set_host(Some(host))
        .map_err(|source| DbError::InvalidHost {
            host: host.to_owned(),
            source,
        })?;
    let _ = url.set_port(Some(port));
    url.set_username(user)
        .map_err(|()| DbError::Config(format!("invalid database user {user:?}")))?;
    if let Some(password) = password.filter(|p| !p.is_empty()) {
        url.set_password(Some(password.expose()))
            .map_err(|()| DbError::Config("cannot put the password in the URL".to_owned()))?;
    }
    with_database(&Secret::new(url.to_string()), db)
}

/// The same server URL with another database name.
pub fn with_database(url: &Secret, db: &str) -> Result<Secret, DbError> {
    if db.is_empty() {
        return Err(DbError::Config("the database name is empty".to_owned()));
    }
    let mut parsed = parse_url(url)?;
    parsed.set_path(&format!("/{db}"));
    Ok(Secret::new(parsed.to_string()))
}

/// The database name in a URL, if any.
pub fn database_name(url: &Secret) -> Result<Option<String>, DbError> {
    let parsed = parse_url(url)?;
    let name = parsed.path().trim_start_matches('/');
    if name.is_empty() {
        return Ok(None);
    }
    Ok(Some(percent_decode(name)))
}

/// Decodes `%XX` escapes (the URL path form of a database name).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_url(url: &Secret) -> Result<url::Url, DbError> {
    let parsed = url::Url::parse(url.expose()).map_err(DbError::InvalidUrl)?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(DbError::Config(format!(
            "the database URL must start with postgres:// or postgresql://, not {}://",
            parsed.scheme()
        )));
    }
    Ok(parsed)
}

/// The URL with its password (in user info or a `password=` parameter) removed.
pub(crate) fn redact(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "[unparseable database URL]".to_owned();
    };
    let _ = parsed.set_password(None);
    if parsed.query().is_some() {
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("password"))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
    }
    parsed.to_string()
}

/// Opens one connection within `timeout`.
pub async fn connect(url: &Secret, timeout: Duration) -> Result<AsyncPgConnection, DbError> {
    let target = redact(url.expose());
    match tokio::time::timeout(timeout, AsyncPgConnection::establish(url.expose())).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(source)) => Err(DbError::Connect { target, source }),
        Err(_) => Err(DbError::ConnectTimeout {
            target,
            after: timeout,
        }),
    }
}

/// Whether a server answers `url` (TCP first, so a closed port fails fast).
pub(crate) async fn probe(url: &Secret, timeout: Duration) -> Result<(), DbError> {
    let parsed = parse_url(url)?;
    let host = parsed.host_str().unwrap_or(DEFAULT_HOST).to_owned();
    let port = parsed.port().unwrap_or(DEFAULT_PORT);
    let target = format!("{host}:{port}");
    match tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(source)) => return Err(DbError::Unreachable { target, source }),
        Err(_) => {
            return Err(DbError::ConnectTimeout {
                target,
                after: timeout,
            });
        }
    }
    connect(url, timeout).await.map(drop)
}

diesel::table! {
    /// The server's database catalog (read only).
    pg_catalog.pg_database (datname) {
        datname -> Text,
    }
}

/// Whether database `name` exists on the server `conn` is connected to.
pub(crate) async fn database_exists(
    conn: &mut AsyncPgConnection,
    name: &str,
) -> Result<bool, DbError> {
    let found: i64 = pg_database::table
        .filter(pg_database::datname.eq(name))
        .count()
        .get_committed(conn)
        .await?;
    Ok(found > 0)
}

/// `CREATE DATABASE` with the name quoted as an identifier.
pub(crate) async fn create_database(
    conn: &mut AsyncPgConnection,
    name: &str,
) -> Result<(), DbError> {
    diesel::sql_query(format!("CREATE DATABASE {}", quote_ident(name)))
        .execute(conn)
        .await?;
    Ok(())
}

pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Makes sure the database in `url` exists, creating it through the `postgres` maintenance
/// database when it does not.
async fn ensure_database(url: &Secret, timeout: Duration) -> Result<(), DbError> {
    let direct = match connect(url, timeout).await {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let Some(name) = database_name(url)? else {
        return Err(direct);
    };
    let target = redact(url.expose());
    // Server messages may be localised: decide from the catalog, not from the error text.
    let Ok(mut admin) = connect(&with_database(url, "postgres")?, timeout).await else {
        return Err(direct);
    };
    if database_exists(&mut admin, &name).await? {
        return Err(direct);
    }
    tracing::info!(database = %name, server = %target, "creating database");
    if let Err(e) = create_database(&mut admin, &name).await {
        // Another process may have created it at the same moment.
        if !database_exists(&mut admin, &name).await? {
            return Err(DbError::CreateDatabase {
                name,
                target,
                source: Box::new(e),
            });
        }
    }
    connect(url, timeout).await.map(drop)
}

/// A pool of at most `size` connections to `url`.
///
/// A connection handed out again soon after its last use goes without a test query (diesel's
/// default runs `SELECT 1` on every checkout, a round trip per statement); one idle for
/// [`VERIFY_IDLE_AFTER`] is tested first, and a closed one is never handed out (its client
/// notices the closed socket). A connection that breaks in between fails its statement,
/// which callers treat as the database being unavailable and retry.
pub fn build_pool(url: &Secret, size: usize, connect_timeout: Duration) -> Result<Pool, DbError> {
    build_pool_with(url, size, connect_timeout, false)
}

/// [`build_pool`] for the inbox writers' batch statements (`… FROM unnest($1, …)`), which
/// plan every execution afresh under PostgreSQL's default plan cache mode: a custom plan
/// knows the arrays' lengths, so it always looks cheaper than the generic one (which assumes
/// ten rows), and planning cost more than the insert itself (~0.3-1 ms a batch). Their
/// generic plans are the per-row index lookups they need, so these connections keep them
/// (`plan_cache_mode = force_generic_plan`, set as each connection is made).
///
/// A kept plan is made once, often while the inbox is young, and lives until the next
/// analyze of the table: made on a few hundred rows, the older-event check of the record
/// batch chose a sequential scan, or a bitmap of every event of the source, and then read
/// that at every row of every batch as the inbox grew. Every statement of these connections
/// is a lookup by a key that an index holds, so they also turn sequential and bitmap scans
/// off (`enable_seqscan`, `enable_bitmapscan`): a plan can then only be the keyed index probe
/// (BENCHMARKS.md, "The record batch's older-event check").
pub fn build_writer_pool(
    url: &Secret,
    size: usize,
    connect_timeout: Duration,
) -> Result<Pool, DbError> {
    build_pool_with(url, size, connect_timeout, true)
}

fn build_pool_with(
    url: &Secret,
    size: usize,
    connect_timeout: Duration,
    writer: bool,
) -> Result<Pool, DbError> {
    use diesel_async::pooled_connection::deadpool::{Hook, HookError};
    use diesel_async::pooled_connection::{ManagerConfig, PoolError, RecyclingMethod};

    let mut config = ManagerConfig::default();
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(|url| Box::pin(establish_pinned(url.to_owned())));
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url.expose(), config);
    let verify_idle =
        Hook::<AsyncPgConnection>::async_fn(|conn: &mut AsyncPgConnection, metrics| {
            Box::pin(async move {
                if metrics.last_used() < VERIFY_IDLE_AFTER {
                    return Ok(());
                }
                diesel::select(1_i32.into_sql::<diesel::sql_types::Integer>())
                    .execute(conn)
                    .await
                    .map(drop)
                    .map_err(|e| HookError::Backend(PoolError::QueryError(e)))
            })
        });
    let mut builder = Pool::builder(manager)
        .pre_recycle(verify_idle)
        .max_size(size)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT_TIMEOUT.max(connect_timeout)))
        .create_timeout(Some(connect_timeout))
        .recycle_timeout(Some(connect_timeout));
    if writer {
        // The writers' session settings ([`build_writer_pool`]), once per connection.
        builder = builder.post_create(Hook::<AsyncPgConnection>::async_fn(
            |conn: &mut AsyncPgConnection, _metrics| {
                Box::pin(async move {
                    diesel_async::SimpleAsyncConnection::batch_execute(
                        conn,
                        "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off; \
                         SET enable_bitmapscan = off",
                    )
                    .await
                    .map_err(|e| HookError::Backend(PoolError::QueryError(e)))
                })
            },
        ));
    }
    builder.build().map_err(DbError::PoolBuild)
}

/// Opens a pooled connection whose protocol driver (the task that reads and writes its
/// socket) runs on the thread that opened it when that thread is an actix arbiter.
/// diesel-async's `establish` spawns the driver with `tokio::spawn`, which on the system's
/// thread (the service runs actix on a multi-threaded runtime, `main.rs`) puts it on a
/// runtime worker: every statement of a conversation actor then woke a worker to write the
/// query and was woken back with the answer. Driven where it was opened, such a statement
/// stays on one thread. (On an arbiter of its own, with its current-thread runtime,
/// `tokio::spawn` already kept the driver there: the inbox's writers are unchanged.)
/// Elsewhere (a tonic handler, a test without actix) the driver is spawned on the runtime
/// as before. BENCHMARKS.md, "Connection drivers on the system thread".
///
/// When the arbiter stops, its drivers end and their connections close; the pool notices
/// the closed connection at its next checkout and opens a new one where it is asked for.
async fn establish_pinned(url: String) -> diesel::ConnectionResult<AsyncPgConnection> {
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
    let driver = async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "database connection ended");
        }
    };
    match actix_rt::Arbiter::try_current() {
        Some(arbiter) => {
            if !arbiter.spawn(driver) {
                return Err(diesel::ConnectionError::BadConnection(
                    "the opening thread's arbiter has stopped".to_owned(),
                ));
            }
        }
        None => {
            tokio::spawn(driver);
        }
    }
    AsyncPgConnection::try_from(client).await
}

/// A synchronous diesel connection (for `diesel_migrations`).
type SyncConnection = AsyncConnectionWrapper<AsyncPgConnection>;

/// Runs `f` with a synchronous connection on a thread of its own with its own runtime, so it
/// works from any caller runtime (current-thread, multi-thread, actix) and binds nothing to it.
pub(crate) async fn with_sync_connection<T, F>(
    url: &Secret,
    timeout: Duration,
    f: F,
) -> Result<T, DbError>
where
    T: Send + 'static,
    F: FnOnce(&mut SyncConnection) -> Result<T, DbError> + Send + 'static,
{
    let url = url.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("infragpt-db-sync".to_owned())
        .spawn(move || {
            let result = (|| {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .map_err(|source| DbError::Thread {
                        what: "build a runtime",
                        source,
                    })?;
                // The wrapper drives its futures through the current handle: this runtime's.
                let _guard = runtime.enter();
                let conn = runtime.block_on(connect(&url, timeout))?;
                let mut conn = SyncConnection::from(conn);
                let result = f(&mut conn);
                drop(conn);
                result
            })();
            let _ = tx.send(result);
        })
        .map_err(|source| DbError::Thread {
            what: "spawn a thread",
            source,
        })?;
    rx.await.map_err(|_| DbError::ThreadPanicked)?
}

/// Runs `f` holding the migration advisory lock.
fn locked<T>(
    conn: &mut SyncConnection,
    f: impl FnOnce(&mut SyncConnection) -> Result<T, DbError>,
) -> Result<T, DbError> {
    use diesel::connection::SimpleConnection as _;
    conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))?;
    let result = f(conn);
    conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_removes_passwords() {
        assert_eq!(
            redact("postgres://app:hunter2@db.example:5433/infragpt"),
            "postgres://app@db.example:5433/infragpt"
        );
        assert_eq!(
            redact("postgres://app@h/db?password=hunter2&sslmode=disable"),
            "postgres://app@h/db?sslmode=disable"
        );
        assert_eq!(
            redact("postgres://app@h/db?password=x"),
            "postgres://app@h/db"
        );
        assert!(!redact("not a url hunter2").contains("hunter2"));
    }

    #[test]
    fn explicit_settings_build_a_url() {
        let settings = DbSettings {
            host: Some("db.internal".to_owned()),
            port: Some(6543),
            user: Some("svc".to_owned()),
            password: Some(Secret::new("p@ss/word")),
            ..DbSettings::default()
        };
        let url = explicit_url(&settings).unwrap();
        assert_eq!(
            url.expose(),
            "postgres://svc:p%40ss%2Fword@db.internal:6543/infragpt"
        );
        assert_eq!(database_name(&url).unwrap().as_deref(), Some("infragpt"));
        assert_eq!(
            database_name(&Secret::new("postgres://h/my%20db+x"))
                .unwrap()
                .as_deref(),
            Some("my db+x")
        );
        assert_eq!(database_name(&Secret::new("postgres://h")).unwrap(), None);
        assert_eq!(
            with_database(&url, "other").unwrap().expose(),
            "postgres://svc:p%40ss%2Fword@db.internal:6543/other"
        );
        assert!(!format!("{settings:?}").contains("p@ss"));
    }

    #[test]
    fn bad_urls_are_rejected_clearly() {
        let err = with_database(&Secret::new("mysql://x/y"), "z").unwrap_err();
        assert!(err.to_string().contains("postgres://"), "{err}");
        let err = database_name(&Secret::new("::nope")).unwrap_err();
        assert!(err.to_string().contains("not a valid URL"), "{err}");
    }

    #[tokio::test]
    async fn open_falls_back_to_a_private_cluster() {
        if let Err(e) = private_pg::PgBinaries::find() {
            eprintln!("SKIPPED open_falls_back_to_a_private_cluster: {e}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        // Traversable by the `postgres` system user when we run as root, whatever the umask.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let settings = DbSettings {
            data_dir: dir.path().join("pg"),
            db_name: "fallback".to_owned(),
            pool_size: 2,
            ..DbSettings::default()
        };
        // Nothing listens on port 1: the probe fails and the private cluster starts.
        let closed = Secret::new("postgres://postgres@127.0.0.1:1/postgres");
        let db = Database::open_with_default(&settings, &closed)
            .await
            .unwrap();
        assert!(db.started_private_cluster());
        assert!(
            db.describe().starts_with("private cluster at "),
            "{}",
            db.describe()
        );
        assert_eq!(
            database_name(db.url()).unwrap().as_deref(),
            Some("fallback")
        );
        db.ping().await.unwrap();
        assert_eq!(
            db.run_migrations().await.unwrap().len(),
            diesel::migration::MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
                .unwrap()
                .len()
        );
        let pid_file = dir.path().join("pg/data/postmaster.pid");
        assert!(pid_file.exists());
        db.shutdown().await;
        assert!(!pid_file.exists(), "shutdown stops the cluster we started");

        // The next start finds the data (database and migrations) in place.
        let db = Database::open_with_default(&settings, &closed)
            .await
            .unwrap();
        assert!(db.migration_status().await.unwrap().pending.is_empty());
        db.shutdown().await;
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("t_1"), "\"t_1\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
