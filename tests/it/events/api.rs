//! `/event-rules` and `/event-sources` with real session tokens and roles from the membership
//! mirror (`support::rest`'s cast: alice `org:admin` of A, carol `org:member` of A whose token
//! claims admin, bob `org:admin` of B): validation errors name the field, members read and
//! only admins change, another organization's rules and sources are out of reach, every
//! change is audited, a source's secret is shown once.

use std::sync::Arc;

use actix_web::dev::{Service, ServiceResponse};
use actix_web::test;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::db::schema::organizations;
use infragpt::events::api;
use infragpt::events::store::PgEvents;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::app::TestApp;
use crate::support::identity::{KEY_A, KID_A, audit_rows, claims_v2, sign_jwt};
use crate::support::integrations::{keyring, random_key};
use crate::support::rest::{ALICE, BOB, CAROL, NEEDS_ADMIN, ORG_A, ORG_B, call, seed_identities};

fn token(user: &str, org: &str) -> String {
    sign_jwt(KEY_A, KID_A, &claims_v2(user, org, "org:admin"))
}

async fn setup() -> (
    TestApp,
    impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
) {
    let app = TestApp::builder().with_identity().build().await;
    seed_identities(app.identity_store()).await;
    let store = PgEvents::new(
        app.pool().clone(),
        Arc::new(keyring(&[("a", &random_key())], "a")),
        "api-test",
    );
    let shell = app
        .identity_shell(Some(app.jwt_verifier()))
        .with_routes(move |cfg| api::configure(cfg, store.clone()));
    let svc = test::init_service(infragpt::http::app(shell)).await;
    (app, svc)
}

async fn org_id(app: &TestApp, clerk: &str) -> Uuid {
    let mut conn = app.pool().get().await.unwrap();
    organizations::table
        .filter(organizations::clerk_id.eq(clerk))
        .select(organizations::id)
        .first(&mut conn)
        .await
        .unwrap()
}

fn rule(channel: &str) -> Value {
    json!({
        "name": "CI failures",
        "source": {"kind": "github"},
        "events": ["workflow_run.completed/failure", "deployment_status/failure", "check_run/failure"],
        "repositories": ["octo-org/octo-repo"],
        "slack": {"team_id": "T0SIMACME1", "channel_id": channel},
        "triage": true
    })
}

fn field_of(answer: &Value) -> &str {
    answer["error"]["field"].as_str().unwrap_or_default()
}

#[actix_rt::test]
async fn validation_errors_name_the_field() {
    let (_app, svc) = setup().await;
    let alice = token(ALICE, ORG_A);
    let mut cases: Vec<(Value, &str)> = Vec::new();
    let mut v = rule("C0OPS00001");
    v["events"] = json!(["workflow_run.completed/failure", "Not A Pattern"]);
    cases.push((v, "events[1]"));
    let mut v = rule("C0OPS00001");
    v["slack"]["channel_id"] = json!("#ops");
    cases.push((v, "slack.channel_id"));
    let mut v = rule("C0OPS00001");
    v["source"]["kind"] = json!("gitlab");
    cases.push((v, "source.kind"));
    let mut v = rule("C0OPS00001");
    v.as_object_mut().unwrap().remove("name");
    cases.push((v, "name"));
    let mut v = rule("C0OPS00001");
    v["triage"] = json!("yes");
    cases.push((v, "triage"));
    let mut v = rule("C0OPS00001");
    v["matchers"] = json!([{"label": "severity", "op": "~=", "value": "critical"}]);
    cases.push((v, "matchers[0].op"));
    let mut v = rule("C0OPS00001");
    v["repositories"] = json!(["just-a-name"]);
    cases.push((v, "repositories[0]"));
    let mut v = rule("C0OPS00001");
    v["unexpected"] = json!(1);
    cases.push((v, "unexpected"));
    let mut v = rule("C0OPS00001");
    v["source"] = json!({"kind": "alertmanager", "source_id": Uuid::new_v4()});
    v.as_object_mut().unwrap().remove("repositories");
    cases.push((v, "source.source_id"));
    for (body, field) in cases {
        let (status, answer) = call(
            &svc,
            "POST",
            "/event-rules",
            Some(&alice),
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "unprocessable", "{answer}");
        assert_eq!(field_of(&answer), field, "{body}: {answer}");
    }
    for (body, field) in [
        (json!({"kind": "nagios", "name": "x"}), "kind"),
        (json!({"kind": "alertmanager", "name": ""}), "name"),
        (
            json!({"kind": "pagerduty", "name": "pd", "auth": "bearer"}),
            "auth",
        ),
        (
            json!({"kind": "pagerduty", "name": "pd", "secret": "short"}),
            "secret",
        ),
    ] {
        let (status, answer) = call(
            &svc,
            "POST",
            "/event-sources",
            Some(&alice),
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(field_of(&answer), field, "{body}: {answer}");
    }
    let (status, answer) = call(&svc, "GET", "/event-rules", Some(&alice), None).await;
    assert_eq!(status, 200);
    assert_eq!(answer["rules"], json!([]), "nothing was written");
}

#[actix_rt::test]
async fn members_read_admins_change_and_other_organizations_are_refused() {
    let (app, svc) = setup().await;
    let (alice, carol, bob) = (token(ALICE, ORG_A), token(CAROL, ORG_A), token(BOB, ORG_B));
    // A member (whose token claims admin) may not create.
    let (status, answer) = call(
        &svc,
        "POST",
        "/event-rules",
        Some(&carol),
        Some(rule("C0OPS00001")),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["error"]["message"], NEEDS_ADMIN);
    let (status, created) = call(
        &svc,
        "POST",
        "/event-rules",
        Some(&alice),
        Some(rule("C0OPS00001")),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created["organization_id"],
        org_id(&app, ORG_A).await.to_string()
    );
    // Members read.
    let (status, list) = call(&svc, "GET", "/event-rules", Some(&carol), None).await;
    assert_eq!(status, 200);
    assert_eq!(list["rules"].as_array().unwrap().len(), 1);
    let (status, _) = call(
        &svc,
        "GET",
        &format!("/event-rules/{id}"),
        Some(&carol),
        None,
    )
    .await;
    assert_eq!(status, 200);
    // A member may not change or delete.
    let (status, _) = call(
        &svc,
        "PUT",
        &format!("/event-rules/{id}"),
        Some(&carol),
        Some(rule("C0GENERAL1")),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &svc,
        "DELETE",
        &format!("/event-rules/{id}"),
        Some(&carol),
        None,
    )
    .await;
    assert_eq!(status, 403);
    // Another organization's admin: A's rule does not exist for them.
    let (status, list) = call(&svc, "GET", "/event-rules", Some(&bob), None).await;
    assert_eq!((status, list["rules"].clone()), (200, json!([])));
    for (method, body) in [
        ("GET", None),
        ("PUT", Some(rule("C0GENERAL1"))),
        ("DELETE", None),
    ] {
        let (status, answer) = call(
            &svc,
            method,
            &format!("/event-rules/{id}"),
            Some(&bob),
            body,
        )
        .await;
        assert_eq!(status, 404, "{method}: {answer}");
    }
    // A token naming B, from A's admin: not a member of B.
    let (status, _) = call(
        &svc,
        "GET",
        "/event-rules",
        Some(&token(ALICE, ORG_B)),
        None,
    )
    .await;
    assert_eq!(status, 403);
    // B cannot route A's source.
    let (status, source) = call(
        &svc,
        "POST",
        "/event-sources",
        Some(&alice),
        Some(json!({"kind": "alertmanager", "name": "prom"})),
    )
    .await;
    assert_eq!(status, 201, "{source}");
    let source_id = source["source"]["id"].as_str().unwrap().to_owned();
    let (status, answer) = call(
        &svc,
        "POST",
        "/event-rules",
        Some(&bob),
        Some(json!({"name": "steal", "source": {"kind": "alertmanager", "source_id": source_id}, "slack": {"team_id": "T0SIMACME1", "channel_id": "C0OPS00001"}})),
    )
    .await;
    assert_eq!(
        (status, field_of(&answer)),
        (422, "source.source_id"),
        "{answer}"
    );
    let (status, _) = call(
        &svc,
        "DELETE",
        &format!("/event-sources/{source_id}"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, list) = call(&svc, "GET", "/event-sources", Some(&bob), None).await;
    assert_eq!((status, list["sources"].clone()), (200, json!([])));
    // No token at all.
    let (status, _) = call(&svc, "GET", "/event-rules", None, None).await;
    assert_eq!(status, 401);
    // The admin changes and deletes.
    let (status, updated) = call(
        &svc,
        "PUT",
        &format!("/event-rules/{id}"),
        Some(&alice),
        Some(rule("C0GENERAL1")),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["slack"]["channel_id"], "C0GENERAL1");
    let (status, _) = call(
        &svc,
        "DELETE",
        &format!("/event-rules/{id}"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &svc,
        "GET",
        &format!("/event-rules/{id}"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 404);
}

#[actix_rt::test]
async fn changes_are_audited_and_a_secret_is_shown_once() {
    let (app, svc) = setup().await;
    let alice = token(ALICE, ORG_A);
    let (status, created) = call(
        &svc,
        "POST",
        "/event-rules",
        Some(&alice),
        Some(rule("C0OPS00001")),
    )
    .await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &svc,
        "PUT",
        &format!("/event-rules/{id}"),
        Some(&alice),
        Some(rule("C0GENERAL1")),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &svc,
        "DELETE",
        &format!("/event-rules/{id}"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, source) = call(
        &svc,
        "POST",
        "/event-sources",
        Some(&alice),
        Some(json!({"kind": "pagerduty", "name": "pd", "secret": "pagerduty-generated-secret-01"})),
    )
    .await;
    assert_eq!(status, 201, "{source}");
    assert_eq!(source["secret"], "pagerduty-generated-secret-01");
    let (status, am) = call(
        &svc,
        "POST",
        "/event-sources",
        Some(&alice),
        Some(json!({"kind": "alertmanager", "name": "prom"})),
    )
    .await;
    assert_eq!(status, 201);
    let generated = am["secret"].as_str().unwrap().to_owned();
    assert!(
        generated.starts_with("igs_") && generated.len() > 60,
        "{generated}"
    );
    assert_eq!(
        am["source"]["webhook_path"],
        format!(
            "/webhooks/alertmanager/{}",
            am["source"]["id"].as_str().unwrap()
        )
    );
    let (status, list) = call(&svc, "GET", "/event-sources", Some(&alice), None).await;
    assert_eq!(status, 200);
    let listed = list.to_string();
    assert!(
        !listed.contains(&generated) && !listed.contains("pagerduty-generated-secret-01"),
        "secrets are not listed: {listed}"
    );
    let source_id = source["source"]["id"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &svc,
        "DELETE",
        &format!("/event-sources/{source_id}"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 200);
    // The secret is sealed: neither it nor its text is in the database.
    let dump = crate::support::identity::dump_table(app.pool(), "event_sources")
        .await
        .join("\n");
    assert!(
        !dump.contains(&generated),
        "the secret is encrypted at rest"
    );

    let audit = audit_rows(app.pool()).await;
    let org = org_id(&app, ORG_A).await.to_string();
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .filter(|r| r["organization_id"] == org.as_str())
        .map(|r| (r["action"].as_str().unwrap(), r["actor"].as_str().unwrap()))
        .collect();
    for action in [
        "event_rule.created",
        "event_rule.updated",
        "event_rule.deleted",
        "event_source.created",
        "event_source.deleted",
    ] {
        assert!(
            actions
                .iter()
                .any(|(a, actor)| *a == action && *actor == format!("user/{ALICE}")),
            "{action} by alice in {actions:?}"
        );
    }
    let updated = audit
        .iter()
        .find(|r| r["action"] == "event_rule.updated")
        .unwrap();
    assert_eq!(
        updated["details"]["before"]["slack"]["channel_id"],
        "C0OPS00001"
    );
    assert_eq!(
        updated["details"]["after"]["slack"]["channel_id"],
        "C0GENERAL1"
    );
    assert!(
        !audit.iter().any(|r| r.to_string().contains(&generated)),
        "no secret in the audit log"
    );
    // Refusals change nothing and audit nothing.
    let before = audit_rows(app.pool()).await.len();
    let (status, _) = call(
        &svc,
        "POST",
        "/event-rules",
        Some(&token(CAROL, ORG_A)),
        Some(rule("C0OPS00001")),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(audit_rows(app.pool()).await.len(), before);
}
