//! The `/identity` API and the JWT extractors against real PostgreSQL and a local JWKS
//! server; tokens are signed in the tests with the test RSA keys in `tests/data/`.

use actix_web::test;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use infragpt::identity::clerk_events::ClerkUser;
use infragpt::identity::store::{MembershipUpsert, OrganizationUpsert};
use infragpt::identity::{ClerkMembershipId, ClerkOrgId, ClerkUserId};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::identity_app;
use crate::support::app::TestApp;
use crate::support::body_json;
use crate::support::identity::*;

const ALICE: &str = "user_alice";
const BOB: &str = "user_bob";
const ORG_A: &str = "org_a";
const ORG_B: &str = "org_b";

/// Alice is an admin of A, Bob an admin of B (members' rights: `identity::roles`).
async fn seed(h: &TestApp) {
    for (id, email) in [(ALICE, "alice@a.test"), (BOB, "bob@b.test")] {
        h.identity_store()
            .upsert_user(
                &ClerkUser {
                    clerk_id: ClerkUserId::new(id),
                    email: Some(email.into()),
                    first_name: Some(id.trim_start_matches("user_").into()),
                    last_name: None,
                    username: None,
                    image_url: None,
                },
                Some(1),
            )
            .await
            .expect("user");
    }
    for (id, name) in [(ORG_A, "Org A"), (ORG_B, "Org B")] {
        h.identity_store()
            .upsert_organization(
                &OrganizationUpsert {
                    clerk_id: ClerkOrgId::new(id),
                    name: name.into(),
                    slug: Some(id.replace('_', "-")),
                    image_url: None,
                    created_by: None,
                },
                Some(1),
                |_, _| None,
            )
            .await
            .expect("org");
    }
    for (mem, org, user, role) in [
        ("orgmem_a", ORG_A, ALICE, "org:admin"),
        ("orgmem_b", ORG_B, BOB, "org:admin"),
    ] {
        h.identity_store()
            .upsert_membership(
                &MembershipUpsert {
                    clerk_membership_id: ClerkMembershipId::new(mem),
                    org_clerk_id: ClerkOrgId::new(org),
                    user_clerk_id: ClerkUserId::new(user),
                    role: role.into(),
                },
                Some(1),
                |_| None,
            )
            .await
            .expect("membership");
    }
}

/// The identity app, seeded, with its JWKS server serving [`KEY_A`] as [`KID_A`].
async fn env() -> TestApp {
    let h = identity_app().await;
    seed(&h).await;
    h
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

macro_rules! app {
    ($env:expr) => {
        test::init_service(infragpt::http::app(
            $env.identity_shell(Some($env.jwt_verifier())),
        ))
        .await
    };
}

async fn call<S>(
    app: &S,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value)
where
    S: actix_web::dev::Service<
            actix_http::Request,
            Response = actix_web::dev::ServiceResponse,
            Error = actix_web::Error,
        >,
{
    let mut req = match method {
        "GET" => test::TestRequest::get(),
        "PUT" => test::TestRequest::put(),
        other => panic!("method {other}"),
    }
    .uri(uri);
    if let Some(token) = token {
        req = req.insert_header(bearer(token));
    }
    if let Some(body) = body {
        req = req.set_json(body);
    }
    let resp = test::call_service(app, req.to_request()).await;
    let status = resp.status().as_u16();
    (status, body_json(resp).await)
}

fn alice_a() -> String {
    sign_jwt(KEY_A, KID_A, &claims_v2(ALICE, ORG_A, "org:admin"))
}

const ROUTES: [(&str, &str); 3] = [
    ("GET", "/identity/me"),
    ("GET", "/identity/organization"),
    ("PUT", "/identity/organization/metadata"),
];

fn metadata_body() -> Value {
    json!({
        "company_size": "11-50",
        "team_size": "6-10",
        "use_cases": ["incident_response", "monitoring"],
        "observability_stack": ["prometheus", "grafana"],
    })
}

#[actix_rt::test]
async fn invalid_tokens_are_401_on_every_route() {
    let env = env().await;
    let app = app!(env);
    let now = chrono::Utc::now().timestamp();
    let base = claims_v2(ALICE, ORG_A, "org:admin");
    let with = |key: &str, value: Value| {
        let mut c = base.clone();
        c[key] = value;
        c
    };

    let none_token = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","typ":"JWT","kid":"{KID_A}"}}"#)),
        URL_SAFE_NO_PAD.encode(base.to_string())
    );
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(KID_A.into());
    let hs256_with_public_key =
        jsonwebtoken::encode(&hs, &base, &EncodingKey::from_secret(PUB_A.as_bytes()))
            .expect("hs256");
    let tampered = {
        let token = alice_a();
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(claims_v2(BOB, ORG_B, "org:admin").to_string());
        parts.join(".")
    };

    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("garbage", Some("not-a-jwt".into())),
        (
            "expired",
            Some(sign_jwt(KEY_A, KID_A, &with("exp", json!(now - 3600)))),
        ),
        (
            "nbf in the future",
            Some(sign_jwt(KEY_A, KID_A, &with("nbf", json!(now + 3600)))),
        ),
        (
            "iat in the future",
            Some(sign_jwt(KEY_A, KID_A, &with("iat", json!(now + 3600)))),
        ),
        (
            "wrong issuer",
            Some(sign_jwt(
                KEY_A,
                KID_A,
                &with("iss", json!("https://evil.test")),
            )),
        ),
        (
            "wrong azp",
            Some(sign_jwt(
                KEY_A,
                KID_A,
                &with("azp", json!("https://evil.test")),
            )),
        ),
        ("unknown kid", Some(sign_jwt(KEY_B, "b", &base))),
        ("key b under kid a", Some(sign_jwt(KEY_B, KID_A, &base))),
        ("alg none", Some(none_token)),
        ("HS256 with the public key", Some(hs256_with_public_key)),
        ("tampered claims", Some(tampered)),
    ];
    for (method, uri) in ROUTES {
        for (name, token) in &cases {
            let body = (method == "PUT").then(metadata_body);
            let (status, answer) = call(&app, method, uri, token.as_deref(), body).await;
            assert_eq!(status, 401, "{method} {uri}: {name}: {answer}");
            assert_eq!(answer["error"]["code"], "unauthorized", "{name}");
        }
    }
    // Nothing was written by any of them.
    assert!(
        dump_table(env.pool(), "organization_metadata")
            .await
            .is_empty()
    );
    assert!(dump_table(env.pool(), "audit_log").await.is_empty());
}

#[actix_rt::test]
async fn v1_and_v2_organization_claims_are_accepted() {
    let env = env().await;
    let app = app!(env);
    for claims in [
        claims_v2(ALICE, ORG_A, "org:admin"),
        claims_v1(ALICE, ORG_A, "org:admin"),
    ] {
        let token = sign_jwt(KEY_A, KID_A, &claims);
        let (status, answer) = call(&app, "GET", "/identity/me", Some(&token), None).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["user"]["clerk_id"], ALICE);
        assert_eq!(answer["user"]["email"], "alice@a.test");
        assert_eq!(answer["organization"]["clerk_id"], ORG_A);
        assert_eq!(answer["organization"]["name"], "Org A");
        assert_eq!(answer["role"], "org:admin");

        let (status, answer) =
            call(&app, "GET", "/identity/organization", Some(&token), None).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["organization"]["clerk_id"], ORG_A);
        assert_eq!(answer["metadata"]["use_cases"], json!([]));
    }
}

#[actix_rt::test]
async fn rotated_key_is_fetched_on_unknown_kid() {
    let env = env().await;
    let app = app!(env);
    let (status, _) = call(&app, "GET", "/identity/me", Some(&alice_a()), None).await;
    assert_eq!(status, 200);
    let hits = env.jwks().hits();
    // Clerk rotates: the JWKS now holds key b only.
    env.jwks().serve(jwks(&[(KEY_B, "b")]));
    let token_b = sign_jwt(KEY_B, "b", &claims_v2(ALICE, ORG_A, "org:admin"));
    let (status, answer) = call(&app, "GET", "/identity/me", Some(&token_b), None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(env.jwks().hits(), hits + 1, "one refetch for the new kid");
}

#[actix_rt::test]
async fn other_organizations_are_never_reachable() {
    let env = env().await;
    let app = app!(env);
    // B's metadata, written by Bob (B's admin).
    let bob = sign_jwt(KEY_A, KID_A, &claims_v2(BOB, ORG_B, "org:admin"));
    let (status, _) = call(
        &app,
        "PUT",
        "/identity/organization/metadata",
        Some(&bob),
        Some(json!({"company_size": "1-10"})),
    )
    .await;
    assert_eq!(status, 200);
    let b_metadata = dump_table(env.pool(), "organization_metadata").await;

    // Alice with a token naming org B (not her organization), and with unknown orgs.
    let tokens = [
        (
            "alice in B (v2)",
            sign_jwt(KEY_A, KID_A, &claims_v2(ALICE, ORG_B, "org:admin")),
        ),
        (
            "alice in B (v1)",
            sign_jwt(KEY_A, KID_A, &claims_v1(ALICE, ORG_B, "org:admin")),
        ),
        (
            "alice in unknown org",
            sign_jwt(KEY_A, KID_A, &claims_v2(ALICE, "org_zzz", "org:admin")),
        ),
    ];
    for (name, token) in &tokens {
        for (method, uri) in ROUTES {
            let body = (method == "PUT").then(metadata_body);
            let (status, answer) = call(&app, method, uri, Some(token), body).await;
            assert!(
                status == 403 || status == 404,
                "{name}: {method} {uri}: {status} {answer}"
            );
            assert!(
                !answer.to_string().contains("Org B"),
                "{name}: {method} {uri} leaked B: {answer}"
            );
        }
    }
    // Naming B in the body does not reach B either: the organization comes from the token.
    let (status, answer) = call(
        &app,
        "PUT",
        "/identity/organization/metadata",
        Some(&alice_a()),
        Some(json!({"organization_id": ORG_B, "company_size": "5000+"})),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["field"], "organization_id");
    // No route takes an organization id.
    let (status, _) = call(
        &app,
        "GET",
        &format!("/identity/organizations/{ORG_B}"),
        Some(&alice_a()),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        dump_table(env.pool(), "organization_metadata").await,
        b_metadata,
        "B's metadata untouched"
    );

    // A token without an organization: /me works (no organization), org routes are 403.
    let plain = sign_jwt(KEY_A, KID_A, &claims(ALICE));
    let (status, answer) = call(&app, "GET", "/identity/me", Some(&plain), None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["organization"], Value::Null);
    for (method, uri) in &ROUTES[1..] {
        let body = (*method == "PUT").then(metadata_body);
        let (status, answer) = call(&app, method, uri, Some(&plain), body).await;
        assert_eq!(status, 403, "{method} {uri}: {answer}");
        assert_eq!(answer["error"]["code"], "forbidden");
    }
}

#[actix_rt::test]
async fn removed_members_and_deleted_organizations_lose_access() {
    let env = env().await;
    let app = app!(env);
    let bob = sign_jwt(KEY_A, KID_A, &claims_v2(BOB, ORG_B, "org:member"));
    let (status, _) = call(&app, "GET", "/identity/organization", Some(&bob), None).await;
    assert_eq!(status, 200);
    env.identity_store()
        .delete_membership(
            &ClerkMembershipId::new("orgmem_b"),
            &ClerkOrgId::new(ORG_B),
            &ClerkUserId::new(BOB),
            None,
            |_| None,
        )
        .await
        .expect("delete");
    for (method, uri) in ROUTES {
        let body = (method == "PUT").then(metadata_body);
        let (status, answer) = call(&app, method, uri, Some(&bob), body).await;
        assert_eq!(status, 403, "{method} {uri}: {answer}");
    }

    let (status, _) = call(
        &app,
        "GET",
        "/identity/organization",
        Some(&alice_a()),
        None,
    )
    .await;
    assert_eq!(status, 200);
    env.identity_store()
        .delete_organization(&ClerkOrgId::new(ORG_A), |_| None)
        .await
        .expect("delete");
    for (method, uri) in ROUTES {
        let body = (method == "PUT").then(metadata_body);
        let (status, answer) = call(&app, method, uri, Some(&alice_a()), body).await;
        assert_eq!(status, 403, "{method} {uri}: {answer}");
    }
}

#[actix_rt::test]
async fn metadata_is_validated_written_and_audited() {
    let env = env().await;
    let app = app!(env);
    let token = alice_a();
    for (body, field) in [
        (json!({"company_size": "huge"}), "company_size"),
        (json!({"team_size": 12}), "team_size"),
        (json!({"use_cases": ["monitoring", "golf"]}), "use_cases[1]"),
        (
            json!({"observability_stack": "datadog"}),
            "observability_stack",
        ),
        (json!({"colour": "blue"}), "colour"),
    ] {
        let (status, answer) = call(
            &app,
            "PUT",
            "/identity/organization/metadata",
            Some(&token),
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "unprocessable");
        assert_eq!(answer["error"]["field"], field, "{body}");
    }
    assert!(dump_table(env.pool(), "audit_log").await.is_empty());

    let (status, answer) = call(
        &app,
        "PUT",
        "/identity/organization/metadata",
        Some(&token),
        Some(metadata_body()),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["metadata"]["company_size"], "11-50");
    assert!(answer["metadata"]["onboarding_completed_at"].is_string());

    let (status, answer) = call(&app, "GET", "/identity/organization", Some(&token), None).await;
    assert_eq!(status, 200);
    assert_eq!(answer["metadata"]["team_size"], "6-10");
    assert_eq!(
        answer["metadata"]["observability_stack"],
        json!(["prometheus", "grafana"])
    );
    assert_eq!(answer["role"], "org:admin");

    let audit = audit_rows(env.pool()).await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    let entry = &audit[0];
    assert_eq!(entry["actor"], format!("user/{ALICE}"));
    assert_eq!(entry["action"], "organization.metadata_updated");
    let org_a = answer["organization"]["id"].as_str().expect("id");
    assert_eq!(entry["organization_id"], org_a);
    assert_eq!(entry["details"]["before"]["company_size"], Value::Null);
    assert_eq!(entry["details"]["after"]["company_size"], "11-50");
}

#[actix_rt::test]
async fn without_jwks_every_protected_route_fails_closed() {
    let h = identity_app().await;
    seed(&h).await;
    let app = test::init_service(infragpt::http::app(h.identity_shell(None))).await;
    let token = alice_a();
    for (method, uri) in ROUTES {
        let body = (method == "PUT").then(metadata_body);
        let (status, answer) = call(&app, method, uri, Some(&token), body).await;
        assert_eq!(status, 503, "{method} {uri}: {answer}");
        assert_eq!(answer["error"]["code"], "unavailable");
    }
    // An app without any Authenticator refuses too.
    let bare = test::init_service(infragpt::http::app(
        infragpt::http::HttpShell::new(
            infragpt::http::Readiness::default(),
            false,
            infragpt::config::CorsConfig::default(),
        )
        .with_routes({
            let api = infragpt::identity::api::IdentityApi::new(h.identity_store().clone());
            move |cfg| infragpt::identity::api::configure(cfg, api.clone())
        }),
    ))
    .await;
    let (status, _) = call(&bare, "GET", "/identity/organization", Some(&token), None).await;
    assert_eq!(status, 503);
}
