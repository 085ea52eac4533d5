//! Replicas on one database inside one test process (each with its own pool, actor core,
//! Socket Mode connection and listeners): the partitions are split and handed over, every
//! mention is answered once whichever replica records it, and the lease fences claims and
//! marks. Real processes (SIGKILL, SIGSTOP, a cut database connection) are in
//! `cluster::processes`.

use std::time::Duration;

use infragpt::db::PgInbox;
use infragpt::db::cluster::{PgMembership, sql_partition};
use infragpt::testkit::slack_sim::SimConfig;
use infragpt::testkit::test_db::TestDb;
use infragpt_actors::Cluster;
use infragpt_actors::inbox::{
    EventStatus, InboundEvents, NewInboundEvent, Partition, RecordOutcome, RoutingKey, StoreError,
};
use infragpt_actors::partitions::{Membership, ReplicaId};
use infragpt_actors::sources;
use serde_json::json;

use super::conversations::{ALICE, Chat, service};
use crate::support::wait::eventually;

/// Partitions `cluster` holds now.
fn held(cluster: &Cluster) -> usize {
    cluster
        .replica_status()
        .expect("a replicated cluster")
        .partitions
        .len()
}

/// `infragpt_actor_messages_handled_total` of the conversation workers of one replica.
fn turns_handled(cluster: &Cluster) -> u64 {
    cluster
        .encode_metrics()
        .lines()
        .find(|l| {
            l.starts_with("infragpt_actor_messages_handled_total{kind=\"conversation_thread\"}")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[actix_rt::test]
async fn two_replicas_share_the_partitions_and_hand_them_over_on_stop() {
    let app = service(SimConfig::default())
        .with_dev_agent()
        .configure(|c| {
            c.cluster.lease_ms = 1_500;
            c.cluster.heartbeat_ms = 300;
            c.cluster.safety_margin_ms = 300;
        })
        .start()
        .await;
    assert_eq!(
        held(app.cluster()),
        64,
        "a lone replica holds every partition"
    );

    let (second, second_core) = app.start_replica().await;
    app.wait_connected(2).await;
    eventually("the two replicas split the partitions", async || {
        let (a, b) = (held(app.cluster()), held(&second_core.cluster));
        if a + b == 64 && a > 0 && b > 0 {
            Ok(())
        } else {
            Err((a, b))
        }
    })
    .await;
    let (status, view) = app.admin_get("/cluster").await;
    assert_eq!(status, 200, "{view}");
    let live: Vec<&serde_json::Value> = view["view"]["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .filter(|r| r["live"] == true)
        .collect();
    assert_eq!(live.len(), 2, "{view}");
    let owned: usize = live
        .iter()
        .map(|r| r["partitions"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(owned, 64, "{view}");

    // Mentions over many threads: the simulator spreads them over both replicas' sockets,
    // and each thread's partition decides which replica handles it.
    let threads: Vec<String> = (0..24)
        .map(|i| app.mention(ALICE, &format!("replicas {i}")))
        .collect();
    for t in &threads {
        app.wait_replies(t, 1).await;
    }
    app.settle().await;
    for t in &threads {
        assert_eq!(app.bot_replies(t).len(), 1, "thread {t} answered once");
    }
    let (a, b) = (
        turns_handled(app.cluster()),
        turns_handled(&second_core.cluster),
    );
    assert!(a > 0 && b > 0, "both replicas handled turns: {a} and {b}");

    // A graceful stop hands the second replica's partitions over at once, not after its
    // leases lapse: the next mention in one of its threads is answered by the first.
    second.stop().await.expect("clean stop");
    eventually(
        "the first replica holds every partition again",
        async || {
            let n = held(app.cluster());
            if n == 64 { Ok(()) } else { Err(n) }
        },
    )
    .await;
    let after = app.mention(ALICE, "after the hand-over");
    app.wait_replies(&after, 1).await;
    app.settle().await;
    app.stop().await;
}

fn event(source_id: &str, key: &str) -> NewInboundEvent {
    NewInboundEvent {
        source: sources::SLACK,
        source_id: source_id.to_owned(),
        routing_key: RoutingKey(key.to_owned()),
        kind: "app_mention".to_owned(),
        payload: json!({"event_id": source_id}).into(),
    }
}

/// A record claims its event only for the replica that holds its partition's lease: nobody
/// while the partition is free, A once A holds it, never B.
#[tokio::test]
async fn a_record_claims_only_for_the_partitions_holder() {
    use infragpt_actors::inbox::Recording;
    let db = TestDb::new().await;
    let pool = db.pool().clone();
    let (a, b) = (ReplicaId("replica-a".into()), ReplicaId("replica-b".into()));
    let member_a = PgMembership::new(
        pool.clone(),
        db.url.clone(),
        Duration::from_secs(5),
        a.clone(),
        "test-host".to_owned(),
    );
    let inbox_a = PgInbox::fenced(pool.clone(), &a, Duration::ZERO);
    let inbox_b = PgInbox::fenced(pool.clone(), &b, Duration::ZERO);
    let claiming = |id: &str, key: &str| {
        vec![Recording {
            event: event(id, key),
            claim: true,
            behind: None,
        }]
    };
    let status = |outcomes: &[Result<RecordOutcome, StoreError>]| match &outcomes[0] {
        Ok(RecordOutcome::Recorded(e)) => (e.status, e.attempts),
        other => panic!("new event: {other:?}"),
    };
    let key = "T1/C1/1700000000.000100";
    let free = inbox_a.record_batch(claiming("Free", key)).await;
    assert_eq!(
        status(&free),
        (EventStatus::Pending, 0),
        "nobody holds the partition"
    );
    let p = free[0].as_ref().unwrap().event().partition;
    // The first event is finished elsewhere so the next ones are not behind it.
    let first = free[0].as_ref().unwrap().event().id;
    member_a
        .heartbeat(false, Duration::from_secs(30))
        .await
        .expect("heartbeat");
    member_a
        .renew_and_acquire(&[p], Duration::from_secs(30))
        .await
        .expect("acquire");
    let claim = inbox_a.claim(first).await.unwrap().unwrap().claim();
    inbox_a.mark_done(claim).await.unwrap();

    let by_b = inbox_b.record_batch(claiming("ByB", key)).await;
    assert_eq!(
        status(&by_b),
        (EventStatus::Pending, 0),
        "B does not hold it"
    );
    let pending = by_b[0].as_ref().unwrap().event().id;
    let claim = inbox_a.claim(pending).await.unwrap().unwrap().claim();
    inbox_a.mark_done(claim).await.unwrap();
    let by_a = inbox_a.record_batch(claiming("ByA", key)).await;
    assert_eq!(status(&by_a), (EventStatus::Processing, 1), "A holds it");
    assert!(matches!(
        inbox_b
            .mark_done(by_a[0].as_ref().unwrap().event().claim())
            .await,
        Err(StoreError::Fenced(_))
    ));
}

#[tokio::test]
async fn the_lease_fences_claims_marks_and_posts() {
    let db = TestDb::new().await;
    let pool = db.pool().clone();
    let member = |name: &str| {
        PgMembership::new(
            pool.clone(),
            db.url.clone(),
            Duration::from_secs(5),
            ReplicaId(name.to_owned()),
            "test-host".to_owned(),
        )
    };
    let (a, b) = (ReplicaId("replica-a".into()), ReplicaId("replica-b".into()));
    let (member_a, member_b) = (member(&a.0), member(&b.0));
    let inbox_a = PgInbox::fenced(pool.clone(), &a, Duration::ZERO);
    let inbox_b = PgInbox::fenced(pool.clone(), &b, Duration::ZERO);

    let RecordOutcome::Recorded(e) = inbox_a
        .record(event("Ev1", "T1/C1/1700000000.000100"))
        .await
        .expect("record")
    else {
        panic!("new event")
    };
    let p = e.partition;
    assert!(
        matches!(inbox_a.claim(e.id).await, Err(StoreError::Fenced(_))),
        "nobody holds the partition: nobody claims"
    );

    let short = Duration::from_millis(800);
    member_a.heartbeat(false, short).await.expect("heartbeat");
    let report = member_a
        .renew_and_acquire(&[p], short)
        .await
        .expect("acquire");
    assert_eq!(report.held.len(), 1);
    assert!(report.acquired[0].lapsed_for.is_none(), "a free partition");
    assert!(matches!(
        inbox_b.claim(e.id).await,
        Err(StoreError::Fenced(_))
    ));
    let claimed_by_a = inbox_a
        .claim(e.id)
        .await
        .expect("claim")
        .expect("claimable");
    inbox_a.confirm(claimed_by_a.claim()).await.expect("held");
    // A's handler wants a second of lease left before it posts: 800 ms leases do not have it.
    let cautious = PgInbox::fenced(pool.clone(), &a, Duration::from_secs(1));
    assert!(matches!(
        cautious.confirm(claimed_by_a.claim()).await,
        Err(StoreError::Fenced(_))
    ));

    // A pauses past its lease; B takes the partition over and claims the event.
    tokio::time::sleep(Duration::from_millis(900)).await;
    member_b.heartbeat(false, short).await.expect("heartbeat");
    let report = member_b
        .renew_and_acquire(&[p], Duration::from_secs(30))
        .await
        .expect("take over");
    let lapsed = report.acquired[0]
        .lapsed_for
        .expect("taken from a lapsed lease");
    assert!(lapsed >= Duration::from_millis(800), "{lapsed:?}");
    let claimed_by_b = inbox_b
        .claim(e.id)
        .await
        .expect("claim")
        .expect("claimable");
    assert_eq!(claimed_by_b.attempts, 2);

    // A wakes up: nothing it does for the event counts any more.
    for result in [
        inbox_a.confirm(claimed_by_a.claim()).await,
        inbox_a.mark_done(claimed_by_a.claim()).await,
        inbox_a.mark_retry(claimed_by_a.claim(), "late").await,
        // The group-committed mark is fenced by the lease as well, with the claim's
        // attempt it carries (B's claim has the next one).
        inbox_a
            .mark_done_batch(vec![claimed_by_a.claim(), claimed_by_b.claim()])
            .await
            .remove(1),
    ] {
        assert!(matches!(result, Err(StoreError::Fenced(_))), "{result:?}");
    }
    // Its renewal no longer lists the partition.
    let report = member_a.renew_and_acquire(&[], short).await.expect("renew");
    assert!(report.held.is_empty());
    inbox_b
        .mark_done(claimed_by_b.claim())
        .await
        .expect("done by b");

    let view = member_b.view(Duration::from_secs(30)).await.expect("view");
    let row = &view.partitions[usize::from(p.0)];
    assert_eq!(row.owner.as_ref(), Some(&b));
    assert_eq!(row.epoch, 2, "one change of owner per tenure");
    member_b.release(&[p]).await.expect("release");
    let view = member_b.view(Duration::from_secs(30)).await.expect("view");
    assert_eq!(view.partitions[usize::from(p.0)].owner, None);
}

#[tokio::test]
async fn the_database_computes_the_same_partitions_as_the_runtime() {
    let db = TestDb::new().await;
    let mut keys: Vec<String> = [
        "",
        "a",
        "clerk",
        "T0SIMACME1/C0OPS00001/1700000000.000100",
        "installation:42:repository:7",
        "ünïcödé/ключ/键",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    keys.extend((0..200).map(|i| format!("T{i}/C{}/{}.{:06}", i * 7, 1_700_000_000 + i, i)));
    for key in keys {
        let sql = sql_partition(db.pool(), &key).await.expect("sql partition");
        assert_eq!(
            sql,
            Partition::of(&RoutingKey(key.clone())).0,
            "partition of {key:?}"
        );
    }
}
