//! `POST /webhooks/clerk` end to end: Svix verification, inbox recording, IdentitySync
//! applying every Clerk fixture, replays, order independence, the separate webhook port.
//! Real PostgreSQL (TestDb); the fixtures' old timestamps are re-signed with the current time.

use actix_web::test;
use infragpt_actors::inbox::EventStatus;
use serde_json::{Value, json};

use super::identity_app;
use crate::support::app::TestApp;
use crate::support::body_json;
use crate::support::fixtures::{self, clerk_natural};
use crate::support::identity::*;
use crate::support::wait::eventually;

#[actix_rt::test]
async fn bad_signatures_are_401_and_record_nothing() {
    let h = identity_app().await;
    let app = test::init_service(infragpt::http::app(h.identity_shell(None))).await;
    let body = fixtures::clerk("user.created");
    let id = new_svix_id();
    let now = chrono::Utc::now().timestamp();
    let good = svix_sign(SVIX_SECRET, &id, now, &body);

    let mut tampered = body.clone();
    let pos = tampered
        .iter()
        .position(|b| *b == b'J')
        .expect("a J in John");
    tampered[pos] = b'X';

    type Case = (&'static str, Vec<u8>, Vec<(&'static str, String)>);
    let cases: Vec<Case> = vec![
        (
            "tampered body",
            tampered,
            vec![
                ("svix-id", id.clone()),
                ("svix-timestamp", now.to_string()),
                ("svix-signature", good.clone()),
            ],
        ),
        (
            "wrong secret",
            body.clone(),
            vec![
                ("svix-id", id.clone()),
                ("svix-timestamp", now.to_string()),
                (
                    "svix-signature",
                    svix_sign(OTHER_SVIX_SECRET, &id, now, &body),
                ),
            ],
        ),
        (
            "stale timestamp",
            body.clone(),
            vec![
                ("svix-id", id.clone()),
                ("svix-timestamp", (now - 600).to_string()),
                (
                    "svix-signature",
                    svix_sign(SVIX_SECRET, &id, now - 600, &body),
                ),
            ],
        ),
        (
            "future timestamp",
            body.clone(),
            vec![
                ("svix-id", id.clone()),
                ("svix-timestamp", (now + 600).to_string()),
                (
                    "svix-signature",
                    svix_sign(SVIX_SECRET, &id, now + 600, &body),
                ),
            ],
        ),
        (
            "original fixture timestamp",
            body.clone(),
            vec![
                ("svix-id", id.clone()),
                ("svix-timestamp", "1716883200".to_owned()),
                (
                    "svix-signature",
                    svix_sign(SVIX_SECRET, &id, 1_716_883_200, &body),
                ),
            ],
        ),
        (
            "missing svix-id",
            body.clone(),
            vec![
                ("svix-timestamp", now.to_string()),
                ("svix-signature", good.clone()),
            ],
        ),
        (
            "missing svix-timestamp",
            body.clone(),
            vec![("svix-id", id.clone()), ("svix-signature", good.clone())],
        ),
        (
            "missing svix-signature",
            body.clone(),
            vec![("svix-id", id.clone()), ("svix-timestamp", now.to_string())],
        ),
        (
            "other svix-id than signed",
            body.clone(),
            vec![
                ("svix-id", new_svix_id()),
                ("svix-timestamp", now.to_string()),
                ("svix-signature", good.clone()),
            ],
        ),
        (
            "only non-v1 signatures",
            body.clone(),
            vec![
                ("svix-id", id.clone()),
                ("svix-timestamp", now.to_string()),
                ("svix-signature", good.replacen("v1,", "v2,", 1)),
            ],
        ),
    ];
    for (name, body, headers) in cases {
        let resp = post_webhook(&app, &body, &headers).await;
        assert_eq!(resp.status(), 401, "{name}");
        let answer = body_json(resp).await;
        assert_eq!(answer["error"]["code"], "unauthorized", "{name}: {answer}");
    }
    assert_eq!(h.recorded().await, 0, "nothing may be recorded");
}

#[actix_rt::test]
async fn one_valid_signature_among_several_is_accepted() {
    let h = identity_app().await;
    let app = test::init_service(infragpt::http::app(h.identity_shell(None))).await;
    let body = fixtures::clerk("user.created.docs");
    let id = new_svix_id();
    let now = chrono::Utc::now().timestamp();
    let good = svix_sign(SVIX_SECRET, &id, now, &body);
    let wrong = svix_sign(OTHER_SVIX_SECRET, &id, now, &body);
    let header = format!("v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {wrong} v2,abc {good}");
    let resp = post_webhook(
        &app,
        &body,
        &[
            ("svix-id", id.clone()),
            ("svix-timestamp", now.to_string()),
            ("svix-signature", header),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let answer = body_json(resp).await;
    assert_eq!(answer["status"], "recorded");
    h.wait_idle().await;
    assert_eq!(h.count(EventStatus::Done).await, 1);
    let user = h
        .identity_store()
        .user(&infragpt::identity::ClerkUserId::new(
            "user_29w83sxmDNGwOuEthce5gg56FcC",
        ))
        .await
        .expect("store")
        .expect("user applied");
    assert_eq!(user.email.as_deref(), Some("example@example.org"));
}

#[actix_rt::test]
async fn missing_secret_refuses_every_delivery() {
    let h = identity_app().await;
    let shell = h.identity_shell_with(h.clerk_webhook(None), None);
    let app = test::init_service(infragpt::http::app(shell)).await;
    let body = fixtures::clerk("user.created");
    let resp = post_webhook(&app, &body, &svix_headers(&new_svix_id(), &body)).await;
    assert_eq!(resp.status(), 503);
    let answer = body_json(resp).await;
    assert_eq!(answer["error"]["code"], "unavailable");
    assert_eq!(h.recorded().await, 0);
}

#[actix_rt::test]
async fn non_json_and_non_event_bodies_are_400_and_record_nothing() {
    let h = identity_app().await;
    let app = test::init_service(infragpt::http::app(h.identity_shell(None))).await;
    for body in [
        &b"not json at all"[..],
        br#"{"type": "user.created", "object": "user", "data": {}}"#,
        br#"{"object": "event", "data": {}}"#,
        br#"[1, 2]"#,
    ] {
        let resp = post_webhook(&app, body, &svix_headers(&new_svix_id(), body)).await;
        assert_eq!(resp.status(), 400, "{}", String::from_utf8_lossy(body));
        assert_eq!(body_json(resp).await["error"]["code"], "bad_request");
    }
    assert_eq!(h.recorded().await, 0);
}

#[actix_rt::test]
async fn unhandled_types_are_acknowledged_and_ignored_malformed_known_types_dead_letter() {
    let h = identity_app().await;
    let app = test::init_service(infragpt::http::app(h.identity_shell(None))).await;
    let session =
        json!({"object": "event", "type": "session.created", "data": {"id": "sess_1"}}).to_string();
    let answer = deliver(&app, &new_svix_id(), session.as_bytes()).await;
    assert_eq!(answer["status"], "recorded");
    // A known type without the data we need: recorded (200, so Svix does not retry for a
    // day), then a dead letter with the reason, visible to operators.
    let broken =
        json!({"object": "event", "type": "user.created", "data": {"first_name": "x"}}).to_string();
    deliver(&app, &new_svix_id(), broken.as_bytes()).await;
    h.wait_idle().await;
    assert_eq!(h.count(EventStatus::Ignored).await, 1);
    assert_eq!(h.count(EventStatus::Failed).await, 1);
    let dead = h.cluster().dead_letters(10, 0).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("user.created")),
        "{:?}",
        dead[0].last_error
    );
}

const USER_JOHN: &str = "user_2g7np7Hrk0SN6kj5EDMLDaKNL0S";
const USER_JANE: &str = "user_2h8op3Isl1QR7tKu5FGNfaLKEoU";
const USER_DOCS: &str = "user_29w83sxmDNGwOuEthce5gg56FcC";
const ORG: &str = "org_2g7np7Hrk0SN6kj5EDMLDaKNL0S";
const MEMBERSHIP: &str = "orgmem_2g7np7Hrk0SN6kj5EDMLDaKNL0S";

fn row<'a>(rows: &'a [Value], key: &str, value: &str) -> &'a Value {
    rows.iter()
        .find(|r| r[key] == value)
        .unwrap_or_else(|| panic!("no row with {key} = {value} in {rows:?}"))
}

fn rows(dump: &[(String, Vec<String>)], table: &str) -> Vec<Value> {
    dump.iter()
        .find(|(t, _)| t == table)
        .expect("table")
        .1
        .iter()
        .map(|r| serde_json::from_str(r).expect("json"))
        .collect()
}

#[actix_rt::test]
async fn every_fixture_is_applied_and_replaying_changes_nothing() {
    let h = identity_app().await;
    let app = test::init_service(infragpt::http::app(h.identity_shell(None))).await;
    let fixtures = clerk_natural();
    let mut ids = Vec::new();
    for (name, body) in &fixtures {
        let id = new_svix_id();
        let answer = deliver(&app, &id, body).await;
        assert_eq!(answer["status"], "recorded", "{name}");
        ids.push(id);
    }
    h.wait_idle().await;
    assert_eq!(h.count(EventStatus::Done).await, fixtures.len() as i64);

    let dump = full_dump(h.pool()).await;
    let users = rows(&dump, "users");
    assert_eq!(users.len(), 2, "{users:?}");
    let john = row(&users, "clerk_id", USER_JOHN);
    // user.updated applied (newer), then deleted (soft).
    assert_eq!(john["last_name"], "Doe Updated");
    assert_eq!(john["username"], "johndoe");
    assert_eq!(john["image_url"], "https://img.clerk.com/yyyyy");
    // The fixture's primary_email_address_id has no matching address: no email.
    assert_eq!(john["email"], Value::Null);
    assert_eq!(john["clerk_updated_at"], 1_716_883_500_000_i64);
    assert!(!john["deleted_at"].is_null());
    let docs = row(&users, "clerk_id", USER_DOCS);
    assert_eq!(docs["email"], "example@example.org");
    assert_eq!(docs["first_name"], "Example");
    assert!(docs["deleted_at"].is_null());

    let orgs = rows(&dump, "organizations");
    assert_eq!(orgs.len(), 1);
    let org = row(&orgs, "clerk_id", ORG);
    assert_eq!(org["name"], "Acme Corp Updated");
    assert_eq!(org["slug"], "acme-corp-updated");
    assert_eq!(org["created_by_clerk_id"], USER_JOHN);
    assert!(!org["deleted_at"].is_null());

    let members = rows(&dump, "organization_members");
    assert_eq!(members.len(), 2, "{members:?}");
    let jane = row(&members, "clerk_membership_id", MEMBERSHIP);
    assert_eq!(jane["user_clerk_id"], USER_JANE);
    assert_eq!(jane["organization_clerk_id"], ORG);
    assert_eq!(
        jane["role"], "org:admin",
        "membership.updated promoted Jane"
    );
    assert!(!jane["deleted_at"].is_null());
    // organization.created made its creator an admin (implicit: no membership id).
    let creator = row(&members, "user_clerk_id", USER_JOHN);
    assert_eq!(creator["clerk_membership_id"], Value::Null);
    assert_eq!(creator["role"], "org:admin");
    assert!(creator["deleted_at"].is_null());

    let org_uuid = org["id"].as_str().expect("uuid").to_owned();
    let audit = rows(&dump, "audit_log");
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|a| {
            assert_eq!(a["actor"], "clerk");
            assert_eq!(a["organization_id"], org_uuid.as_str());
            (
                a["action"].as_str().expect("action"),
                a["target"].as_str().expect("target"),
            )
        })
        .collect();
    let creator_target = format!("{ORG}/{USER_JOHN}");
    for expected in [
        ("organization.created", ORG),
        ("organization.updated", ORG),
        ("organization.deleted", ORG),
        ("membership.created", creator_target.as_str()),
        ("membership.created", MEMBERSHIP),
        ("membership.role_changed", MEMBERSHIP),
        ("membership.deleted", MEMBERSHIP),
    ] {
        assert!(
            actions.contains(&expected),
            "{expected:?} missing from {actions:?}"
        );
    }
    assert_eq!(actions.len(), 7, "{actions:?}");

    // Redelivery (same svix-id): duplicate, nothing recorded or changed.
    for ((name, body), id) in fixtures.iter().zip(&ids) {
        let answer = deliver(&app, id, body).await;
        assert_eq!(answer["status"], "duplicate", "{name}");
    }
    // Replay as new messages (new svix-ids): handled again, and still nothing changes.
    for (_, body) in &fixtures {
        deliver(&app, &new_svix_id(), body).await;
    }
    h.wait_idle().await;
    assert_eq!(h.recorded().await, 2 * fixtures.len() as i64);
    assert_eq!(h.count(EventStatus::Done).await, 2 * fixtures.len() as i64);
    assert_eq!(
        full_dump(h.pool()).await,
        dump,
        "a replay changed the tables"
    );
}

async fn apply_in_order(order: &[(String, Vec<u8>)]) -> Vec<(String, Vec<String>)> {
    let h = identity_app().await;
    let app = test::init_service(infragpt::http::app(h.identity_shell(None))).await;
    for (_, body) in order {
        deliver(&app, &new_svix_id(), body).await;
    }
    h.wait_idle().await;
    assert_eq!(h.count(EventStatus::Done).await, order.len() as i64);
    logical_dump(h.pool()).await
}

#[actix_rt::test]
async fn reverse_and_shuffled_orders_end_in_the_natural_state() {
    let natural = clerk_natural();
    let expected = apply_in_order(&natural).await;

    let mut reversed = natural.clone();
    reversed.reverse();
    assert_eq!(apply_in_order(&reversed).await, expected, "reverse order");

    // Memberships first, then organizations, then users.
    let by_kind = |prefix: &str| {
        natural
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut memberships_first = by_kind("organizationMembership.");
    memberships_first.extend(by_kind("organization."));
    memberships_first.extend(by_kind("user."));
    assert_eq!(
        apply_in_order(&memberships_first).await,
        expected,
        "memberships before users and organizations"
    );
}

#[actix_rt::test]
async fn membership_before_user_and_organization_becomes_visible_when_they_arrive() {
    use infragpt::identity::store::OrgAccess;
    use infragpt::identity::{ClerkOrgId, ClerkUserId};

    let h = identity_app().await;
    let app = test::init_service(infragpt::http::app(h.identity_shell(None))).await;
    let jane = ClerkUserId::new(USER_JANE);
    let org = ClerkOrgId::new(ORG);

    deliver(
        &app,
        &new_svix_id(),
        &fixtures::clerk("organizationMembership.created"),
    )
    .await;
    h.wait_idle().await;
    assert_eq!(
        h.identity_store()
            .access(&jane, &org)
            .await
            .expect("access"),
        OrgAccess::UnknownOrganization
    );

    deliver(
        &app,
        &new_svix_id(),
        &fixtures::clerk("organization.created"),
    )
    .await;
    h.wait_idle().await;
    assert_eq!(
        h.identity_store()
            .access(&jane, &org)
            .await
            .expect("access"),
        OrgAccess::NotMember,
        "the user is not known yet"
    );

    // Jane's user.created: the fixture user with Jane's id and a matching primary email.
    let mut user: Value = serde_json::from_slice(&fixtures::clerk("user.created")).expect("json");
    user["data"]["id"] = json!(USER_JANE);
    user["data"]["email_addresses"] = json!([
        {"id": "idn_other", "email_address": "other@acme.com"},
        {"id": "idn_2g7np7Hrk0SN6kj5EDMLDaKNL0S", "email_address": "jane.doe@acme.com"}
    ]);
    deliver(&app, &new_svix_id(), user.to_string().as_bytes()).await;
    h.wait_idle().await;
    match h
        .identity_store()
        .access(&jane, &org)
        .await
        .expect("access")
    {
        OrgAccess::Member { organization, role } => {
            assert_eq!(role, "org:member");
            assert_eq!(organization.clerk_id, org);
            assert_eq!(organization.name, "Acme Corp");
        }
        other => panic!("expected membership, got {other:?}"),
    }
    let stored = h
        .identity_store()
        .user(&jane)
        .await
        .expect("user")
        .expect("jane");
    assert_eq!(stored.email.as_deref(), Some("jane.doe@acme.com"));

    // The creator got the implicit admin membership...
    let john = ClerkUserId::new(USER_JOHN);
    deliver(&app, &new_svix_id(), &fixtures::clerk("user.created")).await;
    h.wait_idle().await;
    assert!(matches!(
        h.identity_store().access(&john, &org).await.expect("access"),
        OrgAccess::Member { role, .. } if role == "org:admin"
    ));
    // ... which an explicit membership event replaces, whatever its role.
    let mut explicit: Value =
        serde_json::from_slice(&fixtures::clerk("organizationMembership.created")).expect("json");
    explicit["data"]["id"] = json!("orgmem_john");
    explicit["data"]["public_user_data"]["user_id"] = json!(USER_JOHN);
    explicit["data"]["role"] = json!("org:member");
    deliver(&app, &new_svix_id(), explicit.to_string().as_bytes()).await;
    // A late organization.created (redelivered as a new message) must not re-add the
    // implicit admin row over the explicit data.
    deliver(
        &app,
        &new_svix_id(),
        &fixtures::clerk("organization.created"),
    )
    .await;
    h.wait_idle().await;
    assert!(matches!(
        h.identity_store().access(&john, &org).await.expect("access"),
        OrgAccess::Member { role, .. } if role == "org:member"
    ));
    let members = dump_table(h.pool(), "organization_members").await;
    assert_eq!(members.len(), 2, "implicit row replaced: {members:?}");
}

#[actix_rt::test]
async fn removed_and_added_again_is_a_member_with_the_new_membership() {
    use infragpt::identity::store::OrgAccess;
    use infragpt::identity::{ClerkOrgId, ClerkUserId};

    let h = identity_app().await;
    let app = test::init_service(infragpt::http::app(h.identity_shell(None))).await;
    let mut jane: Value = serde_json::from_slice(&fixtures::clerk("user.created")).expect("json");
    jane["data"]["id"] = json!(USER_JANE);
    let created = fixtures::clerk("organizationMembership.created");
    let deleted = fixtures::clerk("organizationMembership.deleted");
    let mut again: Value = serde_json::from_slice(&created).expect("json");
    again["data"]["id"] = json!("orgmem_second");
    again["data"]["role"] = json!("org:billing");
    again["data"]["updated_at"] = json!(1_716_900_000_000_i64);

    // Arrival order scrambled: the re-add first, then the old membership's delete and create.
    for body in [
        jane.to_string().into_bytes(),
        fixtures::clerk("organization.created"),
        again.to_string().into_bytes(),
        deleted,
        created,
    ] {
        deliver(&app, &new_svix_id(), &body).await;
    }
    h.wait_idle().await;
    match h
        .identity_store()
        .access(&ClerkUserId::new(USER_JANE), &ClerkOrgId::new(ORG))
        .await
        .expect("access")
    {
        OrgAccess::Member { role, .. } => assert_eq!(role, "org:billing"),
        other => panic!("expected membership, got {other:?}"),
    }
}

#[actix_rt::test]
async fn older_update_never_overwrites_a_newer_one() {
    let h = identity_app().await;
    let app = test::init_service(infragpt::http::app(h.identity_shell(None))).await;
    deliver(
        &app,
        &new_svix_id(),
        &fixtures::clerk("organization.updated"),
    )
    .await;
    deliver(
        &app,
        &new_svix_id(),
        &fixtures::clerk("organization.created"),
    )
    .await;
    h.wait_idle().await;
    let org = h
        .identity_store()
        .organization_id(&infragpt::identity::ClerkOrgId::new(ORG))
        .await
        .expect("store")
        .expect("org");
    let record = h
        .identity_store()
        .organization(org)
        .await
        .expect("store")
        .expect("live");
    assert_eq!(record.name, "Acme Corp Updated");
    assert_eq!(record.slug.as_deref(), Some("acme-corp-updated"));
}

#[actix_rt::test]
async fn module_serves_the_webhook_on_its_own_port_too() {
    use std::sync::Arc;

    use infragpt::config::Config;
    use infragpt::identity::wiring::IdentityModule;
    use infragpt::server::{AppState, Module};

    // Without identity: the module registers the Clerk stream on the app's cluster itself.
    let app = TestApp::builder().build().await;
    let cluster = app.cluster().clone();
    let mut config = Config {
        bind_address: "127.0.0.1".into(),
        http_log: false,
        ..Config::default()
    };
    config.identity.clerk.webhook_secret = Some(infragpt_actors::Secret::new(SVIX_SECRET));
    config.identity.clerk.port = Some(0);
    let state = AppState {
        config: Arc::new(config.clone()),
        readiness: infragpt::http::Readiness::default(),
        db: Arc::new(app.db.database()),
    };
    let mut module = IdentityModule::new(config.identity.clone(), cluster.clone());
    let mut http = infragpt::http::HttpShell::from_config(&config, state.readiness.clone());
    let mut grpc = infragpt::grpc::server::GrpcShell::new().await;
    module
        .start(&state, &mut http, &mut grpc)
        .await
        .expect("module starts");
    let addr = module.webhook_addr().expect("separate listener");

    let body = fixtures::clerk("user.created.docs");
    let client = reqwest::Client::new();
    let mut req = client
        .post(format!("http://{addr}/webhooks/clerk"))
        .header("content-type", "application/json")
        .body(body.clone());
    for (k, v) in svix_headers(&new_svix_id(), &body) {
        req = req.header(k, v);
    }
    let resp = req.send().await.expect("request");
    assert_eq!(resp.status(), 200);
    let unsigned = client
        .post(format!("http://{addr}/webhooks/clerk"))
        .body(body.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(unsigned.status(), 401);

    // The main app gets the same route from the module's hook.
    let app = test::init_service(infragpt::http::app(http)).await;
    let answer = deliver(
        &app,
        &new_svix_id(),
        &fixtures::clerk("organization.created"),
    )
    .await;
    assert_eq!(answer["status"], "recorded");
    // Without JWT settings the API fails closed.
    let resp = test::call_service(
        &app,
        test::TestRequest::get().uri("/identity/me").to_request(),
    )
    .await;
    assert_eq!(resp.status(), 503);

    eventually("both deliveries are handled", async || {
        let counts = cluster.inbox().count_by_status().await.expect("counts");
        if counts.contains(&(EventStatus::Done, 2)) {
            Ok(())
        } else {
            Err(counts)
        }
    })
    .await;
    module.stop().await;
    assert!(
        client
            .post(format!("http://{addr}/webhooks/clerk"))
            .body(body)
            .send()
            .await
            .is_err(),
        "listener stopped"
    );
    cluster.shutdown().await;
}

#[actix_rt::test]
async fn slug_clash_from_a_missed_rename_does_not_block_the_stream() {
    let h = identity_app().await;
    let app = test::init_service(infragpt::http::app(h.identity_shell(None))).await;
    // Org X holds `acme-corp`; Clerk renamed it (event not here yet) and org Y took the slug.
    deliver(
        &app,
        &new_svix_id(),
        &fixtures::clerk("organization.created"),
    )
    .await;
    let mut other: Value =
        serde_json::from_slice(&fixtures::clerk("organization.created")).expect("json");
    other["data"]["id"] = json!("org_other");
    other["data"]["name"] = json!("Other");
    deliver(&app, &new_svix_id(), other.to_string().as_bytes()).await;
    h.wait_idle().await;
    assert_eq!(h.count(EventStatus::Done).await, 2, "no dead letter");
    let orgs = rows(&full_dump(h.pool()).await, "organizations");
    assert_eq!(row(&orgs, "clerk_id", "org_other")["slug"], "acme-corp");
    assert_eq!(row(&orgs, "clerk_id", ORG)["slug"], Value::Null);
    // X's rename arrives: it gets its new slug.
    deliver(
        &app,
        &new_svix_id(),
        &fixtures::clerk("organization.updated"),
    )
    .await;
    h.wait_idle().await;
    let orgs = rows(&full_dump(h.pool()).await, "organizations");
    assert_eq!(row(&orgs, "clerk_id", ORG)["slug"], "acme-corp-updated");
    assert_eq!(row(&orgs, "clerk_id", "org_other")["slug"], "acme-corp");
}
