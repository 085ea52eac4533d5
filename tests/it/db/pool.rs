//! The connection pool: checkouts without a test query, and no closed connection handed out.

use diesel::prelude::*;
use diesel::sql_types::Integer;
use diesel_async::RunQueryDsl;
use infragpt::testkit::test_db::TestDb;

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

async fn backend_pid(conn: &mut diesel_async::AsyncPgConnection) -> i32 {
    diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result::<Pid>(conn)
        .await
        .expect("pg_backend_pid")
        .pid
}

/// A pooled connection the server closed (a restart, `pg_terminate_backend`, an idle
/// timeout) is dropped at checkout, not handed out to fail its first statement.
#[tokio::test]
async fn a_connection_the_server_closed_is_not_handed_out() {
    let db = TestDb::new().await;
    let pool = infragpt::db::build_pool(db.database().url(), 1, std::time::Duration::from_secs(5))
        .expect("pool");
    let first = {
        let mut conn = pool.get().await.expect("checkout");
        backend_pid(&mut conn).await
    };
    let mut admin = db.pool().get().await.expect("admin connection");
    diesel::sql_query(format!("SELECT pg_terminate_backend({first})"))
        .execute(&mut admin)
        .await
        .expect("terminate");
    // The client notices the closed socket on its own.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mut conn = pool
            .get()
            .await
            .expect("checkout after the server closed it");
        match diesel::sql_query("SELECT pg_backend_pid() AS pid")
            .get_result::<Pid>(&mut conn)
            .await
        {
            Ok(p) => {
                assert_ne!(p.pid, first, "a new connection");
                break;
            }
            Err(e) => {
                // Only before the client has seen the close: never after the deadline.
                assert!(
                    std::time::Instant::now() < deadline,
                    "the closed connection is still handed out: {e}"
                );
                drop(conn);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Checkouts in a row reuse the connection without a `SELECT 1` each time: the backend
/// runs only the caller's statements.
#[tokio::test]
async fn checkouts_in_a_row_send_no_test_query() {
    let db = TestDb::new().await;
    let pool = infragpt::db::build_pool(db.database().url(), 1, std::time::Duration::from_secs(5))
        .expect("pool");
    let pid = {
        let mut conn = pool.get().await.expect("checkout");
        backend_pid(&mut conn).await
    };
    #[derive(QueryableByName)]
    struct Query {
        #[diesel(sql_type = diesel::sql_types::Text)]
        query: String,
    }
    let mut admin = db.pool().get().await.expect("admin connection");
    for _ in 0..3 {
        let conn = pool.get().await.expect("checkout");
        drop(conn);
    }
    let last: Query = diesel::sql_query(format!(
        "SELECT query FROM pg_stat_activity WHERE pid = {pid}"
    ))
    .get_result(&mut admin)
    .await
    .expect("pg_stat_activity");
    assert_eq!(
        last.query, "SELECT pg_backend_pid() AS pid",
        "no statement since"
    );
}

/// A pooled connection opened on an actix arbiter is driven there (`db::establish_pinned`),
/// also on the system's thread of a multi-threaded runtime, where diesel-async's own
/// `establish` would put its driver on a runtime worker: while that thread is busy, a
/// statement sent on the connection from a worker waits for it, and completes once the
/// thread runs its tasks again.
#[test]
fn a_connection_opened_on_an_arbiter_is_driven_by_that_thread() {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    };
    actix_rt::System::with_tokio_rt(runtime).block_on(async {
        let db = TestDb::new().await;
        let pool =
            infragpt::db::build_pool(db.database().url(), 1, std::time::Duration::from_secs(5))
                .expect("pool");
        let opened = {
            let mut conn = pool.get().await.expect("checkout on the system thread");
            backend_pid(&mut conn).await
        };
        let (done, finished) = std::sync::mpsc::channel();
        let from_worker = pool.clone();
        tokio::spawn(async move {
            let mut conn = from_worker.get().await.expect("checkout on a worker");
            let _ = done.send(backend_pid(&mut conn).await);
        });
        // This thread does not run its tasks now, the connection's driver among them.
        assert!(
            finished
                .recv_timeout(std::time::Duration::from_millis(1500))
                .is_err(),
            "the statement completed while the thread that opened its connection was blocked: \
             its driver runs elsewhere"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let pid = loop {
            if let Ok(pid) = finished.try_recv() {
                break pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the statement did not complete once the thread ran again"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        assert_eq!(pid, opened, "the same pooled connection");
    });
}
