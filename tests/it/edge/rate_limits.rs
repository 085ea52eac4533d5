//! Per-source rate limits of the webhook routes (`webhooks.rate_limits`) on the served app:
//! over a source's burst a verified delivery is answered 429 `too_many_requests` with
//! `Retry-After` and is not recorded (so the sender's retry is not a duplicate of anything),
//! another source is not affected, and the refusals are counted per route in `/metrics`.
//! Also the gRPC message size limit (`grpc.max_message_bytes`).

use infragpt::config::{Config, RateLimit};
use infragpt::grpc::pb::backend::SendReplyCommand;
use infragpt::grpc::pb::backend::backend_service_client::BackendServiceClient;
use infragpt_actors::Secret;
use serde_json::{Value, json};

use crate::support::app::TestApp;
use crate::support::identity::{SVIX_SECRET, new_svix_id, svix_sign};

const GITHUB_SECRET: &str = "rate-github-webhook-secret";
const SLACK_SECRET: &str = "rate-slack-signing-secret";

/// A burst of `burst`, then about one delivery in 17 minutes: nothing refills during a test.
fn tight(burst: u32) -> RateLimit {
    RateLimit {
        per_second: 0.001,
        burst,
    }
}

async fn served(tweak: impl FnOnce(&mut Config) + 'static) -> TestApp {
    TestApp::builder()
        .with_identity()
        .configure(move |c| {
            c.integrations.github.webhook_secret = Some(Secret::new(GITHUB_SECRET));
            c.slack.signing_secret = Some(Secret::new(SLACK_SECRET));
            tweak(c);
        })
        .start()
        .await
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

async fn send(app: &TestApp, path: &str, headers: Vec<(&str, String)>, body: Vec<u8>) -> Answer {
    let mut req = app
        .http()
        .post(format!("{}{path}", app.base_url()))
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        req = req.header(name, value);
    }
    let resp = req.send().await.expect("a response");
    Answer {
        status: resp.status().as_u16(),
        retry_after: resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: resp.json().await.unwrap_or(Value::Null),
    }
}

fn slack_event(team: &str, event_id: &str) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let body = json!({
        "token": "x", "team_id": team, "api_app_id": "A0SIMAPP01",
        "type": "event_callback", "event_id": event_id, "event_time": 1_700_000_000,
        "event": {"type": "app_mention", "channel": "C0GENERAL1", "user": "U0ALICE001",
                  "text": "<@U0ACMEBOT1> hi", "ts": "1700000000.000100",
                  "event_ts": "1700000000.000100"}
    })
    .to_string()
    .into_bytes();
    let ts = chrono::Utc::now().timestamp();
    let sig = infragpt::slack::signature::sign(&Secret::new(SLACK_SECRET), ts, &body);
    (
        vec![
            ("x-slack-request-timestamp", ts.to_string()),
            ("x-slack-signature", sig),
        ],
        body,
    )
}

fn github_delivery(installation: i64) -> (Vec<(&'static str, String)>, Vec<u8>, String) {
    let body = json!({"zen": "x", "hook_id": 1, "installation": {"id": installation}})
        .to_string()
        .into_bytes();
    let delivery = uuid::Uuid::new_v4().to_string();
    let sig = infragpt::github::signature::sign(&Secret::new(GITHUB_SECRET), &body);
    (
        vec![
            ("x-hub-signature-256", sig),
            ("x-github-event", "ping".into()),
            ("x-github-delivery", delivery.clone()),
        ],
        body,
        delivery,
    )
}

fn clerk_message() -> (Vec<(&'static str, String)>, Vec<u8>) {
    let body = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/svix/clerk/user.created.json"),
    )
    .expect("the Clerk fixture");
    let id = new_svix_id();
    let ts = chrono::Utc::now().timestamp();
    let sig = svix_sign(SVIX_SECRET, &id, ts, &body);
    (
        vec![
            ("svix-id", id),
            ("svix-timestamp", ts.to_string()),
            ("svix-signature", sig),
        ],
        body,
    )
}

async fn recorded(app: &TestApp, source: &str, source_id: &str) -> bool {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use infragpt::db::schema::inbound_events;
    let mut conn = app.pool().get().await.expect("a connection");
    inbound_events::table
        .filter(inbound_events::source.eq(source))
        .filter(inbound_events::source_id.eq(source_id))
        .count()
        .get_result::<i64>(&mut conn)
        .await
        .expect("count")
        > 0
}

async fn limited_total(app: &TestApp, route: &str) -> f64 {
    app.metric(
        "infragpt_webhook_rate_limited_total",
        Some(("route", route)),
    )
    .await
}

fn assert_refused(answer: &Answer, what: &str) {
    assert_eq!(answer.status, 429, "{what}: {:?}", answer.body);
    assert_eq!(
        answer.body["error"]["code"], "too_many_requests",
        "{what}: {:?}",
        answer.body
    );
    let retry: u64 = answer
        .retry_after
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no Retry-After in seconds"));
    assert!(retry >= 1, "{what}: Retry-After {retry}");
}

#[actix_rt::test]
async fn slack_events_over_a_workspace_limit_are_refused_before_recording() {
    let app = served(|c| c.webhooks.rate_limits.slack = tight(2)).await;
    assert_eq!(
        limited_total(&app, "slack").await,
        0.0,
        "exported from the start"
    );
    for i in 0..2 {
        let (headers, body) = slack_event("T0RATE0001", &format!("Ev0RATEOK{i}"));
        let a = send(&app, "/slack/events", headers, body).await;
        assert_eq!(a.status, 200, "within the burst: {:?}", a.body);
    }
    let (headers, body) = slack_event("T0RATE0001", "Ev0RATEOVER");
    let over = send(&app, "/slack/events", headers, body).await;
    assert_refused(&over, "third event of the workspace");
    assert!(
        !recorded(&app, "slack", "Ev0RATEOVER").await,
        "a refused event must not be recorded (Slack retries it)"
    );
    assert!(recorded(&app, "slack", "Ev0RATEOK1").await);
    // Another workspace has its own budget.
    let (headers, body) = slack_event("T0RATE0002", "Ev0RATEOTHER");
    assert_eq!(send(&app, "/slack/events", headers, body).await.status, 200);
    assert_eq!(limited_total(&app, "slack").await, 1.0);
}

#[actix_rt::test]
async fn github_deliveries_over_an_installation_limit_are_refused_before_recording() {
    let app = served(|c| c.webhooks.rate_limits.github = tight(1)).await;
    let (headers, body, first) = github_delivery(4242);
    assert_eq!(
        send(&app, "/webhooks/github", headers, body).await.status,
        202
    );
    let (headers, body, second) = github_delivery(4242);
    let over = send(&app, "/webhooks/github", headers, body).await;
    assert_refused(&over, "second delivery of the installation");
    assert!(recorded(&app, "github", &first).await);
    assert!(!recorded(&app, "github", &second).await);
    let (headers, body, _) = github_delivery(77);
    assert_eq!(
        send(&app, "/webhooks/github", headers, body).await.status,
        202,
        "another installation is not limited by the first"
    );
    assert_eq!(limited_total(&app, "github").await, 1.0);
    assert_eq!(limited_total(&app, "slack").await, 0.0);
}

#[actix_rt::test]
async fn clerk_messages_over_the_limit_are_refused_before_recording() {
    let app = served(|c| c.webhooks.rate_limits.clerk = tight(1)).await;
    let (headers, body) = clerk_message();
    let a = send(&app, "/webhooks/clerk", headers, body).await;
    assert!(a.status < 300, "first message: {} {:?}", a.status, a.body);
    let (headers, body) = clerk_message();
    let id = headers[0].1.clone();
    let over = send(&app, "/webhooks/clerk", headers, body).await;
    assert_refused(&over, "second Clerk message");
    assert!(!recorded(&app, "clerk", &id).await);
    assert_eq!(limited_total(&app, "clerk").await, 1.0);
}

#[actix_rt::test]
async fn rate_limits_are_validated() {
    let check = |yaml: &str| {
        infragpt::config::load_str_with_env(yaml, "x.yaml", |_| None)
            .err()
            .map(|e| e.to_string())
    };
    let e = check("webhooks:\n  rate_limits:\n    slack:\n      per_second: -1\n").unwrap();
    assert!(e.contains("webhooks.rate_limits.slack.per_second"), "{e}");
    let e = check("webhooks:\n  rate_limits:\n    github:\n      per_second: 5\n      burst: 0\n")
        .unwrap();
    assert!(e.contains("webhooks.rate_limits.github.burst"), "{e}");
    let e = check("webhooks:\n  rate_limits:\n    max_sources: 0\n").unwrap();
    assert!(e.contains("webhooks.rate_limits.max_sources"), "{e}");
    let e = check("grpc:\n  max_message_bytes: 10\n").unwrap();
    assert!(e.contains("grpc.max_message_bytes"), "{e}");
    let e = check("grpc:\n  max_concurrent_streams: 0\n").unwrap();
    assert!(e.contains("grpc.max_concurrent_streams"), "{e}");
    assert_eq!(
        check("webhooks:\n  rate_limits:\n    clerk:\n      per_second: 0\n"),
        None,
        "0 turns a limit off"
    );
}

#[actix_rt::test]
async fn grpc_messages_over_the_limit_are_refused() {
    let app = served(|c| c.grpc.max_message_bytes = 64 * 1024).await;
    let mut client = BackendServiceClient::connect(format!("http://{}", app.grpc_addr()))
        .await
        .expect("connect");
    let status = client
        .send_reply(SendReplyCommand {
            conversation_id: uuid::Uuid::new_v4().to_string(),
            message: "x".repeat(100 * 1024),
            ..Default::default()
        })
        .await
        .expect_err("a 100 KiB message is over 64 KiB");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    // Under the limit the call is decoded and answered (an unknown conversation).
    let status = client
        .send_reply(SendReplyCommand {
            conversation_id: uuid::Uuid::new_v4().to_string(),
            message: "x".repeat(1024),
            ..Default::default()
        })
        .await
        .expect_err("no such conversation");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
}
