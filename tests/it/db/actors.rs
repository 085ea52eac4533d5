//! The actor core over the real PostgreSQL inbox: ordering, exactly-once handling,
//! idempotent recording, and kill-and-restart on the same database. Waits use generous
//! timeouts only as guards against hangs; no assertion depends on timing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use infragpt::db::inbox::PgInbox;
use infragpt::testkit::test_db::TestDb;
use infragpt_actors::health::HealthRegistry;
use infragpt_actors::inbox::{EventStatus, InboundEvent, InboundEvents, RecordOutcome, RoutingKey};
use infragpt_actors::testing::{RecordingHandler, slack_event};
use infragpt_actors::{Cluster, ClusterConfig, Metrics, StreamSpec};
use infragpt_actors::{kinds, sources};

use crate::support::wait::eventually;

fn config() -> ClusterConfig {
    ClusterConfig {
        backoff_base_ms: 1,
        backoff_max_ms: 5,
        drain_interval_ms: 20,
        ..ClusterConfig::default()
    }
}

fn start(inbox: Arc<PgInbox>, handler: Arc<RecordingHandler>) -> Cluster {
    let cluster = Cluster::start(
        config(),
        inbox,
        HealthRegistry::new(),
        Metrics::new().expect("metrics"),
    )
    .expect("cluster starts");
    cluster
        .register_stream(StreamSpec {
            name: "conversations".into(),
            kind: kinds::CONVERSATION_THREAD,
            source: sources::SLACK,
            handler,
        })
        .expect("stream registers");
    cluster
}

fn key(i: usize) -> String {
    format!("T1/C1/{i}.000100")
}

fn seq(e: &InboundEvent) -> u64 {
    e.payload["seq"].as_u64().expect("seq in payload")
}

fn assert_per_key_order(handled: &[InboundEvent]) {
    let mut last: HashMap<&RoutingKey, u64> = HashMap::new();
    let mut seen = HashSet::new();
    for e in handled {
        assert!(seen.insert(e.id), "event {} handled twice", e.id);
        if let Some(prev) = last.get(&e.routing_key) {
            assert!(seq(e) > *prev, "key {} out of order", e.routing_key);
        }
        last.insert(&e.routing_key, seq(e));
    }
}

async fn count(inbox: &PgInbox, status: EventStatus) -> i64 {
    inbox
        .count_by_status()
        .await
        .expect("counts")
        .into_iter()
        .find(|(s, _)| *s == status)
        .map_or(0, |(_, n)| n)
}

#[actix_rt::test]
async fn two_hundred_threads_interleaved_exactly_once_in_order() {
    let db = TestDb::new().await;
    let inbox = Arc::new(PgInbox::new(db.pool().clone()));
    let handler = RecordingHandler::new();
    let cluster = start(inbox.clone(), handler.clone());
    let (keys, per_key) = (200, 20);
    for s in 0..per_key {
        for k in 0..keys {
            let out = cluster
                .ingest(slack_event(&key(k), s))
                .await
                .expect("ingest");
            assert!(matches!(out, RecordOutcome::Recorded(_)));
        }
    }
    let total = keys * per_key as usize;
    eventually("every event is handled", async || {
        handler.handled_count() >= total
    })
    .await;
    assert_per_key_order(&handler.handled());
    assert_eq!(handler.total_calls(), total as u64);
    assert_eq!(handler.overlaps(), 0, "two events of one thread overlapped");
    eventually("every event is done in the inbox", async || {
        count(&inbox, EventStatus::Done).await == total as i64
    })
    .await;
    cluster.shutdown().await;
}

#[actix_rt::test]
async fn recording_the_same_source_id_twice_dispatches_once() {
    let db = TestDb::new().await;
    let inbox = Arc::new(PgInbox::new(db.pool().clone()));
    let handler = RecordingHandler::new();
    let cluster = start(inbox.clone(), handler.clone());
    let first = cluster
        .ingest(slack_event(&key(1), 7))
        .await
        .expect("first");
    let second = cluster
        .ingest(slack_event(&key(1), 7))
        .await
        .expect("second");
    assert!(matches!(first, RecordOutcome::Recorded(_)));
    assert!(matches!(second, RecordOutcome::Duplicate(_)));
    eventually("the event is handled", async || {
        handler.handled_count() == 1
    })
    .await;
    // One more event behind it proves the duplicate was never queued.
    cluster
        .ingest(slack_event(&key(1), 8))
        .await
        .expect("third");
    eventually("both events are handled", async || {
        handler.handled_count() == 2
    })
    .await;
    assert_eq!(handler.total_calls(), 2);
    cluster.shutdown().await;
}

#[actix_rt::test]
async fn kill_and_restart_on_the_same_database_resumes_in_order_exactly_once() {
    let db = TestDb::new().await;
    let inbox = Arc::new(PgInbox::new(db.pool().clone()));
    let first = RecordingHandler::new();
    let gate = first.gate_all();
    let cluster = start(inbox.clone(), first.clone());
    let (keys, per_key) = (20, 10);
    for s in 0..per_key {
        for k in 0..keys {
            cluster
                .ingest(slack_event(&key(k), s))
                .await
                .expect("ingest");
        }
    }
    let total = keys * per_key as usize;
    gate.add_permits(40);
    eventually("40 events are handled", async || {
        first.handled_count() >= 40
    })
    .await;
    let stopping = {
        let c = cluster.clone();
        actix_rt::spawn(async move { c.shutdown().await })
    };
    eventually("the cluster stops accepting", async || {
        !cluster.is_accepting()
    })
    .await;
    gate.add_permits(total);
    stopping.await.expect("shutdown");
    let done_before = first.handled_count();
    assert!(
        done_before < total,
        "shutdown came too late to test anything"
    );
    assert_eq!(count(&inbox, EventStatus::Processing).await, 0);

    // A new actor system on the same database (a fresh pool, as after a process restart).
    let inbox2 = Arc::new(PgInbox::new(db.pool().clone()));
    let second = RecordingHandler::new();
    let cluster2 = start(inbox2.clone(), second.clone());
    let report = cluster2.recover().await.expect("recover");
    assert!(report.unfinished >= 0);
    let remaining = total - done_before;
    eventually("the rest is handled after the restart", async || {
        second.handled_count() >= remaining
    })
    .await;
    let mut all = first.handled();
    all.extend(second.handled());
    assert_eq!(all.len(), total);
    assert_per_key_order(&all);
    assert_eq!(first.total_calls() + second.total_calls(), total as u64);
    eventually("every event is done in the inbox", async || {
        count(&inbox2, EventStatus::Done).await == total as i64
    })
    .await;
    cluster2.shutdown().await;
}
