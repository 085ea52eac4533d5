//! The assembled service (`app::start`) with Clerk configured: Clerk webhooks through the real
//! endpoint populate the organization, and the REST API (identity and integrations) accepts
//! only verified session tokens, scoped to the token's organization.

mod common;

use std::time::Duration;

use common::{
    AZP, ISSUER, JwksServer, KEY_A, SVIX_SECRET, claims_v2, jwks, new_svix_id, sign_jwt,
    svix_headers,
};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::config;
use infragpt::db::schema::organization_members;
use infragpt::db::testing::TestDb;
use serde_json::Value;

const VAULT_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

#[actix_rt::test]
async fn clerk_webhooks_then_scoped_rest_calls() {
    let db = TestDb::new().await;
    let jwks_server = JwksServer::start(jwks(&[(KEY_A, "kid-a")])).await;
    let yaml = format!(
        "port: 0\ngrpc_port: 0\nlog_level: warn\nhttp_log: false\n\
         vault:\n  active_key: k1\n  keys:\n    k1: \"{VAULT_KEY}\"\n\
         identity:\n  clerk:\n    webhook_secret: \"{SVIX_SECRET}\"\n    jwks_url: \"{}\"\n    issuer: \"{ISSUER}\"\n    authorized_parties: [\"{AZP}\"]\n\
         database:\n  url: \"{}\"\n",
        jwks_server.url,
        db.url.expose()
    );
    let config = config::load_str(&yaml, "assembled.yaml").expect("config");
    let (running, _core) = infragpt::app::start(config).await.expect("service starts");
    let base = format!("http://{}", running.http_addr);
    let client = reqwest::Client::new();

    // A user, and an organization that user created (the creator becomes its admin).
    let mut user_event: Value =
        serde_json::from_slice(&common::clerk_fixture("user.created")).expect("user");
    let mut org_event: Value =
        serde_json::from_slice(&common::clerk_fixture("organization.created")).expect("org");
    let user = user_event["data"]["id"]
        .as_str()
        .expect("user id")
        .to_owned();
    let org = org_event["data"]["id"].as_str().expect("org id").to_owned();
    org_event["data"]["created_by"] = Value::String(user.clone());
    user_event["data"]["deleted"] = Value::Null;
    for (name, event) in [("user", &user_event), ("organization", &org_event)] {
        let body = serde_json::to_vec(event).expect("json");
        let mut req = client
            .post(format!("{base}/webhooks/clerk"))
            .header("content-type", "application/json")
            .body(body.clone());
        for (k, v) in svix_headers(&new_svix_id(), &body) {
            req = req.header(k, v);
        }
        let resp = req.send().await.expect("webhook");
        assert_eq!(resp.status(), 200, "{name}");
    }

    // The identity stream applies events asynchronously: wait for the creator's membership.
    let mut live = false;
    for _ in 0..300 {
        let mut conn = db.pool().get().await.expect("conn");
        let n: i64 = organization_members::table
            .filter(organization_members::organization_clerk_id.eq(&org))
            .filter(organization_members::user_clerk_id.eq(&user))
            .filter(organization_members::deleted_at.is_null())
            .count()
            .get_result(&mut conn)
            .await
            .expect("members");
        if n == 1 {
            live = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(live, "organization.created made its creator a member");
    let token = sign_jwt(KEY_A, "kid-a", &claims_v2(&user, &org, "org:admin"));

    let me = client
        .get(format!("{base}/identity/me"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("me");
    assert_eq!(me.status(), 200);
    let body: Value = me.json().await.expect("json");
    assert!(body.to_string().contains(&org), "{body}");
    let integrations = client
        .get(format!("{base}/integrations"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("integrations");
    assert_eq!(integrations.status(), 200);

    // No token, a forged token and another organization's token are refused.
    let none = client
        .get(format!("{base}/integrations"))
        .send()
        .await
        .expect("no token");
    assert_eq!(none.status(), 401);
    let forged = client
        .get(format!("{base}/integrations"))
        .bearer_auth(format!("{token}x"))
        .send()
        .await
        .expect("forged");
    assert_eq!(forged.status(), 401);
    let other = sign_jwt(
        KEY_A,
        "kid-a",
        &claims_v2(&user, "org_someone_else", "org:admin"),
    );
    let resp = client
        .get(format!("{base}/integrations"))
        .bearer_auth(&other)
        .send()
        .await
        .expect("other org");
    assert_eq!(resp.status(), 403);

    running.stop().await.expect("clean stop");
}
