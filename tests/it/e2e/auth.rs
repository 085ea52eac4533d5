//! The assembled service (`app::start`) with Clerk configured: Clerk webhooks through the real
//! endpoint populate the organization, and the REST API (identity and integrations) accepts
//! only verified session tokens, scoped to the token's organization.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::db::schema::organization_members;
use serde_json::Value;

use crate::support::app::TestApp;
use crate::support::fixtures;
use crate::support::identity::{KEY_A, KID_A, claims_v2, new_svix_id, sign_jwt, svix_headers};
use crate::support::wait::eventually;

#[actix_rt::test]
async fn clerk_webhooks_then_scoped_rest_calls() {
    let app = TestApp::builder().with_identity().start().await;
    let base = app.base_url();
    let client = app.http().clone();

    // A user, and an organization that user created (the creator becomes its admin).
    let mut user_event: Value =
        serde_json::from_slice(&fixtures::clerk("user.created")).expect("user");
    let mut org_event: Value =
        serde_json::from_slice(&fixtures::clerk("organization.created")).expect("org");
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
    eventually(
        "organization.created made its creator a member",
        async || {
            let mut conn = app.pool().get().await.expect("conn");
            let n: i64 = organization_members::table
                .filter(organization_members::organization_clerk_id.eq(&org))
                .filter(organization_members::user_clerk_id.eq(&user))
                .filter(organization_members::deleted_at.is_null())
                .count()
                .get_result(&mut conn)
                .await
                .expect("members");
            n == 1
        },
    )
    .await;
    let token = sign_jwt(KEY_A, KID_A, &claims_v2(&user, &org, "org:admin"));

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
        KID_A,
        &claims_v2(&user, "org_someone_else", "org:admin"),
    );
    let resp = client
        .get(format!("{base}/integrations"))
        .bearer_auth(&other)
        .send()
        .await
        .expect("other org");
    assert_eq!(resp.status(), 403);

    app.stop().await;
}
