//! Migrations, `Database::open` and the private cluster, against real PostgreSQL.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::db::private_pg::{PgBinaries, PrivateCluster};
use infragpt::db::{Database, DbSettings, MIGRATIONS, database_name, with_database};
use infragpt::testkit::test_db::TestDb;
use infragpt_actors::Secret;

use crate::support::wait::eventually;

diesel::table! {
    information_schema.tables (table_schema, table_name) {
        table_schema -> Text,
        table_name -> Text,
    }
}

/// Tables with more columns than diesel's default 16-column `table!` support, read and
/// written with SQL (typed rows) and so not in schema.rs.
const SQL_ONLY_TABLES: [&str; 1] = ["approvals"];

/// Every table the migrations create.
const TABLES: [&str; 25] = [
    "approvals",
    "audit_log",
    "channels",
    "cluster_partitions",
    "cluster_replicas",
    "conversations",
    "event_messages",
    "event_rule_hits",
    "event_rules",
    "event_sources",
    "github_events",
    "github_repositories",
    "inbound_events",
    "integration_credentials",
    "integrations",
    "messages",
    "oauth_nonces",
    "organization_members",
    "organization_metadata",
    "organizations",
    "reply_intents",
    "slack_workspaces",
    "slash_questions",
    "turn_progress",
    "users",
];

async fn public_tables(db: &TestDb) -> Vec<String> {
    let mut conn = db.pool().get().await.expect("connection");
    let mut names: Vec<String> = tables::table
        .filter(tables::table_schema.eq("public"))
        .filter(tables::table_name.ne("__diesel_schema_migrations"))
        .select(tables::table_name)
        .load(&mut conn)
        .await
        .expect("list tables");
    names.sort();
    names
}

fn embedded_versions() -> Vec<String> {
    use diesel::migration::MigrationSource;
    let mut versions: Vec<String> = MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .expect("embedded migrations")
        .iter()
        .map(|m| m.name().version().to_string())
        .collect();
    versions.sort();
    versions
}

/// Number of migration directories on disk (each must be embedded and revertible).
fn migration_dirs() -> usize {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .expect("migrations dir")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().join("up.sql").exists()))
        .count()
}

#[tokio::test]
async fn migrations_apply_revert_and_apply_again() {
    let test_db = TestDb::empty().await;
    let db = test_db.database();
    let all = embedded_versions();
    assert_eq!(
        all.len(),
        migration_dirs(),
        "every migration directory is embedded: {all:?}"
    );

    let status = db.migration_status().await.expect("status");
    assert!(status.applied.is_empty(), "{status:?}");
    assert_eq!(status.pending, all);
    assert!(public_tables(&test_db).await.is_empty());

    let applied = db.run_migrations().await.expect("apply");
    assert_eq!(applied, all);
    assert_eq!(public_tables(&test_db).await, TABLES);
    let status = db.migration_status().await.expect("status");
    assert_eq!(status.applied, all);
    assert!(status.pending.is_empty(), "{status:?}");
    assert!(
        db.run_migrations().await.expect("re-apply").is_empty(),
        "nothing left to apply"
    );

    db.revert_all_migrations().await.expect("revert");
    assert!(
        public_tables(&test_db).await.is_empty(),
        "every down.sql drops its tables"
    );
    let status = db.migration_status().await.expect("status");
    assert!(status.applied.is_empty(), "{status:?}");
    assert_eq!(status.pending, all);

    assert_eq!(db.run_migrations().await.expect("apply again"), all);
    assert_eq!(public_tables(&test_db).await, TABLES);
}

#[tokio::test]
async fn each_migration_reverts_on_its_own() {
    use diesel_migrations::MigrationHarness;
    let test_db = TestDb::empty().await;
    let url = test_db.url.clone();
    // One step at a time, newest first, like `diesel migration redo` would.
    let counts = tokio::task::spawn_blocking(move || {
        use diesel::Connection as _;
        let mut conn = diesel_async::async_connection_wrapper::AsyncConnectionWrapper::<
            diesel_async::AsyncPgConnection,
        >::establish(url.expose())
        .expect("connect");
        conn.run_pending_migrations(MIGRATIONS).expect("apply");
        let mut remaining = Vec::new();
        for _ in 0..migration_dirs() {
            conn.revert_last_migration(MIGRATIONS).expect("revert one");
            remaining.push(conn.applied_migrations().expect("applied").len());
        }
        remaining
    })
    .await
    .expect("blocking task");
    let expected: Vec<usize> = (0..migration_dirs()).rev().collect();
    assert_eq!(counts, expected);
    assert!(public_tables(&test_db).await.is_empty());
}

#[tokio::test]
async fn schema_matches_the_migrated_tables() {
    use infragpt::db::schema::*;
    let test_db = TestDb::new().await;
    let mut conn = test_db.pool().get().await.expect("connection");
    let org_id: uuid::Uuid = diesel::insert_into(organizations::table)
        .values((
            organizations::clerk_id.eq("org_1"),
            organizations::name.eq("Acme"),
        ))
        .returning(organizations::id)
        .get_result(&mut conn)
        .await
        .expect("insert organization");
    diesel::insert_into(organization_metadata::table)
        .values((
            organization_metadata::organization_id.eq(org_id),
            organization_metadata::use_cases.eq(vec!["incidents".to_owned()]),
        ))
        .execute(&mut conn)
        .await
        .expect("insert metadata");
    let (use_cases, stack): (Vec<String>, Vec<String>) = organization_metadata::table
        .find(org_id)
        .select((
            organization_metadata::use_cases,
            organization_metadata::observability_stack,
        ))
        .first(&mut conn)
        .await
        .expect("read metadata");
    assert_eq!(use_cases, ["incidents"]);
    assert!(stack.is_empty());
    let integration_id: uuid::Uuid = diesel::insert_into(integrations::table)
        .values((
            integrations::organization_id.eq(org_id),
            integrations::connector_type.eq("github"),
        ))
        .returning(integrations::id)
        .get_result(&mut conn)
        .await
        .expect("insert integration");
    diesel::insert_into(integration_credentials::table)
        .values((
            integration_credentials::integration_id.eq(integration_id),
            integration_credentials::credential_type.eq("installation_token"),
            integration_credentials::nonce.eq(vec![0_u8; 12]),
            integration_credentials::ciphertext.eq(vec![1_u8, 2, 3]),
            integration_credentials::key_id.eq("k1"),
        ))
        .execute(&mut conn)
        .await
        .expect("insert credential");
    let joined: Vec<(String, Vec<u8>)> = integrations::table
        .inner_join(integration_credentials::table)
        .inner_join(organizations::table)
        .filter(organizations::clerk_id.eq("org_1"))
        .select((
            integrations::connector_type,
            integration_credentials::ciphertext,
        ))
        .load(&mut conn)
        .await
        .expect("join");
    assert_eq!(joined, [("github".to_owned(), vec![1, 2, 3])]);
    let conversation: uuid::Uuid = diesel::insert_into(conversations::table)
        .values((
            conversations::team_id.eq("T1"),
            conversations::channel_id.eq("C1"),
            conversations::thread_ts.eq("1700000000.000100"),
        ))
        .returning(conversations::id)
        .get_result(&mut conn)
        .await
        .expect("insert conversation");
    diesel::insert_into(messages::table)
        .values((
            messages::conversation_id.eq(conversation),
            messages::slack_ts.eq("1700000000.000100"),
            messages::sender_kind.eq("user"),
            messages::sender_id.eq("U1"),
            messages::text.eq("hello"),
        ))
        .execute(&mut conn)
        .await
        .expect("insert message");
    let texts: Vec<String> = messages::table
        .inner_join(conversations::table)
        .filter(conversations::team_id.eq("T1"))
        .select(messages::text)
        .load(&mut conn)
        .await
        .expect("join messages");
    assert_eq!(texts, ["hello"]);
    // Every table is reachable through the schema.
    let counts = [
        audit_log::table.count().get_result::<i64>(&mut conn).await,
        channels::table.count().get_result::<i64>(&mut conn).await,
        github_events::table
            .count()
            .get_result::<i64>(&mut conn)
            .await,
        github_repositories::table
            .count()
            .get_result::<i64>(&mut conn)
            .await,
        inbound_events::table
            .count()
            .get_result::<i64>(&mut conn)
            .await,
        organization_members::table
            .count()
            .get_result::<i64>(&mut conn)
            .await,
        slack_workspaces::table
            .count()
            .get_result::<i64>(&mut conn)
            .await,
        users::table.count().get_result::<i64>(&mut conn).await,
    ];
    for count in counts {
        assert_eq!(count.expect("count"), 0);
    }
}

#[tokio::test]
async fn open_creates_a_missing_database_from_explicit_settings() {
    let test_db = TestDb::empty().await;
    let server = url::Url::parse(test_db.url.expose()).expect("test url");
    let name = format!("{}_open", test_db.name);
    let settings = DbSettings {
        host: server.host_str().map(str::to_owned),
        port: server.port(),
        user: Some(server.username().to_owned()),
        password: server.password().map(Secret::from),
        db_name: name.clone(),
        pool_size: 2,
        ..DbSettings::default()
    };
    let db = Database::open(&settings).await.expect("open");
    assert!(!db.started_private_cluster());
    assert!(
        db.describe().ends_with(&format!("/{name}")),
        "{}",
        db.describe()
    );
    assert_eq!(
        database_name(db.url()).expect("url").as_deref(),
        Some(name.as_str())
    );
    db.ping().await.expect("ping");
    assert_eq!(
        db.run_migrations().await.expect("migrate").len(),
        migration_dirs()
    );
    db.shutdown().await;

    // Opening again finds the database (and its migrations) in place.
    let db = Database::open(&DbSettings {
        url: Some(with_database(&test_db.url, &name).expect("url")),
        ..DbSettings::default()
    })
    .await
    .expect("reopen");
    assert!(
        db.migration_status()
            .await
            .expect("status")
            .pending
            .is_empty()
    );
    db.shutdown().await;

    let mut conn = test_db.pool().get().await.expect("connection");
    diesel::sql_query(format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .expect("drop the opened database");
}

#[tokio::test]
async fn open_reports_unreachable_servers_without_the_password() {
    // Port 1 on loopback: nothing listens there.
    let settings = DbSettings {
        url: Some(Secret::new("postgres://app:hunter2@127.0.0.1:1/x")),
        connect_timeout: Duration::from_secs(2),
        ..DbSettings::default()
    };
    let err = Database::open(&settings)
        .await
        .expect_err("nothing listens on port 1");
    let message = err.to_string();
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    assert!(!format!("{err:?}").contains("hunter2"));
}

#[actix_rt::test]
async fn harness_works_on_the_actix_runtime() {
    let test_db = TestDb::new().await;
    let db = test_db.database();
    db.ping().await.expect("ping");
    assert!(
        db.migration_status()
            .await
            .expect("status")
            .pending
            .is_empty()
    );
}

/// A temp dir the `postgres` system user can traverse when we run as root (whatever the umask).
fn cluster_temp_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

fn binaries_or_skip(test: &str) -> bool {
    match PgBinaries::find() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIPPED {test}: {e}");
            false
        }
    }
}

fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn private_cluster_starts_adopts_and_stops() {
    if !binaries_or_skip("private_cluster_starts_adopts_and_stops") {
        return;
    }
    let dir = cluster_temp_dir();
    let mut first = PrivateCluster::start(dir.path()).expect("start");
    assert!(first.started_by_us());
    assert!(first.is_running());
    let port = first.port();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let url = Secret::new(first.url("postgres"));
        let mut conn = infragpt::db::connect(&url, Duration::from_secs(10))
            .await
            .expect("connect");
        let one: i32 = diesel::select(1_i32.into_sql::<diesel::sql_types::Integer>())
            .get_result(&mut conn)
            .await
            .expect("select 1");
        assert_eq!(one, 1);
    });

    // A second user adopts the running server; its stop leaves the server to the first.
    let mut second = PrivateCluster::start(dir.path()).expect("adopt");
    assert!(!second.started_by_us());
    assert_eq!(second.port(), port);
    second.stop().expect("second stop");
    assert!(first.is_running(), "still used by the first handle");
    assert!(accepts(port));

    first.stop().expect("stop");
    assert!(!first.is_running());
    assert!(!accepts(port), "server gone after stop");
    first.stop().expect("stopping twice is harmless");

    // A stale postmaster.pid (dead pid) left by a crash is removed on the next start.
    let mut dead = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let dead_pid = dead.id();
    dead.wait().expect("wait");
    let data = first.data_dir().to_path_buf();
    std::fs::write(
        data.join("postmaster.pid"),
        format!(
            "{dead_pid}\n{}\n0\n{port}\n\n127.0.0.1\n0 0\nready\n",
            data.display()
        ),
    )
    .expect("write stale pid file");
    let restarted = PrivateCluster::start(dir.path()).expect("restart over a stale pid file");
    assert!(restarted.started_by_us());
    assert!(restarted.is_running());
    let port = restarted.port();
    drop(restarted);
    assert!(!accepts(port), "Drop stops the server");
}

const GUARDIAN_DIR_ENV: &str = "INFRAGPT_TEST_GUARDIAN_DIR";

/// Runs in a child process: starts a cluster and exits without any destructor.
#[test]
#[ignore = "helper process for private_cluster_is_stopped_when_its_owner_dies"]
fn guardian_child_process() {
    let dir = std::env::var(GUARDIAN_DIR_ENV).expect("only run by the guardian test");
    let cluster = PrivateCluster::start(std::path::Path::new(&dir)).expect("start");
    println!("PORT={}", cluster.port());
    std::process::exit(0);
}

#[tokio::test]
async fn private_cluster_is_stopped_when_its_owner_dies() {
    if !binaries_or_skip("private_cluster_is_stopped_when_its_owner_dies") {
        return;
    }
    let dir = cluster_temp_dir();
    // The child's full test name: this module's path without the crate name.
    let (_, module) = module_path!().split_once("::").expect("a test module");
    let child = format!("{module}::guardian_child_process");
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", &child, "--nocapture"])
        .env(GUARDIAN_DIR_ENV, dir.path())
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let port: u16 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PORT="))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("child printed no port: {stdout}"));
    let pid_file = dir.path().join("data/postmaster.pid");
    eventually("the guardian stops the orphaned server", async || {
        !pid_file.exists() && !accepts(port)
    })
    .await;
}

diesel::table! {
    // diesel generates a `columns` module inside every table module: rename ours.
    #[sql_name = "columns"]
    information_schema.info_columns (table_schema, table_name, column_name) {
        table_schema -> Text,
        table_name -> Text,
        column_name -> Text,
        ordinal_position -> Integer,
        udt_name -> Text,
        #[sql_name = "is_nullable"]
        nullable -> Text,
    }
}

diesel::table! {
    information_schema.table_constraints (constraint_schema, constraint_name) {
        constraint_schema -> Text,
        constraint_name -> Text,
        table_schema -> Text,
        table_name -> Text,
        constraint_type -> Text,
    }
}

diesel::table! {
    information_schema.key_column_usage (constraint_schema, constraint_name, column_name) {
        constraint_schema -> Text,
        constraint_name -> Text,
        column_name -> Text,
        ordinal_position -> Integer,
    }
}

/// `(table, primary key columns, [(column, udt_name, nullable)])` as written in schema.rs.
type TableShape = (String, Vec<String>, Vec<(String, String, bool)>);

fn parse_schema_rs() -> Vec<TableShape> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/db/schema.rs"))
        .expect("read schema.rs");
    let mut tables: Vec<TableShape> = Vec::new();
    let mut current: Option<TableShape> = None;
    for line in text.lines().map(str::trim) {
        if let Some(open) = line.strip_suffix(") {") {
            let (name, pk) = open.split_once(" (").expect("table header");
            let pk = pk.split(',').map(|c| c.trim().to_owned()).collect();
            current = Some((name.to_owned(), pk, Vec::new()));
        } else if let (Some(table), Some((column, ty))) =
            (current.as_mut(), line.split_once(" -> "))
        {
            let ty = ty.trim_end_matches(',');
            let (ty, nullable) = match ty.strip_prefix("Nullable<") {
                Some(inner) => (inner.strip_suffix('>').expect("Nullable<..>"), true),
                None => (ty, false),
            };
            let udt = match ty {
                "Int2" => "int2",
                "Int4" => "int4",
                "Int8" => "int8",
                "Text" => "text",
                "Bool" => "bool",
                "Uuid" => "uuid",
                "Jsonb" => "jsonb",
                "Bytea" => "bytea",
                "Timestamptz" => "timestamptz",
                "Array<Text>" => "_text",
                other => panic!("schema.rs uses a type this test does not know: {other}"),
            };
            table.2.push((column.to_owned(), udt.to_owned(), nullable));
        } else if line == "}" {
            tables.extend(current.take());
        }
    }
    tables.sort();
    tables
}

#[tokio::test]
async fn schema_rs_matches_the_migrated_database_exactly() {
    let test_db = TestDb::new().await;
    let mut conn = test_db.pool().get().await.expect("connection");
    let column_rows: Vec<(String, String, i32, String, String)> = info_columns::table
        .filter(info_columns::table_schema.eq("public"))
        .filter(info_columns::table_name.ne("__diesel_schema_migrations"))
        .select((
            info_columns::table_name,
            info_columns::column_name,
            info_columns::ordinal_position,
            info_columns::udt_name,
            info_columns::nullable,
        ))
        .load(&mut conn)
        .await
        .expect("columns");
    let primary_keys: Vec<(String, String)> = table_constraints::table
        .filter(table_constraints::table_schema.eq("public"))
        .filter(table_constraints::constraint_type.eq("PRIMARY KEY"))
        .select((
            table_constraints::table_name,
            table_constraints::constraint_name,
        ))
        .load(&mut conn)
        .await
        .expect("constraints");
    let key_columns: Vec<(String, String, i32)> = key_column_usage::table
        .filter(key_column_usage::constraint_schema.eq("public"))
        .select((
            key_column_usage::constraint_name,
            key_column_usage::column_name,
            key_column_usage::ordinal_position,
        ))
        .load(&mut conn)
        .await
        .expect("key columns");

    let mut database: Vec<TableShape> = Vec::new();
    let mut names: Vec<&String> = column_rows
        .iter()
        .map(|r| &r.0)
        .filter(|t| !SQL_ONLY_TABLES.contains(&t.as_str()))
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        let mut cols: Vec<_> = column_rows.iter().filter(|r| &r.0 == name).collect();
        cols.sort_by_key(|r| r.2);
        let constraint = &primary_keys
            .iter()
            .find(|(t, _)| t == name)
            .expect("primary key")
            .1;
        let mut pk: Vec<_> = key_columns
            .iter()
            .filter(|(c, _, _)| c == constraint)
            .collect();
        pk.sort_by_key(|r| r.2);
        database.push((
            name.clone(),
            pk.iter().map(|r| r.1.clone()).collect(),
            cols.iter()
                .map(|r| (r.1.clone(), r.3.clone(), r.4 == "YES"))
                .collect(),
        ));
    }
    let written = parse_schema_rs();
    assert_eq!(written.len(), TABLES.len() - SQL_ONLY_TABLES.len());
    for (db_table, rs_table) in database.iter().zip(&written) {
        assert_eq!(
            db_table, rs_table,
            "schema.rs differs from the migrated database"
        );
    }
    assert_eq!(database.len(), written.len());
}

diesel::table! {
    pg_catalog.pg_database (datname) {
        datname -> Text,
    }
}

#[tokio::test]
async fn test_databases_are_dropped_with_their_handle() {
    let observer = TestDb::empty().await;
    let db = TestDb::new().await;
    let name = db.name.clone();
    assert!(name.starts_with("t_"), "{name}");
    let mut conn = observer.pool().get().await.expect("connection");
    let exists = |n: i64| n == 1;
    let count = |name: String| {
        pg_database::table
            .filter(pg_database::datname.eq(name))
            .count()
    };
    let before: i64 = count(name.clone())
        .get_result(&mut conn)
        .await
        .expect("count");
    assert!(exists(before));
    // Even with a connection checked out, the database goes away.
    let held = db.pool().get().await.expect("held connection");
    drop(db);
    drop(held);
    let after: i64 = count(name).get_result(&mut conn).await.expect("count");
    assert_eq!(after, 0);
}

/// Inbox payloads are compressed with lz4 wherever the server has it (a server built without
/// it refuses `default_toast_compression = lz4`, and the migration leaves its default).
#[tokio::test]
async fn inbox_payloads_use_lz4_where_the_server_has_it() {
    #[derive(QueryableByName, Debug, PartialEq)]
    struct Compression {
        #[diesel(sql_type = diesel::sql_types::Text)]
        attname: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        method: String,
    }
    let db = TestDb::new().await;
    let mut conn = db.pool().get().await.unwrap();
    let has_lz4 = diesel::sql_query("SET default_toast_compression = 'lz4'")
        .execute(&mut conn)
        .await
        .is_ok();
    let columns: Vec<Compression> = diesel::sql_query(
        "SELECT attname::text AS attname, attcompression::text AS method FROM pg_attribute \
         WHERE attrelid = 'inbound_events'::regclass AND attname IN ('payload', 'raw_body') \
         ORDER BY attname",
    )
    .load(&mut conn)
    .await
    .unwrap();
    let method = if has_lz4 { "l" } else { "" };
    let expected: Vec<Compression> = ["payload", "raw_body"]
        .into_iter()
        .map(|attname| Compression {
            attname: attname.to_owned(),
            method: method.to_owned(),
        })
        .collect();
    assert_eq!(columns, expected, "lz4 available: {has_lz4}");
}
