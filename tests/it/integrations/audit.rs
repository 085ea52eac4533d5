//! Starting and deleting an integration write their audit entry in the transaction of the
//! change: when the entry cannot be written, the change does not happen either. The audit
//! write is made to fail with a trigger refusing those actions.

use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use crate::support::rest::{FAKE, FAKE2, ORG_A, Persona, RestEnv, call};

async fn sql(env: &RestEnv, statement: &str) {
    let mut conn = env.app.pool().get().await.expect("conn");
    diesel::sql_query(statement)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

/// Makes inserting an audit entry with one of `actions` fail.
async fn refuse_audit(env: &RestEnv, actions: &[&str]) {
    let list = actions
        .iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(", ");
    sql(
        env,
        &format!(
            "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.action IN ({list}) THEN RAISE EXCEPTION 'audit refused'; END IF; \
             RETURN NEW; END $$"
        ),
    )
    .await;
    sql(
        env,
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log \
         FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
    )
    .await;
}

fn actions(answer: &Value) -> Vec<&str> {
    answer["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .map(|e| e["action"].as_str().expect("action"))
        .collect()
}

#[actix_rt::test]
async fn integration_changes_roll_back_when_their_audit_entry_cannot_be_written() {
    let env = RestEnv::new().await;
    let svc = env.service().await;
    let token = Persona::Admin.token(ORG_A);
    refuse_audit(&env, &["integration.initiated", "integration.deleted"]).await;

    // Starting an install: no pending row without its entry.
    let (status, answer) = call(
        &svc,
        "POST",
        "/integrations",
        Some(&token),
        Some(json!({"connector_type": FAKE2})),
    )
    .await;
    assert_eq!(status, 500, "{answer}");
    let (status, listed) = call(
        &svc,
        "GET",
        &format!("/integrations?connector_type={FAKE2}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(
        listed["integrations"],
        json!([]),
        "no pending row: {listed}"
    );

    // Deleting: the integration is not marked revoked without its entry.
    let uri = format!("/integrations/{}", env.integration_a);
    let (status, answer) = call(&svc, "DELETE", &uri, Some(&token), None).await;
    assert_eq!(status, 500, "{answer}");
    let (_, one) = call(&svc, "GET", &uri, Some(&token), None).await;
    assert_eq!(one["status"], "active", "{one}");

    // With the audit log writable again both go through, each recorded once.
    sql(&env, "DROP TRIGGER refuse_audit ON audit_log").await;
    let (status, answer) = call(&svc, "DELETE", &uri, Some(&token), None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["integration"]["status"], "revoked", "{answer}");
    let (status, answer) = call(
        &svc,
        "POST",
        "/integrations",
        Some(&token),
        Some(json!({"connector_type": FAKE2})),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let (status, audit) = call(&svc, "GET", "/audit", Some(&token), None).await;
    assert_eq!(status, 200, "{audit}");
    assert_eq!(
        actions(&audit),
        [
            "integration.initiated",
            "integration.deleted",
            "organization.metadata_updated",
            "integration.connected",
            "integration.initiated",
        ],
        "{audit}"
    );
    assert_eq!(audit["entries"][1]["target"], env.integration_a.as_str());
    assert_eq!(audit["entries"][1]["details"]["connector_type"], FAKE);
}
