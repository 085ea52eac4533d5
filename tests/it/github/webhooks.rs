//! `POST /webhooks/github` and the `GitHubWebhookStream` handler against real PostgreSQL:
//! every fixture accepted, recorded once and normalized (or ignored); redeliveries change
//! nothing; bad signatures, missing secret and non-JSON bodies are refused with the JSON error
//! shape and nothing stored.

use std::sync::Arc;

use actix_web::{App, test};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::app::integrations::IntegrationParts;
use infragpt::config::Config;
use infragpt::db::schema::{github_events, inbound_events};
use infragpt::github::normalize::{Normalized, normalize};
use infragpt::github::signature::sign;
use infragpt::github::webhook::{self, GithubWebhook, NO_INSTALLATION_KEY};
use infragpt_actors::Secret;
use serde_json::Value;

use crate::support::app::TestApp;
use crate::support::fixtures;
use crate::support::integrations::*;

const SECRET: &str = "test-webhook-secret-for-fixtures";

fn config() -> Config {
    let mut config = Config::default();
    config.integrations.github.webhook_secret = Some(Secret::new(SECRET));
    config
}

async fn counts(pool: &infragpt::db::Pool) -> (i64, i64) {
    let mut conn = pool.get().await.unwrap();
    let inbox: i64 = inbound_events::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    let events: i64 = github_events::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    (inbox, events)
}

fn request(
    event: &str,
    delivery: &str,
    body: &[u8],
    signature: Option<String>,
) -> test::TestRequest {
    let mut req = test::TestRequest::post()
        .uri("/webhooks/github")
        .insert_header(("X-GitHub-Event", event))
        .insert_header(("X-GitHub-Delivery", delivery))
        .insert_header(("content-type", "application/json"))
        .set_payload(body.to_vec());
    if let Some(sig) = signature {
        req = req.insert_header(("X-Hub-Signature-256", sig));
    }
    req
}

#[actix_rt::test]
async fn every_fixture_is_recorded_once_and_normalized_or_ignored() {
    let logs = infragpt::telemetry::capture();
    let test_app = TestApp::builder().build().await;
    let pool = test_app.pool().clone();
    let cluster = test_app.cluster().clone();
    let parts = IntegrationParts::build(
        pool.clone(),
        &config(),
        &cluster,
        Arc::new(keyring(&[("a", &random_key())], "a")),
        &Secret::new("x".repeat(32)),
        None,
    )
    .unwrap();
    cluster
        .register_stream(parts.stream.clone().stream_spec())
        .unwrap();
    let app = test::init_service(App::new().configure(|c| parts.configure(c))).await;

    let fixtures = fixtures::github_webhooks();
    assert_eq!(fixtures.len(), 147, "fixture count changed");
    let secret = Secret::new(SECRET);
    let mut expected_events = 0i64;
    let mut expected_ignored = 0i64;
    for (n, (event, file, body)) in fixtures.iter().enumerate() {
        let delivery = format!("delivery-{n:04}-{event}-{file}");
        let payload: Value = serde_json::from_slice(body).unwrap();
        match normalize(event, &payload) {
            Ok(Normalized::Event(_)) => expected_events += 1,
            Ok(Normalized::Ignored(_)) => expected_ignored += 1,
            Err(e) => panic!("{event}/{file}: {e}"),
        }
        for attempt in 0..2 {
            let resp = test::call_service(
                &app,
                request(event, &delivery, body, Some(sign(&secret, body))).to_request(),
            )
            .await;
            assert_eq!(resp.status().as_u16(), 202, "{event}/{file}");
            let answer: Value = test::read_body_json(resp).await;
            let expected = if attempt == 0 {
                "recorded"
            } else {
                "duplicate"
            };
            assert_eq!(answer["status"], expected, "{event}/{file}");
        }
    }
    test_app.wait_idle().await;

    let (inbox, events) = counts(&pool).await;
    assert_eq!(inbox, 147);
    assert_eq!(events, expected_events);
    let mut conn = pool.get().await.unwrap();
    let failed: Vec<(String, Option<String>)> = inbound_events::table
        .filter(inbound_events::status.ne_all(["done", "ignored"]))
        .select((inbound_events::source_id, inbound_events::last_error))
        .load(&mut conn)
        .await
        .unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    let ignored: i64 = inbound_events::table
        .filter(inbound_events::status.eq("ignored"))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(ignored, expected_ignored);

    // Routing: per repository within an installation, per installation for installation-level
    // events, else the shared key.
    let keys: Vec<(String, Value)> = inbound_events::table
        .select((inbound_events::routing_key, inbound_events::payload))
        .load(&mut conn)
        .await
        .unwrap();
    let mut per_repository = 0;
    for (key, payload) in keys {
        let installation = payload.pointer("/installation/id").and_then(Value::as_i64);
        let repository = payload.pointer("/repository/id").and_then(Value::as_i64);
        let expected = match (installation, repository) {
            (Some(i), Some(r)) => {
                per_repository += 1;
                format!("installation:{i}:repository:{r}")
            }
            (Some(i), None) => format!("installation:{i}"),
            (None, Some(r)) => format!("github:repository:{r}"),
            (None, None) => NO_INSTALLATION_KEY.to_owned(),
        };
        assert_eq!(key, expected, "{payload}");
    }
    assert!(per_repository > 0, "the fixtures include repository events");
    // A kind like `pull_request.opened`.
    let kind: String = inbound_events::table
        .filter(inbound_events::source_id.like("%-pull_request-%"))
        .select(inbound_events::kind)
        .first(&mut conn)
        .await
        .unwrap();
    assert!(kind.starts_with("pull_request."), "{kind}");

    // Redelivering everything once more still changes nothing.
    for (n, (event, file, body)) in fixtures.iter().enumerate().take(10) {
        let delivery = format!("delivery-{n:04}-{event}-{file}");
        let resp = test::call_service(
            &app,
            request(event, &delivery, body, Some(sign(&secret, body))).to_request(),
        )
        .await;
        assert_eq!(resp.status().as_u16(), 202);
    }
    assert_eq!(counts(&pool).await, (inbox, events));
    assert!(!logs.contents().contains(SECRET));
    cluster.shutdown().await;
}

async fn error_code(resp: actix_web::dev::ServiceResponse) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = test::read_body_json(resp).await;
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not the JSON error shape: {body}"))
        .to_owned();
    assert!(body["error"]["message"].is_string());
    (status, code)
}

#[actix_rt::test]
async fn bad_deliveries_are_refused_and_nothing_is_stored() {
    let test_app = TestApp::builder().build().await;
    let pool = test_app.pool().clone();
    let cluster = test_app.cluster().clone();
    let parts = IntegrationParts::build(
        pool.clone(),
        &config(),
        &cluster,
        Arc::new(keyring(&[("a", &random_key())], "a")),
        &Secret::new("x".repeat(32)),
        None,
    )
    .unwrap();
    cluster
        .register_stream(parts.stream.clone().stream_spec())
        .unwrap();
    let app = test::init_service(App::new().configure(|c| parts.configure(c))).await;
    let body = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
    let secret = Secret::new(SECRET);

    // Wrong signature (other secret), tampered body, missing, malformed.
    let wrong = sign(&Secret::new("another-secret"), body);
    let resp =
        test::call_service(&app, request("ping", "d1", body, Some(wrong)).to_request()).await;
    assert_eq!(error_code(resp).await, (401, "unauthorized".to_owned()));
    let good = sign(&secret, body);
    let resp = test::call_service(
        &app,
        request(
            "ping",
            "d2",
            br#"{"zen":"tampered","hook_id":1}"#,
            Some(good.clone()),
        )
        .to_request(),
    )
    .await;
    assert_eq!(error_code(resp).await, (401, "unauthorized".to_owned()));
    let resp = test::call_service(&app, request("ping", "d3", body, None).to_request()).await;
    assert_eq!(error_code(resp).await, (401, "unauthorized".to_owned()));
    let resp = test::call_service(
        &app,
        request("ping", "d4", body, Some("sha1=abc".to_owned())).to_request(),
    )
    .await;
    assert_eq!(error_code(resp).await, (401, "unauthorized".to_owned()));

    // Correctly signed but not JSON / not an object / no delivery id.
    let not_json = b"this is not json";
    let resp = test::call_service(
        &app,
        request("ping", "d5", not_json, Some(sign(&secret, not_json))).to_request(),
    )
    .await;
    assert_eq!(error_code(resp).await, (400, "bad_request".to_owned()));
    let array = b"[1,2,3]";
    let resp = test::call_service(
        &app,
        request("ping", "d6", array, Some(sign(&secret, array))).to_request(),
    )
    .await;
    assert_eq!(error_code(resp).await, (400, "bad_request".to_owned()));
    let resp = test::call_service(
        &app,
        test::TestRequest::post()
            .uri("/webhooks/github")
            .insert_header(("X-GitHub-Event", "ping"))
            .insert_header(("X-Hub-Signature-256", good.clone()))
            .set_payload(body.to_vec())
            .to_request(),
    )
    .await;
    assert_eq!(error_code(resp).await, (400, "bad_request".to_owned()));
    assert_eq!(counts(&pool).await, (0, 0));

    // No secret configured: even a "valid" delivery is refused (fail closed).
    let closed = GithubWebhook::new(None, cluster.clone());
    let empty = GithubWebhook::new(Some(&Secret::new("")), cluster.clone());
    for hook in [closed, empty] {
        let app =
            test::init_service(App::new().configure(|c| webhook::configure(c, hook.clone()))).await;
        let resp = test::call_service(
            &app,
            request("ping", "d7", body, Some(good.clone())).to_request(),
        )
        .await;
        assert_eq!(error_code(resp).await, (503, "unavailable".to_owned()));
    }
    assert_eq!(counts(&pool).await, (0, 0));

    // And a good one is accepted.
    let resp = test::call_service(&app, request("ping", "d8", body, Some(good)).to_request()).await;
    assert_eq!(resp.status().as_u16(), 202);
    test_app.wait_idle().await;
    assert_eq!(counts(&pool).await, (1, 1));
    cluster.shutdown().await;
}

/// Deliveries handled at the same moment store their normalized rows in one statement
/// (`supervisor/github_events`): each row once, a delivery handled twice stays one row, and
/// a delivery whose data PostgreSQL refuses (a NUL in a title) fails alone while the rest of
/// its batch is stored.
#[actix_rt::test]
async fn deliveries_handled_together_share_one_insert_and_a_bad_one_fails_alone() {
    use infragpt::github::stream::GithubStreamHandler;
    use infragpt::integrations::store::IntegrationStore;
    use infragpt_actors::inbox::InboundEvent;
    use infragpt_actors::{ActorKind, EventHandler as _, HandleOutcome, HealthRegistry};

    let db = infragpt::testkit::test_db::TestDb::new().await;
    let pool = db.pool().clone();
    let health = HealthRegistry::new();
    let handler = GithubStreamHandler::new(IntegrationStore::new(pool.clone()), None, &health);
    let event = |delivery: &str, title: &str| {
        let mut payload = fixtures::json("github-webhooks/pull_request/opened.json");
        payload["pull_request"]["title"] = Value::String(title.to_owned());
        github_delivery(
            delivery,
            &format!("repository:{delivery}"),
            "pull_request.opened",
            payload,
        )
    };
    let mut events: Vec<InboundEvent> = (0..8)
        .map(|i| event(&format!("delivery-{i}"), &format!("Change {i}")))
        .collect();
    events.push(event("delivery-0", "Change 0"));
    events.push(event("delivery-nul", "a\u{0}b"));

    let outcomes = futures::future::join_all(events.iter().map(|e| handler.handle(e))).await;
    for (e, outcome) in events.iter().zip(&outcomes) {
        if e.source_id == "delivery-nul" {
            assert!(outcome.is_err(), "the NUL title is refused: {outcome:?}");
        } else {
            assert_eq!(outcome, &Ok(HandleOutcome::Done), "{}", e.source_id);
        }
    }
    let mut conn = pool.get().await.unwrap();
    let mut stored: Vec<(String, Option<String>)> = github_events::table
        .select((github_events::delivery_id, github_events::title))
        .load(&mut conn)
        .await
        .unwrap();
    stored.sort();
    let expected: Vec<(String, Option<String>)> = (0..8)
        .map(|i| (format!("delivery-{i}"), Some(format!("Change {i}"))))
        .collect();
    assert_eq!(stored, expected);
    let writer = health
        .get(ActorKind::SUPERVISOR, "github_events")
        .expect("the writer is in the actor tree");
    let batches = writer.detail["batches"].as_u64().expect("batches");
    assert!(
        (1..10).contains(&batches),
        "ten deliveries handled together share batches: {batches}"
    );
}
