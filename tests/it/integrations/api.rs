//! The integrations REST API against real PostgreSQL and a local mock of the GitHub API:
//! the full GitHub App install flow, webhooks for the installation (events listing,
//! `installation.deleted` revokes), state forgery/expiry/replay, cross-organization access on
//! every route, audit entries, and no secret in any log line.

use std::sync::Arc;

use actix_web::{App, middleware::from_fn, test};
use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::app::integrations::IntegrationParts;
use infragpt::config::Config;
use infragpt::crypto::state::StateClaims;
use infragpt::db::schema::{audit_log, github_repositories, integration_credentials};
use infragpt::github::signature::sign;
use infragpt::integrations::connector::ConnectorRegistry;
use infragpt_actors::Secret;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::app::{TestApp, reserve_port};
use crate::support::fixtures;
use crate::support::integrations::*;

const WEBHOOK_SECRET: &str = "api-test-webhook-secret";
const INSTALLATION: i64 = 4242;

fn github_config(mock: &GithubMock) -> Config {
    let mut config = Config::default();
    let gh = &mut config.integrations.github;
    gh.app_id = Some(12345);
    gh.app_slug = Some("infragpt-test".to_owned());
    gh.private_key = Some(test_private_key());
    gh.api_url = mock.url.clone();
    gh.webhook_secret = Some(Secret::new(WEBHOOK_SECRET));
    config
}

fn state_of(url: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("state in url")
}

fn as_org(req: test::TestRequest, org: Uuid) -> test::TestRequest {
    req.insert_header((ORG_HEADER, org.to_string()))
        .insert_header((USER_HEADER, "user_alice"))
}

fn fixture(event: &str, file: &str) -> Value {
    fixtures::json(&format!("github-webhooks/{event}/{file}"))
}

fn for_installation(mut payload: Value) -> Vec<u8> {
    payload["installation"]["id"] = json!(INSTALLATION);
    serde_json::to_vec(&payload).unwrap()
}

fn delivery(event: &str, id: &str, body: &[u8]) -> test::TestRequest {
    test::TestRequest::post()
        .uri("/webhooks/github")
        .insert_header(("X-GitHub-Event", event))
        .insert_header(("X-GitHub-Delivery", id))
        .insert_header((
            "X-Hub-Signature-256",
            sign(&Secret::new(WEBHOOK_SECRET), body),
        ))
        .set_payload(body.to_vec())
}

#[actix_rt::test]
async fn github_app_install_flow_events_and_uninstall() {
    let logs = infragpt::telemetry::capture();
    let test_app = TestApp::builder().build().await;
    let pool = test_app.pool().clone();
    let mock = GithubMock::start();
    let cluster = test_app.cluster().clone();
    let state_key = Secret::new("k".repeat(40));
    let parts = IntegrationParts::build(
        pool.clone(),
        &github_config(&mock),
        &cluster,
        Arc::new(keyring(&[("a", &random_key())], "a")),
        &state_key,
        None,
    )
    .unwrap();
    cluster
        .register_stream(parts.stream.clone().stream_spec())
        .unwrap();
    let app = test::init_service(
        App::new()
            .wrap(from_fn(test_auth))
            .configure(|c| parts.configure(c)),
    )
    .await;
    let org = create_org(&pool, "acme").await;

    // Initiate.
    let resp = test::call_service(
        &app,
        as_org(test::TestRequest::post().uri("/integrations"), org)
            .set_json(json!({"connector_type": "github"}))
            .to_request(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 201);
    let initiated: Value = test::read_body_json(resp).await;
    assert_eq!(initiated["type"], "github");
    let url = initiated["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!(
            "{}/apps/infragpt-test/installations/new?",
            mock.url
        )),
        "{url}"
    );
    let state = state_of(url);
    let id: Uuid = initiated["integration_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // Pending until the callback.
    let resp = test::call_service(
        &app,
        as_org(
            test::TestRequest::get().uri(&format!("/integrations/{id}")),
            org,
        )
        .to_request(),
    )
    .await;
    let row: Value = test::read_body_json(resp).await;
    assert_eq!(row["status"], "pending");

    // Callback with installation_id + state.
    let callback = format!(
        "/integrations/callback/github?installation_id={INSTALLATION}&setup_action=install&state={state}"
    );
    let resp = test::call_service(&app, test::TestRequest::get().uri(&callback).to_request()).await;
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = test::read_body_json(resp).await;
    let integration = &body["integration"];
    assert_eq!(integration["status"], "active");
    assert_eq!(integration["external_id"], INSTALLATION.to_string());
    assert_eq!(integration["metadata"]["account_login"], "octo-org");
    assert_eq!(integration["metadata"]["account_type"], "Organization");
    assert_eq!(integration["metadata"]["permissions"]["issues"], "write");
    let issued_token = mock.state.lock().tokens.last().cloned().unwrap();
    assert!(issued_token.len() > 500);
    assert!(!body.to_string().contains(&issued_token));

    // Repositories recorded; the token stored encrypted.
    let mut conn = pool.get().await.unwrap();
    let repos: Vec<String> = github_repositories::table
        .filter(github_repositories::installation_id.eq(INSTALLATION))
        .order(github_repositories::full_name.asc())
        .select(github_repositories::full_name)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(repos, vec!["octo-org/hello-world", "octo-org/infra"]);
    let stored: Vec<(String, Vec<u8>)> = integration_credentials::table
        .filter(integration_credentials::integration_id.eq(id))
        .select((
            integration_credentials::credential_type,
            integration_credentials::ciphertext,
        ))
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].0, "installation_token");
    assert!(!String::from_utf8_lossy(&stored[0].1).contains("ghs_"));
    let (plain, _) = parts
        .service
        .credentials
        .get(id, "installation_token")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(plain.expose(), issued_token);

    // A second initiate for the same organization → 409.
    let resp = test::call_service(
        &app,
        as_org(test::TestRequest::post().uri("/integrations"), org)
            .set_json(json!({"connector_type": "github"}))
            .to_request(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 409);

    // Replay of the used state → 400.
    let resp = test::call_service(&app, test::TestRequest::get().uri(&callback).to_request()).await;
    assert_eq!(resp.status().as_u16(), 400);

    // Live status, list, refresh.
    let resp = test::call_service(
        &app,
        as_org(
            test::TestRequest::get().uri(&format!("/integrations/{id}/status")),
            org,
        )
        .to_request(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let status: Value = test::read_body_json(resp).await;
    assert_eq!(status["validation"]["valid"], true, "{status}");
    assert_eq!(status["validation"]["detail"]["repository_count"], 2);
    let resp = test::call_service(
        &app,
        as_org(
            test::TestRequest::get().uri("/integrations?connector_type=github"),
            org,
        )
        .to_request(),
    )
    .await;
    let list: Value = test::read_body_json(resp).await;
    assert_eq!(list["integrations"].as_array().unwrap().len(), 1);
    let resp = test::call_service(
        &app,
        as_org(
            test::TestRequest::get().uri("/integrations?connector_type=slack"),
            org,
        )
        .to_request(),
    )
    .await;
    let list: Value = test::read_body_json(resp).await;
    assert_eq!(list["integrations"].as_array().unwrap().len(), 0);
    // A filter that names no connector is refused (a NUL byte used to reach the database: 500).
    for filter in ["gitlab", "%00"] {
        let resp = test::call_service(
            &app,
            as_org(
                test::TestRequest::get().uri(&format!("/integrations?connector_type={filter}")),
                org,
            )
            .to_request(),
        )
        .await;
        assert_eq!(resp.status().as_u16(), 422, "connector_type={filter}");
    }
    let before = mock.state.lock().tokens.len();
    let resp = test::call_service(
        &app,
        as_org(
            test::TestRequest::post().uri(&format!("/integrations/{id}/refresh")),
            org,
        )
        .to_request(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(mock.state.lock().tokens.len(), before + 1);
    let refreshed = mock.state.lock().tokens.last().cloned().unwrap();
    let (plain, _) = parts
        .service
        .credentials
        .get(id, "installation_token")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(plain.expose(), refreshed);

    // Webhooks for the installation → listed as normalized events, newest first, paginated.
    for (n, (event, file)) in [
        ("push", "payload.json"),
        ("issues", "opened.json"),
        ("pull_request", "opened.json"),
    ]
    .iter()
    .enumerate()
    {
        let body = for_installation(fixture(event, file));
        let resp = test::call_service(
            &app,
            delivery(event, &format!("api-{n}"), &body).to_request(),
        )
        .await;
        assert_eq!(resp.status().as_u16(), 202);
    }
    test_app.wait_idle().await;
    let resp = test::call_service(
        &app,
        as_org(
            test::TestRequest::get().uri(&format!("/integrations/{id}/events?limit=2")),
            org,
        )
        .to_request(),
    )
    .await;
    let page: Value = test::read_body_json(resp).await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["event"], "pull_request");
    assert_eq!(events[1]["event"], "issues");
    let next = page["next_before"].as_i64().unwrap();
    let resp = test::call_service(
        &app,
        as_org(
            test::TestRequest::get()
                .uri(&format!("/integrations/{id}/events?limit=2&before={next}")),
            org,
        )
        .to_request(),
    )
    .await;
    let page: Value = test::read_body_json(resp).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["events"][0]["event"], "push");
    assert!(page["next_before"].is_null());

    // installation.deleted → revoked, credentials and repositories gone.
    let body = for_installation(fixture("installation", "deleted.json"));
    let resp = test::call_service(
        &app,
        delivery("installation", "api-deleted", &body).to_request(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 202);
    test_app.wait_idle().await;
    let resp = test::call_service(
        &app,
        as_org(
            test::TestRequest::get().uri(&format!("/integrations/{id}")),
            org,
        )
        .to_request(),
    )
    .await;
    let row: Value = test::read_body_json(resp).await;
    assert_eq!(row["status"], "revoked");
    let left: i64 = integration_credentials::table
        .filter(integration_credentials::integration_id.eq(id))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let repos: i64 = github_repositories::table
        .filter(github_repositories::installation_id.eq(INSTALLATION))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(repos, 0);

    // Every change is audited.
    let actions: Vec<String> = audit_log::table
        .filter(audit_log::organization_id.eq(org))
        .order(audit_log::id.asc())
        .select(audit_log::action)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        actions,
        vec![
            "integration.initiated",
            "integration.connected",
            "integration.refreshed",
            "integration.revoked"
        ]
    );

    // After uninstall a new install can start again and completes on the same row.
    let resp = test::call_service(
        &app,
        as_org(test::TestRequest::post().uri("/integrations"), org)
            .set_json(json!({"connector_type": "github"}))
            .to_request(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 201);
    let again: Value = test::read_body_json(resp).await;
    assert_eq!(again["integration_id"], id.to_string());
    let state = state_of(again["url"].as_str().unwrap());
    let resp = test::call_service(
        &app,
        test::TestRequest::get()
            .uri(&format!(
                "/integrations/callback/github?installation_id={INSTALLATION}&state={state}"
            ))
            .to_request(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let token = mock.state.lock().tokens.last().cloned().unwrap();

    // DELETE revokes the installation token at GitHub and deletes the credentials.
    let resp = test::call_service(
        &app,
        as_org(
            test::TestRequest::delete().uri(&format!("/integrations/{id}")),
            org,
        )
        .to_request(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let deleted: Value = test::read_body_json(resp).await;
    assert_eq!(deleted["provider_revoked"], true, "{deleted}");
    assert_eq!(deleted["integration"]["status"], "revoked");
    assert_eq!(mock.state.lock().revoked, vec![token]);
    let left: i64 = integration_credentials::table
        .filter(integration_credentials::integration_id.eq(id))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let last_action: String = audit_log::table
        .filter(audit_log::organization_id.eq(org))
        .order(audit_log::id.desc())
        .select(audit_log::action)
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(last_action, "integration.deleted");

    // No token, key or webhook secret in any log line.
    let text = logs.contents();
    for token in mock.state.lock().tokens.iter() {
        assert!(!text.contains(token.as_str()), "installation token leaked");
    }
    assert!(!text.contains("PRIVATE KEY"));
    assert!(!text.contains(WEBHOOK_SECRET));
    assert!(!text.contains(&state_key.expose()[..20]));
    cluster.shutdown().await;
}

#[actix_rt::test]
async fn states_are_refused_when_forged_expired_replayed_or_for_another_connector() {
    let test_app = TestApp::builder().build().await;
    let pool = test_app.pool().clone();
    let cluster = test_app.cluster().clone();
    let fake = Arc::new(FakeConnector {
        name: "fake",
        ..FakeConnector::default()
    });
    let mut connectors = ConnectorRegistry::new();
    connectors.register(fake.clone());
    let state_key = Secret::new("s".repeat(32));
    let parts = IntegrationParts::build(
        pool.clone(),
        &Config::default(),
        &cluster,
        Arc::new(keyring(&[("a", &random_key())], "a")),
        &state_key,
        Some(connectors),
    )
    .unwrap();
    let app = test::init_service(
        App::new()
            .wrap(from_fn(test_auth))
            .configure(|c| parts.configure(c)),
    )
    .await;
    let org = create_org(&pool, "acme").await;
    let resp = test::call_service(
        &app,
        as_org(test::TestRequest::post().uri("/integrations"), org)
            .set_json(json!({"connector_type": "fake"}))
            .to_request(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 201);
    let initiated: Value = test::read_body_json(resp).await;
    let state = state_of(initiated["url"].as_str().unwrap());

    let call = |state: String| {
        test::TestRequest::get()
            .uri(&format!(
                "/integrations/callback/fake?code=c1&state={state}"
            ))
            .to_request()
    };
    async fn expect_400<B: actix_web::body::MessageBody>(
        resp: actix_web::dev::ServiceResponse<B>,
        what: &str,
    ) {
        assert_eq!(resp.status().as_u16(), 400, "{what}");
        let body: Value = test::read_body_json(resp).await;
        assert_eq!(body["error"]["code"], "bad_request", "{what}: {body}");
    }

    // Forged: one character of the payload changed, or signed with another key.
    let mut forged = state.clone().into_bytes();
    forged[3] = if forged[3] == b'A' { b'B' } else { b'A' };
    expect_400(
        test::call_service(&app, call(String::from_utf8(forged).unwrap())).await,
        "altered",
    )
    .await;
    let other = infragpt::crypto::state::StateSigner::new(&Secret::new("o".repeat(32))).unwrap();
    let claims = StateClaims::new(
        org,
        "user_alice",
        "fake",
        Utc::now(),
        chrono::Duration::minutes(10),
    )
    .unwrap();
    expect_400(
        test::call_service(&app, call(other.issue(&claims).unwrap())).await,
        "other key",
    )
    .await;
    // Missing.
    expect_400(
        test::call_service(
            &app,
            test::TestRequest::get()
                .uri("/integrations/callback/fake?code=c1")
                .to_request(),
        )
        .await,
        "missing",
    )
    .await;
    // Expired (issued 11 minutes ago with the right key).
    let signer = &parts.service.signer;
    let old = StateClaims::new(
        org,
        "user_alice",
        "fake",
        Utc::now() - chrono::Duration::minutes(11),
        chrono::Duration::minutes(10),
    )
    .unwrap();
    expect_400(
        test::call_service(&app, call(signer.issue(&old).unwrap())).await,
        "expired",
    )
    .await;
    // Issued for another connector.
    let slack = StateClaims::new(
        org,
        "user_alice",
        "slack",
        Utc::now(),
        chrono::Duration::minutes(10),
    )
    .unwrap();
    expect_400(
        test::call_service(&app, call(signer.issue(&slack).unwrap())).await,
        "connector",
    )
    .await;

    // The genuine state works once; nothing above consumed it.
    let resp = test::call_service(&app, call(state.clone())).await;
    assert_eq!(resp.status().as_u16(), 200);
    expect_400(test::call_service(&app, call(state)).await, "replay").await;
    cluster.shutdown().await;
}

#[actix_rt::test]
async fn other_organizations_get_404_on_every_route() {
    let test_app = TestApp::builder().build().await;
    let pool = test_app.pool().clone();
    let cluster = test_app.cluster().clone();
    let fake = Arc::new(FakeConnector {
        name: "fake",
        ..FakeConnector::default()
    });
    let mut connectors = ConnectorRegistry::new();
    connectors.register(fake.clone());
    let parts = IntegrationParts::build(
        pool.clone(),
        &Config::default(),
        &cluster,
        Arc::new(keyring(&[("a", &random_key())], "a")),
        &Secret::new("s".repeat(32)),
        Some(connectors),
    )
    .unwrap();
    let app = test::init_service(
        App::new()
            .wrap(from_fn(test_auth))
            .configure(|c| parts.configure(c)),
    )
    .await;
    let owner = create_org(&pool, "acme").await;
    let intruder = create_org(&pool, "globex").await;
    let resp = test::call_service(
        &app,
        as_org(test::TestRequest::post().uri("/integrations"), owner)
            .set_json(json!({"connector_type": "fake"}))
            .to_request(),
    )
    .await;
    let initiated: Value = test::read_body_json(resp).await;
    let state = state_of(initiated["url"].as_str().unwrap());
    let resp = test::call_service(
        &app,
        test::TestRequest::get()
            .uri(&format!(
                "/integrations/callback/fake?code=c9&state={state}"
            ))
            .to_request(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let id = initiated["integration_id"].as_str().unwrap();

    let routes = [
        test::TestRequest::get().uri(&format!("/integrations/{id}")),
        test::TestRequest::get().uri(&format!("/integrations/{id}/status")),
        test::TestRequest::post().uri(&format!("/integrations/{id}/refresh")),
        test::TestRequest::delete().uri(&format!("/integrations/{id}")),
        test::TestRequest::get().uri(&format!("/integrations/{id}/events")),
    ];
    for req in routes {
        let resp = test::call_service(&app, as_org(req, intruder).to_request()).await;
        assert_eq!(resp.status().as_u16(), 404);
        let body: Value = test::read_body_json(resp).await;
        assert_eq!(body["error"]["code"], "not_found");
    }
    let resp = test::call_service(
        &app,
        as_org(test::TestRequest::get().uri("/integrations"), intruder).to_request(),
    )
    .await;
    let list: Value = test::read_body_json(resp).await;
    assert_eq!(list["integrations"], json!([]));
    assert_eq!(fake.refresh_count(), 0);
    assert_eq!(fake.revoke_count(), 0);

    // Without a principal the routes fall back to Clerk JWT verification, which this app
    // does not configure: refused (503, fail closed) everywhere but the callbacks.
    for req in [
        test::TestRequest::get().uri("/integrations"),
        test::TestRequest::get().uri(&format!("/integrations/{id}")),
        test::TestRequest::post().uri("/integrations"),
    ] {
        let resp = test::call_service(&app, req.to_request()).await;
        assert_eq!(resp.status().as_u16(), 503);
    }

    // The owner still sees it intact, validates, refreshes and deletes it.
    let resp = test::call_service(
        &app,
        as_org(
            test::TestRequest::get().uri(&format!("/integrations/{id}/status")),
            owner,
        )
        .to_request(),
    )
    .await;
    let status: Value = test::read_body_json(resp).await;
    assert_eq!(status["validation"]["valid"], true, "{status}");
    let resp = test::call_service(
        &app,
        as_org(
            test::TestRequest::delete().uri(&format!("/integrations/{id}")),
            owner,
        )
        .to_request(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let deleted: Value = test::read_body_json(resp).await;
    assert_eq!(deleted["integration"]["status"], "revoked");
    assert_eq!(deleted["provider_revoked"], true);
    assert_eq!(deleted["credentials_deleted"], 1);
    assert_eq!(fake.revoke_count(), 1);
    assert!(!deleted.to_string().contains("fake-secret-token"));

    // Unknown connector type → 422.
    let resp = test::call_service(
        &app,
        as_org(test::TestRequest::post().uri("/integrations"), owner)
            .set_json(json!({"connector_type": "gitlab"}))
            .to_request(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 422);
    cluster.shutdown().await;
}

#[actix_rt::test]
async fn module_serves_webhooks_on_the_main_and_the_dedicated_port() {
    let test_app = TestApp::builder().build().await;
    let cluster = test_app.cluster().clone();
    let webhook_port = reserve_port().port();
    let mut config = Config {
        bind_address: "127.0.0.1".to_owned(),
        port: 0,
        grpc_port: 0,
        ..Config::default()
    };
    config.database.url = Some(test_app.db.url.clone());
    config.integrations.github.webhook_secret = Some(Secret::new(WEBHOOK_SECRET));
    config.integrations.github.webhook_port = Some(webhook_port);
    config.vault.keys = [("k1".to_owned(), random_key())].into_iter().collect();
    config.vault.active_key = Some("k1".to_owned());
    let keyring = Arc::new(infragpt::app::integrations::load_keyring(&config.vault).unwrap());
    let module = infragpt::app::integrations::IntegrationsModule::new(
        Arc::new(config.clone()),
        cluster.clone(),
        keyring,
    );
    let running = infragpt::server::start(config, vec![Box::new(module)])
        .await
        .unwrap();
    let body = br#"{"zen":"Design for failure.","hook_id":7}"#.to_vec();
    let client = reqwest::Client::new();
    for (n, base) in [
        format!("http://{}", running.http_addr),
        format!("http://127.0.0.1:{webhook_port}"),
    ]
    .iter()
    .enumerate()
    {
        let resp = client
            .post(format!("{base}/webhooks/github"))
            .header("X-GitHub-Event", "ping")
            .header("X-GitHub-Delivery", format!("module-{n}"))
            .header(
                "X-Hub-Signature-256",
                sign(&Secret::new(WEBHOOK_SECRET), &body),
            )
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 202, "{base}");
        // Unauthenticated REST calls are refused: no Clerk JWT verification is configured
        // here, so the API fails closed.
        let resp = client
            .get(format!("http://{}/integrations", running.http_addr))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 503);
    }
    test_app.wait_idle().await;
    running.stop().await.unwrap();
    cluster.shutdown().await;
}
