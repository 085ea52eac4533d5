//! The plan a connection keeps for a statement it prepared, read from that connection.

use diesel_async::{AsyncPgConnection, RunQueryDsl};

#[derive(diesel::QueryableByName)]
struct Named {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

#[derive(diesel::QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = diesel::sql_types::Text)]
    #[diesel(column_name = "QUERY PLAN")]
    line: String,
}

/// `EXPLAIN EXECUTE` of the one statement `conn` prepared whose text is `LIKE` `pattern`,
/// with `args` (SQL) as its parameters: the plan the connection keeps, one line per line.
/// `what` names the statement in the assertion that exactly one is prepared.
pub async fn kept_plan(
    conn: &mut AsyncPgConnection,
    pattern: &str,
    args: &str,
    what: &str,
) -> String {
    let statements: Vec<Named> = diesel::sql_query(format!(
        "SELECT name FROM pg_prepared_statements WHERE statement LIKE '{pattern}'"
    ))
    .load(conn)
    .await
    .expect("prepared statements");
    assert_eq!(statements.len(), 1, "{what} is prepared once");
    let plan: Vec<PlanLine> =
        diesel::sql_query(format!("EXPLAIN EXECUTE {}({args})", statements[0].name))
            .load(conn)
            .await
            .expect("explain");
    plan.into_iter()
        .map(|l| l.line)
        .collect::<Vec<_>>()
        .join("\n")
}
