//! Every integration change writes its audit entry in the transaction of the change: when
//! the entry cannot be written (a trigger refuses its action), the change does not happen
//! either and the caller gets a 5xx; once entries are accepted again the change goes
//! through, recorded once with who did what to which integration.

use serde_json::{Value, json};

use crate::support::audit::{REFUSED, allow_audit, entries_with, one_entry, refuse_audit};
use crate::support::identity::dump_table;
use crate::support::rest::{ALICE, FAKE, FAKE2, ORG_A, Persona, RestEnv, call, state_of};

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
    refuse_audit(
        env.app.pool(),
        &["integration.initiated", "integration.deleted"],
    )
    .await;

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

    // Deleting: the integration is not marked revoked, nor its credentials deleted, without
    // its entry (the provider was asked to revoke: deleting again finishes).
    let credentials = dump_table(env.app.pool(), "integration_credentials").await;
    let uri = format!("/integrations/{}", env.integration_a);
    let (status, answer) = call(&svc, "DELETE", &uri, Some(&token), None).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["error"]["code"], "internal", "{answer}");
    let (_, one) = call(&svc, "GET", &uri, Some(&token), None).await;
    assert_eq!(one["status"], "active", "{one}");
    assert_eq!(
        dump_table(env.app.pool(), "integration_credentials").await,
        credentials,
        "credentials kept"
    );
    assert_eq!(env.fake.revoke_count(), 1);

    // With the audit log writable again both go through, each recorded once.
    allow_audit(env.app.pool()).await;
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
    let deleted = one_entry(env.app.pool(), "integration.deleted").await;
    assert_eq!(deleted["actor"], format!("user/{ALICE}"));
    assert_eq!(deleted["organization_id"], env.org_a.as_str());
    assert_eq!(deleted["details"]["credentials_deleted"], 1, "{deleted}");
    assert!(
        dump_table(env.app.pool(), "integration_credentials")
            .await
            .iter()
            .all(|c| !c.contains(&env.integration_a)),
        "A's credentials deleted"
    );

    // Deleting what is revoked already changes nothing and records nothing.
    let (status, answer) = call(&svc, "DELETE", &uri, Some(&token), None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        entries_with(env.app.pool(), "integration.deleted")
            .await
            .len(),
        1
    );
}

/// Starts an install of `fake2` in organization A: (integration id, state).
async fn initiate<S>(svc: &S, token: &str) -> (String, String)
where
    S: actix_web::dev::Service<
            actix_http::Request,
            Response = actix_web::dev::ServiceResponse,
            Error = actix_web::Error,
        >,
{
    let (status, answer) = call(
        svc,
        "POST",
        "/integrations",
        Some(token),
        Some(json!({"connector_type": FAKE2})),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    (
        answer["integration_id"].as_str().expect("id").to_owned(),
        state_of(answer["url"].as_str().expect("url")),
    )
}

#[actix_rt::test]
async fn a_callback_connects_nothing_without_its_audit_entry() {
    let env = RestEnv::new().await;
    let svc = env.service().await;
    let token = Persona::Admin.token(ORG_A);
    let pool = env.app.pool();
    let (id, state) = initiate(&svc, &token).await;
    let credentials = dump_table(pool, "integration_credentials").await;
    refuse_audit(pool, &["integration.connected"]).await;

    let callback = |code: &str, state: &str| {
        format!("/integrations/callback/{FAKE2}?code={code}&state={state}")
    };
    let (status, answer) = call(&svc, "GET", &callback("first", &state), None, None).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["error"]["code"], "internal", "{answer}");
    let uri = format!("/integrations/{id}");
    let (_, row) = call(&svc, "GET", &uri, Some(&token), None).await;
    assert_eq!(row["status"], "pending", "not connected: {row}");
    assert_eq!(row["external_id"], Value::Null, "{row}");
    assert_eq!(
        dump_table(pool, "integration_credentials").await,
        credentials,
        "no credentials stored"
    );
    assert_eq!(
        entries_with(pool, "integration.connected").await.len(),
        2,
        "only those of the two seeded installs"
    );

    // Entries accepted again: the user installs again (state and code are single use).
    allow_audit(pool).await;
    let (again, state) = initiate(&svc, &token).await;
    assert_eq!(again, id, "the pending row is reused");
    let (status, answer) = call(&svc, "GET", &callback("second", &state), None, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["integration"]["status"], "active");
    assert_eq!(answer["integration"]["external_id"], "ext-second");
    let connected: Vec<Value> = entries_with(pool, "integration.connected")
        .await
        .into_iter()
        .filter(|e| e["target"] == id.as_str())
        .collect();
    assert_eq!(connected.len(), 1, "{connected:?}");
    let entry = &connected[0];
    assert_eq!(entry["actor"], format!("user/{ALICE}"));
    assert_eq!(entry["organization_id"], env.org_a.as_str());
    assert_eq!(entry["details"]["external_id"], "ext-second");
    assert_eq!(
        entry["details"]["credential_types"],
        json!(["access_token"])
    );
}

#[actix_rt::test]
async fn a_refresh_stores_nothing_without_its_audit_entry() {
    let env = RestEnv::new().await;
    let svc = env.service().await;
    let token = Persona::Admin.token(ORG_A);
    let pool = env.app.pool();
    let uri = format!("/integrations/{}/refresh", env.integration_a);
    let credentials = dump_table(pool, "integration_credentials").await;
    refuse_audit(pool, &["integration.refreshed"]).await;

    let (status, answer) = call(&svc, "POST", &uri, Some(&token), None).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["error"]["code"], "internal", "{answer}");
    assert_eq!(env.fake.refresh_count(), 1, "the provider was asked");
    assert_eq!(
        dump_table(pool, "integration_credentials").await,
        credentials,
        "the refreshed credential is not stored"
    );
    assert!(entries_with(pool, "integration.refreshed").await.is_empty());

    allow_audit(pool).await;
    let (status, answer) = call(&svc, "POST", &uri, Some(&token), None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(env.fake.refresh_count(), 2);
    assert_ne!(
        dump_table(pool, "integration_credentials").await,
        credentials,
        "the refreshed credential is stored"
    );
    let entry = one_entry(pool, "integration.refreshed").await;
    assert_eq!(entry["actor"], format!("user/{ALICE}"));
    assert_eq!(entry["organization_id"], env.org_a.as_str());
    assert_eq!(entry["target"], env.integration_a.as_str());
    assert_eq!(entry["details"]["connector_type"], FAKE);
}

#[actix_rt::test]
async fn refused_entries_name_the_refusal() {
    // The trigger's message is what the tests above provoke: make sure it is the audit
    // insert that fails and not something else answering 500.
    let db = infragpt::testkit::test_db::TestDb::new().await;
    refuse_audit(db.pool(), &["x.y"]).await;
    let mut conn = db.pool().get().await.expect("conn");
    let err = infragpt::db::audit::insert_entry(
        &mut conn,
        &infragpt_actors::audit::AuditEntry {
            organization_id: None,
            actor: "system".into(),
            action: "x.y".into(),
            target: None,
            details: json!({}),
        },
    )
    .await
    .expect_err("refused");
    assert!(err.to_string().contains(REFUSED), "{err}");
}

/// A GitHub delivery of `installation` as the stream's handler sees it, for `installation_id`.
fn installation_event(action: &str, installation_id: i64) -> infragpt_actors::inbox::InboundEvent {
    let mut payload =
        crate::support::fixtures::json(&format!("github-webhooks/installation/{action}.json"));
    payload["installation"]["id"] = json!(installation_id);
    crate::support::integrations::github_delivery(
        &uuid::Uuid::new_v4().to_string(),
        &format!("installation:{installation_id}"),
        &format!("installation.{action}"),
        payload,
    )
}

#[actix_rt::test]
async fn github_installation_changes_apply_only_with_their_audit_entry() {
    use infragpt::github::stream::GithubStreamHandler;
    use infragpt::integrations::connector::IssuedCredential;
    use infragpt::integrations::credentials::PgCredentials;
    use infragpt::integrations::store::IntegrationStore;
    use infragpt::integrations::vault::CredentialStore;
    use infragpt_actors::{EventHandler as _, HandleOutcome, HandlerError, Secret};

    use crate::support::integrations::{create_org, insert_integration, keyring, random_key};

    const INSTALLATION: i64 = 957_387;
    let db = infragpt::testkit::test_db::TestDb::new().await;
    let pool = db.pool();
    let org = create_org(pool, "Audited").await;
    let id = insert_integration(pool, org, "github", "pending", Some("957387")).await;
    let health = infragpt_actors::HealthRegistry::new();
    let handler = GithubStreamHandler::new(IntegrationStore::new(pool.clone()), None, &health);
    let integration = || async move {
        let rows = dump_table(pool, "integrations").await;
        assert_eq!(rows.len(), 1);
        serde_json::from_str::<Value>(&rows[0]).expect("json")
    };

    // Each change: refused, the delivery fails (retryable) and the row is as it was;
    // accepted, it applies with its entry; redelivered, it changes and records nothing.
    let steps = [
        ("created", "integration.linked", "active"),
        ("suspend", "integration.suspended", "suspended"),
        ("unsuspend", "integration.active", "active"),
    ];
    for (action, audited, status) in steps {
        let event = installation_event(action, INSTALLATION);
        refuse_audit(pool, &[audited]).await;
        let before = integration().await;
        let failed = handler.handle(&event).await;
        assert!(
            matches!(&failed, Err(HandlerError::Retryable(e)) if e.contains(REFUSED)),
            "{action}: {failed:?}"
        );
        assert_eq!(integration().await, before, "{action}: nothing changed");
        allow_audit(pool).await;
        assert_eq!(handler.handle(&event).await, Ok(HandleOutcome::Done));
        assert_eq!(integration().await["status"], status, "{action}");
        let entry = one_entry(pool, audited).await;
        assert_eq!(entry["actor"], "github");
        assert_eq!(entry["organization_id"], org.to_string());
        assert_eq!(entry["target"], id.to_string());
        assert_eq!(entry["details"]["installation_id"], INSTALLATION);
        assert_eq!(handler.handle(&event).await, Ok(HandleOutcome::Done));
        assert_eq!(entries_with(pool, audited).await.len(), 1, "{action} again");
    }

    // Uninstalled: the credentials' deletion and the revoked status go with the entry.
    let credentials = CredentialStore::new(
        std::sync::Arc::new(keyring(&[("a", &random_key())], "a")),
        PgCredentials::new(pool.clone()),
    );
    credentials
        .put(
            id,
            &IssuedCredential {
                credential_type: "installation_token".into(),
                secret: Secret::new("ghs_audited"),
                expires_at: None,
            },
        )
        .await
        .expect("credential");
    let event = installation_event("deleted", INSTALLATION);
    refuse_audit(pool, &["integration.revoked"]).await;
    let before = integration().await;
    assert!(matches!(
        handler.handle(&event).await,
        Err(HandlerError::Retryable(_))
    ));
    assert_eq!(integration().await, before);
    assert_eq!(dump_table(pool, "integration_credentials").await.len(), 1);
    allow_audit(pool).await;
    assert_eq!(handler.handle(&event).await, Ok(HandleOutcome::Done));
    assert_eq!(integration().await["status"], "revoked");
    assert!(dump_table(pool, "integration_credentials").await.is_empty());
    let entry = one_entry(pool, "integration.revoked").await;
    assert_eq!(entry["actor"], "github");
    assert_eq!(entry["organization_id"], org.to_string());
    assert_eq!(entry["target"], id.to_string());
    assert_eq!(entry["details"]["reason"], "installation.deleted");
    assert_eq!(handler.handle(&event).await, Ok(HandleOutcome::Done));
    assert_eq!(entries_with(pool, "integration.revoked").await.len(), 1);
}
