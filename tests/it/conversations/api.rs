//! The conversations API against real PostgreSQL, through HTTP with real session tokens:
//! forgetting a conversation (what goes, what stays, the audit entry, the refusal while a
//! turn is in flight), and listing and reading conversations (pages, organization scope).

use std::collections::BTreeSet;

use infragpt::conversations::store::tombstone;
use infragpt_actors::inbox::{EventPayload, NewInboundEvent, RecordOutcome, RoutingKey};
use infragpt_actors::sources;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::conversations::{
    AGENT, Intent, days_ago, event_payload, event_row, insert_event, insert_event_from,
    insert_intent, key, link_workspace, rows_of, seed_conversation, set_event_status, set_times,
};
use crate::support::identity::{KEY_A, KID_A, audit_rows, claims_v2, sign_jwt};
use crate::support::rest::{
    BOB, CHANNEL, ORG_A, ORG_B, Persona, RestEnv, TEAM_A, TEAM_B, THREAD, assert_error_shape, call,
};

fn admin() -> String {
    Persona::Admin.token(ORG_A)
}

fn bob() -> String {
    sign_jwt(KEY_A, KID_A, &claims_v2(BOB, ORG_B, "org:admin"))
}

/// The reply in A's seeded conversation (edits and deletes of it are routed by its own ts).
const REPLY_TS: &str = "1700000002.000100";

#[actix_rt::test]
async fn an_admin_forgets_a_conversation_its_messages_intents_and_event_payloads() {
    let env = RestEnv::new().await;
    let svc = env.service().await;
    let pool = env.app.pool();
    let id: Uuid = env.conversation_a.parse().expect("id");
    let thread = key(TEAM_A, CHANNEL, THREAD);
    insert_intent(pool, id, THREAD, "the database is busy", Intent::Posted).await;
    // Expired claims are no turn in flight: a poster gave up on them.
    insert_intent(pool, id, THREAD, "a notice", Intent::Claimed(-5)).await;

    // The thread's events: the mention, its `message` twin, a dead letter, and an edit of
    // the reply (routed by the reply's own ts), one kept verbatim in raw_body.
    let mention = insert_event(pool, "Ev-mention", &thread, "done", None).await;
    let twin = insert_event(pool, "Ev-twin", &thread, "ignored", None).await;
    let dead = insert_event(pool, "Ev-dead", &thread, "failed", None).await;
    let edit = insert_event(
        pool,
        "Ev-edit",
        &key(TEAM_A, CHANNEL, REPLY_TS),
        "done",
        Some(r#"{"text":"secret\u0000"}"#),
    )
    .await;
    // Not this conversation's: another thread, B's same thread, another source on the same
    // key.
    let other_thread = insert_event(
        pool,
        "Ev-other",
        &key(TEAM_A, CHANNEL, "1700000009.000100"),
        "done",
        None,
    )
    .await;
    let b_thread = insert_event(pool, "Ev-b", &key(TEAM_B, CHANNEL, THREAD), "done", None).await;
    let github = insert_event_from(pool, "github", "delivery-1", &thread, "done", None).await;

    let (status, answer) = call(
        &svc,
        "DELETE",
        &format!("/conversations/{id}"),
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({
            "id": id,
            "team_id": TEAM_A,
            "channel_id": CHANNEL,
            "thread_ts": THREAD,
            "messages": 3,
            "reply_intents": 2,
            "inbound_events_forgotten": 4,
            "dead_letters_closed": 1,
        })
    );

    assert_eq!(rows_of(pool, id).await, (0, 0, 0), "rows gone");
    for event in [mention, twin, edit] {
        let (status, payload, raw, error, _) = event_row(pool, event).await;
        assert_eq!(payload, tombstone(), "event {event}");
        assert_eq!(raw, None, "event {event}");
        assert_eq!(error, None, "event {event}");
        assert!(status == "done" || status == "ignored", "{status}");
    }
    let (status, payload, _, error, source_id) = event_row(pool, dead).await;
    assert_eq!(payload, tombstone());
    assert_eq!(
        status, "ignored",
        "the dead letter is closed: a retry would replay nothing"
    );
    assert_eq!(
        error.as_deref(),
        Some("discarded: its conversation was deleted")
    );
    assert_eq!(source_id, "Ev-dead", "source ids stay for deduplication");
    for (event, source_id) in [
        (other_thread, "Ev-other"),
        (b_thread, "Ev-b"),
        (github, "delivery-1"),
    ] {
        let (status, payload, ..) = event_row(pool, event).await;
        assert_eq!(payload, event_payload(source_id), "{source_id} untouched");
        assert_eq!(status, "done");
    }
    let (c, m, _) = rows_of(pool, env.conversation_b.parse().expect("id")).await;
    assert_eq!((c, m), (1, 3), "B's conversation untouched");

    // Audited with the counts, by whom and which.
    let entries: Vec<Value> = audit_rows(pool)
        .await
        .into_iter()
        .filter(|e| e["action"] == "conversation.deleted")
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    assert_eq!(entry["actor"], "user/user_alice");
    assert_eq!(entry["target"], id.to_string());
    assert_eq!(entry["organization_id"], env.org_a);
    assert_eq!(
        entry["details"],
        json!({
            "team_id": TEAM_A,
            "channel_id": CHANNEL,
            "thread_ts": THREAD,
            "messages": 3,
            "reply_intents": 2,
            "inbound_events_forgotten": 4,
            "dead_letters_closed": 1,
        })
    );

    // Gone: a second delete and a read are 404, and it is no longer listed.
    for method in ["DELETE", "GET"] {
        let (status, answer) = call(
            &svc,
            method,
            &format!("/conversations/{id}"),
            Some(&admin()),
            None,
        )
        .await;
        assert_eq!(status, 404, "{method}: {answer}");
        assert_error_shape(&answer, "not_found", method);
    }
    let (_, list) = call(&svc, "GET", "/conversations", Some(&admin()), None).await;
    assert_eq!(list["conversations"], json!([]), "{list}");
    let audited = audit_rows(pool)
        .await
        .into_iter()
        .filter(|e| e["action"] == "conversation.deleted")
        .count();
    assert_eq!(audited, 1, "a refused delete is not audited");

    // A redelivery of a forgotten event is still a duplicate: nothing is handled again.
    let again = env
        .app
        .cluster()
        .inbox()
        .record(NewInboundEvent {
            source: sources::SLACK,
            source_id: "Ev-mention".into(),
            routing_key: RoutingKey(thread.clone()),
            kind: "app_mention".into(),
            payload: EventPayload::Json(event_payload("Ev-mention")),
        })
        .await
        .expect("record");
    assert!(matches!(again, RecordOutcome::Duplicate(_)), "{again:?}");
    let (_, payload, ..) = event_row(pool, mention).await;
    assert_eq!(payload, tombstone(), "the redelivery stored nothing");
}

#[actix_rt::test]
async fn a_turn_in_flight_is_refused_with_409_and_nothing_changes() {
    let env = RestEnv::new().await;
    let svc = env.service().await;
    let pool = env.app.pool();
    let id: Uuid = env.conversation_a.parse().expect("id");
    let uri = format!("/conversations/{id}");
    let finished = insert_event(pool, "Ev-done", &key(TEAM_A, CHANNEL, THREAD), "done", None).await;

    // A turn queued or running in the thread, and an edit of the reply not handled yet.
    let cases = [
        ("Ev-pending", key(TEAM_A, CHANNEL, THREAD), "pending"),
        ("Ev-processing", key(TEAM_A, CHANNEL, THREAD), "processing"),
        ("Ev-edit", key(TEAM_A, CHANNEL, REPLY_TS), "pending"),
    ];
    for (source_id, routing_key, status) in cases {
        let event = insert_event(pool, source_id, &routing_key, status, None).await;
        let before = env.snapshot().await;
        let (code, answer) = call(&svc, "DELETE", &uri, Some(&admin()), None).await;
        assert_eq!(code, 409, "{source_id}: {answer}");
        assert_error_shape(&answer, "conflict", source_id);
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("in flight")),
            "{answer}"
        );
        assert_eq!(env.snapshot().await, before, "{source_id}: nothing changed");
        set_event_status(pool, event, "done").await;
    }

    // A reply being posted right now (a live claim).
    insert_intent(pool, id, THREAD, "an answer", Intent::Claimed(30)).await;
    let before = env.snapshot().await;
    let (code, answer) = call(&svc, "DELETE", &uri, Some(&admin()), None).await;
    assert_eq!(code, 409, "{answer}");
    assert_error_shape(&answer, "conflict", "reply");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("reply is being posted")),
        "{answer}"
    );
    assert_eq!(env.snapshot().await, before, "nothing changed");

    // Once the reply is posted, it goes, with every event of the turn.
    let mut conn = pool.get().await.expect("conn");
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query("UPDATE reply_intents SET posted_at = now(), claimed_until = now()"),
        &mut conn,
    )
    .await
    .expect("posted");
    drop(conn);
    let (code, answer) = call(&svc, "DELETE", &uri, Some(&admin()), None).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["inbound_events_forgotten"], 4, "{answer}");
    assert_eq!(answer["reply_intents"], 1, "{answer}");
    assert_eq!(event_row(pool, finished).await.1, tombstone());
}

/// Conversations of A's two workspaces, newest first by creation; `created_at` of the
/// seeded ones is set so that two share a time (the id breaks the tie).
#[actix_rt::test]
async fn conversations_page_newest_first_and_only_the_organizations() {
    let env = RestEnv::new().await;
    let svc = env.service().await;
    let pool = env.app.pool();
    let org_a: Uuid = env.org_a.parse().expect("id");
    link_workspace(pool, "T0ROLESA2", Some(org_a)).await;
    link_workspace(pool, "T0NOBODY1", None).await;
    let mut expected = vec![(
        days_ago(30),
        env.conversation_a.parse::<Uuid>().expect("id"),
    )];
    set_times(pool, expected[0].1, expected[0].0, expected[0].0).await;
    let tie = days_ago(3);
    for (n, (team, created_at)) in [
        (TEAM_A, days_ago(10)),
        ("T0ROLESA2", days_ago(5)),
        (TEAM_A, tie),
        ("T0ROLESA2", tie),
        (TEAM_A, days_ago(1)),
    ]
    .into_iter()
    .enumerate()
    {
        let ts = format!("1700000100.{n:06}");
        let id = seed_conversation(pool, team, CHANNEL, &ts, &[(&ts, "U0ROLESUS1", "hi")]).await;
        set_times(pool, id, created_at, created_at).await;
        expected.push((created_at, id));
    }
    // Nobody's workspace and B's are never listed for A.
    let ts = "1700000200.000100";
    seed_conversation(pool, "T0NOBODY1", CHANNEL, ts, &[(ts, "U0ROLESUS1", "hi")]).await;
    expected.sort_by(|a, b| b.cmp(a));
    let expected: Vec<String> = expected.iter().map(|(_, id)| id.to_string()).collect();

    for persona in [Persona::Admin, Persona::Member] {
        let token = persona.token(ORG_A);
        let mut seen = Vec::new();
        let mut uri = "/conversations?limit=2".to_owned();
        let mut pages = 0;
        loop {
            let (status, page) = call(&svc, "GET", &uri, Some(&token), None).await;
            assert_eq!(status, 200, "{persona:?} {uri}: {page}");
            pages += 1;
            let conversations = page["conversations"].as_array().expect("array");
            assert!(conversations.len() <= 2, "{page}");
            for c in conversations {
                seen.push(c["id"].as_str().expect("id").to_owned());
                assert!(
                    c["team_id"] == TEAM_A || c["team_id"] == "T0ROLESA2",
                    "{persona:?}: not A's: {c}"
                );
            }
            match page["next_cursor"].as_str() {
                Some(cursor) => uri = format!("/conversations?limit=2&before={cursor}"),
                None => break,
            }
        }
        assert_eq!(seen, expected, "{persona:?}: newest first, each once");
        assert_eq!(pages, 3, "6 conversations in pages of 2");
    }

    // The summary of one conversation.
    let (_, page) = call(
        &svc,
        "GET",
        "/conversations?limit=200",
        Some(&admin()),
        None,
    )
    .await;
    let seeded = page["conversations"]
        .as_array()
        .expect("array")
        .iter()
        .find(|c| c["id"] == env.conversation_a.as_str())
        .expect("A's seeded conversation")
        .clone();
    assert_eq!(seeded["channel_id"], CHANNEL);
    assert_eq!(seeded["thread_ts"], THREAD);
    assert_eq!(seeded["message_count"], 3);
    assert_eq!(page["next_cursor"], Value::Null);

    // B sees B's only.
    let (status, page) = call(&svc, "GET", "/conversations", Some(&bob()), None).await;
    assert_eq!(status, 200, "{page}");
    let ids: BTreeSet<&str> = page["conversations"]
        .as_array()
        .expect("array")
        .iter()
        .map(|c| c["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, BTreeSet::from([env.conversation_b.as_str()]));

    // Parameters that do not read are refused, naming them.
    for (query, names) in [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("before=42", "before"),
        ("before=1700000000000000.not-a-uuid", "before"),
        ("organization_id=x", "organization_id"),
    ] {
        let (status, answer) = call(
            &svc,
            "GET",
            &format!("/conversations?{query}"),
            Some(&admin()),
            None,
        )
        .await;
        assert_eq!(status, 400, "{query}: {answer}");
        assert_error_shape(&answer, "bad_request", query);
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(names)),
            "{query}: {answer}"
        );
    }
}

#[actix_rt::test]
async fn a_conversation_is_read_with_its_messages_in_order() {
    let env = RestEnv::new().await;
    let svc = env.service().await;
    let pool = env.app.pool();
    let ts = "1700000300.000100";
    let id = seed_conversation(
        pool,
        TEAM_A,
        CHANNEL,
        ts,
        &[
            (ts, "U0ROLESUS1", "first"),
            ("1700000301.000100", AGENT, "answer"),
            ("1700000302.000100", "U0ROLESUS2", "taken back"),
        ],
    )
    .await;
    // Deleted in Slack by its author: listed, its text not shown.
    let mut conn = pool.get().await.expect("conn");
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query(
            "UPDATE messages SET deleted = true WHERE slack_ts = '1700000302.000100'",
        ),
        &mut conn,
    )
    .await
    .expect("deleted");
    drop(conn);

    let (status, answer) = call(
        &svc,
        "GET",
        &format!("/conversations/{id}"),
        Some(&Persona::Member.token(ORG_A)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["conversation"]["id"], id.to_string());
    assert_eq!(answer["conversation"]["thread_ts"], ts);
    assert_eq!(answer["conversation"]["message_count"], 3);
    let messages = answer["messages"].as_array().expect("messages");
    let summary: Vec<(Value, Value, Value, Value)> = messages
        .iter()
        .map(|m| {
            (
                m["slack_ts"].clone(),
                m["sender_kind"].clone(),
                m["text"].clone(),
                m["deleted"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (json!(ts), json!("user"), json!("first"), json!(false)),
            (
                json!("1700000301.000100"),
                json!("agent"),
                json!("answer"),
                json!(false)
            ),
            (
                json!("1700000302.000100"),
                json!("user"),
                Value::Null,
                json!(true)
            ),
        ]
    );
    assert_eq!(messages[1]["in_reply_to"], ts);
    assert_eq!(messages[0]["sender_id"], "U0ROLESUS1");
    assert_eq!(messages[0]["kind"], "message");
    assert!(
        messages[0].get("sender_email").is_none(),
        "emails are not answered: {answer}"
    );

    // B's admin cannot read it; A's cannot read B's.
    let (status, _) = call(
        &svc,
        "GET",
        &format!("/conversations/{id}"),
        Some(&bob()),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let uri = format!("/conversations/{}", env.conversation_b);
    let (status, answer) = call(&svc, "GET", &uri, Some(&admin()), None).await;
    assert_eq!(status, 404, "{answer}");
    assert_error_shape(&answer, "not_found", "B's conversation");
}
