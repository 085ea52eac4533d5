//! A row is the caller's only once its statement committed: `get_result` answers before the
//! commit (its outcome comes after the rows), `get_committed` after it.

use diesel::prelude::*;
use diesel::sql_types::Integer;
use diesel_async::RunQueryDsl;
use infragpt::db::committed::CommittedExt as _;
use infragpt::testkit::test_db::TestDb;

#[derive(Debug, QueryableByName)]
struct Id {
    #[diesel(sql_type = Integer)]
    id: i32,
}

/// A deferred unique constraint fails at commit, after the INSERT sent its row back (as a
/// server crash between the two would lose the commit): `get_result` reports the row as
/// written, `get_committed` reports the failed commit.
#[tokio::test]
async fn a_row_whose_commit_fails_is_an_error() {
    let db = TestDb::new().await;
    let mut conn = db.pool().get().await.expect("a connection");
    diesel::sql_query(
        "CREATE TABLE once_only (id int4, \
         CONSTRAINT once_only_id UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)",
    )
    .execute(&mut conn)
    .await
    .expect("table");
    diesel::sql_query("INSERT INTO once_only VALUES (1)")
        .execute(&mut conn)
        .await
        .expect("first row");
    let insert = || diesel::sql_query("INSERT INTO once_only VALUES (1) RETURNING id");

    let early = insert().get_result::<Id>(&mut conn).await;
    assert_eq!(
        early.expect("get_result answers before the commit").id,
        1,
        "the row came back although its commit failed"
    );
    let committed = insert().get_committed::<Id>(&mut conn).await;
    assert!(
        committed.is_err(),
        "get_committed waits for the commit: {committed:?}"
    );

    let count: i64 = diesel::sql_query("SELECT count(*)::int4 AS id FROM once_only")
        .get_committed::<Id>(&mut conn)
        .await
        .map(|r| i64::from(r.id))
        .expect("count");
    assert_eq!(count, 1, "neither duplicate committed");
    assert!(
        diesel::sql_query("SELECT 1 AS id WHERE false")
            .get_committed::<Id>(&mut conn)
            .await
            .is_err_and(|e| e == diesel::result::Error::NotFound),
        "no row: NotFound, as get_result"
    );
}
