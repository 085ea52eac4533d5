//! Slack multi-workspace install against the Slack simulator: initiate → `/slack/oauth/callback`
//! → bot token stored encrypted per team and the workspace recorded; token rotation refreshed
//! before expiry; reinstall replaces the token; delete calls `auth.revoke`.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, middleware::from_fn, test};
use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::app::integrations::IntegrationParts;
use infragpt::config::Config;
use infragpt::crypto::state::StateClaims;
use infragpt::db::schema::{integration_credentials, slack_workspaces};
use infragpt::slack::integration::{bot_token_for_team, workspace_token_ref};
use infragpt::testkit::slack_sim::{SimConfig, SlackSim};
use infragpt_actors::Secret;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::app::TestApp;
use crate::support::integrations::*;

const TEAM: &str = "T0SIMACME1";

fn slack_config(sim: &SlackSim) -> Config {
    let app = &sim.config().apps[0];
    let mut config = Config::default();
    config.slack.api_url = sim.base_url();
    let s = &mut config.integrations.slack;
    s.client_id = Some(app.client_id.clone());
    s.client_secret = Some(app.client_secret.clone());
    s.redirect_url = Some("https://app.example/slack/oauth/callback".to_owned());
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

#[actix_rt::test]
async fn slack_install_rotation_reinstall_and_revoke() {
    let logs = infragpt::telemetry::capture();
    // Rotated tokens live two minutes.
    let sim = SlackSim::start(SimConfig::default().with_token_rotation(Duration::from_secs(120)))
        .unwrap();
    let test_app = TestApp::builder().build().await;
    let pool = test_app.pool().clone();
    let cluster = test_app.cluster().clone();
    let parts = IntegrationParts::build(
        pool.clone(),
        &slack_config(&sim),
        &cluster,
        Arc::new(keyring(&[("a", &random_key())], "a")),
        &Secret::new("z".repeat(32)),
        None,
    )
    .unwrap();
    let app = test::init_service(
        App::new()
            .wrap(from_fn(test_auth))
            .configure(|c| parts.configure(c)),
    )
    .await;
    let org = create_org(&pool, "acme").await;

    // Initiate: the authorize URL on the Slack host with client id, scopes, redirect, state.
    let resp = test::call_service(
        &app,
        as_org(test::TestRequest::post().uri("/integrations"), org)
            .set_json(json!({"connector_type": "slack"}))
            .to_request(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 201);
    let initiated: Value = test::read_body_json(resp).await;
    assert_eq!(initiated["type"], "slack");
    let url = initiated["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!(
            "http://127.0.0.1:{}/oauth/v2/authorize?",
            sim.port()
        )),
        "{url}"
    );
    assert!(url.contains("client_id=1000000000001.2000000000001"));
    assert!(url.contains("redirect_uri="));
    let state = state_of(url);
    let id: Uuid = initiated["integration_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // The user approves; Slack redirects to /slack/oauth/callback?code&state.
    let code = sim.issue_oauth_code(TEAM, "U0ALICE001").unwrap();
    let resp = test::call_service(
        &app,
        test::TestRequest::get()
            .uri(&format!("/slack/oauth/callback?code={code}&state={state}"))
            .to_request(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = test::read_body_json(resp).await;
    assert_eq!(body["integration"]["status"], "active");
    assert_eq!(body["integration"]["external_id"], TEAM);
    assert_eq!(body["integration"]["metadata"]["team_name"], "Acme");
    assert_eq!(body["integration"]["metadata"]["bot_user_id"], "U0ACMEBOT1");
    assert_eq!(body["integration"]["metadata"]["token_rotation"], true);
    assert!(!body.to_string().contains("xox"));

    // Bot token and refresh token stored encrypted; the workspace points at the bot token row.
    let creds = &parts.service.credentials;
    let (bot, expires) = creds.get(id, "bot_token").await.unwrap().unwrap();
    assert!(bot.expose().starts_with("xoxe.xoxb-"), "rotating token");
    assert!(expires.unwrap() < Utc::now() + chrono::Duration::minutes(3));
    let (refresh, _) = creds.get(id, "refresh_token").await.unwrap().unwrap();
    let mut conn = pool.get().await.unwrap();
    let rows: Vec<(Uuid, String, Vec<u8>)> = integration_credentials::table
        .filter(integration_credentials::integration_id.eq(id))
        .select((
            integration_credentials::id,
            integration_credentials::credential_type,
            integration_credentials::ciphertext,
        ))
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    for (_, _, ciphertext) in &rows {
        assert!(!String::from_utf8_lossy(ciphertext).contains("xox"));
    }
    let bot_row = rows.iter().find(|r| r.1 == "bot_token").unwrap().0;
    let token_ref = workspace_token_ref(&parts.service.store, TEAM)
        .await
        .unwrap();
    assert_eq!(token_ref, Some(bot_row));
    let (ws_status, ws_org): (String, Option<Uuid>) = slack_workspaces::table
        .find(TEAM)
        .select((slack_workspaces::status, slack_workspaces::organization_id))
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!((ws_status.as_str(), ws_org), ("active", Some(org)));

    // Near the end of its life (issued 2 h ago, 30 s left) the vault refreshes it
    // (grant_type=refresh_token) before serving it, exactly once for concurrent callers; the
    // fresh token (two-minute lifetime here) is then served as is.
    age_credential(
        &pool,
        id,
        "bot_token",
        chrono::Duration::seconds(30),
        chrono::Duration::hours(2),
    )
    .await;
    let served =
        futures::future::join_all((0..10).map(|_| parts.service.vaults.credential(org, id))).await;
    let fresh = served[0].as_ref().unwrap().clone();
    assert!(
        served
            .iter()
            .all(|s| s.as_ref().unwrap().expose() == fresh.expose())
    );
    assert_ne!(fresh.expose(), bot.expose());
    let refresh_calls = sim
        .calls("oauth.v2.access")
        .into_iter()
        .filter(|c| c.params["grant_type"] == "refresh_token")
        .count();
    assert_eq!(refresh_calls, 1);
    let (new_refresh, _) = creds.get(id, "refresh_token").await.unwrap().unwrap();
    assert_ne!(
        new_refresh.expose(),
        refresh.expose(),
        "refresh tokens are single use"
    );

    // Live status through auth.test with the refreshed token.
    let resp = test::call_service(
        &app,
        as_org(
            test::TestRequest::get().uri(&format!("/integrations/{id}/status")),
            org,
        )
        .to_request(),
    )
    .await;
    let status: Value = test::read_body_json(resp).await;
    assert_eq!(status["validation"]["valid"], true, "{status}");
    assert_eq!(status["validation"]["detail"]["team_id"], TEAM);

    // Reinstall (a new approval with a new state): the token is replaced, one per team.
    let signer = &parts.service.signer;
    let claims = StateClaims::new(
        org,
        "user_bob",
        "slack",
        Utc::now(),
        chrono::Duration::minutes(10),
    )
    .unwrap();
    let code = sim.issue_oauth_code(TEAM, "U0BOB00001").unwrap();
    let resp = test::call_service(
        &app,
        test::TestRequest::get()
            .uri(&format!(
                "/integrations/callback/slack?code={code}&state={}",
                signer.issue(&claims).unwrap()
            ))
            .to_request(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let (reinstalled, _) = creds.get(id, "bot_token").await.unwrap().unwrap();
    assert_ne!(reinstalled.expose(), bot.expose());
    assert_ne!(reinstalled.expose(), fresh.expose());
    let bot_rows: Vec<Uuid> = integration_credentials::table
        .filter(integration_credentials::integration_id.eq(id))
        .filter(integration_credentials::credential_type.eq("bot_token"))
        .select(integration_credentials::id)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(bot_rows.len(), 1);
    assert_eq!(
        workspace_token_ref(&parts.service.store, TEAM)
            .await
            .unwrap(),
        Some(bot_rows[0])
    );

    // The Slack adapter's view: the team's bot token through the vault.
    let by_team = bot_token_for_team(&parts.service.store, &parts.service.vaults, TEAM)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_team.expose(), reinstalled.expose());
    assert!(
        bot_token_for_team(&parts.service.store, &parts.service.vaults, "T0SIMGLOB1")
            .await
            .unwrap()
            .is_none()
    );

    // Delete: auth.revoke with the bot token, credentials gone, workspace revoked.
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
    assert_eq!(deleted["provider_revoked"], true);
    assert_eq!(deleted["integration"]["status"], "revoked");
    let revokes = sim.calls("auth.revoke");
    assert_eq!(revokes.len(), 1);
    assert_eq!(revokes[0].team_id.as_deref(), Some(TEAM));
    assert!(creds.load_set(id).await.unwrap().is_empty());
    let ws_status: String = slack_workspaces::table
        .find(TEAM)
        .select(slack_workspaces::status)
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(ws_status, "revoked");
    assert!(
        bot_token_for_team(&parts.service.store, &parts.service.vaults, TEAM)
            .await
            .unwrap()
            .is_none()
    );
    // The revoked token no longer works at Slack.
    let check = reqwest::Client::new()
        .post(format!("{}auth.test", sim.base_url()))
        .bearer_auth(reinstalled.expose())
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(check["error"], "token_revoked");

    // No token in any log line.
    let text = logs.contents();
    for secret in [&bot, &refresh, &fresh, &new_refresh, &reinstalled] {
        assert!(!text.contains(secret.expose()), "a Slack token leaked");
    }
    assert!(!text.contains("sim-client-secret"));
    cluster.shutdown().await;
}

#[actix_rt::test]
async fn slack_callback_errors_are_clear() {
    let sim = SlackSim::start_default().unwrap();
    let test_app = TestApp::builder().build().await;
    let pool = test_app.pool().clone();
    let cluster = test_app.cluster().clone();
    let parts = IntegrationParts::build(
        pool.clone(),
        &slack_config(&sim),
        &cluster,
        Arc::new(keyring(&[("a", &random_key())], "a")),
        &Secret::new("z".repeat(32)),
        None,
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
            .set_json(json!({"connector_type": "slack"}))
            .to_request(),
    )
    .await;
    let initiated: Value = test::read_body_json(resp).await;
    let state = state_of(initiated["url"].as_str().unwrap());

    // A code Slack never issued: 400 with Slack's reason; the integration stays pending.
    let resp = test::call_service(
        &app,
        test::TestRequest::get()
            .uri(&format!("/slack/oauth/callback?code=bogus&state={state}"))
            .to_request(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = test::read_body_json(resp).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid_code"),
        "{body}"
    );
    let id: Uuid = initiated["integration_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let row = parts.service.store.get(org, id).await.unwrap().unwrap();
    assert_eq!(row.status, "pending");

    // The user cancelled at Slack.
    let resp = test::call_service(
        &app,
        test::TestRequest::get()
            .uri("/slack/oauth/callback?error=access_denied&state=x")
            .to_request(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 400);

    // Without rotation the bot token does not expire and is served as is.
    let claims = StateClaims::new(
        org,
        "user_alice",
        "slack",
        Utc::now(),
        chrono::Duration::minutes(10),
    )
    .unwrap();
    let code = sim.issue_oauth_code(TEAM, "U0ALICE001").unwrap();
    let resp = test::call_service(
        &app,
        test::TestRequest::get()
            .uri(&format!(
                "/slack/oauth/callback?code={code}&state={}",
                parts.service.signer.issue(&claims).unwrap()
            ))
            .to_request(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let token = parts.service.vaults.credential(org, id).await.unwrap();
    assert!(token.expose().starts_with("xoxb-"));
    let (_, expires) = parts
        .service
        .credentials
        .get(id, "bot_token")
        .await
        .unwrap()
        .unwrap();
    assert!(expires.is_none());
    cluster.shutdown().await;
}
