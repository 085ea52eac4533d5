//! `PgConversationStore` against a fresh PostgreSQL database per test.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::db::PgConversationStore;
use infragpt::db::schema::{conversations, messages};
use infragpt::testkit::test_db::TestDb;
use infragpt_actors::conversation::{
    ChannelRecord, ConversationStore, InsertOutcome, MessageKind, NewMessage, Sender,
};
use infragpt_actors::ids::{ChannelId, ConversationId, MessageTs, SlackUserId, TeamId, ThreadKey};
use infragpt_actors::inbox::EventRowId;

use crate::support::plans::kept_plan;

fn team() -> TeamId {
    TeamId::parse("T1").unwrap()
}
fn channel() -> ChannelId {
    ChannelId::parse("C1").unwrap()
}
fn ts(s: &str) -> MessageTs {
    MessageTs::parse(s).unwrap()
}
fn key(thread: &str) -> ThreadKey {
    ThreadKey::new(team(), channel(), ts(thread))
}
fn user(id: &str) -> Sender {
    Sender::User(SlackUserId::parse(id).unwrap())
}

fn message(conv: ConversationId, at: &str, sender: Sender, text: &str) -> NewMessage {
    NewMessage {
        conversation_id: conv,
        slack_ts: ts(at),
        sender,
        sender_name: Some("Alice".into()),
        sender_email: Some("alice@example.com".into()),
        text: text.into(),
        source_event_id: None,
        in_reply_to: None,
        kind: MessageKind::Message,
    }
}

#[tokio::test]
async fn upsert_conversation_is_idempotent_per_thread() {
    let db = TestDb::new().await;
    let store = PgConversationStore::new(db.pool().clone());
    let a = store.upsert_conversation(&key("100.000001")).await.unwrap();
    let again = store.upsert_conversation(&key("100.000001")).await.unwrap();
    let other = store.upsert_conversation(&key("200.000001")).await.unwrap();
    assert_eq!(a.id, again.id);
    assert_ne!(a.id, other.id);
    assert_eq!(a.key, key("100.000001"));
    assert_eq!(a.current_turn_ts, None);
    assert_eq!(
        store.find_by_key(&key("100.000001")).await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(store.find_by_key(&key("300.000001")).await.unwrap(), None);
    assert_eq!(store.find(a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(
        store.find(ConversationId::new_random()).await.unwrap(),
        None
    );

    store
        .set_current_turn(a.id, &ts("100.000002"))
        .await
        .unwrap();
    assert_eq!(
        store.find(a.id).await.unwrap().unwrap().current_turn_ts,
        Some(ts("100.000002"))
    );
    assert!(
        store
            .set_current_turn(ConversationId::new_random(), &ts("1.1"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn insert_message_once_per_ts_and_history_in_order() {
    let db = TestDb::new().await;
    let store = PgConversationStore::new(db.pool().clone());
    let conv = store.upsert_conversation(&key("100.000001")).await.unwrap();

    let before: chrono::DateTime<chrono::Utc> = {
        let mut conn = db.pool().get().await.unwrap();
        conversations::table
            .find(conv.id.0)
            .select(conversations::last_message_at)
            .first(&mut conn)
            .await
            .unwrap()
    };

    let mut first = message(conv.id, "100.000001", user("U1"), "hello");
    first.source_event_id = Some(EventRowId(7));
    assert_eq!(
        store.insert_message(first.clone()).await.unwrap(),
        InsertOutcome::Inserted
    );
    // A redelivery (or the twin event) stores nothing and names the first event.
    let mut twin = first.clone();
    twin.source_event_id = Some(EventRowId(8));
    twin.text = "changed".into();
    assert_eq!(
        store.insert_message(twin).await.unwrap(),
        InsertOutcome::Exists {
            source_event_id: Some(EventRowId(7))
        }
    );
    let mut reply = message(conv.id, "100.000002", Sender::Agent, "hi there");
    reply.in_reply_to = Some(ts("100.000001"));
    reply.sender_name = None;
    reply.sender_email = None;
    assert_eq!(
        store.insert_message(reply).await.unwrap(),
        InsertOutcome::Inserted
    );
    store
        .insert_message(message(conv.id, "100.000003", user("U2"), "thanks"))
        .await
        .unwrap();

    let history = store.history(conv.id).await.unwrap();
    let seen: Vec<(&str, Sender, &str)> = history
        .iter()
        .map(|m| (m.slack_ts.as_str(), m.sender.clone(), m.text.as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("100.000001", user("U1"), "hello"),
            ("100.000002", Sender::Agent, "hi there"),
            ("100.000003", user("U2"), "thanks"),
        ]
    );

    let mut conn = db.pool().get().await.unwrap();
    let after: chrono::DateTime<chrono::Utc> = conversations::table
        .find(conv.id.0)
        .select(conversations::last_message_at)
        .first(&mut conn)
        .await
        .unwrap();
    assert!(after > before, "last_message_at moves on insert");
    let stored: (String, String, Option<String>, Option<String>) = messages::table
        .filter(messages::slack_ts.eq("100.000001"))
        .select((
            messages::sender_kind,
            messages::sender_id,
            messages::sender_name,
            messages::sender_email,
        ))
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        stored,
        (
            "user".into(),
            "U1".into(),
            Some("Alice".into()),
            Some("alice@example.com".into())
        )
    );
}

#[tokio::test]
async fn agent_reply_exists_matches_turn_and_text() {
    let db = TestDb::new().await;
    let store = PgConversationStore::new(db.pool().clone());
    let conv = store.upsert_conversation(&key("100.000001")).await.unwrap();
    let turn = ts("100.000001");
    store
        .insert_message(message(conv.id, "100.000001", user("U1"), "q"))
        .await
        .unwrap();
    assert!(
        !store
            .agent_reply_exists(conv.id, &turn, None)
            .await
            .unwrap()
    );
    let mut reply = message(conv.id, "100.000002", Sender::Agent, "answer");
    reply.in_reply_to = Some(turn.clone());
    store.insert_message(reply).await.unwrap();
    assert!(
        store
            .agent_reply_exists(conv.id, &turn, None)
            .await
            .unwrap()
    );
    assert!(
        store
            .agent_reply_exists(conv.id, &turn, Some("answer"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .agent_reply_exists(conv.id, &turn, Some("other"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .agent_reply_exists(conv.id, &ts("100.000009"), None)
            .await
            .unwrap()
    );
    // A user message with in_reply_to does not count (only agent messages do).
    let other = store.upsert_conversation(&key("200.000001")).await.unwrap();
    let mut user_msg = message(other.id, "200.000002", user("U1"), "answer");
    user_msg.in_reply_to = Some(ts("200.000001"));
    store.insert_message(user_msg).await.unwrap();
    assert!(
        !store
            .agent_reply_exists(other.id, &ts("200.000001"), None)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn edit_and_delete_by_channel_and_ts() {
    let db = TestDb::new().await;
    let store = PgConversationStore::new(db.pool().clone());
    let conv = store.upsert_conversation(&key("100.000001")).await.unwrap();
    store
        .insert_message(message(conv.id, "100.000001", user("U1"), "first"))
        .await
        .unwrap();
    store
        .insert_message(message(conv.id, "100.000002", user("U1"), "second"))
        .await
        .unwrap();

    assert!(
        store
            .edit_message(&team(), &channel(), &ts("100.000001"), "first, edited")
            .await
            .unwrap()
    );
    // Another channel or team with the same ts is a different message.
    let other_channel = ChannelId::parse("C2").unwrap();
    assert!(
        !store
            .edit_message(&team(), &other_channel, &ts("100.000001"), "x")
            .await
            .unwrap()
    );
    let other_team = TeamId::parse("T2").unwrap();
    assert!(
        !store
            .mark_deleted(&other_team, &channel(), &ts("100.000002"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .edit_message(&team(), &channel(), &ts("999.000001"), "x")
            .await
            .unwrap()
    );
    assert!(
        store
            .mark_deleted(&team(), &channel(), &ts("100.000002"))
            .await
            .unwrap()
    );

    let history = store.history(conv.id).await.unwrap();
    assert_eq!(history.len(), 1, "deleted messages leave the history");
    assert_eq!(history[0].text, "first, edited");
    let mut conn = db.pool().get().await.unwrap();
    let edited: Option<chrono::DateTime<chrono::Utc>> = messages::table
        .filter(messages::slack_ts.eq("100.000001"))
        .select(messages::edited_at)
        .first(&mut conn)
        .await
        .unwrap();
    assert!(edited.is_some());
}

#[tokio::test]
async fn channels_monitoring_only_turns_on_and_names_are_kept() {
    let db = TestDb::new().await;
    let store = PgConversationStore::new(db.pool().clone());
    assert_eq!(store.channel(&team(), &channel()).await.unwrap(), None);

    store
        .upsert_channel(&team(), &channel(), None, false)
        .await
        .unwrap();
    assert_eq!(
        store.channel(&team(), &channel()).await.unwrap(),
        Some(ChannelRecord {
            name: None,
            monitored: false
        })
    );
    store
        .upsert_channel(&team(), &channel(), Some("ops"), true)
        .await
        .unwrap();
    // A later upsert without a name and without monitoring changes neither.
    store
        .upsert_channel(&team(), &channel(), None, false)
        .await
        .unwrap();
    assert_eq!(
        store.channel(&team(), &channel()).await.unwrap(),
        Some(ChannelRecord {
            name: Some("ops".into()),
            monitored: true
        })
    );
    store
        .upsert_channel(&team(), &channel(), Some("ops-renamed"), false)
        .await
        .unwrap();
    assert_eq!(
        store.channel(&team(), &channel()).await.unwrap(),
        Some(ChannelRecord {
            name: Some("ops-renamed".into()),
            monitored: true
        })
    );
}

#[tokio::test]
async fn a_closed_pool_is_reported_as_unavailable() {
    let db = TestDb::new().await;
    let store = PgConversationStore::new(db.pool().clone());
    db.pool().close();
    let err = store
        .upsert_conversation(&key("100.000001"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unavailable"), "{err}");
}

/// `begin_turn` (one pipelined round trip in PostgreSQL) says what the single steps say:
/// the conversation, whether the message is new or who stored it, the answer so far and
/// the history.
#[tokio::test]
async fn begin_turn_agrees_with_the_single_steps() {
    use infragpt_actors::conversation::{IntentClaim, NewIntent, Posting};

    let db = TestDb::new().await;
    let store = PgConversationStore::new(db.pool().clone());
    let thread = key("300.000001");
    let first = |event: i64| NewMessage {
        source_event_id: Some(EventRowId(event)),
        ..message(
            ConversationId(uuid::Uuid::nil()),
            "300.000001",
            user("U1"),
            "hi",
        )
    };

    let start = store.begin_turn(&thread, first(7)).await.unwrap();
    assert_eq!(start.inserted, InsertOutcome::Inserted);
    assert_eq!(
        start.conversation,
        store.find_by_key(&thread).await.unwrap().unwrap()
    );
    assert!(!start.state.answered);
    assert!(start.state.unfinished.is_empty());
    assert_eq!(
        start.history,
        store.history(start.conversation.id).await.unwrap()
    );
    assert_eq!(
        start.history.len(),
        1,
        "the turn's own message is in the history"
    );
    let id = start.conversation.id;

    // The same message again: stored by event 7, whichever event asks.
    let again = store.begin_turn(&thread, first(7)).await.unwrap();
    assert_eq!(again.conversation.id, id);
    assert_eq!(
        again.inserted,
        InsertOutcome::Exists {
            source_event_id: Some(EventRowId(7))
        }
    );
    let twin = store.begin_turn(&thread, first(8)).await.unwrap();
    assert_eq!(
        twin.inserted,
        InsertOutcome::Exists {
            source_event_id: Some(EventRowId(7))
        }
    );

    // An answer started and not finished, then one stored.
    let intent = NewIntent {
        conversation_id: id,
        in_reply_to: Some(ts("300.000001")),
        kind: MessageKind::Message,
        text: "answer".into(),
        posting: Posting::Messages {
            parts: vec!["answer".into()],
        },
    };
    let IntentClaim::Claimed(claimed) = store
        .claim_intent(&intent, std::time::Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("a new intent is claimed");
    };
    let state = store.begin_turn(&thread, first(7)).await.unwrap().state;
    assert_eq!(state.unfinished, vec![claimed.token.intent]);
    assert!(!state.answered);
    assert_eq!(
        state,
        store.turn_state(id, &ts("300.000001")).await.unwrap()
    );
    store
        .insert_message(NewMessage {
            in_reply_to: Some(ts("300.000001")),
            ..message(id, "300.000002", Sender::Agent, "answer")
        })
        .await
        .unwrap();
    let later = store.begin_turn(&thread, first(7)).await.unwrap();
    assert!(later.state.answered);
    assert_eq!(later.history, store.history(id).await.unwrap());
    assert_eq!(later.history.len(), 2);
}

/// A turn starts only while the event's claim holds: the attempt that claimed it, still
/// processing.
#[tokio::test]
async fn start_agent_turn_is_fenced_by_the_claim() {
    use infragpt::db::PgInbox;
    use infragpt_actors::conversation::AgentTurnStart;
    use infragpt_actors::inbox::{InboundEvents, NewInboundEvent, RecordOutcome, RoutingKey};

    let db = TestDb::new().await;
    let store = PgConversationStore::new(db.pool().clone());
    let inbox = PgInbox::new(db.pool().clone());
    let conv = store.upsert_conversation(&key("400.000001")).await.unwrap();
    let RecordOutcome::Recorded(event) = inbox
        .record(NewInboundEvent {
            source: infragpt_actors::sources::SLACK,
            source_id: "Ev1".into(),
            routing_key: RoutingKey("T1/C1/400.000001".into()),
            kind: "app_mention".into(),
            payload: serde_json::json!({"event_id": "Ev1"}).into(),
        })
        .await
        .unwrap()
    else {
        panic!("a new event is recorded");
    };
    let claimed = inbox.claim(event.id).await.unwrap().expect("claimable");
    let claim = claimed.claim();
    let turn = ts("400.000001");

    assert_eq!(
        store
            .start_agent_turn(conv.id, &turn, Some(claim))
            .await
            .unwrap(),
        AgentTurnStart::Started
    );
    assert_eq!(
        store.find(conv.id).await.unwrap().unwrap().current_turn_ts,
        Some(turn.clone())
    );
    // An older attempt's claim, and a finished event, no longer hold.
    let stale = infragpt_actors::inbox::Claim {
        attempt: claim.attempt - 1,
        ..claim
    };
    let next = ts("400.000002");
    assert_eq!(
        store
            .start_agent_turn(conv.id, &next, Some(stale))
            .await
            .unwrap(),
        AgentTurnStart::Fenced
    );
    inbox.mark_done(claim).await.unwrap();
    assert_eq!(
        store
            .start_agent_turn(conv.id, &next, Some(claim))
            .await
            .unwrap(),
        AgentTurnStart::Fenced
    );
    assert_eq!(
        store.find(conv.id).await.unwrap().unwrap().current_turn_ts,
        Some(turn),
        "a fenced start changes nothing"
    );
    // Unfenced callers always start; an unknown conversation is an error, not a fence.
    assert_eq!(
        store.start_agent_turn(conv.id, &next, None).await.unwrap(),
        AgentTurnStart::Started
    );
    assert!(
        store
            .start_agent_turn(ConversationId(uuid::Uuid::new_v4()), &next, Some(claim))
            .await
            .is_err()
    );
}

/// Raw statements marked `prepared()` stay prepared on their connection (diesel prepares
/// every other raw statement afresh, a round trip and a parse per call).
#[tokio::test]
async fn prepared_raw_statements_are_kept_per_connection() {
    use diesel::sql_types::{BigInt, Text};
    use infragpt::db::prepared::PreparedExt;

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let db = TestDb::new().await;
    let mut conn = db.pool().get().await.unwrap();
    async fn kept(conn: &mut diesel_async::AsyncPgConnection, text: &str) -> i64 {
        diesel::sql_query("SELECT count(*) AS n FROM pg_prepared_statements WHERE statement = $1")
            .bind::<Text, _>(text)
            .get_result::<Count>(conn)
            .await
            .unwrap()
            .n
    }
    const CACHED: &str = "SELECT $1::bigint AS n";
    const FRESH: &str = "SELECT $1::bigint + 0 AS n";
    for i in 0..3 {
        let c: Count = diesel::sql_query(CACHED)
            .bind::<BigInt, _>(i)
            .prepared()
            .get_result(&mut conn)
            .await
            .unwrap();
        assert_eq!(c.n, i);
        let f: Count = diesel::sql_query(FRESH)
            .bind::<BigInt, _>(i)
            .get_result(&mut conn)
            .await
            .unwrap();
        assert_eq!(f.n, i);
    }
    assert_eq!(kept(&mut conn, CACHED).await, 1);
    assert_eq!(kept(&mut conn, FRESH).await, 0);
}

/// A reply claim held by a replica that stopped, or that has been silent for longer than the
/// cluster's lease, lapses at once: a killed replica's partitions move after that long, and
/// the turn that inherits one must not wait out the claim's own 30 s lease.
#[tokio::test]
async fn reply_claims_of_silent_or_stopped_replicas_lapse() {
    use infragpt_actors::conversation::{IntentClaim, NewIntent, Posting};
    use infragpt_actors::partitions::ReplicaId;
    use std::time::Duration;

    let db = TestDb::new().await;
    let lease = Duration::from_secs(5);
    let replica = |name: &str| {
        PgConversationStore::new(db.pool().clone())
            .with_lease_fence(&ReplicaId(name.into()), Duration::ZERO, lease)
            .with_owner(name)
    };
    let (a, b) = (replica("replica-a"), replica("replica-b"));
    let mut conn = db.pool().get().await.unwrap();
    diesel::sql_query(
        "INSERT INTO cluster_replicas (replica_id, host, pid, version, status) VALUES \
         ('replica-a', 'h', 1, 'v', 'active'), ('replica-b', 'h', 2, 'v', 'active')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let conv = a.upsert_conversation(&key("500.000001")).await.unwrap();
    let intent = |text: &str| NewIntent {
        conversation_id: conv.id,
        in_reply_to: Some(ts("500.000001")),
        kind: MessageKind::Message,
        text: text.into(),
        posting: Posting::Messages {
            parts: vec![text.into()],
        },
    };
    let claim = |store: PgConversationStore, text: String| {
        let intent = intent(&text);
        async move {
            store
                .claim_intent(&intent, Duration::from_secs(30))
                .await
                .unwrap()
        }
    };
    let claimed = |c: &IntentClaim| matches!(c, IntentClaim::Claimed(_));

    // Both alive: the holder's 30 s claim stands.
    assert!(claimed(&claim(a.clone(), "one".into()).await));
    let busy = claim(b.clone(), "one".into()).await;
    assert!(
        matches!(&busy, IntentClaim::Busy { claimed_by, .. } if claimed_by == "replica-a"),
        "{busy:?}"
    );
    // The holder falls silent for longer than the cluster's lease: its claim lapses.
    diesel::sql_query(
        "UPDATE cluster_replicas SET heartbeat_at = now() - interval '6 seconds' \
         WHERE replica_id = 'replica-a'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let taken = claim(b.clone(), "one".into()).await;
    let IntentClaim::Claimed(taken) = taken else {
        panic!("a silent replica's claim lapses: {taken:?}");
    };
    assert_eq!(taken.token.claim, 2, "the second claim");
    // ... and by id too; a stopped replica's claims lapse as well.
    assert!(claimed(&claim(b.clone(), "two".into()).await));
    diesel::sql_query(
        "UPDATE cluster_replicas SET status = 'stopped' WHERE replica_id = 'replica-b'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    diesel::sql_query(
        "UPDATE cluster_replicas SET heartbeat_at = now() WHERE replica_id = 'replica-a'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let two: uuid::Uuid = {
        use infragpt::db::schema::reply_intents;
        reply_intents::table
            .filter(reply_intents::claimed_by.eq("replica-b"))
            .filter(reply_intents::claims.eq(1))
            .select(reply_intents::id)
            .first(&mut conn)
            .await
            .unwrap()
    };
    let by_id = a
        .claim_intent_by_id(
            infragpt_actors::ids::ReplyIntentId(two),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(
        claimed(&by_id),
        "a stopped replica's claim lapses: {by_id:?}"
    );
    // A store outside a cluster (no lease given) knows nothing of replicas: a claim by an
    // unknown holder stands until its own lease runs out.
    let alone = PgConversationStore::new(db.pool().clone());
    let busy = alone
        .claim_intent(&intent("one"), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(matches!(busy, IntentClaim::Busy { .. }), "{busy:?}");
}

/// Starting a turn opens its progress indicator in the same statement: once per turn, never
/// for a fenced start.
#[tokio::test]
async fn starting_a_turn_opens_its_progress_indicator_once() {
    use infragpt_actors::conversation::AgentTurnStart;
    use std::time::Duration;

    let db = TestDb::new().await;
    let store = PgConversationStore::new(db.pool().clone());
    let conv = store.upsert_conversation(&key("410.000001")).await.unwrap();
    let turn = ts("410.000001");
    let lease = Duration::from_secs(5);
    let (start, lock) = store
        .start_agent_turn_with_progress(conv.id, &turn, None, lease)
        .await
        .unwrap();
    assert_eq!(start, AgentTurnStart::Started);
    assert!(lock.is_some(), "the first start opens the indicator");
    let (start, again) = store
        .start_agent_turn_with_progress(conv.id, &turn, None, lease)
        .await
        .unwrap();
    assert_eq!(start, AgentTurnStart::Started);
    assert_eq!(again, None, "a retried turn keeps its indicator");
    assert!(
        store
            .start_agent_turn_with_progress(
                ConversationId(uuid::Uuid::new_v4()),
                &turn,
                None,
                lease
            )
            .await
            .is_err(),
        "an unknown conversation is an error"
    );
    let mut conn = db.pool().get().await.unwrap();
    let rows: i64 = infragpt::db::schema::turn_progress::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

/// `begin_turn_starting` starts the agent turn in the same statement only for a new message
/// and only while the event's claim holds; it opens the progress indicator when asked. A
/// message stored before (a retry, a twin) starts nothing: the caller starts it itself.
#[tokio::test]
async fn a_new_message_starts_its_turn_in_the_same_statement_under_the_claim() {
    use infragpt::db::PgInbox;
    use infragpt_actors::conversation::StartIfNew;
    use infragpt_actors::inbox::{InboundEvents, NewInboundEvent, RecordOutcome, RoutingKey};
    use std::time::Duration;

    let db = TestDb::new().await;
    let store = PgConversationStore::new(db.pool().clone());
    let inbox = PgInbox::new(db.pool().clone());
    let claim_of = |id: &'static str| {
        let inbox = inbox.clone();
        async move {
            let RecordOutcome::Recorded(event) = inbox
                .record(NewInboundEvent {
                    source: infragpt_actors::sources::SLACK,
                    source_id: id.into(),
                    routing_key: RoutingKey(format!("T1/C1/{id}")),
                    kind: "app_mention".into(),
                    payload: serde_json::json!({"event_id": id}).into(),
                })
                .await
                .unwrap()
            else {
                panic!("a new event is recorded");
            };
            inbox
                .claim(event.id)
                .await
                .unwrap()
                .expect("claimable")
                .claim()
        }
    };
    let thread = key("500.000001");
    let msg = |ts: &str, event: EventRowId| NewMessage {
        source_event_id: Some(event),
        ..message(ConversationId(uuid::Uuid::nil()), ts, user("U1"), "hi")
    };
    let lease = Some(Duration::from_secs(5));

    // A new thread: conversation, message and turn in one statement, indicator opened.
    let claim = claim_of("Ev1").await;
    let start = StartIfNew {
        claim: Some(claim),
        progress_lease: lease,
    };
    let first = store
        .begin_turn_starting(&thread, msg("500.000001", claim.id), start)
        .await
        .unwrap();
    assert_eq!(first.inserted, InsertOutcome::Inserted);
    let started = first.started.expect("a new message starts its turn");
    assert!(started.progress.is_some(), "the indicator opens");
    let id = first.conversation.id;
    assert_eq!(
        store.find(id).await.unwrap().unwrap().current_turn_ts,
        Some(ts("500.000001"))
    );
    // The same message again (a retry of the event) starts nothing here.
    let again = store
        .begin_turn_starting(&thread, msg("500.000001", claim.id), start)
        .await
        .unwrap();
    assert!(again.started.is_none());

    // A reply in the thread whose event's claim no longer holds: stored, not started.
    let stale = claim_of("Ev2").await;
    inbox.mark_done(stale).await.unwrap();
    let fenced = store
        .begin_turn_starting(
            &thread,
            msg("500.000002", stale.id),
            StartIfNew {
                claim: Some(stale),
                progress_lease: lease,
            },
        )
        .await
        .unwrap();
    assert_eq!(fenced.inserted, InsertOutcome::Inserted);
    assert!(fenced.started.is_none(), "a fenced start changes nothing");
    assert_eq!(
        store.find(id).await.unwrap().unwrap().current_turn_ts,
        Some(ts("500.000001"))
    );

    // A reply under a holding claim, without progress: the turn moves, no indicator.
    let claim = claim_of("Ev3").await;
    let next = store
        .begin_turn_starting(
            &thread,
            msg("500.000003", claim.id),
            StartIfNew {
                claim: Some(claim),
                progress_lease: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(next.started.expect("started").progress, None);
    assert_eq!(
        store.find(id).await.unwrap().unwrap().current_turn_ts,
        Some(ts("500.000003"))
    );
    assert_eq!(next.history.len(), 3);
    // Plain begin_turn never starts.
    let plain = store
        .begin_turn(&thread, msg("500.000004", claim.id))
        .await
        .unwrap();
    assert!(plain.started.is_none());
    assert_eq!(
        store.find(id).await.unwrap().unwrap().current_turn_ts,
        Some(ts("500.000003"))
    );
    let mut conn = db.pool().get().await.unwrap();
    let indicators: i64 = infragpt::db::schema::turn_progress::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(indicators, 1);
}

/// A new intent's claim records its first message as under way (saving the mark's own
/// statement) and tells the poster so; should that claim stop before its post, the next
/// claim sees the mark as a post that may be in the thread, and looks there first.
#[tokio::test]
async fn a_new_intents_claim_marks_its_first_message_under_way() {
    use infragpt_actors::conversation::{IntentClaim, NewIntent, Posting};
    use std::time::Duration;

    let db = TestDb::new().await;
    let store = PgConversationStore::new(db.pool().clone());
    let conv = store.upsert_conversation(&key("600.000001")).await.unwrap();
    let intent = NewIntent {
        conversation_id: conv.id,
        in_reply_to: Some(ts("600.000001")),
        kind: MessageKind::Message,
        text: "answer".into(),
        posting: Posting::Messages {
            parts: vec!["answer".into()],
        },
    };
    let IntentClaim::Claimed(first) = store
        .claim_intent(&intent, Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("a new intent is claimed");
    };
    assert!(first.first_part_marked);
    assert_eq!(
        first.uncertain_part, None,
        "its own mark is not an earlier post"
    );
    // The claim stops here (its process dies before posting); its lease runs out.
    let mut conn = db.pool().get().await.unwrap();
    diesel::sql_query("UPDATE reply_intents SET claimed_until = now() - interval '1 second'")
        .execute(&mut conn)
        .await
        .unwrap();
    let IntentClaim::Claimed(next) = store
        .claim_intent(&intent, Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("a lapsed claim is claimed again");
    };
    assert_eq!(next.token.intent, first.token.intent);
    assert_eq!(next.token.claim, 2);
    assert!(!next.first_part_marked);
    assert_eq!(
        next.uncertain_part,
        Some(0),
        "the first message may be in the thread"
    );
}

/// SendReply's first statement: the conversation and the claim under its current turn
/// (recorded when new), whether the reply names no turn or the current one; a reply naming
/// another turn claims nothing; a posted intent answers Posted and one claimed elsewhere
/// Busy; an unknown conversation is `None`.
#[tokio::test]
async fn claim_reply_finds_the_conversation_and_claims_under_its_current_turn() {
    use infragpt_actors::conversation::{IntentClaim, IntentStep, NewIntent, Posting};
    use std::time::Duration;

    let db = TestDb::new().await;
    let store = PgConversationStore::new(db.pool().clone());
    let conv = store.upsert_conversation(&key("700.000001")).await.unwrap();
    let intent = |turn: Option<&str>, text: &str| NewIntent {
        conversation_id: conv.id,
        in_reply_to: turn.map(ts),
        kind: MessageKind::Message,
        text: text.into(),
        posting: Posting::Messages {
            parts: vec![text.into()],
        },
    };
    let lease = Duration::from_secs(30);

    // No current turn yet: the reply goes under no turn.
    let (found, claim) = store
        .claim_reply(&intent(None, "early"), lease, false)
        .await
        .unwrap()
        .expect("the conversation exists");
    assert_eq!(found, conv);
    let Some(IntentClaim::Claimed(early)) = claim else {
        panic!("claimed: {claim:?}");
    };
    assert_eq!(early.in_reply_to, None);

    store
        .set_current_turn(conv.id, &ts("700.000002"))
        .await
        .unwrap();
    for turn in [None, Some("700.000002")] {
        let (found, claim) = store
            .claim_reply(&intent(turn, "answer"), lease, false)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.current_turn_ts, Some(ts("700.000002")));
        match (turn, claim) {
            (None, Some(IntentClaim::Claimed(c))) => {
                assert_eq!(c.in_reply_to, Some(ts("700.000002")));
                assert!(c.first_part_marked);
                // Posted: the same reply again, under either spelling, is Posted.
                store
                    .advance_intent(
                        c.token,
                        IntentStep::Posted {
                            part: 0,
                            message: NewMessage::from_agent(
                                conv.id,
                                ts("700.000003"),
                                "answer".into(),
                                c.in_reply_to.clone(),
                                MessageKind::Message,
                            ),
                        },
                        lease,
                    )
                    .await
                    .unwrap();
            }
            (Some(_), Some(IntentClaim::Posted)) => {}
            other => panic!("{other:?}"),
        }
    }
    // Claimed by someone else and still leased: Busy.
    let (_, claim) = store
        .claim_reply(&intent(None, "second"), lease, false)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(claim, Some(IntentClaim::Claimed(_))));
    let (_, claim) = store
        .claim_reply(&intent(None, "second"), lease, false)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(claim, Some(IntentClaim::Busy { .. })), "{claim:?}");

    // Another turn's reply claims nothing and records nothing.
    let before = store
        .unfinished_intents(conv.id, &ts("700.000001"), MessageKind::Message)
        .await
        .unwrap();
    let (_, claim) = store
        .claim_reply(&intent(Some("700.000001"), "late"), lease, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claim, None);
    assert_eq!(
        store
            .unfinished_intents(conv.id, &ts("700.000001"), MessageKind::Message)
            .await
            .unwrap(),
        before
    );
    assert!(
        store
            .claim_reply(
                &NewIntent {
                    conversation_id: ConversationId(uuid::Uuid::new_v4()),
                    ..intent(None, "x")
                },
                lease,
                false
            )
            .await
            .unwrap()
            .is_none()
    );
}

/// With progress shown, SendReply's claim of a new reply also takes the turn's progress
/// indicator over when nobody holds it (with the placeholder to replace, if any), says there
/// is nothing to take when the turn has no indicator, and leaves a held or taken indicator to
/// the poster, untouched.
#[tokio::test]
async fn claim_reply_takes_a_free_progress_indicator_over() {
    use infragpt::db::progress::PgProgressStore;
    use infragpt_actors::conversation::{
        AnswerSlot, IntentClaim, NewIntent, Posting, ProgressStore,
    };
    use std::time::Duration;

    let db = TestDb::new().await;
    let store = PgConversationStore::new(db.pool().clone());
    let progress = PgProgressStore::new(db.pool().clone());
    let conv = store.upsert_conversation(&key("800.000001")).await.unwrap();
    let lease = Duration::from_secs(30);
    let claim = |text: &'static str, take: bool| {
        let store = &store;
        async move {
            let intent = NewIntent {
                conversation_id: conv.id,
                in_reply_to: None,
                kind: MessageKind::Message,
                text: text.into(),
                posting: Posting::Messages {
                    parts: vec![text.into()],
                },
            };
            match store.claim_reply(&intent, lease, take).await.unwrap() {
                Some((_, Some(IntentClaim::Claimed(c)))) => c,
                other => panic!("claimed: {other:?}"),
            }
        }
    };

    // A turn without an indicator: the answer is a new message.
    store
        .set_current_turn(conv.id, &ts("800.000002"))
        .await
        .unwrap();
    assert_eq!(claim("a", true).await.answer_slot, Some(AnswerSlot::Post));
    assert_eq!(claim("b", false).await.answer_slot, None, "not asked");

    // Shown with a placeholder and free: taken over, the placeholder to replace.
    let shown = ts("800.000003");
    store.set_current_turn(conv.id, &shown).await.unwrap();
    let lock = progress
        .open_progress(conv.id, &shown, lease)
        .await
        .unwrap()
        .expect("opens");
    let placeholder = ts("800.000009");
    progress
        .progress_shown(conv.id, &shown, lock, Some(&placeholder), "is thinking…")
        .await
        .unwrap();
    let first = claim("c", true).await;
    assert_eq!(
        first.answer_slot,
        Some(AnswerSlot::Replace(placeholder.clone()))
    );
    // It is that reply's: the reply asking again gets the same, another finds it taken.
    assert_eq!(
        progress
            .answer_slot(conv.id, &shown, first.token.intent)
            .await
            .unwrap(),
        AnswerSlot::Replace(placeholder)
    );
    let second = claim("d", true).await;
    assert_eq!(second.answer_slot, None, "taken by the first reply");
    assert_eq!(
        progress
            .answer_slot(conv.id, &shown, second.token.intent)
            .await
            .unwrap(),
        AnswerSlot::Post
    );

    // Held (being shown right now): left to the poster, which waits for it.
    let held = ts("800.000004");
    store.set_current_turn(conv.id, &held).await.unwrap();
    progress
        .open_progress(conv.id, &held, lease)
        .await
        .unwrap()
        .expect("opens");
    let waiting = claim("e", true).await;
    assert_eq!(waiting.answer_slot, None);
    assert!(matches!(
        progress
            .answer_slot(conv.id, &held, waiting.token.intent)
            .await
            .unwrap(),
        AnswerSlot::Wait(_)
    ));
}

/// An indicator opened for showing later (a lease of zero) is free at once: SendReply's claim
/// takes it over. Otherwise the worker takes it when the delay is up, but only while it shows
/// nothing, nobody holds it and no answer took it: a report shown first, an answer, or a
/// holder keeps "is thinking…" out.
#[tokio::test]
async fn an_indicator_opened_for_later_is_taken_only_while_it_shows_nothing() {
    use infragpt::db::progress::PgProgressStore;
    use infragpt_actors::conversation::{
        AnswerSlot, IntentClaim, NewIntent, Posting, ProgressClaim, ProgressStore,
    };
    use std::time::Duration;

    let db = TestDb::new().await;
    let store = PgConversationStore::new(db.pool().clone());
    let progress = PgProgressStore::new(db.pool().clone());
    let conv = store.upsert_conversation(&key("810.000001")).await.unwrap();
    let lease = Duration::from_secs(30);
    let open_later = |turn: &'static str| {
        let (store, progress) = (&store, &progress);
        async move {
            let turn = ts(turn);
            store.set_current_turn(conv.id, &turn).await.unwrap();
            progress
                .open_progress(conv.id, &turn, Duration::ZERO)
                .await
                .unwrap()
                .expect("opens");
            turn
        }
    };

    // Answered within the delay: the reply's claim takes it over, and the delay finds
    // nothing to show.
    let answered = open_later("810.000002").await;
    let intent = NewIntent {
        conversation_id: conv.id,
        in_reply_to: None,
        kind: MessageKind::Message,
        text: "done".into(),
        posting: Posting::Messages {
            parts: vec!["done".into()],
        },
    };
    match store.claim_reply(&intent, lease, true).await.unwrap() {
        Some((_, Some(IntentClaim::Claimed(c)))) => {
            assert_eq!(c.answer_slot, Some(AnswerSlot::Post), "free at once")
        }
        other => panic!("claimed: {other:?}"),
    }
    assert_eq!(
        progress
            .lock_unshown(conv.id, &answered, lease)
            .await
            .unwrap(),
        None
    );

    // Still working when the delay is up: taken once; not again while held, nor once shown.
    let slow = open_later("810.000003").await;
    let lock = progress
        .lock_unshown(conv.id, &slow, lease)
        .await
        .unwrap()
        .expect("taken");
    assert_eq!(
        progress.lock_unshown(conv.id, &slow, lease).await.unwrap(),
        None,
        "held"
    );
    progress
        .progress_shown(conv.id, &slow, lock, None, "is thinking…")
        .await
        .unwrap();
    assert_eq!(
        progress.lock_unshown(conv.id, &slow, lease).await.unwrap(),
        None,
        "shown already"
    );

    // A report within the delay is shown first: the delay does not bring "is thinking…"
    // over it.
    let reported = open_later("810.000004").await;
    assert!(
        progress
            .note_progress(conv.id, &reported, "querying Datadog")
            .await
            .unwrap()
    );
    let claimed = progress
        .claim_progress(conv.id, &reported, lease, Duration::from_secs(1))
        .await
        .unwrap();
    let ProgressClaim::Claimed { lock, text, .. } = claimed else {
        panic!("the report is claimable at once: {claimed:?}");
    };
    assert_eq!(text, "querying Datadog");
    assert_eq!(
        progress
            .lock_unshown(conv.id, &reported, lease)
            .await
            .unwrap(),
        None,
        "the report holds it"
    );
    progress
        .progress_shown(conv.id, &reported, lock, None, &text)
        .await
        .unwrap();
    assert_eq!(
        progress
            .lock_unshown(conv.id, &reported, lease)
            .await
            .unwrap(),
        None,
        "the report shows"
    );
}

/// A turn of a long thread reads the thread's first message and its latest ones
/// (`agent.history_limit`), oldest first, not the whole thread; the full history is still
/// there for everything else.
#[tokio::test]
async fn a_turn_reads_the_first_message_and_the_latest_ones() {
    let db = TestDb::new().await;
    let store = PgConversationStore::new(db.pool().clone()).with_history_limit(3);
    let thread = key("400.000001");
    let ts = |i: u32| format!("400.{:06}", i + 1);
    let say = |i: u32| NewMessage {
        source_event_id: Some(EventRowId(i64::from(i) + 1)),
        ..message(
            ConversationId(uuid::Uuid::nil()),
            &ts(i),
            user("U1"),
            &format!("message {i}"),
        )
    };
    for i in 0..7 {
        store.begin_turn(&thread, say(i)).await.unwrap();
    }
    let start = store.begin_turn(&thread, say(7)).await.unwrap();
    let read: Vec<String> = start.history.iter().map(|m| m.text.clone()).collect();
    assert_eq!(read, ["message 0", "message 5", "message 6", "message 7"]);
    assert_eq!(
        store.history(start.conversation.id).await.unwrap().len(),
        8,
        "the stored thread is whole"
    );

    // A short thread is read whole, its first message once.
    let short = key("500.000001");
    let first = NewMessage {
        source_event_id: Some(EventRowId(100)),
        ..message(
            ConversationId(uuid::Uuid::nil()),
            "500.000001",
            user("U1"),
            "only",
        )
    };
    let start = store.begin_turn(&short, first).await.unwrap();
    let read: Vec<String> = start.history.iter().map(|m| m.text.clone()).collect();
    assert_eq!(read, ["only"]);
}

/// A thread's first message that starts its conversation is its history without a read; a
/// first message stored after replies of its thread, or stored already, reads the thread.
#[tokio::test]
async fn a_new_threads_history_is_its_first_message() {
    let db = TestDb::new().await;
    let store = PgConversationStore::new(db.pool().clone());
    let say = |ts: &str, text: &str, event: i64| NewMessage {
        source_event_id: Some(EventRowId(event)),
        ..message(ConversationId(uuid::Uuid::nil()), ts, user("U1"), text)
    };

    let thread = key("600.000001");
    let start = store
        .begin_turn(&thread, say("600.000001", "hello", 1))
        .await
        .unwrap();
    assert_eq!(start.inserted, InsertOutcome::Inserted);
    let stored = store.history(start.conversation.id).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        start.history, stored,
        "the same message as a read would give"
    );

    // Its redelivery reads the thread, which holds a reply by now.
    store
        .insert_message(message(
            start.conversation.id,
            "600.000002",
            user("U1"),
            "a reply",
        ))
        .await
        .unwrap();
    let again = store
        .begin_turn(&thread, say("600.000001", "hello", 1))
        .await
        .unwrap();
    assert!(matches!(again.inserted, InsertOutcome::Exists { .. }));
    let texts: Vec<&str> = again.history.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["hello", "a reply"]);

    // A reply stored ahead of its parent: the parent's turn reads both.
    let late = key("700.000001");
    store
        .begin_turn(&late, say("700.000002", "reply first", 3))
        .await
        .unwrap();
    let parent = store
        .begin_turn(&late, say("700.000001", "parent", 4))
        .await
        .unwrap();
    assert_eq!(parent.inserted, InsertOutcome::Inserted);
    let texts: Vec<&str> = parent.history.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts.contains(&"parent") && texts.contains(&"reply first"));
}

/// Parts that SendReplies post at the same moment are recorded in one statement
/// (`supervisor/reply_parts`): each stores its message and completes its intent, a part
/// recorded under a claim taken over since is recorded but reported lost, and a part whose
/// text PostgreSQL refuses (a NUL) fails alone.
#[actix_rt::test]
async fn parts_posted_together_share_a_statement_and_a_bad_one_fails_alone() {
    use infragpt::db::schema::reply_intents;
    use infragpt_actors::conversation::{IntentClaim, IntentStep, NewIntent, Posting};
    use infragpt_actors::health::ActorId;
    use infragpt_actors::{ActorKind, ActorState, HealthRegistry};
    use std::time::Duration;

    let db = TestDb::new().await;
    let health = HealthRegistry::new();
    let writer =
        infragpt::db::build_writer_pool(&db.url, 2, Duration::from_secs(10)).expect("writer pool");
    let store = PgConversationStore::new(db.pool().clone()).with_grouped_parts(
        writer,
        health.register(ActorId::new(ActorKind::SUPERVISOR, "reply_parts"), None),
    );
    let conv = store.upsert_conversation(&key("800.000001")).await.unwrap();
    let claim = |text: String, lease: Duration| {
        let store = store.clone();
        async move {
            let intent = NewIntent {
                conversation_id: conv.id,
                in_reply_to: Some(ts("800.000001")),
                kind: MessageKind::Message,
                text: text.clone(),
                posting: Posting::Messages { parts: vec![text] },
            };
            match store.claim_intent(&intent, lease).await.unwrap() {
                IntentClaim::Claimed(c) => c.token,
                other => panic!("claimed: {other:?}"),
            }
        }
    };
    let lease = Duration::from_secs(30);
    let mut parts = Vec::new();
    for i in 0..8 {
        parts.push((
            claim(format!("answer {i}"), lease).await,
            format!("answer {i}"),
        ));
    }
    // Claimed, lapsed and claimed again: the first claim's record is no longer its own.
    let stale = claim("taken over".into(), Duration::ZERO).await;
    claim("taken over".into(), lease).await;
    parts.push((stale, "taken over".into()));
    // Its intent is fine; the message it posted has a NUL, which PostgreSQL refuses.
    let nul = claim("refused".into(), lease).await;
    parts.push((nul, "a\u{0}b".into()));

    let outcomes = futures::future::join_all(parts.iter().enumerate().map(|(i, (token, text))| {
        let message = NewMessage::from_agent(
            conv.id,
            ts(&format!("800.{:06}", i + 2)),
            text.clone(),
            Some(ts("800.000001")),
            MessageKind::Message,
        );
        store.advance_intent(*token, IntentStep::Posted { part: 0, message }, lease)
    }))
    .await;
    for (i, outcome) in outcomes.iter().take(8).enumerate() {
        assert_eq!(outcome.as_ref().ok(), Some(&true), "part {i}: {outcome:?}");
    }
    assert_eq!(outcomes[8].as_ref().ok(), Some(&false), "{:?}", outcomes[8]);
    assert!(
        outcomes[9].is_err(),
        "the NUL is refused: {:?}",
        outcomes[9]
    );

    let mut conn = db.pool().get().await.unwrap();
    let mut stored: Vec<String> = messages::table
        .filter(messages::sender_kind.eq("agent"))
        .select(messages::text)
        .load(&mut conn)
        .await
        .unwrap();
    stored.sort();
    let mut expected: Vec<String> = (0..8).map(|i| format!("answer {i}")).collect();
    expected.push("taken over".into());
    assert_eq!(stored, expected);
    let posted: i64 = reply_intents::table
        .filter(reply_intents::posted_at.is_not_null())
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        posted, 9,
        "every recorded part completes its one-part intent"
    );
    let writer = health
        .get(ActorKind::SUPERVISOR, "reply_parts")
        .expect("the writer is in the actor tree");
    assert_eq!(writer.state, ActorState::Running);
    let batches = writer.detail["batches"].as_u64().expect("batches");
    assert!(
        (1..10).contains(&batches),
        "ten parts recorded together share batches: {batches}"
    );
}

/// The parts' writer makes its generic plan once, often while `conversations` and
/// `reply_intents` are young, and keeps it while they grow: touching the parts'
/// conversations and completing their intents must stay probes by id, never a scan of
/// either table (BENCHMARKS.md, "HOT updates of conversations and reply intents"). The plan
/// is read from the writer's own connection, as `EXPLAIN EXECUTE` of the statement it
/// prepared.
#[actix_rt::test]
async fn the_parts_batch_keeps_a_keyed_plan_as_the_conversations_grow() {
    use infragpt_actors::health::ActorId;
    use infragpt_actors::{ActorKind, HealthRegistry};
    use std::time::Duration;

    let db = TestDb::new().await;
    // One connection: the batch below and the plan read after it share it.
    let writer =
        infragpt::db::build_writer_pool(&db.url, 1, Duration::from_secs(10)).expect("writer pool");
    let health = HealthRegistry::new();
    let store = PgConversationStore::new(db.pool().clone()).with_grouped_parts(
        writer.clone(),
        health.register(ActorId::new(ActorKind::SUPERVISOR, "reply_parts"), None),
    );
    // Young tables: one conversation, one intent, one part recorded.
    let conv = store.upsert_conversation(&key("810.000001")).await.unwrap();
    answer(&store, conv.id, "810.000001", "810.000002", "answer").await;

    // They grow a thousandfold within the minute before autovacuum's next analyze.
    let mut conn = db.pool().get().await.unwrap();
    for sql in [
        "INSERT INTO conversations (team_id, channel_id, thread_ts) \
         SELECT 'T1', 'C1', 'grown.' || i FROM generate_series(1, 5000) i",
        "INSERT INTO reply_intents (conversation_id, turn_ts, digest, kind, posting, parts) \
         SELECT id, thread_ts, 'd', 'message', '{}', 1 FROM conversations",
    ] {
        diesel::sql_query(sql)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    let mut writer_conn = writer.get().await.expect("the writer's connection");
    let uuids = "ARRAY[gen_random_uuid(), gen_random_uuid()]";
    let texts = "ARRAY['a', 'b']";
    let plan = kept_plan(
        &mut writer_conn,
        "WITH p AS%unnest%",
        &format!(
            "{uuids}, ARRAY[1, 1], ARRAY[1, 1], ARRAY[1000, 1000]::int8[], \
             {uuids}, {texts}, {texts}, {texts}, {texts}, {texts}, {texts}, \
             ARRAY[NULL, NULL]::int8[], {texts}, ARRAY['message', 'message']"
        ),
        "the parts batch",
    )
    .await;
    for table in ["conversations", "reply_intents"] {
        assert!(
            !plan.contains(&format!("Seq Scan on {table}"))
                && !plan.contains(&format!("Bitmap Heap Scan on {table}")),
            "{table} is probed by id, not scanned:\n{plan}"
        );
    }
    assert!(
        plan.contains("Index Scan using conversations_pkey on conversations")
            && plan.contains("Index Scan using reply_intents_pkey on reply_intents"),
        "both are probed by their primary key:\n{plan}"
    );
}

/// What a turn's read of the thread gives ([`PgConversationStore::with_history_limit`]): the
/// first message and the latest `limit`, from the whole stored history.
async fn first_and_latest(
    store: &PgConversationStore,
    id: ConversationId,
    limit: usize,
) -> Vec<infragpt_actors::conversation::StoredMessage> {
    let mut all = store.history(id).await.unwrap();
    if all.len() > limit + 1 {
        all.drain(1..all.len() - limit);
    }
    all
}

/// The agent's answer to turn `turn` of `conv`, recorded as a SendReply records it.
async fn answer(
    store: &PgConversationStore,
    conv: ConversationId,
    turn: &str,
    at: &str,
    text: &str,
) {
    use infragpt_actors::conversation::{IntentClaim, IntentStep, NewIntent, Posting};
    let lease = std::time::Duration::from_secs(30);
    let intent = NewIntent {
        conversation_id: conv,
        in_reply_to: Some(ts(turn)),
        kind: MessageKind::Message,
        text: text.into(),
        posting: Posting::Messages {
            parts: vec![text.into()],
        },
    };
    let token = match store.claim_intent(&intent, lease).await.unwrap() {
        IntentClaim::Claimed(c) => c.token,
        other => panic!("claimed: {other:?}"),
    };
    let message = NewMessage::from_agent(
        conv,
        ts(at),
        text.into(),
        Some(ts(turn)),
        MessageKind::Message,
    );
    let ours = store
        .advance_intent(token, IntentStep::Posted { part: 0, message }, lease)
        .await
        .unwrap();
    assert!(ours);
}

/// A turn of a thread this store served reads none of its messages: the history it keeps
/// (its turns' messages and the answers it recorded) is the thread's. Any other change to
/// the thread (another replica's turn, an edit, a deletion, a message stored on its own)
/// makes the next turn read the thread, and the turn after that is served from memory again.
#[tokio::test]
async fn a_kept_history_is_the_threads_and_every_other_change_is_read() {
    const LIMIT: usize = 3;
    let db = TestDb::new().await;
    let store = PgConversationStore::new(db.pool().clone())
        .with_history_limit(LIMIT as u32)
        .with_history_cache(1 << 20);
    // Another replica on the same database, keeping nothing.
    let other = PgConversationStore::new(db.pool().clone()).with_history_limit(LIMIT as u32);
    let counter = store.history_counter();
    let count = |source: &str| counter.with_label_values(&[source]).get();
    let thread = key("900.000001");
    let at = |i: u32| format!("900.{:06}", 2 * i + 1);
    let reply_at = |i: u32| format!("900.{:06}", 2 * i + 2);
    let say = |i: u32| NewMessage {
        source_event_id: Some(EventRowId(i64::from(i) + 1)),
        ..message(
            ConversationId(uuid::Uuid::nil()),
            &at(i),
            user("U1"),
            &format!("message {i}"),
        )
    };
    let texts = |h: &[infragpt_actors::conversation::StoredMessage]| {
        h.iter().map(|m| m.text.clone()).collect::<Vec<_>>()
    };

    let start = store.begin_turn(&thread, say(0)).await.unwrap();
    let conv = start.conversation.id;
    assert_eq!(start.history, first_and_latest(&store, conv, LIMIT).await);
    assert_eq!(count("new_thread"), 1);
    answer(&store, conv, &at(0), &reply_at(0), "answer 0").await;
    for i in 1..=4 {
        let start = store.begin_turn(&thread, say(i)).await.unwrap();
        assert_eq!(
            start.history,
            first_and_latest(&store, conv, LIMIT).await,
            "turn {i}"
        );
        answer(&store, conv, &at(i), &reply_at(i), &format!("answer {i}")).await;
    }
    assert_eq!(
        (count("kept"), count("read")),
        (4, 0),
        "no turn read the thread"
    );
    // A redelivered message moves nothing but its own turn: still kept.
    let again = store.begin_turn(&thread, say(4)).await.unwrap();
    assert!(matches!(again.inserted, InsertOutcome::Exists { .. }));
    assert_eq!(again.history, first_and_latest(&store, conv, LIMIT).await);
    assert_eq!((count("kept"), count("read")), (5, 0));

    // An edit of the latest answer.
    assert!(
        store
            .edit_message(&team(), &channel(), &ts(&reply_at(4)), "edited")
            .await
            .unwrap()
    );
    let start = store.begin_turn(&thread, say(5)).await.unwrap();
    assert_eq!(start.history, first_and_latest(&store, conv, LIMIT).await);
    assert!(texts(&start.history).contains(&"edited".to_owned()));
    assert_eq!(count("read"), 1);

    // Another replica's turn in the thread.
    other.begin_turn(&thread, say(6)).await.unwrap();
    let start = store.begin_turn(&thread, say(7)).await.unwrap();
    assert_eq!(start.history, first_and_latest(&store, conv, LIMIT).await);
    assert!(texts(&start.history).contains(&"message 6".to_owned()));
    assert_eq!(count("read"), 2);

    // A deletion, and a message stored on its own.
    assert!(
        store
            .mark_deleted(&team(), &channel(), &ts(&at(7)))
            .await
            .unwrap()
    );
    store
        .insert_message(message(conv, &reply_at(7), user("U2"), "aside"))
        .await
        .unwrap();
    let start = store.begin_turn(&thread, say(8)).await.unwrap();
    assert_eq!(start.history, first_and_latest(&store, conv, LIMIT).await);
    let read = texts(&start.history);
    assert!(!read.contains(&"message 7".to_owned()) && read.contains(&"aside".to_owned()));
    assert_eq!(count("read"), 3);

    // From memory again.
    answer(&store, conv, &at(8), &reply_at(8), "answer 8").await;
    let start = store.begin_turn(&thread, say(9)).await.unwrap();
    assert_eq!(start.history, first_and_latest(&store, conv, LIMIT).await);
    assert_eq!((count("kept"), count("read")), (6, 3));
}

/// The turn's first statement looks its message up by conversation and ts through the
/// unique key in the plan a connection keeps, made while the tables were nearly empty: with
/// an index of the conversation's messages to choose from instead, that plan had read every
/// message of a long thread at every turn (BENCHMARKS.md, "History in memory").
#[tokio::test]
async fn the_turns_first_statement_keeps_a_keyed_plan_as_a_thread_grows() {
    use std::time::Duration;

    let db = TestDb::new().await;
    // One connection, planning generically from its first execution, on young tables.
    let pool = infragpt::db::build_pool(&db.url, 1, Duration::from_secs(10)).expect("pool");
    {
        let mut conn = pool.get().await.unwrap();
        diesel::sql_query("SET plan_cache_mode = force_generic_plan")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let store = PgConversationStore::new(pool.clone());
    let thread = key("950.000001");
    let say = |at: &str| NewMessage {
        source_event_id: Some(EventRowId(1)),
        ..message(ConversationId(uuid::Uuid::nil()), at, user("U1"), "hello")
    };
    let start = store.begin_turn(&thread, say("950.000001")).await.unwrap();
    store.begin_turn(&thread, say("950.000002")).await.unwrap();

    // The thread grows to thousands of messages, among thousands of others.
    let mut conn = pool.get().await.unwrap();
    for sql in [
        format!(
            "INSERT INTO messages (conversation_id, slack_ts, sender_kind, sender_id, text) \
             SELECT '{}', '951.' || lpad(i::text, 6, '0'), 'user', 'U1', 'more' \
             FROM generate_series(1, 3000) i",
            start.conversation.id
        ),
        "INSERT INTO conversations (team_id, channel_id, thread_ts) \
         SELECT 'T1', 'C1', 'grown.' || i FROM generate_series(1, 3000) i"
            .to_owned(),
        "INSERT INTO messages (conversation_id, slack_ts, sender_kind, sender_id, text) \
         SELECT id, '952.000001', 'user', 'U1', 'other' FROM conversations \
         WHERE thread_ts LIKE 'grown.%'"
            .to_owned(),
        "ANALYZE messages".to_owned(),
    ] {
        diesel::sql_query(&sql)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let plan = kept_plan(
        &mut conn,
        "WITH start AS%",
        "'T1', 'C1', '950.000001', '950.000003', 'user', 'U1', NULL, NULL, 'hi', 1, NULL, \
         'message', true, NULL, 0, NULL, 0, NULL",
        "the turn's first statement",
    )
    .await;
    assert!(
        !plan.contains("messages_conversation_idx") && !plan.contains("Seq Scan on messages"),
        "no lookup reads the thread's messages:\n{plan}"
    );
    assert!(
        plan.contains("messages_conversation_id_slack_ts_key"),
        "the message is found by its key:\n{plan}"
    );
}
