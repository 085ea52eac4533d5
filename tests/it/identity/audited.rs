//! Identity changes write their audit entry in the transaction of the change. A Clerk event
//! whose entry cannot be written (a trigger refuses its action) fails, is retried and ends
//! as a dead letter with nothing applied; requeued once entries are accepted again, it
//! applies with its entry, once. The metadata API answers 5xx and writes nothing.

use actix_web::test;
use serde_json::{Value, json};

use crate::support::app::TestApp;
use crate::support::audit::{REFUSED, allow_audit, entries_with, one_entry, refuse_audit};
use crate::support::fixtures;
use crate::support::identity::{deliver, dump_table, full_dump, new_svix_id};
use crate::support::rest::{ALICE, ORG_A, Persona, RestEnv, call};

const USER_JOHN: &str = "user_2g7np7Hrk0SN6kj5EDMLDaKNL0S";
const ORG: &str = "org_2g7np7Hrk0SN6kj5EDMLDaKNL0S";
const MEMBERSHIP: &str = "orgmem_2g7np7Hrk0SN6kj5EDMLDaKNL0S";
/// A second organization (the fixture's `organization.created` with another id).
const ORG2: &str = "org_second_for_audit";

/// Delivers `body` and waits until it is a dead letter refused by the audit log; returns
/// its id.
async fn delivered_and_refused<S>(
    h: &TestApp,
    app: &S,
    body: &[u8],
) -> infragpt_actors::inbox::EventRowId
where
    S: actix_web::dev::Service<
            actix_http::Request,
            Response = actix_web::dev::ServiceResponse,
            Error = actix_web::Error,
        >,
{
    let answer = deliver(app, &new_svix_id(), body).await;
    assert_eq!(answer["status"], "recorded", "{answer}");
    h.wait_idle().await;
    let dead = h.cluster().dead_letters(10, 0).await.expect("dead letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains(REFUSED)),
        "{:?}",
        dead[0].last_error
    );
    dead[0].id
}

/// Accepts entries again, requeues the dead letter and waits until it is applied.
async fn applied_after_requeue(h: &TestApp, id: infragpt_actors::inbox::EventRowId) {
    allow_audit(h.pool()).await;
    h.cluster()
        .requeue_dead_letter(id)
        .await
        .expect("requeue")
        .expect("a dead letter");
    h.wait_idle().await;
    assert!(
        h.cluster()
            .dead_letters(10, 0)
            .await
            .expect("dead letters")
            .is_empty()
    );
}

/// The one `clerk` entry of `action` on `target`, checked for its organization.
async fn clerk_entry(h: &TestApp, action: &str, target: &str, organization_id: &str) -> Value {
    let found: Vec<Value> = entries_with(h.pool(), action)
        .await
        .into_iter()
        .filter(|e| e["target"] == target)
        .collect();
    assert_eq!(found.len(), 1, "{action} on {target}: {found:?}");
    let entry = found.into_iter().next().expect("one");
    assert_eq!(entry["actor"], "clerk", "{entry}");
    assert_eq!(entry["organization_id"], organization_id, "{entry}");
    entry
}

/// Our id of the organization with Clerk id `clerk_id`.
async fn org_uuid(h: &TestApp, clerk_id: &str) -> String {
    dump_table(h.pool(), "organizations")
        .await
        .iter()
        .map(|r| serde_json::from_str::<Value>(r).expect("json"))
        .find(|r| r["clerk_id"] == clerk_id)
        .unwrap_or_else(|| panic!("no organization {clerk_id}"))["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

/// Rows of `table` mentioning `needle`.
async fn rows_with(h: &TestApp, table: &str, needle: &str) -> usize {
    dump_table(h.pool(), table)
        .await
        .iter()
        .filter(|r| r.contains(needle))
        .count()
}

/// The identity app retrying at once, once, and never taking the refusals provoked here for
/// a restart storm (which would pause the stream).
async fn app() -> TestApp {
    TestApp::builder()
        .with_identity()
        .configure(|c| {
            c.actors.backoff_base_ms = 1;
            c.actors.backoff_max_ms = 5;
            c.actors.drain_interval_ms = 10;
            c.actors.retry_budget = 1;
            c.actors.restart_limit = 1000;
        })
        .build()
        .await
}

#[actix_rt::test]
async fn clerk_changes_apply_only_with_their_audit_entry() {
    let h = app().await;
    let app = test::init_service(infragpt::http::app(h.identity_shell(None))).await;
    let pool = h.pool();
    for name in ["user.created.docs", "user.created", "user.updated"] {
        deliver(&app, &new_svix_id(), &fixtures::clerk(name)).await;
    }
    h.wait_idle().await;

    // Each audited change, refused: nothing of it is applied (identity tables and audit log
    // as they were); requeued: applied, with its entry, once.
    let steps = [
        ("organization.created", "organization.created", ORG),
        ("organization.updated", "organization.updated", ORG),
        (
            "organizationMembership.created",
            "membership.created",
            MEMBERSHIP,
        ),
        (
            "organizationMembership.updated",
            "membership.role_changed",
            MEMBERSHIP,
        ),
        (
            "organizationMembership.deleted",
            "membership.deleted",
            MEMBERSHIP,
        ),
        ("organization.deleted", "organization.deleted", ORG),
    ];
    for (fixture, action, target) in steps {
        refuse_audit(pool, &[action]).await;
        let before = full_dump(pool).await;
        let id = delivered_and_refused(&h, &app, &fixtures::clerk(fixture)).await;
        assert_eq!(full_dump(pool).await, before, "{fixture}: nothing applied");
        applied_after_requeue(&h, id).await;
        assert_ne!(full_dump(pool).await, before, "{fixture}: applied");
        let org = org_uuid(&h, ORG).await;
        clerk_entry(&h, action, target, &org).await;
    }
    // organization.created also made its creator an admin, recorded with it.
    let org = org_uuid(&h, ORG).await;
    let implicit = clerk_entry(
        &h,
        "membership.created",
        &format!("{ORG}/{USER_JOHN}"),
        &org,
    )
    .await;
    assert_eq!(implicit["details"]["implicit"], true);
    let deleted = one_entry(pool, "organization.deleted").await;
    assert_eq!(deleted["details"]["event_type"], "organization.deleted");

    // The creator's implicit membership has its own transaction: refused, the organization
    // (recorded) stays and the membership is not written; requeued, it is written once and
    // the organization, unchanged by the replay, is not recorded again.
    let mut created: Value =
        serde_json::from_slice(&fixtures::clerk("organization.created")).expect("json");
    created["data"]["id"] = json!(ORG2);
    created["data"]["slug"] = json!("second-for-audit");
    let body = serde_json::to_vec(&created).expect("json");
    refuse_audit(pool, &["membership.created"]).await;
    let id = delivered_and_refused(&h, &app, &body).await;
    let org2 = org_uuid(&h, ORG2).await;
    clerk_entry(&h, "organization.created", ORG2, &org2).await;
    assert_eq!(rows_with(&h, "organization_members", ORG2).await, 0);
    applied_after_requeue(&h, id).await;
    assert_eq!(rows_with(&h, "organization_members", ORG2).await, 1);
    clerk_entry(
        &h,
        "membership.created",
        &format!("{ORG2}/{USER_JOHN}"),
        &org2,
    )
    .await;
    clerk_entry(&h, "organization.created", ORG2, &org2).await;

    // A replay (new svix id) changes nothing and records nothing.
    let entries = dump_table(pool, "audit_log").await.len();
    deliver(&app, &new_svix_id(), &body).await;
    deliver(
        &app,
        &new_svix_id(),
        &fixtures::clerk("organizationMembership.updated"),
    )
    .await;
    h.wait_idle().await;
    assert_eq!(dump_table(pool, "audit_log").await.len(), entries);
}

#[actix_rt::test]
async fn metadata_is_written_only_with_its_audit_entry() {
    let env = RestEnv::new().await;
    let svc = env.service().await;
    let token = Persona::Admin.token(ORG_A);
    let pool = env.app.pool();
    let uri = "/identity/organization/metadata";
    let body = json!({"company_size": "51-200", "use_cases": ["incident_response"]});
    let metadata = dump_table(pool, "organization_metadata").await;
    let seeded = entries_with(pool, "organization.metadata_updated")
        .await
        .len();
    refuse_audit(pool, &["organization.metadata_updated"]).await;

    let (status, answer) = call(&svc, "PUT", uri, Some(&token), Some(body.clone())).await;
    assert!(status >= 500, "{status}: {answer}");
    assert!(
        answer["error"]["code"].is_string(),
        "one error shape: {answer}"
    );
    assert_eq!(dump_table(pool, "organization_metadata").await, metadata);
    assert_eq!(
        entries_with(pool, "organization.metadata_updated")
            .await
            .len(),
        seeded
    );

    allow_audit(pool).await;
    let (status, answer) = call(&svc, "PUT", uri, Some(&token), Some(body.clone())).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["metadata"]["company_size"], "51-200");
    let entries = entries_with(pool, "organization.metadata_updated").await;
    assert_eq!(entries.len(), seeded + 1);
    let entry = entries.last().expect("the new one");
    assert_eq!(entry["actor"], format!("user/{ALICE}"));
    assert_eq!(entry["organization_id"], env.org_a.as_str());
    assert_eq!(entry["target"], env.org_a.as_str());
    assert_eq!(entry["details"]["before"]["company_size"], "1-10");
    assert_eq!(entry["details"]["after"]["company_size"], "51-200");

    // The same answers again change nothing worth recording.
    let (status, answer) = call(&svc, "PUT", uri, Some(&token), Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        entries_with(pool, "organization.metadata_updated")
            .await
            .len(),
        seeded + 1
    );
}
