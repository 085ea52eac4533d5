//! The operations endpoints of the assembled service: `/actors`, `/metrics`, the admin
//! dead-letter API and the admin audit log, against real PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use infragpt::config::Config;
use infragpt::db::Pool;
use infragpt_actors::inbox::{InboundEvent, NewInboundEvent, RoutingKey};
use infragpt_actors::testing::RecordingHandler;
use infragpt_actors::{EventHandler, HandleOutcome, HandlerError, StreamSpec, kinds, sources};
use serde_json::{Value, json};

use crate::support::app::{ADMIN, TestApp};
use crate::support::audit::{allow_audit, one_entry, refuse_audit};
use crate::support::wait::eventually;

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

/// Retries at once, within a budget of two.
fn quick_retries(c: &mut Config) {
    c.actors.retry_budget = 2;
    c.actors.backoff_base_ms = 1;
    c.actors.backoff_max_ms = 5;
}

fn event(id: &str, fail: bool) -> NewInboundEvent {
    NewInboundEvent {
        source: sources::CLERK,
        source_id: id.to_owned(),
        routing_key: RoutingKey("clerk".to_owned()),
        kind: "test.event".to_owned(),
        payload: json!({ "fail": fail }).into(),
    }
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

async fn scrape(client: &reqwest::Client, ops: &str) -> prometheus_parse::Scrape {
    let text = client
        .get(format!("{ops}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("metrics parse as Prometheus text format")
}

/// `GET {base}{path}` is refused (401 in the JSON error shape) without the admin token and with
/// a wrong one, and answered 200 with it in any case of the scheme; the last answer's body.
async fn requires_the_admin_token(client: &reqwest::Client, base: &str, path: &str) -> Value {
    let anonymous = client
        .get(format!("{base}{path}"))
        .send()
        .await
        .expect("get");
    assert_eq!(anonymous.status(), 401, "{path} without a token");
    let body: Value = anonymous.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "unauthorized", "{path}: {body}");
    let wrong = client
        .get(format!("{base}{path}"))
        .header("authorization", "Bearer not-the-token")
        .send()
        .await
        .expect("get");
    assert_eq!(wrong.status(), 401, "{path} with a wrong token");
    let mut last = Value::Null;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let ok = client
            .get(format!("{base}{path}"))
            .header("authorization", format!("{scheme} {ADMIN}"))
            .send()
            .await
            .expect("get");
        assert_eq!(ok.status(), 200, "{path} with `{scheme}`");
        last = ok.json().await.unwrap_or(Value::Null);
    }
    last
}

#[actix_rt::test]
async fn actors_metrics_and_dead_letters() {
    // Only the actor core's module: the three real event sources belong to the Slack, GitHub
    // and identity modules, and this test plugs its own handler into one of them.
    let app = TestApp::builder()
        .core_only()
        .configure(quick_retries)
        .start()
        .await;
    let core = app.core();
    let handler = Arc::new(Picky::default());
    core.cluster
        .register_stream(StreamSpec {
            name: "clerk".to_owned(),
            kind: kinds::IDENTITY_SYNC,
            source: sources::CLERK,
            handler: handler.clone(),
        })
        .expect("stream");
    let base = app.base_url();
    let ops = app.ops_url();
    let client = app.http().clone();

    let before = scrape(&client, &ops).await;
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
    eventually("five handled", async || {
        handler.handled.load(Ordering::SeqCst) == 5
    })
    .await;

    // The tree shows the root supervisor with the stream's router under it.
    let tree: Value = client
        .get(format!("{ops}/actors"))
        .send()
        .await
        .expect("actors")
        .json()
        .await
        .expect("json");
    assert!(tree["total"].as_u64().unwrap() >= 2, "{tree}");
    assert_eq!(tree["roots"][0]["kind"], "supervisor", "{tree}");
    let group = client
        .get(format!("{ops}/actors/supervisor"))
        .send()
        .await
        .expect("group");
    assert_eq!(group.status(), 200);
    let unknown = client
        .get(format!("{ops}/actors/not_a_kind"))
        .send()
        .await
        .expect("unknown");
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.expect("json");
    assert_eq!(body["error"]["code"], "not_found");
    let missing = client
        .get(format!("{ops}/actors/supervisor/nope"))
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

    let dead = eventually("a dead letter is listed", async || {
        let (_, dead) = app.admin_get("/admin/events").await;
        if dead["events"].as_array().is_some_and(|e| !e.is_empty()) {
            Ok(dead)
        } else {
            Err(dead)
        }
    })
    .await;
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
    let after = scrape(&client, &ops).await;
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

    // Each admin action writes its entry in its own transaction: refused, the action fails
    // (500 in the one error shape) and the dead letter stays as it was.
    for (method, path, action) in [
        (
            "POST",
            format!("/admin/events/{id}/retry"),
            "event.requeued",
        ),
        ("DELETE", format!("/admin/events/{id}"), "event.discarded"),
    ] {
        refuse_audit(app.pool(), &[action]).await;
        let refused = client
            .request(method.parse().expect("method"), format!("{base}{path}"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("admin action");
        assert_eq!(refused.status(), 500, "{method} {path}");
        let body: Value = refused.json().await.expect("json");
        assert_eq!(body["error"]["code"], "internal", "{body}");
        let (_, ev) = app.admin_get(&format!("/admin/events/{id}")).await;
        assert_eq!(ev["status"], "failed", "{method} {path}: {ev}");
        assert!(audit_actions(app.pool()).await.is_empty());
    }
    allow_audit(app.pool()).await;

    // Retry runs it again (it fails again: still a dead letter), discard removes it.
    let retried = client
        .post(format!("{base}/admin/events/{id}/retry"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("retry");
    assert_eq!(retried.status(), 202);
    eventually(
        "the requeued event ran again and failed again",
        async || {
            let (_, ev) = app.admin_get(&format!("/admin/events/{id}")).await;
            if ev["status"] == "failed" && ev["attempts"].as_i64() == Some(1) {
                Ok(())
            } else {
                Err(ev)
            }
        },
    )
    .await;
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

    // Both admin actions are audited, once each (the refused attempts left nothing).
    assert_eq!(
        audit_actions(app.pool()).await,
        ["event.requeued", "event.discarded"]
    );
    for action in ["event.requeued", "event.discarded"] {
        let entry = one_entry(app.pool(), action).await;
        assert_eq!(entry["actor"], "admin");
        assert_eq!(entry["organization_id"], Value::Null);
        assert_eq!(entry["target"], format!("inbound_event:{id}"));
        assert_eq!(entry["details"]["source_id"], "poison");
    }

    // A panicking handler: retried within the budget, then a dead letter with the panic
    // message; the worker's restarts show in /actors; the service keeps serving.
    core.cluster
        .ingest(NewInboundEvent {
            payload: json!({ "panic": true }).into(),
            ..event("panics", false)
        })
        .await
        .expect("ingest");
    let dead = eventually("a dead letter for the panicking event", async || {
        let (_, listed) = app.admin_get("/admin/events").await;
        listed["events"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["source_id"] == "panics"))
            .cloned()
            .ok_or(listed)
    })
    .await;
    assert_eq!(dead["attempts"], 3, "1 try + retry_budget 2: {dead}");
    assert!(
        dead["last_error"]
            .as_str()
            .unwrap()
            .contains("boom on purpose"),
        "{dead}"
    );
    let worker: Value = client
        .get(format!("{ops}/actors/identity_sync/clerk"))
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
    eventually("the worker handles the next event", async || {
        handler.handled.load(Ordering::SeqCst) == 6
    })
    .await;

    app.stop().await;
}

async fn audit_actions(pool: &Pool) -> Vec<String> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use infragpt::db::schema::audit_log;
    let mut conn = pool.get().await.expect("conn");
    audit_log::table
        .select(audit_log::action)
        .order(audit_log::id)
        .load(&mut conn)
        .await
        .expect("audit")
}

/// An app whose routers defer past `high_water_mark` events, quickly.
async fn small_backlog_app(high_water_mark: usize) -> TestApp {
    TestApp::builder()
        .core_only()
        .configure(move |c| {
            c.actors.high_water_mark = high_water_mark;
            c.actors.mailbox_capacity = 4;
            c.actors.drain_interval_ms = 20;
        })
        .start()
        .await
}

/// Registers the `clerk` stream with a handler that handles nothing until the gate opens.
fn register_gated_stream(app: &TestApp) -> (Arc<RecordingHandler>, Arc<tokio::sync::Semaphore>) {
    let handler = RecordingHandler::new();
    let gate = handler.gate_all();
    app.core()
        .cluster
        .register_stream(StreamSpec {
            name: "clerk".to_owned(),
            kind: kinds::IDENTITY_SYNC,
            source: sources::CLERK,
            handler: handler.clone(),
        })
        .expect("stream");
    (handler, gate)
}

#[actix_rt::test]
async fn overload_is_reported_but_keeps_the_service_ready() {
    let app = small_backlog_app(2).await;
    let core = app.core();
    let (handler, gate) = register_gated_stream(&app);
    let base = app.base_url();
    let client = app.http().clone();
    for i in 0..10 {
        core.cluster
            .ingest(NewInboundEvent {
                routing_key: RoutingKey(format!("key-{i}")),
                ..event(&format!("e-{i}"), false)
            })
            .await
            .expect("ingest while overloaded still records");
    }
    // Recording still works, so the service stays ready (taking it out of rotation would
    // turn a burst into an outage); the backlog shows as degraded.
    let ready = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.expect("json");
    assert_eq!(body["status"], "ready", "{body}");
    assert!(
        body["checks"]["actors"]
            .as_str()
            .is_some_and(|s| s.starts_with("degraded: backlog")),
        "{body}"
    );
    gate.add_permits(100);
    eventually("all handled", async || handler.handled_count() == 10).await;
    eventually("no longer degraded once the backlog drained", async || {
        let body: Value = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz")
            .json()
            .await
            .expect("json");
        if body["checks"]["actors"] == "ok" {
            Ok(())
        } else {
            Err(body)
        }
    })
    .await;
    app.stop().await;
}

/// The fully assembled service: every module starts, the tree shows them, and the REST API
/// fails closed when Clerk JWT verification is not configured.
#[actix_rt::test]
async fn assembled_service_starts_and_rest_api_fails_closed() {
    let app = TestApp::builder().configure(quick_retries).start().await;
    let base = app.base_url();
    let ops = app.ops_url();
    let client = app.http().clone();
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
        .get(format!("{ops}/actors"))
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
    app.stop().await;
}

/// `/actors` and `/metrics` name teams, channels, installations and error texts: on the public
/// port they need the admin token (the Bearer scheme in any case, as on every route); the ops
/// listener serves them without one and nothing else. The live-actor gauge agrees with the
/// tree for every kind.
#[actix_rt::test]
async fn ops_data_needs_the_admin_token_on_the_public_port() {
    let app = TestApp::builder().configure(quick_retries).start().await;
    let base = app.base_url();
    let ops = app.ops_url();
    let client = app.http().clone();
    for path in ["/actors", "/actors/supervisor", "/metrics"] {
        requires_the_admin_token(&client, &base, path).await;
        let internal = client
            .get(format!("{ops}{path}"))
            .send()
            .await
            .expect("get");
        assert_eq!(internal.status(), 200, "{path} on the ops listener");
    }
    let admin = client
        .get(format!("{base}/admin/events"))
        .header("authorization", format!("bearer {ADMIN}"))
        .send()
        .await
        .expect("admin");
    assert_eq!(admin.status(), 200, "lowercase bearer on /admin");
    // The ops listener serves health and the ops routes, not the public API.
    for (path, status) in [("/healthz", 200), ("/readyz", 200), ("/integrations", 404)] {
        let r = client
            .get(format!("{ops}{path}"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), status, "{path} on the ops listener");
    }

    // One source of truth: the gauge counts what the tree shows, kind by kind.
    let tree: Value = client
        .get(format!("{ops}/actors"))
        .send()
        .await
        .expect("actors")
        .json()
        .await
        .expect("json");
    let metrics = scrape(&client, &ops).await;
    let kinds = tree["counts"]
        .as_object()
        .unwrap_or_else(|| panic!("the tree has counts per kind: {tree}"));
    assert!(kinds.contains_key("agent_client"), "{tree}");
    for kind in kinds.keys() {
        let group: Value = client
            .get(format!("{ops}/actors/{kind}"))
            .send()
            .await
            .expect("group")
            .json()
            .await
            .expect("json");
        let live = group["actors"]
            .as_array()
            .expect("actors")
            .iter()
            .filter(|a| !matches!(a["state"].as_str(), Some("stopped" | "failed")))
            .count();
        assert_eq!(
            counter(&metrics.samples, "infragpt_actors_live", kind),
            live as f64,
            "infragpt_actors_live{{kind={kind:?}}} against /actors/{kind}: {group}"
        );
    }
    app.stop().await;
}

/// A replica that restarts over a large backlog (rows a killed process left pending) is ready
/// as soon as it can record, and drains the backlog in the background.
#[actix_rt::test]
async fn restart_over_a_large_backlog_is_ready_at_once() {
    use infragpt::db::inbox::PgInbox;
    use infragpt_actors::inbox::InboundEvents as _;
    let app = small_backlog_app(5).await;
    // What a killed replica leaves behind: recorded, never handled.
    let inbox = PgInbox::new(app.pool().clone());
    for i in 0..200 {
        inbox
            .record(NewInboundEvent {
                routing_key: RoutingKey(format!("key-{}", i % 20)),
                ..event(&format!("left-{i}"), false)
            })
            .await
            .expect("record");
    }
    let (handler, gate) = register_gated_stream(&app);
    let client = app.http().clone();
    let base = app.base_url();
    let (status, body) = eventually("the recovering backlog is visible", async || {
        let r = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz");
        let status = r.status().as_u16();
        let body: Value = r.json().await.expect("json");
        if body["checks"]["actors"] != "ok" {
            Ok((status, body))
        } else {
            Err(body)
        }
    })
    .await;
    assert_eq!(status, 200, "ready while the backlog drains: {body}");
    assert_eq!(body["status"], "ready", "{body}");
    gate.add_permits(1000);
    eventually("the backlog drains", async || {
        handler.handled_count() == 200
    })
    .await;
    app.stop().await;
}

/// `GET /admin/audit` on the assembled service: the admin token (any case of `Bearer`), every
/// organization's entries and those of none, `?organization_id=` narrowing to one, paging.
#[actix_rt::test]
async fn admin_audit_needs_the_token_and_sees_every_organization() {
    use infragpt_actors::audit::AuditEntry;

    let app = TestApp::builder().core_only().start().await;
    let (org_a, org_b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    for (org, action) in [
        (Some(org_a), "integration.connected"),
        (Some(org_b), "integration.connected"),
        (Some(org_a), "organization.metadata_updated"),
        (None, "event.requeued"),
        (Some(org_b), "integration.deleted"),
    ] {
        app.seed_audit_entry(AuditEntry {
            organization_id: org,
            actor: "system".to_owned(),
            action: action.to_owned(),
            target: None,
            details: json!({}),
        })
        .await;
    }
    let base = app.base_url();
    let client = app.http().clone();
    let all = requires_the_admin_token(&client, &base, "/admin/audit").await;
    let orgs: Vec<Value> = all["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["organization_id"].clone())
        .collect();
    assert_eq!(
        orgs,
        [
            json!(org_b),
            Value::Null,
            json!(org_a),
            json!(org_b),
            json!(org_a)
        ],
        "every organization, newest first: {all}"
    );
    assert_eq!(all["next_cursor"], Value::Null);

    let (status, only_b) = app
        .admin_get(&format!("/admin/audit?organization_id={org_b}"))
        .await;
    assert_eq!(status, 200, "{only_b}");
    let actions: Vec<&str> = only_b["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["action"].as_str().expect("action"))
        .collect();
    assert_eq!(actions, ["integration.deleted", "integration.connected"]);

    let (status, prefixed) = app
        .admin_get("/admin/audit?action=integration.&limit=2")
        .await;
    assert_eq!(status, 200, "{prefixed}");
    assert_eq!(prefixed["entries"].as_array().expect("entries").len(), 2);
    let cursor = prefixed["next_cursor"].as_str().expect("a next page");
    let (_, rest) = app
        .admin_get(&format!(
            "/admin/audit?action=integration.&limit=2&before={cursor}"
        ))
        .await;
    assert_eq!(
        rest["entries"].as_array().expect("entries").len(),
        1,
        "{rest}"
    );
    assert_eq!(rest["entries"][0]["organization_id"], json!(org_a));
    assert_eq!(rest["next_cursor"], Value::Null);

    for (query, param) in [
        ("organization_id=not-a-uuid", "organization_id"),
        ("before=x", "before"),
        ("since=soon", "since"),
    ] {
        let (status, answer) = app.admin_get(&format!("/admin/audit?{query}")).await;
        assert_eq!(status, 400, "{query}: {answer}");
        assert_eq!(answer["error"]["code"], "bad_request");
        let message = answer["error"]["message"].as_str().expect("message");
        assert!(message.contains(param), "{query}: {message}");
    }
    app.stop().await;
}

/// Values from the caller are echoed clipped in error messages (no 10 KB path segment comes
/// back in a 404 or 400).
#[actix_rt::test]
async fn echoed_values_are_clipped() {
    let app = TestApp::builder().core_only().start().await;
    let long = "x".repeat(10_000);
    for (url, status) in [
        (format!("{}/actors/{long}", app.ops_url()), 404),
        (format!("{}/actors/supervisor/{long}", app.ops_url()), 404),
        (format!("{}/admin/events/{long}", app.base_url()), 400),
    ] {
        let resp = app
            .http()
            .get(&url)
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status(), status, "{}", &url[..60]);
        let body = resp.text().await.expect("body");
        assert!(body.len() < 1_000, "{} bytes: {}", body.len(), &body[..200]);
        assert!(body.contains("(10000 bytes)"), "{body}");
    }
    app.stop().await;
}
