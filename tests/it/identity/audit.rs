//! `GET /audit`: an organization's audit log for its admins, with real session tokens. The
//! entries come from real actions (RestEnv installs an integration and writes metadata in
//! both organizations) and from seeded entries.

use std::collections::HashSet;
use std::time::Duration;

use actix_web::dev::{Service, ServiceResponse};
use chrono::{SecondsFormat, Utc};
use infragpt_actors::audit::AuditEntry;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::identity::{KEY_A, KID_A, claims_v2, sign_jwt};
use crate::support::rest::{
    BOB, NEEDS_ADMIN, ORG_A, ORG_B, Persona, RestEnv, assert_error_shape, call,
};

/// Appends `n` entries `action` for `organization_id`.
async fn append(env: &RestEnv, organization_id: Option<Uuid>, action: &str, n: usize) {
    for i in 0..n {
        env.app
            .seed_audit_entry(AuditEntry {
                organization_id,
                actor: "system".to_owned(),
                action: action.to_owned(),
                target: Some(format!("thing:{i}")),
                details: json!({ "n": i }),
            })
            .await;
    }
}

fn entries(answer: &Value) -> &Vec<Value> {
    answer["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("entries: {answer}"))
}

fn actions(answer: &Value) -> Vec<&str> {
    entries(answer)
        .iter()
        .map(|e| e["action"].as_str().expect("action"))
        .collect()
}

fn bob_token() -> String {
    sign_jwt(KEY_A, KID_A, &claims_v2(BOB, ORG_B, "org:admin"))
}

/// GET `uri` as alice (admin of A): status and answer.
async fn as_alice<S>(svc: &S, uri: &str) -> (u16, Value)
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    call(svc, "GET", uri, Some(&Persona::Admin.token(ORG_A)), None).await
}

#[actix_rt::test]
async fn audit_shows_admins_their_own_organization_only() {
    let env = RestEnv::new().await;
    // An operator action belongs to no organization: nobody's /audit shows it.
    append(&env, None, "event.requeued", 1).await;
    let svc = env.service().await;

    let (status, a) = as_alice(&svc, "/audit").await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["next_cursor"], Value::Null, "{a}");
    for entry in entries(&a) {
        assert_eq!(entry["organization_id"], env.org_a.as_str(), "{entry}");
        assert_ne!(entry["target"], env.integration_b.as_str(), "{entry}");
        for key in ["id", "at", "actor", "action", "target", "details"] {
            assert!(entry.get(key).is_some(), "{key} in {entry}");
        }
    }
    // Newest first: the metadata written after the integration was connected.
    assert_eq!(
        actions(&a),
        [
            "organization.metadata_updated",
            "integration.connected",
            "integration.initiated"
        ],
        "{a}"
    );
    assert_eq!(entries(&a)[0]["actor"], "user/user_alice");

    let (status, b) = call(&svc, "GET", "/audit", Some(&bob_token()), None).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(entries(&b).len(), 3, "{b}");
    let org_b = entries(&b)[0]["organization_id"].clone();
    assert_ne!(org_b, json!(env.org_a), "{b}");
    for entry in entries(&b) {
        assert_eq!(entry["organization_id"], org_b, "{entry}");
        assert_ne!(entry["target"], env.integration_a.as_str(), "{entry}");
    }
    let ids_a: HashSet<_> = entries(&a).iter().map(|e| e["id"].clone()).collect();
    assert!(entries(&b).iter().all(|e| !ids_a.contains(&e["id"])));

    // The organization is the token's: naming another one is refused, not ignored.
    let uri = format!("/audit?organization_id={}", org_b.as_str().expect("uuid"));
    let (status, answer) = as_alice(&svc, &uri).await;
    assert_eq!(status, 400, "{answer}");
    assert_error_shape(&answer, "bad_request", "organization_id on /audit");
}

#[actix_rt::test]
async fn audit_refuses_members_outsiders_and_anonymous_callers() {
    let env = RestEnv::new().await;
    let svc = env.service().await;
    let (status, answer) = call(
        &svc,
        "GET",
        "/audit",
        Some(&Persona::Member.token(ORG_A)),
        None,
    )
    .await;
    assert_eq!(status, 403, "member: {answer}");
    assert_error_shape(&answer, "forbidden", "member");
    assert_eq!(answer["error"]["message"], NEEDS_ADMIN);
    // Refused before the parameters are read, too.
    let (status, _) = call(
        &svc,
        "GET",
        "/audit?before=garbage",
        Some(&Persona::Member.token(ORG_A)),
        None,
    )
    .await;
    assert_eq!(status, 403, "member with a bad cursor");
    let (status, answer) = call(
        &svc,
        "GET",
        "/audit",
        Some(&Persona::Outsider.token(ORG_A)),
        None,
    )
    .await;
    assert_eq!(status, 403, "outsider: {answer}");
    assert_error_shape(&answer, "forbidden", "outsider");
    // Alice's token naming B: she is no member of B.
    let (status, _) = as_alice(&svc, "/audit").await;
    assert_eq!(status, 200);
    let token = sign_jwt(KEY_A, KID_A, &claims_v2("user_alice", ORG_B, "org:admin"));
    let (status, answer) = call(&svc, "GET", "/audit", Some(&token), None).await;
    assert_eq!(status, 403, "token naming B: {answer}");
    let (status, answer) = call(&svc, "GET", "/audit", None, None).await;
    assert_eq!(status, 401, "{answer}");
    assert_error_shape(&answer, "unauthorized", "anonymous");
}

#[actix_rt::test]
async fn audit_pages_cover_every_entry_once_newest_first() {
    let env = RestEnv::new().await;
    let org_a: Uuid = env.org_a.parse().expect("uuid");
    append(&env, Some(org_a), "test.bulk", 60).await;
    // Entries of no organization are not A's and must not show up in its pages.
    append(&env, None, "test.bulk", 5).await;
    let svc = env.service().await;

    // The default page is 50.
    let (status, first) = as_alice(&svc, "/audit").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(entries(&first).len(), 50);
    assert!(first["next_cursor"].is_string(), "{first}");

    let (_, all) = as_alice(&svc, "/audit?limit=500").await;
    let all_ids: Vec<i64> = entries(&all)
        .iter()
        .map(|e| e["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(all_ids.len(), 63, "60 appended + 3 from the real actions");
    assert_eq!(all["next_cursor"], Value::Null);

    let mut paged = Vec::new();
    let mut uri = "/audit?limit=7".to_owned();
    let mut pages = 0;
    loop {
        let (status, page) = as_alice(&svc, &uri).await;
        assert_eq!(status, 200, "{uri}: {page}");
        pages += 1;
        paged.extend(entries(&page).iter().map(|e| e["id"].as_i64().expect("id")));
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                assert_eq!(entries(&page).len(), 7, "only the last page is short");
                uri = format!("/audit?limit=7&before={cursor}");
            }
            None => break,
        }
        assert!(pages < 20, "pagination does not end");
    }
    assert_eq!(pages, 9, "63 entries in pages of 7");
    assert_eq!(paged, all_ids, "no gaps, no duplicates, same order");
    assert!(paged.windows(2).all(|w| w[0] > w[1]), "newest first");
}

#[actix_rt::test]
async fn audit_filters_by_action_and_time_window() {
    let env = RestEnv::new().await;
    let org_a: Uuid = env.org_a.parse().expect("uuid");
    // `_` is literal in a prefix, not a LIKE wildcard.
    append(&env, Some(org_a), "test_x.one", 1).await;
    append(&env, Some(org_a), "testXx.two", 1).await;
    append(&env, Some(org_a), "window.before", 1).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let t1 = Utc::now();
    tokio::time::sleep(Duration::from_millis(30)).await;
    append(&env, Some(org_a), "window.inside", 1).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let t2 = Utc::now();
    tokio::time::sleep(Duration::from_millis(30)).await;
    append(&env, Some(org_a), "window.after", 1).await;
    let svc = env.service().await;

    let (status, answer) = as_alice(&svc, "/audit?action=integration.").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        actions(&answer),
        ["integration.connected", "integration.initiated"]
    );
    let (_, answer) = as_alice(&svc, "/audit?action=organization.metadata_updated").await;
    assert_eq!(actions(&answer), ["organization.metadata_updated"]);
    // Without the trailing dot the filter is exact.
    let (_, answer) = as_alice(&svc, "/audit?action=integration").await;
    assert!(actions(&answer).is_empty(), "{answer}");
    let (_, answer) = as_alice(&svc, "/audit?action=test_x.").await;
    assert_eq!(actions(&answer), ["test_x.one"]);

    let t1 = t1.to_rfc3339_opts(SecondsFormat::Micros, true);
    let t2 = t2.to_rfc3339_opts(SecondsFormat::Micros, true);
    let (status, answer) = as_alice(
        &svc,
        &format!("/audit?action=window.&since={t1}&until={t2}"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(actions(&answer), ["window.inside"]);
    let (_, answer) = as_alice(&svc, &format!("/audit?action=window.&since={t1}")).await;
    assert_eq!(actions(&answer), ["window.after", "window.inside"]);
    let (_, answer) = as_alice(&svc, &format!("/audit?action=window.&until={t2}")).await;
    assert_eq!(actions(&answer), ["window.inside", "window.before"]);
    // Every entry answered lies in the window.
    let (_, answer) = as_alice(&svc, &format!("/audit?since={t1}")).await;
    for entry in entries(&answer) {
        let at = chrono::DateTime::parse_from_rfc3339(entry["at"].as_str().expect("at"))
            .expect("at is RFC 3339");
        assert!(at >= chrono::DateTime::parse_from_rfc3339(&t1).expect("t1"));
    }
    assert_eq!(entries(&answer).len(), 2, "{answer}");
}

#[actix_rt::test]
async fn audit_answers_bad_parameters_with_400_naming_them() {
    let env = RestEnv::new().await;
    let svc = env.service().await;
    for (query, param) in [
        ("before=abc", "before"),
        ("before=0", "before"),
        ("before=-5", "before"),
        ("since=yesterday", "since"),
        ("since=2026-11-29", "since"),
        ("until=2026-13-01T00:00:00Z", "until"),
        (
            "since=2026-11-29T10:00:00Z&until=2026-11-29T09:00:00Z",
            "until",
        ),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("action=", "action"),
        ("color=red", "color"),
    ] {
        let (status, answer) = as_alice(&svc, &format!("/audit?{query}")).await;
        assert_eq!(status, 400, "{query}: {answer}");
        assert_error_shape(&answer, "bad_request", query);
        let message = answer["error"]["message"].as_str().expect("message");
        assert!(message.contains(param), "{query}: {message}");
    }
    // The biggest page is fine.
    let (status, answer) = as_alice(&svc, "/audit?limit=500").await;
    assert_eq!(status, 200, "{answer}");
}
