//! The operations endpoints of the assembled service: `/actors`, `/metrics` and the admin
//! dead-letter API, against real PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use infragpt::config;
use infragpt::db::testing::TestDb;
use infragpt_actors::inbox::{InboundEvent, NewInboundEvent, RoutingKey};
use infragpt_actors::{EventHandler, HandleOutcome, HandlerError, StreamSpec};
use infragpt_actors::{kinds, sources};
use serde_json::{Value, json};

const ADMIN: &str = "test-admin-token-0123456789";
/// A test-only vault key (32 bytes, base64).
const VAULT_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// Fails permanently on payloads with `"fail": true`, handles the rest.
#[derive(Default)]
struct Picky {
    handled: AtomicUsize,
}

#[async_trait]
impl EventHandler for Picky {
    async fn handle(&self, event: &InboundEvent) -> Result<HandleOutcome, HandlerError> {
        if event.payload["panic"] == json!(true) {
            panic!("boom on purpose");
        }
        if event.payload["fail"] == json!(true) {
            return Err(HandlerError::permanent("this event is poison"));
        }
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(HandleOutcome::Done)
    }
}

fn test_config(db: &TestDb) -> config::Config {
    let yaml = format!(
        "port: 0\ngrpc_port: 0\nlog_level: warn\nhttp_log: false\nadmin:\n  token: {ADMIN}\nactors:\n  retry_budget: 2\n  backoff_base_ms: 1\n  backoff_max_ms: 5\nvault:\n  active_key: k1\n  keys:\n    k1: \"{VAULT_KEY}\"\ndatabase:\n  url: \"{}\"\n",
        db.url.expose()
    );
    config::load_str(&yaml, "ops-test.yaml").expect("config")
}

/// The service with only the actor core's module (ops routes, overload check): the three
/// real event sources belong to the Slack, GitHub and identity modules, and these tests plug
/// their own handler into one of them.
async fn start_core(
    config: config::Config,
) -> (infragpt::server::RunningServer, infragpt::app::Core) {
    let db = infragpt::server::open_database(&config)
        .await
        .expect("database");
    let core = infragpt::app::Core::start(&config, &db).expect("core");
    let modules: Vec<Box<dyn infragpt::server::Module>> =
        vec![Box::new(infragpt::app::CoreModule::new(core.clone()))];
    let running = infragpt::server::start_prepared(config, modules, db)
        .await
        .expect("service starts");
    (running, core)
}

fn event(id: &str, fail: bool) -> NewInboundEvent {
    NewInboundEvent {
        source: sources::CLERK,
        source_id: id.to_owned(),
        routing_key: RoutingKey("clerk".to_owned()),
        kind: "test.event".to_owned(),
        payload: json!({ "fail": fail }),
    }
}

async fn wait_until<F: Fn() -> bool>(what: &str, f: F) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn counter(samples: &[prometheus_parse::Sample], name: &str, kind: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.metric == name && s.labels.get("kind") == Some(kind))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            _ => 0.0,
        })
        .sum()
}

async fn scrape(client: &reqwest::Client, base: &str) -> prometheus_parse::Scrape {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("metrics parse as Prometheus text format")
}

#[actix_rt::test]
async fn actors_metrics_and_dead_letters() {
    let db = TestDb::new().await;
    let (running, core) = start_core(test_config(&db)).await;
    let handler = Arc::new(Picky::default());
    core.cluster
        .register_stream(StreamSpec {
            name: "clerk".to_owned(),
            kind: kinds::IDENTITY_SYNC,
            source: sources::CLERK,
            handler: handler.clone(),
        })
        .expect("stream");
    let base = format!("http://{}", running.http_addr);
    let client = reqwest::Client::new();

    let before = scrape(&client, &base).await;
    assert_eq!(
        counter(
            &before.samples,
            "infragpt_actor_messages_handled_total",
            "identity_sync"
        ),
        0.0
    );

    for i in 0..5 {
        core.cluster
            .ingest(event(&format!("ok-{i}"), false))
            .await
            .expect("ingest");
    }
    core.cluster
        .ingest(event("poison", true))
        .await
        .expect("ingest");
    wait_until("five handled", || {
        handler.handled.load(Ordering::SeqCst) == 5
    })
    .await;

    // The tree shows the root supervisor with the stream's router under it.
    let tree: Value = client
        .get(format!("{base}/actors"))
        .send()
        .await
        .expect("actors")
        .json()
        .await
        .expect("json");
    assert!(tree["total"].as_u64().unwrap() >= 2, "{tree}");
    assert_eq!(tree["roots"][0]["kind"], "supervisor", "{tree}");
    let group = client
        .get(format!("{base}/actors/supervisor"))
        .send()
        .await
        .expect("group");
    assert_eq!(group.status(), 200);
    let unknown = client
        .get(format!("{base}/actors/not_a_kind"))
        .send()
        .await
        .expect("unknown");
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.expect("json");
    assert_eq!(body["error"]["code"], "not_found");
    let missing = client
        .get(format!("{base}/actors/supervisor/nope"))
        .send()
        .await
        .expect("missing");
    assert_eq!(missing.status(), 404);

    // The admin API needs the token.
    let denied = client
        .get(format!("{base}/admin/events"))
        .send()
        .await
        .expect("denied");
    assert_eq!(denied.status(), 401);
    let wrong = client
        .get(format!("{base}/admin/events"))
        .bearer_auth("wrong")
        .send()
        .await
        .expect("wrong");
    assert_eq!(wrong.status(), 401);

    let mut dead = Value::Null;
    for _ in 0..250 {
        dead = client
            .get(format!("{base}/admin/events"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        if dead["events"].as_array().is_some_and(|e| !e.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = dead["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{dead}");
    assert_eq!(events[0]["source_id"], "poison");
    assert_eq!(events[0]["status"], "failed");
    assert!(
        events[0]["last_error"].as_str().unwrap().contains("poison"),
        "{dead}"
    );
    let id = events[0]["id"].as_i64().expect("id");

    // Counters moved with the work.
    let after = scrape(&client, &base).await;
    assert_eq!(
        counter(
            &after.samples,
            "infragpt_actor_messages_handled_total",
            "identity_sync"
        ),
        5.0
    );
    assert_eq!(
        counter(
            &after.samples,
            "infragpt_dead_letters_total",
            "identity_sync"
        ),
        1.0
    );

    // Retry runs it again (it fails again: still a dead letter), discard removes it.
    let retried = client
        .post(format!("{base}/admin/events/{id}/retry"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("retry");
    assert_eq!(retried.status(), 202);
    let mut attempts = 0;
    for _ in 0..250 {
        let ev: Value = client
            .get(format!("{base}/admin/events/{id}"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if ev["status"] == "failed" && ev["attempts"].as_i64() == Some(1) {
            attempts = 1;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(attempts, 1, "the requeued event ran again and failed again");
    let discarded = client
        .delete(format!("{base}/admin/events/{id}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("discard");
    assert_eq!(discarded.status(), 204);
    let again = client
        .delete(format!("{base}/admin/events/{id}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("discard again");
    assert_eq!(again.status(), 409);
    let bad_id = client
        .post(format!("{base}/admin/events/abc/retry"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("bad id");
    assert_eq!(bad_id.status(), 400);

    // Both admin actions are audited.
    assert_eq!(
        audit_actions(&db).await,
        ["event.requeued", "event.discarded"]
    );

    // A panicking handler: retried within the budget, then a dead letter with the panic
    // message; the worker's restarts show in /actors; the service keeps serving.
    core.cluster
        .ingest(NewInboundEvent {
            payload: json!({ "panic": true }),
            ..event("panics", false)
        })
        .await
        .expect("ingest");
    let mut panicked = Value::Null;
    for _ in 0..500 {
        panicked = client
            .get(format!("{base}/admin/events"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        if panicked["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["source_id"] == "panics"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dead = panicked["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["source_id"] == "panics"))
        .unwrap_or_else(|| panic!("no dead letter for the panicking event: {panicked}"));
    assert_eq!(dead["attempts"], 3, "1 try + retry_budget 2: {dead}");
    assert!(
        dead["last_error"]
            .as_str()
            .unwrap()
            .contains("boom on purpose"),
        "{dead}"
    );
    let worker: Value = client
        .get(format!("{base}/actors/identity_sync/clerk"))
        .send()
        .await
        .expect("worker")
        .json()
        .await
        .expect("json");
    assert!(worker["restarts"].as_u64().unwrap() >= 2, "{worker}");
    core.cluster
        .ingest(event("after-panic", false))
        .await
        .expect("ingest");
    wait_until("the worker handles the next event", || {
        handler.handled.load(Ordering::SeqCst) == 6
    })
    .await;

    running.stop().await.expect("clean stop");
}

async fn audit_actions(db: &TestDb) -> Vec<String> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use infragpt::db::schema::audit_log;
    let mut conn = db.pool().get().await.expect("conn");
    audit_log::table
        .select(audit_log::action)
        .order(audit_log::id)
        .load(&mut conn)
        .await
        .expect("audit")
}

#[actix_rt::test]
async fn readiness_reports_overload_and_recovers() {
    use infragpt_actors::testing::RecordingHandler;
    let db = TestDb::new().await;
    let yaml = format!(
        "port: 0\ngrpc_port: 0\nlog_level: warn\nhttp_log: false\nactors:\n  high_water_mark: 2\n  mailbox_capacity: 4\n  drain_interval_ms: 20\nvault:\n  active_key: k1\n  keys:\n    k1: \"{VAULT_KEY}\"\ndatabase:\n  url: \"{}\"\n",
        db.url.expose()
    );
    let config = config::load_str(&yaml, "overload-test.yaml").expect("config");
    let (running, core) = start_core(config).await;
    let handler = RecordingHandler::new();
    let gate = handler.gate_all();
    core.cluster
        .register_stream(StreamSpec {
            name: "clerk".to_owned(),
            kind: kinds::IDENTITY_SYNC,
            source: sources::CLERK,
            handler: handler.clone(),
        })
        .expect("stream");
    let base = format!("http://{}", running.http_addr);
    let client = reqwest::Client::new();
    for i in 0..10 {
        core.cluster
            .ingest(NewInboundEvent {
                routing_key: RoutingKey(format!("key-{i}")),
                ..event(&format!("e-{i}"), false)
            })
            .await
            .expect("ingest while overloaded still records");
    }
    let ready = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.expect("json");
    assert!(
        body["checks"]["actors"]
            .as_str()
            .is_some_and(|s| s.contains("overloaded")),
        "{body}"
    );
    gate.add_permits(100);
    wait_until("all handled", || handler.handled_count() == 10).await;
    let mut status = 0;
    for _ in 0..250 {
        status = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz")
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200, "ready again once the backlog drained");
    running.stop().await.expect("clean stop");
}

/// The fully assembled service: every module starts, the tree shows them, and the REST API
/// fails closed when Clerk JWT verification is not configured.
#[actix_rt::test]
async fn assembled_service_starts_and_rest_api_fails_closed() {
    let db = TestDb::new().await;
    let (running, _core) = infragpt::app::start(test_config(&db))
        .await
        .expect("service starts");
    let base = format!("http://{}", running.http_addr);
    let client = reqwest::Client::new();
    for path in ["/identity/me", "/integrations"] {
        let resp = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("rest");
        assert_eq!(resp.status(), 503, "{path}");
        let body: Value = resp.json().await.expect("json");
        assert!(body["error"]["code"].is_string(), "{path}: {body}");
    }
    let tree: Value = client
        .get(format!("{base}/actors"))
        .send()
        .await
        .expect("actors")
        .json()
        .await
        .expect("json");
    let text = tree.to_string();
    for stream in ["conversations", "identity-sync"] {
        assert!(text.contains(stream), "{stream} router missing: {tree}");
    }
    assert!(
        text.contains("agent_client"),
        "agent client missing: {tree}"
    );
    running.stop().await.expect("clean stop");
}
