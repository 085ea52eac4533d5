//! Making the audit log refuse entries, to check that a change whose entry cannot be written
//! does not happen: a trigger on `audit_log` that raises for the listed actions.

use diesel_async::RunQueryDsl as _;
use infragpt::db::Pool;
use serde_json::Value;

/// The message of the refusal (it ends up in error answers and `last_error`).
pub const REFUSED: &str = "audit refused";

async fn sql(pool: &Pool, statement: &str) {
    let mut conn = pool.get().await.expect("conn");
    diesel::sql_query(statement)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

/// From now on inserting an audit entry with one of `actions` fails (replacing an earlier
/// refusal).
pub async fn refuse_audit(pool: &Pool, actions: &[&str]) {
    let list = actions
        .iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(", ");
    sql(
        pool,
        &format!(
            "CREATE OR REPLACE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.action IN ({list}) THEN RAISE EXCEPTION '{REFUSED}'; END IF; \
             RETURN NEW; END $$"
        ),
    )
    .await;
    sql(pool, "DROP TRIGGER IF EXISTS refuse_audit ON audit_log").await;
    sql(
        pool,
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log \
         FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
    )
    .await;
}

/// Audit entries are accepted again.
pub async fn allow_audit(pool: &Pool) {
    sql(pool, "DROP TRIGGER IF EXISTS refuse_audit ON audit_log").await;
}

/// The audit entries with `action`, oldest first, every column.
pub async fn entries_with(pool: &Pool, action: &str) -> Vec<Value> {
    let mut rows: Vec<Value> = super::identity::audit_rows(pool)
        .await
        .into_iter()
        .filter(|e| e["action"] == action)
        .collect();
    rows.sort_by_key(|e| e["id"].as_i64().expect("id"));
    rows
}

/// The one entry with `action` (panics when there are none or several).
pub async fn one_entry(pool: &Pool, action: &str) -> Value {
    let mut found = entries_with(pool, action).await;
    assert_eq!(found.len(), 1, "one {action} entry: {found:?}");
    found.remove(0)
}
