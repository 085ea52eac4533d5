//! `POST /slack/events` with real PostgreSQL behind the inbox: signatures (valid, bad, stale,
//! no secret), the URL challenge, redelivery, non-JSON bodies.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{App, test, web};
use infragpt::db::PgInbox;
use infragpt::slack::events_http::{self, EventsEndpoint};
use infragpt::slack::signature::sign;
use infragpt::testkit::slack_sim::{SimConfig, SlackSim};
use infragpt::testkit::test_db::TestDb;
use infragpt_actors::inbox::InboundEvents;
use infragpt_actors::testing::{MemoryInbox, RecordingHandler};
use infragpt_actors::{Cluster, ClusterConfig, HealthRegistry, Metrics, Secret, StreamSpec};
use infragpt_actors::{kinds, sources};
use serde_json::{Value, json};

use crate::support::wait::eventually;

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

fn cluster_with(inbox: Arc<dyn InboundEvents>) -> (Cluster, Arc<RecordingHandler>) {
    let cluster = Cluster::start(
        ClusterConfig::default(),
        inbox,
        HealthRegistry::new(),
        Metrics::new().unwrap(),
    )
    .unwrap();
    let handler = RecordingHandler::new();
    cluster
        .register_stream(StreamSpec {
            name: "conversations".into(),
            kind: kinds::CONVERSATION_THREAD,
            source: sources::SLACK,
            handler: handler.clone(),
        })
        .unwrap();
    (cluster, handler)
}

fn mention(event_id: &str) -> String {
    json!({
        "token": "x", "team_id": "T0SIMACME1", "api_app_id": "A0SIMAPP01",
        "type": "event_callback", "event_id": event_id, "event_time": 1_700_000_000,
        "authorizations": [{"team_id": "T0SIMACME1", "user_id": "U0ACMEBOT1", "is_bot": true}],
        "event": {"type": "app_mention", "channel": "C0GENERAL1", "user": "U0ALICE001",
                  "text": "<@U0ACMEBOT1> hi", "ts": "1700000000.000100",
                  "event_ts": "1700000000.000100"}
    })
    .to_string()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn signed(body: &str, ts: i64, secret: &str) -> test::TestRequest {
    test::TestRequest::post()
        .uri("/slack/events")
        .insert_header(("content-type", "application/json"))
        .insert_header(("x-slack-request-timestamp", ts.to_string()))
        .insert_header((
            "x-slack-signature",
            sign(&Secret::new(secret), ts, body.as_bytes()),
        ))
        .set_payload(body.to_owned())
}

macro_rules! app {
    ($endpoint:expr) => {{
        let ep: Arc<EventsEndpoint> = $endpoint;
        test::init_service(
            App::new()
                .app_data(infragpt::error::json_config())
                .configure(move |cfg: &mut web::ServiceConfig| {
                    events_http::configure(cfg, ep.clone())
                }),
        )
        .await
    }};
}

async fn error_code(resp: actix_web::dev::ServiceResponse) -> (StatusCode, Value) {
    let status = resp.status();
    let body: Value = test::read_body_json(resp).await;
    (status, body)
}

#[actix_rt::test]
async fn signed_event_is_recorded_once_and_redelivery_is_deduplicated() {
    let db = TestDb::new().await;
    let (cluster, handler) = cluster_with(Arc::new(PgInbox::new(db.pool().clone())));
    let app = app!(Arc::new(EventsEndpoint::new(
        Some(&Secret::new(SECRET)),
        cluster.clone()
    )));
    let body = mention("Ev0HTTP0001");
    let resp = test::call_service(&app, signed(&body, now(), SECRET).to_request()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    eventually("the event is handled", async || {
        handler.handled_count() == 1
    })
    .await;
    let event = &handler.handled()[0];
    assert_eq!(event.source_id, "Ev0HTTP0001");
    assert_eq!(event.kind, "app_mention");
    assert_eq!(
        event.routing_key.0,
        "T0SIMACME1/C0GENERAL1/1700000000.000100"
    );
    // Slack's redelivery: same event_id, X-Slack-Retry-Num set. 200, nothing new.
    for retry in 1..=2 {
        let req = signed(&body, now(), SECRET)
            .insert_header(("x-slack-retry-num", retry.to_string()))
            .insert_header(("x-slack-retry-reason", "http_timeout"))
            .to_request();
        let resp = test::call_service(&app, req).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let total: i64 = cluster
        .inbox()
        .count_by_status()
        .await
        .unwrap()
        .into_iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(total, 1);
    assert_eq!(handler.total_calls(), 1);
}

#[actix_rt::test]
async fn the_simulators_signed_request_is_accepted() {
    let inbox = MemoryInbox::new();
    let (cluster, handler) = cluster_with(inbox.clone());
    let sim = SlackSim::start(SimConfig::default()).unwrap();
    let secret = sim.config().apps[0].signing_secret.clone();
    let app = app!(Arc::new(EventsEndpoint::new(Some(&secret), cluster)));
    let req = sim
        .signed_event_request(
            "T0SIMACME1",
            json!({"type": "reaction_added", "user": "U0ALICE001", "reaction": "eyes",
                   "item": {"type": "message", "channel": "C0GENERAL1", "ts": "1.000001"},
                   "event_ts": "1.000002"}),
        )
        .unwrap();
    let resp = test::call_service(
        &app,
        test::TestRequest::post()
            .uri("/slack/events")
            .insert_header(("x-slack-request-timestamp", req.timestamp))
            .insert_header(("x-slack-signature", req.signature))
            .set_payload(req.body)
            .to_request(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    // Unknown event types are recorded (and handled as the handler sees fit), never an error.
    eventually("the event is handled", async || {
        handler.handled_count() == 1
    })
    .await;
    assert_eq!(inbox.all()[0].kind, "reaction_added");
    assert_eq!(inbox.all()[0].routing_key.0, "T0SIMACME1/-/-");
}

#[actix_rt::test]
async fn bad_stale_and_unsigned_requests_are_401() {
    let inbox = MemoryInbox::new();
    let (cluster, _handler) = cluster_with(inbox.clone());
    let app = app!(Arc::new(EventsEndpoint::new(
        Some(&Secret::new(SECRET)),
        cluster
    )));
    let body = mention("Ev0HTTP0002");
    let cases = [
        ("wrong secret", signed(&body, now(), "not-the-secret")),
        ("stale", signed(&body, now() - 6 * 60, SECRET)),
        ("future", signed(&body, now() + 6 * 60, SECRET)),
        (
            "tampered body",
            signed(&body, now(), SECRET).set_payload(body.replace("hi", "rm -rf")),
        ),
        (
            "unsigned",
            test::TestRequest::post()
                .uri("/slack/events")
                .set_payload(body.clone()),
        ),
        (
            "garbage signature",
            test::TestRequest::post()
                .uri("/slack/events")
                .insert_header(("x-slack-request-timestamp", now().to_string()))
                .insert_header(("x-slack-signature", "v0=zz"))
                .set_payload(body.clone()),
        ),
    ];
    for (name, req) in cases {
        let (status, body) = error_code(test::call_service(&app, req.to_request()).await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(body["error"]["code"], "unauthorized", "{name}: {body}");
    }
    assert!(inbox.all().is_empty(), "nothing recorded");
}

#[actix_rt::test]
async fn without_a_signing_secret_everything_is_refused() {
    let inbox = MemoryInbox::new();
    let (cluster, _handler) = cluster_with(inbox.clone());
    let app = app!(Arc::new(EventsEndpoint::new(None, cluster)));
    let body = mention("Ev0HTTP0003");
    // Even a request signed with an empty secret is refused.
    for secret in [SECRET, ""] {
        let (status, body) =
            error_code(test::call_service(&app, signed(&body, now(), secret).to_request()).await)
                .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no signing secret"),
            "{body}"
        );
    }
    assert!(inbox.all().is_empty());
}

#[actix_rt::test]
async fn challenge_non_json_and_unrecordable_bodies() {
    let inbox = MemoryInbox::new();
    let (cluster, _handler) = cluster_with(inbox.clone());
    let app = app!(Arc::new(EventsEndpoint::new(
        Some(&Secret::new(SECRET)),
        cluster
    )));
    let challenge = json!({"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"}).to_string();
    let resp = test::call_service(&app, signed(&challenge, now(), SECRET).to_request()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = test::read_body_json(resp).await;
    assert_eq!(
        body,
        json!({"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"})
    );

    let (status, body) = error_code(
        test::call_service(&app, signed("payload=%7B%7D", now(), SECRET).to_request()).await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "bad_request");

    // JSON, but an event_callback without an event_id cannot be deduplicated: 400.
    let no_id =
        json!({"type": "event_callback", "team_id": "T1", "event": {"type": "app_mention"}})
            .to_string();
    let (status, _) =
        error_code(test::call_service(&app, signed(&no_id, now(), SECRET).to_request()).await)
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Other body types are acknowledged and ignored.
    let limited = json!({"token": "x", "team_id": "T1", "minute_rate_limited": 1_518_467_820,
                         "api_app_id": "A1", "type": "app_rate_limited"})
    .to_string();
    let resp = test::call_service(&app, signed(&limited, now(), SECRET).to_request()).await;
    assert_eq!(resp.status(), StatusCode::OK);

    // A broken event with an id is recorded (it becomes a visible dead letter later).
    let broken = json!({"type": "event_callback", "team_id": "T1", "event_id": "Ev0BROKEN1",
                        "event_time": 1, "event": {"type": "app_mention"}})
    .to_string();
    let resp = test::call_service(&app, signed(&broken, now(), SECRET).to_request()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let all = inbox.all();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].kind, "unparseable");
    assert_eq!(all[0].source_id, "Ev0BROKEN1");
}

#[actix_rt::test]
async fn inbox_down_is_503_so_slack_retries() {
    let inbox = MemoryInbox::new();
    let (cluster, _handler) = cluster_with(inbox.clone());
    let app = app!(Arc::new(EventsEndpoint::new(
        Some(&Secret::new(SECRET)),
        cluster
    )));
    inbox.set_unavailable(true);
    let body = mention("Ev0HTTP0004");
    let (status, json) =
        error_code(test::call_service(&app, signed(&body, now(), SECRET).to_request()).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json["error"]["code"], "unavailable");
    inbox.set_unavailable(false);
    let resp = test::call_service(&app, signed(&body, now(), SECRET).to_request()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(inbox.all().len(), 1);
}
