//! Item 2: signed payloads with "\u0000" (which PostgreSQL's jsonb and text refuse) are
//! recorded: the raw body byte for byte in `raw_body`, a cleaned `payload` (U+FFFD) that the
//! handlers get; and the store's data errors are never reported as an outage.

use std::sync::Arc;

use actix_web::{App, test, web};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::app::integrations::IntegrationParts;
use infragpt::config::Config;
use infragpt::db::PgInbox;
use infragpt::db::schema::inbound_events;
use infragpt::slack::events_http::{self, EventsEndpoint};
use infragpt::testkit::test_db::TestDb;
use infragpt_actors::inbox::{
    EventPayload, InboundEvents, NewInboundEvent, RecordOutcome, RoutingKey, StoreError,
};
use infragpt_actors::testing::RecordingHandler;
use infragpt_actors::{Cluster, ClusterConfig, HealthRegistry, Metrics, Secret, StreamSpec};
use infragpt_actors::{kinds, sources};
use serde_json::{Value, json};

use crate::support::app::TestApp;
use crate::support::fixtures;
use crate::support::identity::{new_svix_id, svix_headers};
use crate::support::integrations::{keyring, random_key};
use crate::support::wait::eventually;

const NUL_TEXT: &str = "before\u{0}after";
const CLEANED: &str = "before\u{FFFD}after";

/// `(status, payload, raw_body)` of the one row of `source`.
async fn row(pool: &infragpt::db::Pool, source: &str) -> (String, Value, Option<String>) {
    let mut conn = pool.get().await.unwrap();
    inbound_events::table
        .filter(inbound_events::source.eq(source))
        .select((
            inbound_events::status,
            inbound_events::payload,
            inbound_events::raw_body,
        ))
        .first(&mut conn)
        .await
        .unwrap()
}

#[actix_rt::test]
async fn github_delivery_with_nul_is_recorded_verbatim_and_handled() {
    const SECRET: &str = "edge-github-secret";
    let test_app = TestApp::builder().build().await;
    let pool = test_app.pool().clone();
    let cluster = test_app.cluster().clone();
    let mut config = Config::default();
    config.integrations.github.webhook_secret = Some(Secret::new(SECRET));
    let parts = IntegrationParts::build(
        pool.clone(),
        &config,
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

    let mut payload = fixtures::json("github-webhooks/issues/opened.json");
    payload["issue"]["title"] = json!(NUL_TEXT);
    let body = serde_json::to_vec_pretty(&payload).unwrap();
    assert!(String::from_utf8_lossy(&body).contains("\\u0000"));
    let req = test::TestRequest::post()
        .uri("/webhooks/github")
        .insert_header(("X-GitHub-Event", "issues"))
        .insert_header(("X-GitHub-Delivery", "edge-nul-1"))
        .insert_header(("content-type", "application/json"))
        .insert_header((
            "X-Hub-Signature-256",
            infragpt::github::signature::sign(&Secret::new(SECRET), &body),
        ))
        .set_payload(body.clone())
        .to_request();
    let resp = test::call_service(&app, req).await;
    assert_eq!(resp.status().as_u16(), 202);
    test_app.wait_idle().await;

    let (status, stored, raw) = row(&pool, "github").await;
    assert_eq!(raw.as_deref().map(str::as_bytes), Some(body.as_slice()));
    assert_eq!(stored["issue"]["title"], CLEANED);
    assert!(status == "done" || status == "ignored", "{status}");
}

#[actix_rt::test]
async fn slack_event_with_nul_is_recorded_verbatim_and_handled() {
    const SECRET: &str = "edge-slack-signing-secret";
    let db = TestDb::new().await;
    let cluster = Cluster::start(
        ClusterConfig::default(),
        Arc::new(PgInbox::new(db.pool().clone())),
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
    let endpoint = Arc::new(EventsEndpoint::new(Some(&Secret::new(SECRET)), cluster));
    let app = test::init_service(App::new().configure(move |cfg: &mut web::ServiceConfig| {
        events_http::configure(cfg, endpoint.clone())
    }))
    .await;

    let body = json!({
        "token": "x", "team_id": "T0SIMACME1", "api_app_id": "A0SIMAPP01",
        "type": "event_callback", "event_id": "Ev0EDGENUL1", "event_time": 1_700_000_000,
        "event": {"type": "app_mention", "channel": "C0GENERAL1", "user": "U0ALICE001",
                  "text": NUL_TEXT, "ts": "1700000000.000100",
                  "event_ts": "1700000000.000100"}
    })
    .to_string();
    let ts = chrono::Utc::now().timestamp();
    let req = test::TestRequest::post()
        .uri("/slack/events")
        .insert_header(("content-type", "application/json"))
        .insert_header(("x-slack-request-timestamp", ts.to_string()))
        .insert_header((
            "x-slack-signature",
            infragpt::slack::signature::sign(&Secret::new(SECRET), ts, body.as_bytes()),
        ))
        .set_payload(body.clone())
        .to_request();
    let resp = test::call_service(&app, req).await;
    assert_eq!(resp.status().as_u16(), 200);
    eventually("the event is handled", async || {
        handler.handled_count() == 1
    })
    .await;
    assert_eq!(handler.handled()[0].payload["event"]["text"], CLEANED);

    let (_, stored, raw) = row(db.pool(), "slack").await;
    assert_eq!(raw.as_deref(), Some(body.as_str()));
    assert_eq!(stored["event"]["text"], CLEANED);
}

#[actix_rt::test]
async fn clerk_event_with_nul_is_recorded_verbatim_and_handled() {
    let h = TestApp::builder()
        .with_identity()
        .configure(|c| c.actors.backoff_base_ms = 1)
        .build()
        .await;
    let app = test::init_service(infragpt::http::app(h.identity_shell(None))).await;
    let mut payload: Value = serde_json::from_slice(&fixtures::clerk("user.created")).unwrap();
    payload["data"]["first_name"] = json!(NUL_TEXT);
    let body = serde_json::to_vec(&payload).unwrap();
    let id = new_svix_id();
    let mut req = test::TestRequest::post()
        .uri("/webhooks/clerk")
        .insert_header(("content-type", "application/json"))
        .set_payload(body.clone());
    for header in svix_headers(&id, &body) {
        req = req.insert_header(header);
    }
    let resp = test::call_service(&app, req.to_request()).await;
    assert_eq!(resp.status().as_u16(), 200);
    h.wait_idle().await;

    let (status, stored, raw) = row(h.pool(), "clerk").await;
    assert_eq!(raw.as_deref().map(str::as_bytes), Some(body.as_slice()));
    assert_eq!(stored["data"]["first_name"], CLEANED);
    assert_eq!(status, "done");
}

/// Socket Mode hands the inbox parsed payloads: cleaned the same way, the original kept as
/// its JSON text; NULs in the text columns are cleaned too. Data the database refuses is
/// `Rejected`, not `Unavailable`.
#[tokio::test]
async fn the_inbox_cleans_parsed_payloads_and_names_data_errors() {
    let db = TestDb::new().await;
    let inbox = PgInbox::new(db.pool().clone());
    let original = json!({"event_id": "Ev0SOCKET1", "event": {"text": NUL_TEXT}});
    let outcome = inbox
        .record(NewInboundEvent {
            source: sources::SLACK,
            source_id: "Ev0SOCKET1".into(),
            routing_key: RoutingKey("T1/C1/1".into()),
            kind: "app\u{0}mention".into(),
            payload: original.clone().into(),
        })
        .await
        .expect("recorded");
    let RecordOutcome::Recorded(event) = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(event.kind, "app\u{FFFD}mention");
    let claimed = inbox.claim(event.id).await.unwrap().unwrap();
    assert_eq!(claimed.payload["event"]["text"], CLEANED);
    let (_, _, raw) = row(db.pool(), "slack").await;
    let raw: Value = serde_json::from_str(&raw.expect("raw body kept")).unwrap();
    assert_eq!(raw, original);

    let refused = inbox
        .record(NewInboundEvent {
            source: sources::GITHUB,
            source_id: "not-json".into(),
            routing_key: RoutingKey("k".into()),
            kind: "x".into(),
            payload: EventPayload::Raw("{\"unterminated\": ".into()),
        })
        .await
        .expect_err("not JSON");
    assert!(matches!(refused, StoreError::Rejected(_)), "{refused:?}");
}
