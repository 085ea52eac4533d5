//! `POST /slack/commands`: Slack's documented signing example (a slash command form) against
//! the endpoint, signatures refused before parsing, the record-then-ack rule and the
//! deduplication on `trigger_id`.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{App, test, web};
use infragpt::slack::commands;
use infragpt::slack::events_http::EventsEndpoint;
use infragpt::slack::signature::{SlackSignatureVerifier, sign};
use infragpt_actors::inbox::{
    Claim, EventRowId, EventStatus, InboundEvent, InboundEvents, NewInboundEvent, Partition,
    RecordOutcome, StoreError,
};
use infragpt_actors::testing::{MemoryInbox, RecordingHandler};
use infragpt_actors::{Cluster, ClusterConfig, HealthRegistry, Metrics, Secret, StreamSpec};
use infragpt_actors::{kinds, sources};
use serde_json::Value;

use crate::support::fixtures;
use crate::support::wait::eventually;

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

macro_rules! app {
    ($endpoint:expr) => {{
        let ep: Arc<EventsEndpoint> = $endpoint;
        test::init_service(
            App::new()
                .app_data(infragpt::error::json_config())
                .configure(move |cfg: &mut web::ServiceConfig| {
                    commands::configure(cfg, ep.clone())
                }),
        )
        .await
    }};
}

fn request(body: &str, ts: &str, signature: &str) -> test::TestRequest {
    test::TestRequest::post()
        .uri("/slack/commands")
        .insert_header(("content-type", "application/x-www-form-urlencoded"))
        .insert_header(("x-slack-request-timestamp", ts.to_owned()))
        .insert_header(("x-slack-signature", signature.to_owned()))
        .set_payload(body.to_owned())
}

#[actix_rt::test]
async fn slacks_signing_example_is_a_verified_help_command() {
    let v = fixtures::json("slack/signing-vector.json");
    let (secret, ts, body, sig) = (
        v["signing_secret"].as_str().unwrap(),
        v["timestamp"].as_str().unwrap(),
        v["body"].as_str().unwrap(),
        v["expected_signature"].as_str().unwrap(),
    );
    let at: i64 = ts.parse().unwrap();
    let verifier =
        SlackSignatureVerifier::with_clock(&Secret::new(secret), Arc::new(move || at + 30));
    let inbox = MemoryInbox::new();
    let (cluster, handler) = cluster_with(inbox.clone());
    let app = app!(Arc::new(EventsEndpoint::with_verifier(
        verifier,
        cluster.clone()
    )));
    // `/webhook-collect` with an empty text: the usage, from the acknowledgement.
    let resp = test::call_service(&app, request(body, ts, sig).to_request()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let answer: Value = test::read_body_json(resp).await;
    assert_eq!(answer["response_type"], "ephemeral");
    assert!(
        answer["text"]
            .as_str()
            .unwrap()
            .contains("/webhook-collect status")
    );
    // The tampered body of the example does not verify; nothing is parsed or recorded.
    let tampered = v["invalid_examples"][0]["body"].as_str().unwrap();
    let resp = test::call_service(&app, request(tampered, ts, sig).to_request()).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Stale: the same request 10 minutes later.
    let late = SlackSignatureVerifier::with_clock(&Secret::new(secret), Arc::new(move || at + 600));
    let stale = app!(Arc::new(EventsEndpoint::with_verifier(
        late,
        cluster.clone()
    )));
    let resp = test::call_service(&stale, request(body, ts, sig).to_request()).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(handler.total_calls(), 0);
    assert!(
        inbox
            .count_by_status()
            .await
            .unwrap()
            .iter()
            .all(|(_, n)| *n == 0)
    );
}

#[actix_rt::test]
async fn a_command_is_recorded_once_per_trigger_and_acknowledged_empty() {
    let secret = "s3cr3t-signing";
    let inbox = MemoryInbox::new();
    let (cluster, handler) = cluster_with(inbox.clone());
    let app = app!(Arc::new(EventsEndpoint::new(
        Some(&Secret::new(secret)),
        cluster
    )));
    let body = "team_id=T0SIMACME1&channel_id=C0OPS00001&user_id=U0ALICE001&command=%2Finfragpt\
                &text=why+is+checkout+slow%3F&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2F1%2F2\
                &trigger_id=111.222.abc";
    let now = chrono::Utc::now().timestamp();
    let signature = sign(&Secret::new(secret), now, body.as_bytes());
    for _ in 0..2 {
        let resp = test::call_service(
            &app,
            request(body, &now.to_string(), &signature).to_request(),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(test::read_body(resp).await.is_empty());
    }
    eventually("the command is handled", async || {
        handler.handled_count() == 1
    })
    .await;
    let event = &handler.handled()[0];
    assert_eq!(event.source_id, "slash:111.222.abc");
    assert_eq!(event.kind, "slash_command");
    assert_eq!(event.routing_key.0, "T0SIMACME1/C0OPS00001/-");
    assert_eq!(event.payload["text"], "why is checkout slow?");
    assert_eq!(
        handler.total_calls(),
        1,
        "the second request was a duplicate"
    );

    // No signing secret: refused, whatever the request.
    let closed = app!(Arc::new(EventsEndpoint::new(
        None,
        cluster_with(MemoryInbox::new()).0
    )));
    let resp = test::call_service(
        &closed,
        request(body, &now.to_string(), &signature).to_request(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Signed, but not a command: 400.
    let junk = "hello=world";
    let sig = sign(&Secret::new(secret), now, junk.as_bytes());
    let resp = test::call_service(&app, request(junk, &now.to_string(), &sig).to_request()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

/// An inbox whose `record` takes `delay` (a slow or overloaded database).
struct SlowInbox {
    inner: Arc<MemoryInbox>,
    delay: std::time::Duration,
}

#[async_trait::async_trait]
impl InboundEvents for SlowInbox {
    async fn record(&self, event: NewInboundEvent) -> Result<RecordOutcome, StoreError> {
        tokio::time::sleep(self.delay).await;
        self.inner.record(event).await
    }
    async fn claim(&self, id: EventRowId) -> Result<Option<InboundEvent>, StoreError> {
        self.inner.claim(id).await
    }
    async fn confirm(&self, claim: Claim) -> Result<(), StoreError> {
        self.inner.confirm(claim).await
    }
    async fn mark_done(&self, claim: Claim) -> Result<(), StoreError> {
        self.inner.mark_done(claim).await
    }
    async fn mark_ignored(&self, claim: Claim, reason: &str) -> Result<(), StoreError> {
        self.inner.mark_ignored(claim, reason).await
    }
    async fn mark_retry(&self, claim: Claim, error: &str) -> Result<(), StoreError> {
        self.inner.mark_retry(claim, error).await
    }
    async fn mark_failed(&self, claim: Claim, error: &str) -> Result<(), StoreError> {
        self.inner.mark_failed(claim, error).await
    }
    async fn list_unfinished(
        &self,
        after: Option<EventRowId>,
        limit: i64,
        partitions: Option<&[Partition]>,
    ) -> Result<Vec<InboundEvent>, StoreError> {
        self.inner.list_unfinished(after, limit, partitions).await
    }
    async fn list_failed(&self, limit: i64, offset: i64) -> Result<Vec<InboundEvent>, StoreError> {
        self.inner.list_failed(limit, offset).await
    }
    async fn get(&self, id: EventRowId) -> Result<Option<InboundEvent>, StoreError> {
        self.inner.get(id).await
    }
    async fn requeue(&self, id: EventRowId) -> Result<Option<InboundEvent>, StoreError> {
        self.inner.requeue(id).await
    }
    async fn discard(&self, id: EventRowId) -> Result<bool, StoreError> {
        self.inner.discard(id).await
    }
    async fn count_by_status(&self) -> Result<Vec<(EventStatus, i64)>, StoreError> {
        self.inner.count_by_status().await
    }
}

#[actix_rt::test]
async fn a_slow_record_is_acknowledged_within_three_seconds_and_still_finishes() {
    let secret = "s3cr3t-signing";
    let inbox = Arc::new(SlowInbox {
        inner: MemoryInbox::new(),
        delay: std::time::Duration::from_secs(4),
    });
    let (cluster, handler) = cluster_with(inbox);
    let app = app!(Arc::new(EventsEndpoint::new(
        Some(&Secret::new(secret)),
        cluster
    )));
    let body = "team_id=T0SIMACME1&channel_id=C0OPS00001&user_id=U0ALICE001&command=%2Finfragpt\
                &text=status&trigger_id=333.444.slow";
    let now = chrono::Utc::now().timestamp();
    let signature = sign(&Secret::new(secret), now, body.as_bytes());
    let started = std::time::Instant::now();
    let resp = test::call_service(
        &app,
        request(body, &now.to_string(), &signature).to_request(),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        took < std::time::Duration::from_secs(3),
        "answered in {took:?}"
    );
    let answer: Value = test::read_body_json(resp).await;
    assert_eq!(answer["response_type"], "ephemeral");
    assert!(answer["text"].as_str().unwrap().contains("Working on it"));
    // The record went on after the acknowledgement: the command runs.
    eventually("the slow command is handled", async || {
        handler.handled_count() == 1
    })
    .await;
    assert_eq!(handler.handled()[0].source_id, "slash:333.444.slow");
}
