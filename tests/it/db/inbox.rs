//! `PgInbox` and `PgAudit` against real PostgreSQL (a fresh database per test).

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::db::PgInbox;
use infragpt::db::audit::insert_entry;
use infragpt::db::schema::{audit_log, inbound_events};
use infragpt::testkit::test_db::TestDb;
use infragpt_actors::audit::AuditEntry;
use infragpt_actors::inbox::{
    Claim, EventRowId, EventStatus, InboundEvents, NewInboundEvent, Partition, RecordOutcome,
    RoutingKey, StoreError,
};
use infragpt_actors::sources;
use serde_json::json;

/// An event in a thread of its own (per-key order is tested with [`event_in`]).
fn event(source_id: &str) -> NewInboundEvent {
    event_in(source_id, &format!("T1/C1/{source_id}"))
}

fn event_in(source_id: &str, key: &str) -> NewInboundEvent {
    NewInboundEvent {
        source: sources::SLACK,
        source_id: source_id.to_owned(),
        routing_key: RoutingKey(key.to_owned()),
        kind: "app_mention".to_owned(),
        payload: json!({"event_id": source_id, "text": "<@U0BOT> hello", "n": [1, 2]}).into(),
    }
}

async fn recorded(inbox: &PgInbox, source_id: &str) -> EventRowId {
    match inbox.record(event(source_id)).await.expect("record") {
        RecordOutcome::Recorded(e) => e.id,
        RecordOutcome::Duplicate(e) => panic!("{source_id} already stored as {}", e.id),
    }
}

/// Claims `id` (it must be claimable) and returns the claim.
async fn claimed(inbox: &PgInbox, id: EventRowId) -> Claim {
    inbox
        .claim(id)
        .await
        .expect("claim")
        .expect("claimable")
        .claim()
}

async fn row_count(db: &TestDb) -> i64 {
    let mut conn = db.pool().get().await.expect("connection");
    inbound_events::table
        .count()
        .get_result(&mut conn)
        .await
        .expect("count")
}

#[tokio::test]
async fn record_is_idempotent() {
    let db = TestDb::new().await;
    let inbox = PgInbox::new(db.pool().clone());

    let first = inbox.record(event("Ev1")).await.expect("record");
    let RecordOutcome::Recorded(stored) = &first else {
        panic!("first delivery must be recorded: {first:?}");
    };
    assert_eq!(stored.source, sources::SLACK);
    assert_eq!(stored.source_id, "Ev1");
    assert_eq!(stored.routing_key.0, "T1/C1/Ev1");
    assert_eq!(stored.partition, Partition::of(&stored.routing_key));
    assert_eq!(stored.kind, "app_mention");
    assert_eq!(stored.payload, event("Ev1").payload.to_value().unwrap());
    assert_eq!(stored.status, EventStatus::Pending);
    assert_eq!(stored.attempts, 0);
    assert_eq!(stored.last_error, None);
    assert_eq!(stored.processed_at, None);

    // A redelivery with another payload changes nothing.
    let mut again = event("Ev1");
    again.payload = json!({"different": true}).into();
    let second = inbox.record(again).await.expect("record again");
    let RecordOutcome::Duplicate(existing) = &second else {
        panic!("redelivery must be a duplicate: {second:?}");
    };
    assert_eq!(existing, stored);
    assert_eq!(row_count(&db).await, 1);

    // The same source id from another source is another event.
    let mut github = event("Ev1");
    github.source = sources::GITHUB;
    assert!(matches!(
        inbox.record(github).await.expect("record"),
        RecordOutcome::Recorded(_)
    ));
    assert_eq!(row_count(&db).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_redeliveries_store_one_row() {
    let db = TestDb::new().await;
    let inbox = PgInbox::new(db.pool().clone());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let inbox = inbox.clone();
            tokio::spawn(async move { inbox.record(event("EvSame")).await })
        })
        .collect();
    let mut recorded_count = 0;
    let mut ids = Vec::new();
    for task in tasks {
        let outcome = task.await.expect("task").expect("record");
        if matches!(outcome, RecordOutcome::Recorded(_)) {
            recorded_count += 1;
        }
        ids.push(outcome.event().id);
    }
    assert_eq!(recorded_count, 1);
    ids.dedup();
    assert_eq!(ids.len(), 1, "every outcome names the same row");
    assert_eq!(row_count(&db).await, 1);
}

#[tokio::test]
async fn claim_counts_attempts_and_finished_events_are_not_claimed() {
    let db = TestDb::new().await;
    let inbox = PgInbox::new(db.pool().clone());
    let id = recorded(&inbox, "Ev1").await;

    let claimed = inbox.claim(id).await.expect("claim").expect("claimable");
    assert_eq!(claimed.status, EventStatus::Processing);
    assert_eq!(claimed.attempts, 1);
    // A crash while processing: claimed again on restart.
    let first = claimed.claim();
    let claimed = inbox
        .claim(id)
        .await
        .expect("claim")
        .expect("still claimable");
    assert_eq!(claimed.attempts, 2);
    // The first claim was taken over: its marks change nothing.
    assert!(matches!(
        inbox.mark_done(first).await,
        Err(StoreError::Fenced(fenced)) if fenced == id
    ));

    inbox.mark_done(claimed.claim()).await.expect("done");
    let done = inbox.get(id).await.expect("get").expect("exists");
    assert_eq!(done.status, EventStatus::Done);
    assert!(done.processed_at.is_some());
    assert!(
        inbox.claim(id).await.expect("claim").is_none(),
        "done events are not claimed"
    );

    assert!(
        inbox
            .claim(EventRowId(999_999))
            .await
            .expect("claim")
            .is_none()
    );
    assert!(inbox.get(EventRowId(999_999)).await.expect("get").is_none());
    let err = inbox
        .mark_done(Claim {
            id: EventRowId(999_999),
            attempt: 1,
        })
        .await
        .expect_err("unknown id");
    assert!(err.to_string().contains("999999"), "{err}");
}

/// Done marks written in one statement (the marks' writer) apply each under its own claim:
/// a claim taken over since, or an unknown event, is `Fenced` and changes nothing, the others
/// are done.
#[tokio::test]
async fn done_marks_in_one_batch_apply_each_under_its_own_claim() {
    let db = TestDb::new().await;
    let inbox = PgInbox::new(db.pool().clone());
    let ids = [
        recorded(&inbox, "Ev1").await,
        recorded(&inbox, "Ev2").await,
        recorded(&inbox, "Ev3").await,
    ];
    let first = claimed(&inbox, ids[0]).await;
    let stale = claimed(&inbox, ids[1]).await;
    let current = claimed(&inbox, ids[1]).await;
    let third = claimed(&inbox, ids[2]).await;
    let unknown = Claim {
        id: EventRowId(999_999),
        attempt: 1,
    };
    let outcomes = inbox
        .mark_done_batch(vec![first, stale, third, unknown])
        .await;
    assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
    assert!(matches!(outcomes[1], Err(StoreError::Fenced(id)) if id == ids[1]));
    assert!(matches!(outcomes[3], Err(StoreError::Fenced(id)) if id == unknown.id));
    for (id, status) in [
        (ids[0], EventStatus::Done),
        (ids[1], EventStatus::Processing),
        (ids[2], EventStatus::Done),
    ] {
        let row = inbox.get(id).await.expect("get").expect("exists");
        assert_eq!(row.status, status, "event {id}");
        assert_eq!(row.processed_at.is_some(), status == EventStatus::Done);
    }
    // The current claim of the taken-over event still marks it.
    assert!(inbox.mark_done_batch(vec![current]).await[0].is_ok());
    assert!(inbox.mark_done_batch(Vec::new()).await.is_empty());
}

#[tokio::test]
async fn a_key_is_claimed_in_id_order_whatever_reaches_the_worker_first() {
    let db = TestDb::new().await;
    let inbox = PgInbox::new(db.pool().clone());
    let key = "T1/C1/1700000000.000100";
    let mut ids = Vec::new();
    for n in 0..3 {
        let outcome = inbox.record(event_in(&format!("Ev{n}"), key)).await;
        ids.push(outcome.expect("record").event().id);
    }
    let other = recorded(&inbox, "EvOther").await;
    // The newest first (an announcement of the older ones still on its way): refused, with
    // the older ones to take first, oldest first. Another key is not held up.
    match inbox.claim(ids[2]).await {
        Err(StoreError::Behind { id, older }) => {
            assert_eq!((id, older), (ids[2], vec![ids[0], ids[1]]));
        }
        other => panic!("expected Behind, got {other:?}"),
    }
    claimed(&inbox, other).await;
    let first = claimed(&inbox, ids[0]).await;
    assert!(matches!(
        inbox.claim(ids[1]).await,
        Err(StoreError::Behind { .. })
    ));
    // A dead letter does not hold its key up.
    inbox.mark_failed(first, "boom").await.expect("failed");
    let second = claimed(&inbox, ids[1]).await;
    inbox.mark_done(second).await.expect("done");
    claimed(&inbox, ids[2]).await;
}

#[tokio::test]
async fn retry_and_ignore_set_the_error() {
    let db = TestDb::new().await;
    let inbox = PgInbox::new(db.pool().clone());
    let id = recorded(&inbox, "Ev1").await;
    let claim = claimed(&inbox, id).await;
    inbox
        .mark_retry(claim, "agent timed out")
        .await
        .expect("retry");
    let retried = inbox.get(id).await.expect("get").expect("exists");
    assert_eq!(retried.status, EventStatus::Pending);
    assert_eq!(retried.last_error.as_deref(), Some("agent timed out"));
    assert_eq!(retried.processed_at, None);
    assert_eq!(
        inbox
            .claim(id)
            .await
            .expect("claim")
            .expect("claimable")
            .attempts,
        2
    );

    let other = recorded(&inbox, "Ev2").await;
    let claim = claimed(&inbox, other).await;
    inbox
        .mark_ignored(claim, "unknown event type")
        .await
        .expect("ignore");
    let ignored = inbox.get(other).await.expect("get").expect("exists");
    assert_eq!(ignored.status, EventStatus::Ignored);
    assert_eq!(ignored.last_error.as_deref(), Some("unknown event type"));
    assert!(ignored.processed_at.is_some());
    assert!(inbox.claim(other).await.expect("claim").is_none());
}

#[tokio::test]
async fn list_unfinished_is_ordered_and_paged() {
    let db = TestDb::new().await;
    let inbox = PgInbox::new(db.pool().clone());
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(recorded(&inbox, &format!("Ev{n}")).await);
    }
    inbox.claim(ids[1]).await.expect("claim");
    let claim = claimed(&inbox, ids[2]).await;
    inbox.mark_done(claim).await.expect("done");
    let claim = claimed(&inbox, ids[3]).await;
    inbox.mark_failed(claim, "boom").await.expect("failed");

    let listed: Vec<EventRowId> = inbox
        .list_unfinished(None, 100, None)
        .await
        .expect("list")
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        listed,
        [ids[0], ids[1], ids[4]],
        "pending and processing, oldest first"
    );

    let after: Vec<EventRowId> = inbox
        .list_unfinished(Some(ids[0]), 1, None)
        .await
        .expect("list")
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(after, [ids[1]]);
    assert!(
        inbox
            .list_unfinished(Some(ids[4]), 10, None)
            .await
            .expect("list")
            .is_empty()
    );
    assert!(
        inbox.list_unfinished(None, -1, None).await.is_err(),
        "negative limit is rejected"
    );
}

#[tokio::test]
async fn dead_letters_can_be_listed_requeued_and_discarded() {
    let db = TestDb::new().await;
    let inbox = PgInbox::new(db.pool().clone());
    let a = recorded(&inbox, "EvA").await;
    let b = recorded(&inbox, "EvB").await;
    let c = recorded(&inbox, "EvC").await;
    for id in [a, b] {
        let claim = claimed(&inbox, id).await;
        inbox
            .mark_failed(claim, &format!("failed {id}"))
            .await
            .expect("fail");
    }

    let failed = inbox.list_failed(10, 0).await.expect("list failed");
    assert_eq!(
        failed.iter().map(|e| e.id).collect::<Vec<_>>(),
        [b, a],
        "newest first"
    );
    assert_eq!(failed[0].status, EventStatus::Failed);
    assert_eq!(failed[0].last_error, Some(format!("failed {b}")));
    assert!(failed[0].processed_at.is_some());
    assert_eq!(
        inbox
            .list_failed(1, 1)
            .await
            .expect("page")
            .iter()
            .map(|e| e.id)
            .collect::<Vec<_>>(),
        [a]
    );
    assert!(
        inbox.list_failed(10, -1).await.is_err(),
        "negative offset is rejected"
    );

    let requeued = inbox
        .requeue(a)
        .await
        .expect("requeue")
        .expect("was failed");
    assert_eq!(requeued.status, EventStatus::Pending);
    assert_eq!(requeued.attempts, 0);
    assert_eq!(requeued.processed_at, None);
    assert!(
        inbox.requeue(a).await.expect("requeue").is_none(),
        "not failed any more"
    );
    assert!(
        inbox.requeue(c).await.expect("requeue").is_none(),
        "pending is not a dead letter"
    );
    assert_eq!(
        inbox
            .claim(a)
            .await
            .expect("claim")
            .expect("claimable")
            .attempts,
        1
    );

    assert!(inbox.discard(b).await.expect("discard"));
    let discarded = inbox.get(b).await.expect("get").expect("exists");
    assert_eq!(discarded.status, EventStatus::Ignored);
    assert_eq!(discarded.last_error.as_deref(), Some("discarded"));
    assert!(
        !inbox.discard(b).await.expect("discard"),
        "already discarded"
    );
    assert!(
        !inbox.discard(c).await.expect("discard"),
        "pending is not a dead letter"
    );
    assert!(inbox.list_failed(10, 0).await.expect("list").is_empty());
}

#[tokio::test]
async fn count_by_status_counts_every_status() {
    let db = TestDb::new().await;
    let inbox = PgInbox::new(db.pool().clone());
    assert!(inbox.count_by_status().await.expect("count").is_empty());
    let ids: Vec<EventRowId> = {
        let mut ids = Vec::new();
        for n in 0..6 {
            ids.push(recorded(&inbox, &format!("Ev{n}")).await);
        }
        ids
    };
    inbox.claim(ids[1]).await.expect("claim");
    for id in &ids[2..4] {
        let claim = claimed(&inbox, *id).await;
        inbox.mark_done(claim).await.expect("done");
    }
    let claim = claimed(&inbox, ids[4]).await;
    inbox.mark_failed(claim, "x").await.expect("failed");
    let claim = claimed(&inbox, ids[5]).await;
    inbox.mark_ignored(claim, "y").await.expect("ignored");
    let mut counts = inbox.count_by_status().await.expect("count");
    counts.sort_by_key(|(status, _)| status.as_str());
    assert_eq!(
        counts,
        [
            (EventStatus::Done, 2),
            (EventStatus::Failed, 1),
            (EventStatus::Ignored, 1),
            (EventStatus::Pending, 1),
            (EventStatus::Processing, 1),
        ]
    );
}

#[tokio::test]
async fn unknown_stored_values_are_reported_as_corrupt() {
    let db = TestDb::new().await;
    let inbox = PgInbox::new(db.pool().clone());
    let id = recorded(&inbox, "Ev1").await;
    let mut conn = db.pool().get().await.expect("connection");
    diesel::update(inbound_events::table.find(id.0))
        .set(inbound_events::source.eq("carrier-pigeon"))
        .execute(&mut conn)
        .await
        .expect("corrupt the row");
    let err = inbox.get(id).await.expect_err("unknown source");
    assert!(err.to_string().contains("carrier-pigeon"), "{err}");
}

#[actix_rt::test]
async fn audit_entries_commit_and_roll_back_with_their_transaction() {
    use diesel_async::AsyncConnection as _;

    let db = TestDb::new().await;
    let org = uuid::Uuid::new_v4();
    let mut conn = db.pool().get().await.expect("connection");
    insert_entry(
        &mut conn,
        &AuditEntry {
            organization_id: Some(org),
            actor: "user/user_123".to_owned(),
            action: "integration.revoked".to_owned(),
            target: Some("github".to_owned()),
            details: json!({"reason": "requested"}),
        },
    )
    .await
    .expect("insert");
    // An entry written in a transaction that fails afterwards goes with it.
    let lost = AuditEntry {
        organization_id: Some(org),
        actor: "system".to_owned(),
        action: "integration.lost".to_owned(),
        target: None,
        details: json!({}),
    };
    let failed = conn
        .transaction::<(), diesel::result::Error, _>(async |conn| {
            insert_entry(conn, &lost).await?;
            Err(diesel::result::Error::RollbackTransaction)
        })
        .await;
    assert!(failed.is_err(), "{failed:?}");
    let kept = AuditEntry {
        organization_id: None,
        actor: "system".to_owned(),
        action: "event.requeued".to_owned(),
        target: None,
        details: json!({}),
    };
    conn.transaction::<(), diesel::result::Error, _>(async |conn| insert_entry(conn, &kept).await)
        .await
        .expect("committed");

    type Row = (
        Option<uuid::Uuid>,
        String,
        String,
        Option<String>,
        serde_json::Value,
    );
    let rows: Vec<Row> = audit_log::table
        .order(audit_log::id.asc())
        .select((
            audit_log::organization_id,
            audit_log::actor,
            audit_log::action,
            audit_log::target,
            audit_log::details,
        ))
        .load(&mut conn)
        .await
        .expect("read audit log");
    assert_eq!(
        rows,
        [
            (
                Some(org),
                "user/user_123".to_owned(),
                "integration.revoked".to_owned(),
                Some("github".to_owned()),
                json!({"reason": "requested"}),
            ),
            (
                None,
                "system".to_owned(),
                "event.requeued".to_owned(),
                None,
                json!({})
            ),
        ]
    );
}

/// Group commit's statement: new events, a redelivery of a stored one, twins within the
/// batch, a payload the server refuses and one too large to share a statement, in one call.
/// Each gets its own outcome in order, ids follow the order of the batch, and the refused
/// event fails alone.
#[tokio::test]
async fn a_batch_records_each_event_once_in_order_and_a_bad_one_fails_alone() {
    use infragpt_actors::inbox::EventPayload;
    let db = TestDb::new().await;
    let inbox = PgInbox::new(db.pool().clone());
    let stored = recorded(&inbox, "Old").await;
    let mut large = event_in("Large", "T1/C1/k");
    large.payload = json!({ "blob": "x".repeat(1 << 20) }).into();
    let mut refused = event_in("NotJson", "T1/C1/k");
    refused.payload = EventPayload::Raw("{\"unterminated\": ".into());
    // Two payloads that together pass the size of one statement: the batch is cut after them.
    let mid = |id: &str| {
        let mut e = event_in(id, "T1/C1/k");
        e.payload = json!({ "blob": "m".repeat(600 * 1024) }).into();
        e
    };
    let batch = vec![
        event_in("A", "T1/C1/k"),
        event("Old"),
        event_in("B", "T1/C1/k"),
        event_in("A", "T1/C1/k"),
        large,
        refused,
        mid("M1"),
        mid("M2"),
        event_in("C", "T1/C1/k"),
    ];
    let outcomes = inbox
        .record_batch(batch.into_iter().map(Into::into).collect())
        .await;
    assert_eq!(outcomes.len(), 9);
    let id = |i: usize| match &outcomes[i] {
        Ok(RecordOutcome::Recorded(e)) => e.id,
        other => panic!("event {i} must be recorded: {other:?}"),
    };
    let ids = [id(0), id(2), id(4), id(6), id(7), id(8)];
    assert!(
        ids.is_sorted(),
        "ids in batch order (A B Large M1 M2 C): {ids:?}"
    );
    let (a, b) = (ids[0], ids[1]);
    match &outcomes[1] {
        Ok(RecordOutcome::Duplicate(e)) => assert_eq!(e.id, stored),
        other => panic!("a redelivery is a duplicate: {other:?}"),
    }
    match &outcomes[3] {
        Ok(RecordOutcome::Duplicate(e)) => assert_eq!(e.id, a),
        other => panic!("a twin is the first one's duplicate: {other:?}"),
    }
    assert!(
        matches!(&outcomes[5], Err(StoreError::Rejected(_))),
        "{:?}",
        outcomes[5]
    );
    match &outcomes[0] {
        Ok(RecordOutcome::Recorded(e)) => {
            assert_eq!(e.source_id, "A");
            assert_eq!(e.routing_key.0, "T1/C1/k");
            assert_eq!(e.partition, Partition::of(&e.routing_key));
            assert_eq!(e.status, EventStatus::Pending);
            assert_eq!(
                e.payload,
                event_in("A", "T1/C1/k").payload.to_value().unwrap()
            );
        }
        other => panic!("{other:?}"),
    }
    // Old, A, B, Large, M1, M2, C.
    assert_eq!(row_count(&db).await, 7);
    // The key's order is the batch's: B waits for A.
    match inbox.claim(b).await {
        Err(StoreError::Behind { older, .. }) => assert_eq!(older, vec![a]),
        other => panic!("B must wait for A: {other:?}"),
    }
}

/// Records asked to be claimed in the same write ([`Recording`]): the first event of a key
/// with nothing older unfinished is recorded claimed (attempt 1, its payload as stored, a raw
/// body parsed); a later one of the same key in the batch, one behind an older unfinished
/// event, one not asked, and one too large to share the statement are recorded pending.
/// The record's claim marks the event; the next of its key is claimable after it.
#[tokio::test]
async fn a_batch_claims_the_events_it_may_and_records_the_others_pending() {
    use infragpt_actors::inbox::{EventPayload, Recording};
    let db = TestDb::new().await;
    let inbox = PgInbox::new(db.pool().clone());
    let waiting = recorded(&inbox, "Older").await;
    let claim = |event: NewInboundEvent| Recording {
        event,
        claim: true,
        behind: None,
    };
    let mut raw = event_in("Raw", "T1/C1/raw");
    raw.payload = EventPayload::Raw(r#"{"event_id": "Raw", "n": [1, 2.5]}"#.into());
    let mut large = event_in("Large", "T1/C1/large");
    large.payload = json!({ "blob": "x".repeat(1 << 20) }).into();
    let batch = vec![
        claim(event_in("K1", "T1/C1/k")),
        claim(event_in("K2", "T1/C1/k")),
        claim(event_in("Behind", "T1/C1/Older")),
        Recording::from(event_in("Unasked", "T1/C1/unasked")),
        claim(raw),
        claim(large),
    ];
    let outcomes = inbox.record_batch(batch).await;
    let stored = |i: usize| match &outcomes[i] {
        Ok(RecordOutcome::Recorded(e)) => e.clone(),
        other => panic!("event {i} must be recorded: {other:?}"),
    };
    let k1 = stored(0);
    assert_eq!((k1.status, k1.attempts), (EventStatus::Processing, 1));
    assert_eq!(outcomes[0].as_ref().unwrap().claimed(), Some(&k1));
    assert_eq!(
        k1.payload,
        event_in("K1", "T1/C1/k").payload.to_value().unwrap()
    );
    let raw = stored(4);
    assert_eq!((raw.status, raw.attempts), (EventStatus::Processing, 1));
    assert_eq!(raw.payload, json!({"event_id": "Raw", "n": [1, 2.5]}));
    for (i, what) in [
        (1, "a second of the key"),
        (2, "behind an older one"),
        (3, "not asked"),
        (5, "large"),
    ] {
        let e = stored(i);
        assert_eq!((e.status, e.attempts), (EventStatus::Pending, 0), "{what}");
        assert!(outcomes[i].as_ref().unwrap().claimed().is_none(), "{what}");
    }
    // The stored rows say the same.
    let stored_status = inbox.get(k1.id).await.unwrap().unwrap();
    assert_eq!(
        (stored_status.status, stored_status.attempts),
        (EventStatus::Processing, 1)
    );
    assert_eq!(
        inbox.get(waiting).await.unwrap().unwrap().status,
        EventStatus::Pending
    );

    // K2 waits for K1, which the record's claim finishes.
    let k2 = stored(1).id;
    assert!(matches!(
        inbox.claim(k2).await,
        Err(StoreError::Behind { .. })
    ));
    inbox
        .mark_done(k1.claim())
        .await
        .expect("the record's claim marks it");
    let k2 = claimed(&inbox, k2).await;
    assert_eq!(k2.attempt, 1);

    // One event alone in its batch is claimed too.
    let alone = inbox.record_batch(vec![claim(event("Alone"))]).await;
    let alone = alone[0]
        .as_ref()
        .unwrap()
        .claimed()
        .expect("claimed")
        .clone();
    assert_eq!(alone.attempts, 1);
    // A redelivery of a claimed event is a duplicate and claims nothing.
    let again = inbox.record_batch(vec![claim(event("Alone"))]).await;
    assert!(
        matches!(&again[0], Ok(RecordOutcome::Duplicate(e)) if e.id == alone.id && e.attempts == 1)
    );
}

/// A record may be claimed behind the one older event of its key that is `processing` under
/// the claim it names ([`Recording::behind`]: the claim its worker is handling), and only
/// behind that: not behind an older event under another attempt, not behind one that went
/// back to `pending`, not when a second older event is unfinished. The claimed event waits
/// for nothing at the claim (it was claimed), and the marks of both hold.
#[tokio::test]
async fn a_record_is_claimed_behind_the_event_its_worker_is_handling() {
    use infragpt_actors::inbox::Recording;
    let db = TestDb::new().await;
    let inbox = PgInbox::new(db.pool().clone());
    let behind = |id: &str, key: &str, claim: Option<Claim>| Recording {
        event: event_in(id, key),
        claim: true,
        behind: claim,
    };
    let status = |outcome: &Result<RecordOutcome, StoreError>| match outcome {
        Ok(RecordOutcome::Recorded(e)) => (e.status, e.attempts),
        other => panic!("new event: {other:?}"),
    };
    let first = inbox
        .record_batch(vec![behind("A1", "T1/C1/a", None)])
        .await;
    let a1 = first[0]
        .as_ref()
        .unwrap()
        .claimed()
        .expect("claimed")
        .claim();

    // Another attempt's claim, or no claim named: the older event stops it.
    let stale = Claim {
        id: a1.id,
        attempt: a1.attempt + 1,
    };
    let refused = inbox
        .record_batch(vec![
            behind("A2", "T1/C1/a", Some(stale)),
            behind("A3", "T1/C1/a", None),
        ])
        .await;
    assert_eq!(
        status(&refused[0]),
        (EventStatus::Pending, 0),
        "stale claim"
    );
    assert_eq!(
        status(&refused[1]),
        (EventStatus::Pending, 0),
        "no claim named"
    );
    // The right claim, but A2 and A3 are unfinished too.
    let second = inbox
        .record_batch(vec![behind("A4", "T1/C1/a", Some(a1))])
        .await;
    assert_eq!(status(&second[0]), (EventStatus::Pending, 0), "two older");

    // A key whose only unfinished event is the named claim's: claimed.
    let b1 = inbox
        .record_batch(vec![behind("B1", "T1/C1/b", None)])
        .await;
    let b1 = b1[0].as_ref().unwrap().claimed().expect("claimed").claim();
    let b2 = inbox
        .record_batch(vec![behind("B2", "T1/C1/b", Some(b1))])
        .await;
    assert_eq!(
        status(&b2[0]),
        (EventStatus::Processing, 1),
        "behind its worker's claim"
    );
    let b2 = b2[0].as_ref().unwrap().claimed().expect("claimed").claim();
    inbox.mark_done(b1).await.expect("B1's claim holds");
    inbox.mark_done(b2).await.expect("B2's claim holds");

    // Behind an event that went back to pending (a retry): not claimed.
    let c1 = inbox
        .record_batch(vec![behind("C1", "T1/C1/c", None)])
        .await;
    let c1 = c1[0].as_ref().unwrap().claimed().expect("claimed").claim();
    inbox.mark_retry(c1, "flaky").await.expect("retry");
    let c2 = inbox
        .record_batch(vec![behind("C2", "T1/C1/c", Some(c1))])
        .await;
    assert_eq!(status(&c2[0]), (EventStatus::Pending, 0), "behind a retry");
    // And the claim still finds C2 behind C1.
    let c2 = match &c2[0] {
        Ok(RecordOutcome::Recorded(e)) => e.id,
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        inbox.claim(c2).await,
        Err(StoreError::Behind { .. })
    ));
}

/// The inbox writers' connections keep generic plans (their batch statements would be
/// planned afresh at every execution otherwise); the shared pool keeps PostgreSQL's default.
#[tokio::test]
async fn the_writers_connections_keep_generic_plans() {
    #[derive(QueryableByName)]
    struct Mode {
        #[diesel(sql_type = diesel::sql_types::Text)]
        plan_cache_mode: String,
    }
    let db = TestDb::new().await;
    let timeout = std::time::Duration::from_secs(5);
    let url = db.url.clone();
    let mode = |pool: infragpt::db::Pool| async move {
        let mut conn = pool.get().await.expect("connection");
        diesel::sql_query("SHOW plan_cache_mode")
            .get_result::<Mode>(&mut conn)
            .await
            .expect("show")
            .plan_cache_mode
    };
    let writers = infragpt::db::build_writer_pool(&url, 1, timeout).unwrap();
    assert_eq!(mode(writers).await, "force_generic_plan");
    let shared = infragpt::db::build_pool(&url, 1, timeout).unwrap();
    assert_eq!(mode(shared).await, "auto");
}

/// A writer connection makes its generic plan of the record batch once, often while the
/// inbox is young, and keeps it while the inbox grows: that plan must stay a probe of the
/// event's key, never a scan of the table nor of every event of the source (BENCHMARKS.md,
/// "The record batch's older-event check"). The plan is read from the writer's own
/// connection, as `EXPLAIN EXECUTE` of the statement it prepared.
#[tokio::test]
async fn the_record_batch_keeps_a_keyed_plan_as_the_inbox_grows() {
    use crate::support::plans::kept_plan;
    use infragpt_actors::inbox::Recording;
    let db = TestDb::new().await;
    let timeout = std::time::Duration::from_secs(10);
    // One connection: the batch below and the plan read after it share it.
    let writer = infragpt::db::build_writer_pool(&db.url, 1, timeout).expect("writer pool");
    let inbox = PgInbox::new(db.pool().clone()).with_record_pool(writer.clone());
    let mut conn = db.pool().get().await.expect("connection");
    // Statements of this test's own, one after the other.
    let mut run = async |sql: &str| {
        diesel::sql_query(sql)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    };
    // `per_key` events in each of 100 threads (source ids starting with `tag`).
    let events = |tag: &str, per_key: u32, status: &str| {
        format!(
            "INSERT INTO inbound_events \
               (source, source_id, routing_key, partition, kind, payload, status, attempts) \
             SELECT 'slack', '{tag}-' || k || '-' || i, 'T1/C1/' || k, 0, 'app_mention', '{{}}', \
               '{status}', 1 \
             FROM generate_series(1, {per_key}) i, generate_series(1, 100) k"
        )
    };
    // A young inbox: 400 events of 100 threads, every one being handled, and analyzed so.
    run(&events("young", 4, "processing")).await;
    run("ANALYZE inbound_events").await;
    let first = inbox
        .record_batch(vec![Recording {
            event: event_in("first", "T1/C1/1"),
            claim: true,
            behind: None,
        }])
        .await;
    assert!(
        matches!(first[0], Ok(RecordOutcome::Recorded(_))),
        "{first:?}"
    );
    // It grows to ten times that within the minute before autovacuum's next analyze.
    run("UPDATE inbound_events SET status = 'done'").await;
    run(&events("grown", 370, "done")).await;

    let mut writer_conn = writer.get().await.expect("the writer's connection");
    let plan = kept_plan(
        &mut writer_conn,
        "INSERT INTO inbound_events%unnest%",
        "ARRAY['slack'], ARRAY['probe'], ARRAY['T1/C1/1'], ARRAY[0]::int2[], \
         ARRAY['app_mention'], ARRAY['{}'], ARRAY[NULL]::text[], ARRAY[true], NULL, \
         ARRAY[NULL]::int8[], ARRAY[NULL]::int4[]",
        "the record batch",
    )
    .await;
    assert!(
        plan.contains("Index Scan using inbound_events_unfinished_key_idx on inbound_events o"),
        "the older-event check probes the key:\n{plan}"
    );
    assert!(
        !plan.contains("Seq Scan on inbound_events") && !plan.contains("BitmapAnd"),
        "no scan of the inbox nor of the source's events:\n{plan}"
    );
}
