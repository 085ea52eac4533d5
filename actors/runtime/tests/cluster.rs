//! Behaviour of the actor cluster against the in-memory inbox. Waits use generous timeouts
//! only as guards against hangs; no assertion depends on timing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use infragpt_runtime::health::{ActorKind, ActorState, HealthRegistry};
use infragpt_runtime::inbox::{
    EventSource, EventStatus, InboundEvent, InboundEvents, RecordOutcome, RoutingKey,
};
use infragpt_runtime::testing::{MemoryInbox, RecordingHandler, Script, eventually, keyed_event};
use infragpt_runtime::{Cluster, ClusterConfig, IngestError, Metrics, StreamSpec};

const GUARD: Duration = Duration::from_secs(60);

/// The worker kind and source of the stream under test (names as the application uses them).
const THREAD: ActorKind = ActorKind::new("conversation_thread");
const SLACK: EventSource = EventSource::new("slack");

fn slack_event(key: &str, seq: u64) -> infragpt_runtime::inbox::NewInboundEvent {
    keyed_event(SLACK, key, seq)
}

fn fast_config() -> ClusterConfig {
    ClusterConfig {
        backoff_base_ms: 1,
        backoff_max_ms: 5,
        drain_interval_ms: 10,
        ..ClusterConfig::default()
    }
}

fn start(
    config: ClusterConfig,
    inbox: Arc<MemoryInbox>,
    handler: Arc<RecordingHandler>,
) -> Cluster {
    let cluster = Cluster::start(
        config,
        inbox,
        HealthRegistry::new(),
        Metrics::new().expect("metrics"),
    )
    .expect("cluster starts");
    cluster
        .register_stream(StreamSpec {
            name: "conversations".into(),
            kind: THREAD,
            source: SLACK,
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

/// Every key's handled events are in increasing seq order and each (key, seq) appears once.
fn assert_per_key_order(handled: &[InboundEvent]) {
    let mut last: HashMap<&RoutingKey, u64> = HashMap::new();
    let mut seen = HashSet::new();
    for e in handled {
        assert!(seen.insert(e.id), "event {} handled twice", e.id);
        if let Some(prev) = last.get(&e.routing_key) {
            assert!(
                seq(e) > *prev,
                "key {} handled seq {} after {}",
                e.routing_key,
                seq(e),
                prev
            );
        }
        last.insert(&e.routing_key, seq(e));
    }
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("series {series} missing from metrics"))
}

#[actix_rt::test]
async fn many_threads_ordered_exactly_once_and_concurrent() {
    let inbox = MemoryInbox::new();
    let handler = RecordingHandler::new();
    let cluster = start(fast_config(), inbox.clone(), handler.clone());
    let slow = RoutingKey(key(0));
    let gate = handler.gate_key(&slow);

    let (keys, per_key) = (200, 20);
    for s in 0..per_key {
        for k in 0..keys {
            let out = cluster.ingest(slack_event(&key(k), s)).await.unwrap();
            assert!(matches!(out, RecordOutcome::Recorded(_)));
        }
    }
    let others = (keys - 1) * per_key as usize;
    // Every other key finishes while the slow key's first event is still held at its gate:
    // a blocked key does not delay the others.
    assert!(
        eventually(GUARD, || handler.handled_count() >= others).await,
        "other keys did not finish while one key was blocked"
    );
    assert!(handler.handled().iter().all(|e| e.routing_key != slow));
    assert_eq!(
        handler.calls(inbox.all()[0].id),
        1,
        "slow key's first event is blocked inside the handler"
    );
    gate.add_permits(per_key as usize);
    let total = keys * per_key as usize;
    assert!(eventually(GUARD, || handler.handled_count() >= total).await);

    let handled = handler.handled();
    assert_eq!(handled.len(), total);
    assert_per_key_order(&handled);
    assert_eq!(handler.overlaps(), 0, "two events of one key ran at once");
    assert_eq!(
        handler.total_calls(),
        total as u64,
        "each event handled exactly once"
    );
    // The handler returns before the worker's done mark is written.
    assert!(eventually(GUARD, || inbox.count(EventStatus::Done) == total).await);
    cluster.shutdown().await;
}

#[actix_rt::test]
async fn panicking_event_is_retried_then_dead_lettered() {
    let inbox = MemoryInbox::new();
    let handler = RecordingHandler::new();
    let config = ClusterConfig {
        retry_budget: 2,
        restart_limit: 100,
        ..fast_config()
    };
    let cluster = start(config, inbox.clone(), handler.clone());
    let poison_key = key(1);
    handler.script(
        format!("{poison_key}#3"),
        Script::Panic("boom at seq 3".into()),
    );

    for s in 0..6 {
        for k in 0..5 {
            cluster.ingest(slack_event(&key(k), s)).await.unwrap();
        }
    }
    assert!(eventually(GUARD, || handler.handled_count() >= 29).await);
    assert!(
        eventually(GUARD, || inbox.count(EventStatus::Failed) == 1).await,
        "the poison event becomes a dead letter"
    );
    let dead = cluster.dead_letters(10, 0).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].source_id, format!("{poison_key}#3"));
    assert_eq!(dead[0].attempts, 3, "first attempt plus the retry budget");
    let err = dead[0].last_error.as_deref().unwrap();
    assert!(
        err.contains("panicked") && err.contains("boom at seq 3"),
        "{err}"
    );
    assert_eq!(handler.calls(dead[0].id), 3);

    // The same key went on after the dead letter, in order.
    let handled = handler.handled();
    assert_per_key_order(&handled);
    let after: Vec<u64> = handled
        .iter()
        .filter(|e| e.routing_key.0 == poison_key)
        .map(seq)
        .collect();
    assert_eq!(after, vec![0, 1, 2, 4, 5]);

    let worker = cluster
        .health()
        .get(THREAD, &poison_key)
        .expect("worker still registered");
    assert_eq!(worker.restarts, 3);
    assert_eq!(worker.state, ActorState::Running);
    assert!(worker.last_error.unwrap().contains("boom at seq 3"));
    let text = cluster.encode_metrics();
    assert_eq!(
        metric(
            &text,
            "infragpt_actor_restarts_total{kind=\"conversation_thread\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &text,
            "infragpt_dead_letters_total{kind=\"conversation_thread\"}"
        ),
        1.0
    );

    // A requeued dead letter runs again (and, once fixed, succeeds).
    handler.script(format!("{poison_key}#3"), Script::Ignore("fixed".into()));
    assert!(
        cluster
            .requeue_dead_letter(dead[0].id)
            .await
            .unwrap()
            .is_some()
    );
    assert!(eventually(GUARD, || inbox.count(EventStatus::Ignored) == 1).await);
    assert!(
        cluster
            .requeue_dead_letter(dead[0].id)
            .await
            .unwrap()
            .is_none()
    );
    cluster.shutdown().await;
}

#[actix_rt::test]
async fn duplicate_source_id_dispatches_once() {
    let inbox = MemoryInbox::new();
    let handler = RecordingHandler::new();
    let cluster = start(fast_config(), inbox.clone(), handler.clone());
    let first = cluster.ingest(slack_event(&key(7), 1)).await.unwrap();
    // Handled, and counted once the router's first scan (which may find it too; a second
    // dispatch of a finished event only claims nothing) has settled: from here on only the
    // duplicate could dispatch it again.
    assert!(eventually(GUARD, || handler.handled_count() == 1).await);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let claims = inbox.claim_calls(first.event().id);
    let dup = cluster.ingest(slack_event(&key(7), 1)).await.unwrap();
    let RecordOutcome::Duplicate(d) = dup else {
        panic!("second record must be a duplicate")
    };
    assert_eq!(d.id, first.event().id);
    // A later event of the same key: once it is handled, anything dispatched before it for
    // this key has been claimed.
    cluster.ingest(slack_event(&key(7), 2)).await.unwrap();
    assert!(eventually(GUARD, || handler.handled_count() == 2).await);
    assert_eq!(
        inbox.claim_calls(d.id),
        claims,
        "the duplicate was dispatched"
    );
    assert_eq!(handler.calls(d.id), 1);
    cluster.shutdown().await;
}

#[actix_rt::test]
async fn restart_resumes_unfinished_events_in_order_exactly_once() {
    let inbox = MemoryInbox::new();
    let first = RecordingHandler::new();
    let gate = first.gate_all();
    let cluster = start(fast_config(), inbox.clone(), first.clone());
    let (keys, per_key) = (20, 10);
    for s in 0..per_key {
        for k in 0..keys {
            cluster.ingest(slack_event(&key(k), s)).await.unwrap();
        }
    }
    let total = keys * per_key as usize;
    gate.add_permits(50);
    assert!(eventually(GUARD, || first.handled_count() >= 50).await);
    // Stop mid-stream: the events being handled finish (permits follow the shutdown
    // request), queued ones stay in the inbox.
    let stopping = {
        let c = cluster.clone();
        actix_rt::spawn(async move { c.shutdown().await })
    };
    assert!(eventually(GUARD, || !cluster.is_accepting()).await);
    gate.add_permits(total);
    stopping.await.unwrap();
    assert!(matches!(
        cluster.ingest(slack_event("late", 0)).await,
        Err(IngestError::ShuttingDown)
    ));
    let done_before = first.handled_count();
    assert!(
        done_before < total,
        "shutdown came too late to test anything"
    );
    assert_eq!(
        inbox.count(EventStatus::Processing),
        0,
        "no event was cut off mid-way"
    );

    let second = RecordingHandler::new();
    let gate = second.gate_all();
    let cluster = start(fast_config(), inbox.clone(), second.clone());
    // New events arrive right away, before recovery is even asked for: they must not
    // overtake the older unfinished events of their keys.
    for k in 0..keys {
        cluster.ingest(slack_event(&key(k), per_key)).await.unwrap();
    }
    // Every key's worker is now held at the gate inside its first event.
    assert!(eventually(GUARD, || second.total_calls() == keys as u64).await);
    let report = cluster.recover().await.unwrap();
    assert_eq!(report.unfinished, (total - done_before + keys) as i64);
    gate.add_permits(total + keys);
    let remaining = total - done_before + keys;
    assert!(eventually(GUARD, || second.handled_count() >= remaining).await);

    eprintln!(
        "done_before {done_before}; second order: {:?}",
        second
            .handled()
            .iter()
            .map(|e| (e.routing_key.0.clone(), seq(e)))
            .collect::<Vec<_>>()
    );
    let mut all = first.handled();
    all.extend(second.handled());
    assert_eq!(all.len(), total + keys);
    assert_per_key_order(&all);
    assert_eq!(
        first.total_calls() + second.total_calls(),
        (total + keys) as u64
    );
    // The handler returns before the worker's done mark is written.
    assert!(eventually(GUARD, || inbox.count(EventStatus::Done) == total + keys).await);
    cluster.shutdown().await;
}

#[actix_rt::test]
async fn idle_workers_stop_and_restart_on_demand() {
    let inbox = MemoryInbox::new();
    let handler = RecordingHandler::new();
    let config = ClusterConfig {
        idle_timeout_ms: 30,
        ..fast_config()
    };
    let cluster = start(config, inbox.clone(), handler.clone());
    let k = key(3);
    cluster.ingest(slack_event(&k, 0)).await.unwrap();
    assert!(eventually(GUARD, || handler.handled_count() == 1).await);
    let health = cluster.health().clone();
    assert!(
        eventually(GUARD, || health.get(THREAD, &k).is_none()).await,
        "idle worker stops and leaves the registry"
    );
    let text = cluster.encode_metrics();
    assert_eq!(
        metric(&text, "infragpt_actors_live{kind=\"conversation_thread\"}"),
        0.0
    );

    cluster.ingest(slack_event(&k, 1)).await.unwrap();
    assert!(eventually(GUARD, || handler.handled_count() == 2).await);
    assert_per_key_order(&handler.handled());
    cluster.shutdown().await;
}

#[actix_rt::test]
async fn metrics_move_with_the_work() {
    let inbox = MemoryInbox::new();
    let handler = RecordingHandler::new();
    let cluster = start(fast_config(), inbox.clone(), handler.clone());
    let series = "infragpt_actor_messages_handled_total{kind=\"conversation_thread\"}";
    assert_eq!(metric(&cluster.encode_metrics(), series), 0.0);
    handler.script(format!("{}#2", key(0)), Script::Reject("malformed".into()));
    for s in 0..3 {
        for k in 0..4 {
            cluster.ingest(slack_event(&key(k), s)).await.unwrap();
        }
    }
    assert!(eventually(GUARD, || handler.handled_count() == 11).await);
    assert!(eventually(GUARD, || inbox.count(EventStatus::Failed) == 1).await);
    // The handler has returned; the worker counts an event once its mark is written.
    let counted = [
        (series, 11.0),
        (
            "infragpt_actor_handling_seconds_count{kind=\"conversation_thread\"}",
            11.0,
        ),
        (
            "infragpt_actor_failures_total{kind=\"conversation_thread\"}",
            1.0,
        ),
        (
            "infragpt_dead_letters_total{kind=\"conversation_thread\"}",
            1.0,
        ),
    ];
    assert!(
        eventually(GUARD, || {
            let text = cluster.encode_metrics();
            counted.iter().all(|(name, n)| metric(&text, name) == *n)
        })
        .await,
        "{}",
        cluster.encode_metrics()
    );
    let text = cluster.encode_metrics();
    assert_eq!(
        metric(
            &text,
            "infragpt_actor_restarts_total{kind=\"conversation_thread\"}"
        ),
        0.0,
        "a rejection is no restart"
    );
    assert_eq!(
        metric(&text, "infragpt_actors_live{kind=\"conversation_thread\"}"),
        4.0
    );
    assert!(text.contains("infragpt_inbox_backlog{stream=\"conversations\"}"));
    cluster.shutdown().await;
}

#[actix_rt::test]
async fn backpressure_defers_but_handles_everything_once_in_order() {
    let inbox = MemoryInbox::new();
    let handler = RecordingHandler::new();
    let config = ClusterConfig {
        high_water_mark: 3,
        mailbox_capacity: 4,
        drain_page_size: 7,
        drain_interval_ms: 5,
        ..fast_config()
    };
    let cluster = start(config, inbox.clone(), handler.clone());
    let gate = handler.gate_all();
    let (keys, per_key) = (20, 10);
    for s in 0..per_key {
        for k in 0..keys {
            cluster.ingest(slack_event(&key(k), s)).await.unwrap();
        }
    }
    assert!(
        cluster.is_overloaded(),
        "nothing can finish yet, so the backlog is over the mark"
    );
    let total = keys * per_key as usize;
    gate.add_permits(total);
    assert!(eventually(GUARD, || handler.handled_count() >= total).await);
    assert!(eventually(GUARD, || !cluster.is_overloaded()).await);
    let handled = handler.handled();
    assert_eq!(handled.len(), total);
    assert_per_key_order(&handled);
    assert_eq!(handler.total_calls(), total as u64);
    assert_eq!(handler.overlaps(), 0);
    let text = cluster.encode_metrics();
    assert!(
        metric(
            &text,
            "infragpt_inbox_deferred_total{stream=\"conversations\"}"
        ) > 0.0
    );
    cluster.shutdown().await;
}

#[actix_rt::test]
async fn restart_storm_fails_one_worker_and_others_go_on() {
    let inbox = MemoryInbox::new();
    let handler = RecordingHandler::new();
    let config = ClusterConfig {
        retry_budget: 100,
        restart_limit: 3,
        // Three restarts take a few milliseconds; the window is also the quarantine.
        restart_window_ms: 2_000,
        ..fast_config()
    };
    let cluster = start(config, inbox.clone(), handler.clone());
    let bad = key(9);
    handler.script(format!("{bad}#0"), Script::Fail("agent down".into()));
    for s in 0..3 {
        for k in [bad.clone(), key(1), key(2)] {
            cluster.ingest(slack_event(&k, s)).await.unwrap();
        }
    }
    let health = cluster.health().clone();
    assert!(
        eventually(GUARD, || health
            .get(THREAD, &bad)
            .is_some_and(|w| w.state == ActorState::Failed))
        .await
    );
    assert!(eventually(GUARD, || handler.handled_count() == 6).await);
    // The failed key's events wait in the inbox (quarantined), nothing was lost.
    assert_eq!(inbox.count(EventStatus::Pending), 3);
    let worker = health.get(THREAD, &bad).unwrap();
    assert!(worker.last_error.unwrap().contains("restart limit"));
    let router = health.get(ActorKind::SUPERVISOR, "conversations").unwrap();
    assert_eq!(router.state, ActorState::Running);
    // Still serving other keys.
    cluster.ingest(slack_event(&key(1), 3)).await.unwrap();
    assert!(eventually(GUARD, || handler.handled_count() >= 7).await);
    let tree = health.tree();
    assert_eq!(tree.counts[&THREAD][&ActorState::Failed], 1);

    // Once the quarantine ends the key gets a fresh worker and its events run, in order.
    handler.script(format!("{bad}#0"), Script::Ignore("recovered".into()));
    assert!(eventually(GUARD, || handler.handled_count() == 9).await);
    assert!(eventually(GUARD, || inbox.count(EventStatus::Ignored) == 1).await);
    assert_per_key_order(&handler.handled());
    let worker = health.get(THREAD, &bad).unwrap();
    assert_eq!(worker.state, ActorState::Running);
    cluster.shutdown().await;
}

/// A worker that fails for good can still be sent an event: the router dispatched it before
/// it heard of the failure, and the worker had stopped when it arrived. The event goes back
/// to the inbox with the key's others and runs when the quarantine ends, instead of staying
/// "in flight" with no worker for ever.
#[actix_rt::test]
async fn an_event_sent_to_a_worker_as_it_fails_runs_after_the_quarantine() {
    let inbox = MemoryInbox::new();
    let handler = RecordingHandler::new();
    let config = ClusterConfig {
        retry_budget: 100,
        restart_limit: 1,
        restart_window_ms: 200,
        // The ingest records and dispatches in its first poll, with no writer in between.
        inbox_group_commit: false,
        ..fast_config()
    };
    let cluster = start(config, inbox.clone(), handler.clone());
    let bad = key(9);
    handler.script(format!("{bad}#0"), Script::Fail("agent down".into()));
    let gate = handler.gate_key(&RoutingKey(bad.clone()));
    cluster.ingest(slack_event(&bad, 0)).await.unwrap();
    assert!(eventually(GUARD, || handler.total_calls() == 1).await);
    // Let the failing attempt go and dispatch the next event in the same step: the worker
    // fails (and stops) before the router, which was woken after it, handles the dispatch.
    gate.add_permits(1);
    cluster.ingest(slack_event(&bad, 1)).await.unwrap();
    let health = cluster.health().clone();
    assert!(
        eventually(GUARD, || health
            .get(THREAD, &bad)
            .is_some_and(|w| w.state == ActorState::Failed))
        .await
    );
    handler.script(format!("{bad}#0"), Script::Ignore("recovered".into()));
    gate.add_permits(10);
    assert!(
        eventually(GUARD, || handler.handled_count() == 1).await,
        "{bad}#1 is handled once the quarantine ends"
    );
    assert_eq!(handler.handled()[0].source_id, format!("{bad}#1"));
    assert!(eventually(GUARD, || inbox.count(EventStatus::Ignored) == 1).await);
    cluster.shutdown().await;
}

#[actix_rt::test]
async fn store_outage_is_survived_with_restarts() {
    let inbox = MemoryInbox::new();
    let handler = RecordingHandler::new();
    let config = ClusterConfig {
        restart_limit: 10_000,
        ..fast_config()
    };
    let cluster = start(config, inbox.clone(), handler.clone());
    let gate = handler.gate_all();
    let k = key(4);
    for s in 0..3 {
        cluster.ingest(slack_event(&k, s)).await.unwrap();
    }
    assert!(eventually(GUARD, || handler.total_calls() == 1).await);
    inbox.set_unavailable(true);
    assert!(matches!(
        cluster.ingest(slack_event(&k, 9)).await,
        Err(IngestError::Store(_))
    ));
    gate.add_permits(10);
    let health = cluster.health().clone();
    assert!(
        eventually(GUARD, || health
            .get(THREAD, &k)
            .is_some_and(|w| w.restarts >= 2))
        .await,
        "the worker restarts while the store is down"
    );
    inbox.set_unavailable(false);
    assert!(eventually(GUARD, || inbox.count(EventStatus::Done) == 3).await);
    let handled = handler.handled();
    assert_per_key_order(&handled[1..]);
    // The first event ran but its outcome could not be stored: it runs again (at least once).
    assert_eq!(handler.calls(inbox.all()[0].id), 2);
    assert_eq!(handler.total_calls(), 4);
    cluster.shutdown().await;
}

/// An event can reach its key's worker before an older one of the same key (with replicas,
/// the older one was recorded elsewhere and its announcement is still on its way): the inbox
/// refuses the newer claim, the worker takes the older events first, and each runs once.
#[actix_rt::test]
async fn a_newer_event_that_arrives_first_waits_for_the_older_ones() {
    let inbox = MemoryInbox::new();
    let handler = RecordingHandler::new();
    let cluster = start(fast_config(), inbox.clone(), handler.clone());
    cluster.recover().await.expect("recover");
    let k = key(1);
    // Recorded, never dispatched: as if another replica's announcement were still in flight.
    for s in 0..3 {
        inbox.record(slack_event(&k, s)).await.expect("record");
    }
    cluster.ingest(slack_event(&k, 3)).await.expect("ingest");
    assert!(eventually(GUARD, || handler.handled_count() >= 4).await);
    let handled = handler.handled();
    assert_eq!(
        handled.iter().map(seq).collect::<Vec<_>>(),
        [0, 1, 2, 3],
        "in id order"
    );
    assert_per_key_order(&handled);
    assert_eq!(handler.total_calls(), 4, "each event handled once");
    // The handler returns before the worker's done mark is written.
    assert!(eventually(GUARD, || inbox.count(EventStatus::Done) == 4).await);
    cluster.shutdown().await;
}

/// With group commit an event dispatched here is claimed by the insert that records it: its
/// worker handles it under that claim (attempt 1) without claiming it again. The next event
/// of the key, recorded while the first is still handled, is claimed too, behind the first
/// (its worker handles the two in order); a third recorded then is pending (the second is
/// unfinished) and claimed when its turn comes; a retry claims again. Each runs once per
/// attempt, in order.
#[actix_rt::test]
async fn an_event_claimed_as_it_is_recorded_is_handled_without_claiming_it_again() {
    let inbox = MemoryInbox::new();
    let handler = RecordingHandler::new();
    let config = ClusterConfig {
        retry_budget: 2,
        restart_limit: 100,
        inbox_claim_at_record: true,
        ..fast_config()
    };
    let cluster = start(config, inbox.clone(), handler.clone());
    cluster.recover().await.expect("recover");
    let k = key(1);
    let gate = handler.gate_key(&RoutingKey(k.clone()));
    handler.script(format!("{k}#3"), Script::Fail("always".into()));

    let first = cluster.ingest(slack_event(&k, 0)).await.expect("ingest");
    let first = first.claimed().expect("claimed as it was recorded").id;
    assert!(eventually(GUARD, || handler.calls(first) == 1).await);
    // Still in the handler: the next one of the key is claimed behind it...
    let second = cluster.ingest(slack_event(&k, 1)).await.expect("ingest");
    let second = second
        .claimed()
        .expect("claimed behind the running event")
        .id;
    // ... but not a third: the second is unfinished and not running.
    let third = cluster.ingest(slack_event(&k, 2)).await.expect("ingest");
    assert!(third.claimed().is_none(), "{third:?}");
    assert_eq!(third.event().status, EventStatus::Pending);
    let third = third.event().id;
    gate.add_permits(3);
    assert!(eventually(GUARD, || inbox.count(EventStatus::Done) == 3).await);
    let fourth = cluster.ingest(slack_event(&k, 3)).await.expect("ingest");
    let fourth = fourth.claimed().expect("nothing older unfinished").id;
    gate.add_permits(10);
    assert!(eventually(GUARD, || inbox.count(EventStatus::Failed) == 1).await);

    for (id, what) in [(first, "first"), (second, "second")] {
        assert_eq!(
            inbox.claim_calls(id),
            0,
            "{what}: handled under the record's claim"
        );
    }
    assert_eq!(inbox.claim_calls(third), 1);
    assert_eq!(inbox.claim_calls(fourth), 2, "each retry claims again");
    assert_eq!(handler.calls(fourth), 3);
    let handled = handler.handled();
    assert_eq!(handled.iter().map(seq).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(handled.iter().all(|e| e.attempts == 1), "{handled:?}");
    assert_eq!(handler.overlaps(), 0);
    let dead = inbox.all().into_iter().find(|e| e.id == fourth).unwrap();
    assert_eq!(
        dead.attempts, 3,
        "the record's claim counts as the first attempt"
    );
    cluster.shutdown().await;
}

/// An event claimed behind a running one still waits for it when that attempt fails: the
/// worker retries the older event first (claiming it again), then handles the newer one
/// under the record's claim. Nothing runs twice at once, and the order holds.
#[actix_rt::test]
async fn an_event_claimed_behind_a_failing_one_runs_after_its_retry() {
    let inbox = MemoryInbox::new();
    let handler = RecordingHandler::new();
    let config = ClusterConfig {
        retry_budget: 2,
        restart_limit: 100,
        inbox_claim_at_record: true,
        ..fast_config()
    };
    let cluster = start(config, inbox.clone(), handler.clone());
    cluster.recover().await.expect("recover");
    let k = key(1);
    let gate = handler.gate_key(&RoutingKey(k.clone()));
    let flaky = format!("{k}#0");
    handler.script(flaky.clone(), Script::Fail("flaky".into()));

    let first = cluster.ingest(slack_event(&k, 0)).await.expect("ingest");
    let first = first.claimed().expect("claimed as it was recorded").id;
    assert!(eventually(GUARD, || handler.calls(first) == 1).await);
    let second = cluster.ingest(slack_event(&k, 1)).await.expect("ingest");
    let second = second
        .claimed()
        .expect("claimed behind the running event")
        .id;
    // The first attempt fails; the retry enters the handler and waits at the gate.
    gate.add_permits(1);
    assert!(eventually(GUARD, || handler.calls(first) == 2).await);
    assert_eq!(
        handler.calls(second),
        0,
        "the newer event waits for the retry"
    );
    handler.unscript(&flaky);
    gate.add_permits(10);
    assert!(eventually(GUARD, || inbox.count(EventStatus::Done) == 2).await);

    let handled = handler.handled();
    assert_eq!(handled.iter().map(seq).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(inbox.claim_calls(first), 1, "the retry claims again");
    assert_eq!(
        inbox.claim_calls(second),
        0,
        "handled under the record's claim"
    );
    assert_eq!(handler.calls(second), 1);
    assert_eq!(handler.overlaps(), 0);
    cluster.shutdown().await;
}

/// The dispatch of an event claimed as it was recorded can arrive after a newer event of its
/// key (two ingests finishing out of order): the newer one finds it unfinished, its worker
/// adopts it and handles it under a claim of its own. The late dispatch then carries a
/// stale claim; the worker claims afresh instead of running the event a second time.
#[actix_rt::test]
async fn a_late_dispatch_with_a_stale_claim_does_not_run_the_event_again() {
    let inbox = MemoryInbox::new();
    let handler = RecordingHandler::new();
    let config = ClusterConfig {
        inbox_claim_at_record: true,
        ..fast_config()
    };
    let cluster = start(config, inbox.clone(), handler.clone());
    cluster.recover().await.expect("recover");
    assert!(eventually(GUARD, || !cluster.is_overloaded()).await);
    let k = key(1);
    // Both records are written before either caller hears back.
    let batches = inbox.hold_batches();
    let first = cluster.ingest(slack_event(&k, 0));
    let second = cluster.ingest(slack_event(&k, 1));
    batches.add_permits(100);
    let second = second.await.expect("ingest");
    assert!(second.claimed().is_none(), "{second:?}");
    assert!(eventually(GUARD, || handler.handled_count() == 2).await);
    let first = first.await.expect("ingest");
    let first = first.claimed().expect("claimed as it was recorded").id;
    assert!(
        eventually(GUARD, || inbox.claim_calls(first) == 2).await,
        "adopted and claimed once, then its late dispatch claims again"
    );
    assert_eq!(handler.calls(first), 1, "handled once");
    let handled = handler.handled();
    assert_eq!(handled.iter().map(seq).collect::<Vec<_>>(), [0, 1]);
    cluster.shutdown().await;
}
