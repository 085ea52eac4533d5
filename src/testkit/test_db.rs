//! Test harness: a fresh, migrated PostgreSQL database per test.
//!
//! The server is chosen once per test process:
//!
//! 1. `INFRAGPT_TEST_DATABASE_URL` when set (its user needs `CREATEDB`);
//! 2. else `postgres@127.0.0.1:5432` when it answers (skipped when
//!    `INFRAGPT_TEST_DB_NO_DEFAULT=1`);
//! 3. else a private cluster in `<target dir>/test-pg` (or `INFRAGPT_TEST_PG_DIR`), shared by
//!    all test binaries and stopped by its guardian once no test process uses it.
//!
//! Each [`TestDb`] is a database `t_<uuid v7>` created for the test and dropped (with
//! `FORCE`) when the `TestDb` drops; set `INFRAGPT_TEST_KEEP_DB=1` to keep it for a post
//! mortem. Nothing shared holds a connection: every test gets its own pool on its own runtime,
//! so `#[tokio::test]` and `#[actix_rt::test]` functions can run in parallel threads.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt_actors::Secret;

use crate::db::committed::CommittedExt as _;
use crate::db::{
    ClusterOptions, Database, DbError, Pool, PrivateCluster, build_pool, connect, create_database,
    quote_ident, redact, with_database,
};

/// Server URL for tests (overrides everything else).
pub const ENV_DATABASE_URL: &str = "INFRAGPT_TEST_DATABASE_URL";
/// `1` skips probing 127.0.0.1:5432 (exercises the private cluster path).
pub const ENV_NO_DEFAULT: &str = "INFRAGPT_TEST_DB_NO_DEFAULT";
/// `1` keeps each test database instead of dropping it.
pub const ENV_KEEP: &str = "INFRAGPT_TEST_KEEP_DB";
/// Directory of the test cluster (default `<target dir>/test-pg`).
pub const ENV_PG_DIR: &str = "INFRAGPT_TEST_PG_DIR";

const TIMEOUT: Duration = Duration::from_secs(10);
const POOL_SIZE: usize = 4;
/// Unused `t_*` databases older than this were left by killed test runs.
const STALE_AFTER: Duration = Duration::from_secs(2 * 60 * 60);

/// The server all tests of this process use.
struct Server {
    /// Where `CREATE DATABASE` / `DROP DATABASE` are issued.
    admin_url: Secret,
    /// Kept alive for the whole process (statics are never dropped; the guardian stops it).
    _cluster: Option<PrivateCluster>,
}

static SERVER: tokio::sync::OnceCell<Result<Server, String>> = tokio::sync::OnceCell::const_new();

/// A fresh database with all migrations applied, dropped on `Drop`.
pub struct TestDb {
    /// Connection URL of this database.
    pub url: Secret,
    /// Database name (`t_<uuid>`).
    pub name: String,
    pool: Pool,
    admin_url: Secret,
    keep: bool,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestDb {
    /// A fresh migrated database. Panics with the reason when no server can be had (tests
    /// cannot do anything useful then).
    pub async fn new() -> TestDb {
        match Self::create(true).await {
            Ok(db) => db,
            Err(e) => panic!("test database: {e}"),
        }
    }

    /// A fresh database without migrations (for migration tests).
    pub async fn empty() -> TestDb {
        match Self::create(false).await {
            Ok(db) => db,
            Err(e) => panic!("test database: {e}"),
        }
    }

    /// Like [`TestDb::new`], returning the error instead of panicking.
    pub async fn try_new() -> Result<TestDb, DbError> {
        Self::create(true).await
    }

    /// A fresh migrated database on the server of `admin_url` (a cluster the test controls,
    /// e.g. one it restarts), instead of the one every test shares.
    pub async fn on_server(admin_url: Secret) -> Result<TestDb, DbError> {
        Self::create_on(admin_url, true).await
    }

    async fn create(migrate: bool) -> Result<TestDb, DbError> {
        Self::create_on(server_admin_url().await?, migrate).await
    }

    async fn create_on(admin_url: Secret, migrate: bool) -> Result<TestDb, DbError> {
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        let mut admin = connect(&admin_url, TIMEOUT).await?;
        create_database(&mut admin, &name).await?;
        drop(admin);
        let url = with_database(&admin_url, &name)?;
        let db = TestDb {
            pool: build_pool(&url, POOL_SIZE, TIMEOUT)?,
            url,
            name,
            admin_url,
            keep: env_flag(ENV_KEEP),
        };
        if migrate {
            // On failure `db` drops and takes the half-made database with it.
            db.database().run_migrations().await?;
        }
        Ok(db)
    }

    /// The pool of this test database (its own, bound to the calling test's runtime).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A [`Database`] on this test database (sharing the pool; owns no cluster).
    pub fn database(&self) -> Database {
        Database::from_pool(self.pool.clone(), self.url.clone(), TIMEOUT)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        self.pool.close();
        if self.keep {
            eprintln!(
                "test database kept: {} ({})",
                self.name,
                redact(self.url.expose())
            );
            return;
        }
        let admin_url = self.admin_url.clone();
        let statement = format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&self.name)
        );
        let result = block_on_own_runtime(async move {
            let mut conn = connect(&admin_url, TIMEOUT).await?;
            diesel::sql_query(statement).execute(&mut conn).await?;
            Ok::<_, DbError>(())
        });
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e}", self.name),
            Err(e) => eprintln!("warning: could not drop test database {}: {e}", self.name),
        }
    }
}

/// The admin URL of the process-wide test server, choosing it on first use.
async fn server_admin_url() -> Result<Secret, DbError> {
    let server = SERVER
        .get_or_init(|| async {
            // Resolve on a runtime of our own: a cluster start blocks, and nothing made here
            // may be tied to the runtime of whichever test came first.
            match run_on_own_runtime(resolve_server()).await {
                Ok(Ok(server)) => Ok(server),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e),
            }
        })
        .await;
    match server {
        Ok(server) => Ok(server.admin_url.clone()),
        Err(e) => Err(DbError::Config(format!(
            "no PostgreSQL server for tests: {e}"
        ))),
    }
}

async fn resolve_server() -> Result<Server, DbError> {
    let server = if let Some(url) = std::env::var(ENV_DATABASE_URL)
        .ok()
        .filter(|u| !u.is_empty())
    {
        let url = Secret::new(url);
        connect(&url, TIMEOUT).await?;
        eprintln!(
            "test databases on {} ({ENV_DATABASE_URL})",
            redact(url.expose())
        );
        Server {
            admin_url: url,
            _cluster: None,
        }
    } else {
        let default = Secret::new("postgres://postgres@127.0.0.1:5432/postgres");
        let default_answers = if env_flag(ENV_NO_DEFAULT) {
            false
        } else {
            match crate::db::probe(&default, Duration::from_secs(2)).await {
                Ok(()) => true,
                Err(reason) => {
                    eprintln!("no usable PostgreSQL on 127.0.0.1:5432 ({reason})");
                    false
                }
            }
        };
        if default_answers {
            eprintln!("test databases on {}", redact(default.expose()));
            Server {
                admin_url: default,
                _cluster: None,
            }
        } else {
            let dir = test_cluster_dir();
            let cluster = PrivateCluster::start_with(&dir, &ClusterOptions { durable: false })?;
            eprintln!(
                "test databases on the private cluster in {} (port {})",
                dir.display(),
                cluster.port()
            );
            Server {
                admin_url: Secret::new(cluster.url("postgres")),
                _cluster: Some(cluster),
            }
        }
    };
    if let Err(e) = drop_stale_databases(&server.admin_url).await {
        eprintln!("warning: could not remove stale test databases: {e}");
    }
    Ok(server)
}

diesel::table! {
    /// Connected sessions (read only); only `datname` is needed.
    pg_catalog.pg_stat_activity (pid) {
        pid -> Int4,
        datname -> Nullable<Text>,
    }
}

/// Drops `t_<uuid v7>` databases that are old and unused: leftovers of killed test runs.
async fn drop_stale_databases(admin_url: &Secret) -> Result<(), DbError> {
    use crate::db::pg_database;
    let mut conn = connect(admin_url, TIMEOUT).await?;
    let names: Vec<String> = pg_database::table
        .select(pg_database::datname)
        .filter(pg_database::datname.like("t\\_%"))
        .load(&mut conn)
        .await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    for name in names {
        let Some(created) = name
            .strip_prefix("t_")
            .and_then(|id| uuid::Uuid::parse_str(id).ok())
            .filter(|id| id.get_version_num() == 7)
            .and_then(|id| id.get_timestamp())
        else {
            continue;
        };
        let age = now.saturating_sub(Duration::from_secs(created.to_unix().0));
        if age < STALE_AFTER {
            continue;
        }
        let in_use: i64 = pg_stat_activity::table
            .filter(pg_stat_activity::datname.eq(&name))
            .count()
            .get_committed(&mut conn)
            .await?;
        if in_use == 0 {
            // No FORCE: if someone connected meanwhile, leave it.
            let dropped =
                diesel::sql_query(format!("DROP DATABASE IF EXISTS {}", quote_ident(&name)))
                    .execute(&mut conn)
                    .await;
            if dropped.is_ok() {
                eprintln!("removed stale test database {name}");
            }
        }
    }
    Ok(())
}

/// Where the shared test cluster lives: `INFRAGPT_TEST_PG_DIR`, else `<target dir>/test-pg`.
fn test_cluster_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(ENV_PG_DIR).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    // Test binaries live in <target>/<profile>/deps; cargo marks <target> with CACHEDIR.TAG.
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .find(|dir| dir.join("CACHEDIR.TAG").is_file())
            .map(|dir| dir.to_path_buf())
    });
    let target = from_exe
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("test-pg")
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "yes"))
}

/// Runs `future` to completion on a new thread with its own current-thread runtime.
async fn run_on_own_runtime<T, F>(future: F) -> Result<T, String>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("infragpt-test-db".to_owned())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(future))
                .map_err(|e| format!("cannot build a runtime: {e}"));
            let _ = tx.send(result);
        })
        .map_err(|e| format!("cannot spawn a thread: {e}"))?;
    rx.await
        .map_err(|_| "the test database thread panicked".to_owned())?
}

/// Blocks until `future` completes on a new thread with its own runtime (usable in `Drop`,
/// even inside an async test).
fn block_on_own_runtime<T, F>(future: F) -> Result<T, String>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    std::thread::Builder::new()
        .name("infragpt-test-db".to_owned())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(future))
                .map_err(|e| format!("cannot build a runtime: {e}"))
        })
        .map_err(|e| format!("cannot spawn a thread: {e}"))?
        .join()
        .map_err(|_| "the test database thread panicked".to_owned())?
}
