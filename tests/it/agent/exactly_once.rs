//! Exactly-once posting across processes and crashes (issue 11), on real PostgreSQL and the
//! Slack simulator over loopback: two served replicas on one database answering the same
//! SendReply at once; a reply a crashed replica left half posted, finished by SendReply and by
//! the retried turn without posting anything twice; and the simulator's message metadata and
//! `conversations.replies` pagination, which the recovery relies on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::config::Config;
use infragpt::db::conversations::intent_digest;
use infragpt::db::schema::reply_intents;
use infragpt::db::{PgConversationStore, Pool};
use infragpt::grpc::pb::backend::SendReplyCommand;
use infragpt::grpc::pb::backend::backend_service_client::BackendServiceClient;
use infragpt::slack::web::{SlackWeb, WebSettings, web_client};
use infragpt::slack::workspaces::StaticTokens;
use infragpt::testkit::slack_sim::{SimConfig, SlackSim, Subscriptions};
use infragpt_actors::conversation::{
    AnswerStyle, Conversation, ConversationStore, MessageKind, NewMessage, Posting,
    REPLY_EVENT_TYPE, Sender, SlackApi, intent_metadata,
};
use infragpt_actors::ids::{ChannelId, MessageTs, ReplyIntentId, SlackUserId, TeamId, ThreadKey};
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::support::app::TestApp;
use crate::support::wait::eventually;

const TEAM: &str = "T0SIMACME1";
const CHANNEL: &str = "C0OPS00001";
const USER: &str = "U0ALICE001";
const BOT: &str = "U0ACMEBOT1";

/// A simulator that sends no events: the turns of these tests are made by the test.
fn quiet_sim() -> SlackSim {
    let mut config = SimConfig::default().with_echo_bot_messages(false);
    config.subscriptions = Subscriptions {
        app_mention: false,
        message: false,
    };
    SlackSim::start(config).expect("simulator")
}

/// Points a test app's Slack Web API at `sim`, without Socket Mode.
fn slack_of(sim: &SlackSim) -> impl FnOnce(&mut Config) + 'static {
    let url = sim.base_url();
    let token = sim.config().teams[0].bot_token.clone();
    move |c| {
        c.slack.api_url = url;
        c.slack.bot_token = Some(token);
        c.slack.socket_mode = false;
        c.slack.throttle = false;
    }
}

fn key(root: &MessageTs) -> ThreadKey {
    ThreadKey::new(
        TeamId::parse(TEAM).unwrap(),
        ChannelId::parse(CHANNEL).unwrap(),
        root.clone(),
    )
}

/// A user asks in a new thread; the conversation's current turn is that message.
async fn new_turn(
    sim: &SlackSim,
    store: &PgConversationStore,
    text: &str,
) -> (Conversation, MessageTs) {
    let root = sim
        .post_user_message(TEAM, CHANNEL, USER, &format!("<@{BOT}> {text}"), None)
        .unwrap();
    let turn = MessageTs::parse(root.as_str()).unwrap();
    let conversation = store.upsert_conversation(&key(&turn)).await.unwrap();
    store
        .insert_message(NewMessage {
            conversation_id: conversation.id,
            slack_ts: turn.clone(),
            sender: Sender::User(SlackUserId::parse(USER).unwrap()),
            sender_name: None,
            sender_email: None,
            text: text.into(),
            source_event_id: None,
            in_reply_to: None,
            kind: MessageKind::Message,
        })
        .await
        .unwrap();
    store
        .set_current_turn(conversation.id, &turn)
        .await
        .unwrap();
    (conversation, turn)
}

/// The bot's messages in the thread of `root`: (ts, text, metadata).
fn bot_posts_in(sim: &SlackSim, root: &MessageTs) -> Vec<(String, String, Option<Value>)> {
    sim.with_state(|st| {
        st.bot_messages_in(TEAM, CHANNEL)
            .into_iter()
            .filter(|m| m.thread_ts.as_deref() == Some(root.as_str()))
            .map(|m| (m.ts.clone(), m.text.clone(), m.metadata.clone()))
            .collect()
    })
}

/// The stored agent messages of a conversation: (ts, text).
async fn agent_messages(store: &PgConversationStore, c: &Conversation) -> Vec<(String, String)> {
    store
        .history(c.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.sender == Sender::Agent)
        .map(|m| (m.slack_ts.to_string(), m.text))
        .collect()
}

async fn send_reply(
    mut client: BackendServiceClient<Channel>,
    conversation: String,
    message: String,
) -> Result<bool, tonic::Status> {
    client
        .send_reply(SendReplyCommand {
            turn_ts: String::new(),
            conversation_id: conversation,
            message,
        })
        .await
        .map(|r| r.into_inner().success)
}

async fn client_of(app: &TestApp) -> BackendServiceClient<Channel> {
    BackendServiceClient::connect(format!("http://{}", app.grpc_addr()))
        .await
        .expect("gRPC client")
}

/// Two served replicas on one database and one Slack, each with its own claim owner name.
#[actix_rt::test]
async fn two_replicas_answering_the_same_send_reply_at_once_post_it_once() {
    let sim = quiet_sim();
    let a = TestApp::builder().configure(slack_of(&sim)).start().await;
    let url = a.db.url.clone();
    let b = TestApp::builder()
        .configure(slack_of(&sim))
        .configure(move |c| c.database.url = Some(url))
        .start()
        .await;
    let store = PgConversationStore::new(a.pool().clone());
    let (client_a, client_b) = (client_of(&a).await, client_of(&b).await);

    const ROUNDS: usize = 20;
    for round in 0..ROUNDS {
        let (conversation, turn) = new_turn(&sim, &store, &format!("status {round}?")).await;
        let text = format!("All green (round {round}).");
        let id = conversation.id.to_string();
        // The agent's retry reaches the other replica while the first call is in flight.
        let (ra, rb) = tokio::join!(
            send_reply(client_a.clone(), id.clone(), text.clone()),
            send_reply(client_b.clone(), id.clone(), text.clone()),
        );
        assert_eq!(
            (ra.expect("replica a"), rb.expect("replica b")),
            (true, true),
            "round {round}: both calls succeed"
        );
        let posts = bot_posts_in(&sim, &turn);
        assert_eq!(posts.len(), 1, "round {round}: {posts:?}");
        assert_eq!(posts[0].1, text);
        assert_eq!(
            agent_messages(&store, &conversation).await,
            vec![(posts[0].0.clone(), text)],
            "round {round}"
        );
    }
    assert_eq!(sim.calls("chat.postMessage").len(), ROUNDS);
    assert!(
        sim.calls("conversations.replies").is_empty(),
        "no post was ever uncertain"
    );
    let mut conn = a.pool().get().await.unwrap();
    let owners: Vec<Option<String>> = reply_intents::table
        .select(reply_intents::claimed_by)
        .distinct()
        .load(&mut conn)
        .await
        .unwrap();
    assert!(
        !owners.is_empty() && owners.iter().all(Option::is_some),
        "{owners:?}"
    );
    b.stop().await;
    a.stop().await;
}

/// An answer of several Slack-sized messages (lines of 1 000 characters).
fn answer_of_parts(n: usize) -> String {
    (0..n * 3)
        .map(|i| format!("{}{}\n", i % 10, "x".repeat(999)))
        .collect()
}

/// The bot posts `text` in the thread with `metadata`, as a replica would have (a form body
/// with the metadata's JSON text, or a JSON body with the object).
async fn bot_post(
    sim: &SlackSim,
    root: &MessageTs,
    text: &str,
    metadata: Value,
    form: bool,
) -> MessageTs {
    let token = sim.config().teams[0].bot_token.clone();
    let request = reqwest::Client::new()
        .post(format!("{}chat.postMessage", sim.base_url()))
        .bearer_auth(token.expose());
    let request = if form {
        let metadata = metadata.to_string();
        request.form(&[
            ("channel", CHANNEL),
            ("thread_ts", root.as_str()),
            ("text", text),
            ("metadata", metadata.as_str()),
        ])
    } else {
        request.json(&json!({
            "channel": CHANNEL, "thread_ts": root.as_str(), "text": text, "metadata": metadata,
        }))
    };
    let reply: Value = request.send().await.unwrap().json().await.unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    MessageTs::parse(reply["ts"].as_str().unwrap()).unwrap()
}

fn metadata_json(intent: ReplyIntentId, part: usize) -> Value {
    serde_json::to_value(intent_metadata(intent, part)).unwrap()
}

/// What a replica that died while posting leaves in the database.
struct Leftover<'a> {
    id: ReplyIntentId,
    conversation: &'a Conversation,
    turn: &'a MessageTs,
    text: &'a str,
    posting: &'a Posting,
    parts_done: i32,
    posting_part: Option<i32>,
    /// Its claim runs out this long from now (negative: ran out already).
    lease_left_ms: i64,
}

async fn leave_intent(pool: &Pool, l: Leftover<'_>) {
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query(
        "INSERT INTO reply_intents (id, conversation_id, turn_ts, digest, kind, posting, parts, \
         parts_done, posting_part, claims, claimed_by, claimed_until) \
         VALUES ($1, $2, $3, $4, 'message', $5, $6, $7, $8, 1, 'crashed-replica', \
         now() + $9 * interval '1 millisecond')",
    )
    .bind::<diesel::sql_types::Uuid, _>(l.id.0)
    .bind::<diesel::sql_types::Uuid, _>(l.conversation.id.0)
    .bind::<diesel::sql_types::Text, _>(l.turn.as_str())
    .bind::<diesel::sql_types::Text, _>(intent_digest(l.text))
    .bind::<diesel::sql_types::Jsonb, _>(serde_json::to_value(l.posting).unwrap())
    .bind::<diesel::sql_types::Integer, _>(l.posting.message_count() as i32)
    .bind::<diesel::sql_types::Integer, _>(l.parts_done)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Integer>, _>(l.posting_part)
    .bind::<diesel::sql_types::BigInt, _>(l.lease_left_ms)
    .execute(&mut conn)
    .await
    .unwrap();
}

/// An intent's claims, parts recorded, and when it was posted.
async fn intent_state(pool: &Pool, id: ReplyIntentId) -> (i32, i32, Option<DateTime<Utc>>) {
    let mut conn = pool.get().await.unwrap();
    reply_intents::table
        .find(id.0)
        .select((
            reply_intents::claims,
            reply_intents::parts_done,
            reply_intents::posted_at,
        ))
        .first(&mut conn)
        .await
        .unwrap()
}

fn part_of(metadata: &Option<Value>) -> Value {
    metadata.as_ref().expect("metadata")["event_payload"]["part"].clone()
}

#[actix_rt::test]
async fn send_reply_finishes_what_a_crashed_replica_half_posted_and_posts_nothing_twice() {
    let sim = quiet_sim();
    let app = TestApp::builder().configure(slack_of(&sim)).start().await;
    let store = PgConversationStore::new(app.pool().clone());
    let (conversation, turn) = new_turn(&sim, &store, "full report?").await;
    let text = answer_of_parts(3);
    let posting = AnswerStyle::default().plan(&text);
    let parts = posting.message_count();
    assert!(parts >= 3, "{parts} parts");
    let part = |i: usize| posting.part(i).expect("part");

    // The crashed replica: part 0 posted and recorded, part 1 posted (with its metadata) and
    // not recorded, then it died; its claim still runs for a moment.
    let id = ReplyIntentId::new_random();
    let ts0 = bot_post(&sim, &turn, part(0).0, metadata_json(id, 0), true).await;
    let ts1 = bot_post(&sim, &turn, part(1).0, metadata_json(id, 1), false).await;
    leave_intent(
        app.pool(),
        Leftover {
            id,
            conversation: &conversation,
            turn: &turn,
            text: &text,
            posting: &posting,
            parts_done: 1,
            posting_part: Some(1),
            lease_left_ms: 1_500,
        },
    )
    .await;
    store
        .insert_message(NewMessage::from_agent(
            conversation.id,
            ts0.clone(),
            part(0).1.to_owned(),
            Some(turn.clone()),
            MessageKind::Message,
        ))
        .await
        .unwrap();

    // The agent retries its SendReply on a live replica: it waits out the dead claim, looks
    // in the thread, records part 1 and posts only the rest.
    let started = Instant::now();
    let ok = send_reply(
        client_of(&app).await,
        conversation.id.to_string(),
        text.clone(),
    )
    .await
    .expect("SendReply");
    assert!(ok);
    assert!(
        started.elapsed() >= Duration::from_millis(1_000),
        "waited for the dead claim: {:?}",
        started.elapsed()
    );
    let posts = bot_posts_in(&sim, &turn);
    let numbers: Vec<Value> = posts.iter().map(|p| part_of(&p.2)).collect();
    let expected: Vec<Value> = (0..parts).map(|i| json!(i)).collect();
    assert_eq!(numbers, expected, "each part once, in order");
    assert_eq!(
        (posts[0].0.as_str(), posts[1].0.as_str()),
        (ts0.as_str(), ts1.as_str())
    );
    let stored = agent_messages(&store, &conversation).await;
    assert_eq!(
        stored.iter().map(|(ts, _)| ts.clone()).collect::<Vec<_>>(),
        posts.iter().map(|p| p.0.clone()).collect::<Vec<_>>(),
        "each part stored with its real ts"
    );
    let lookups = sim.calls("conversations.replies");
    assert_eq!(lookups.len(), 1);
    assert_eq!(lookups[0].params["include_all_metadata"], "true");
    assert_eq!(lookups[0].params["oldest"], turn.as_str());
    let (claims, done, posted_at) = intent_state(app.pool(), id).await;
    assert_eq!((claims, done), (2, parts as i32));
    assert!(posted_at.is_some());

    // Another retry: nothing more.
    assert!(
        send_reply(client_of(&app).await, conversation.id.to_string(), text)
            .await
            .unwrap()
    );
    assert_eq!(bot_posts_in(&sim, &turn).len(), parts);
    app.stop().await;
}

#[actix_rt::test]
async fn a_retried_turn_records_the_answer_a_crashed_replica_posted_and_posts_nothing() {
    // Served with Socket Mode; no agent runs, so a turn that reached the agent would get the
    // "unavailable" notice.
    let mut app = TestApp::builder()
        .with_slack_sim(SimConfig::default().with_echo_bot_messages(false))
        .configure(|c| c.slack.throttle = false)
        .start()
        .await;
    app.stop_service().await;
    // The replica that got the mention died after posting the answer and before recording
    // it. Its event is redelivered to the restarted service.
    let root = app
        .sim()
        .post_user_message(TEAM, CHANNEL, USER, &format!("<@{BOT}> deploy?"), None)
        .unwrap();
    let turn = MessageTs::parse(root.as_str()).unwrap();
    let store = PgConversationStore::new(app.pool().clone());
    let conversation = store.upsert_conversation(&key(&turn)).await.unwrap();
    let text = "Deployed `api` to staging.";
    let posting = AnswerStyle::default().plan(text);
    let id = ReplyIntentId::new_random();
    let ts = bot_post(
        app.sim(),
        &turn,
        posting.part(0).unwrap().0,
        metadata_json(id, 0),
        true,
    )
    .await;
    leave_intent(
        app.pool(),
        Leftover {
            id,
            conversation: &conversation,
            turn: &turn,
            text,
            posting: &posting,
            parts_done: 0,
            posting_part: Some(0),
            lease_left_ms: -1_000,
        },
    )
    .await;

    app.start_service().await;
    let pool = app.pool().clone();
    eventually(
        "the reply intent is recorded as posted",
        async || match intent_state(&pool, id).await {
            (_, 1, Some(_)) => Ok(()),
            other => Err(other),
        },
    )
    .await;
    app.wait_idle().await;
    let posts = bot_posts_in(app.sim(), &turn);
    assert_eq!(posts.len(), 1, "no second answer, no notice: {posts:?}");
    assert_eq!(
        agent_messages(&store, &conversation).await,
        vec![(ts.to_string(), posting.part(0).unwrap().1.to_owned())]
    );
    app.stop().await;
}

/// Slack's `metadata` on `chat.postMessage` (a form field's JSON text or a JSON body's
/// object, `event_type` checked) and `conversations.replies` (metadata only with
/// `include_all_metadata`, pages with `has_more` and `response_metadata.next_cursor`).
#[tokio::test]
async fn the_simulator_keeps_message_metadata_and_pages_replies_like_slack() {
    let sim = quiet_sim();
    let token = sim.config().teams[0].bot_token.clone();
    let http = reqwest::Client::new();
    let root = MessageTs::parse(
        sim.post_user_message(TEAM, CHANNEL, USER, "hello", None)
            .unwrap(),
    )
    .unwrap();
    let id = ReplyIntentId::new_random();
    bot_post(&sim, &root, "one", metadata_json(id, 0), true).await;
    bot_post(&sim, &root, "two", metadata_json(id, 1), false).await;
    for (metadata, error) in [
        (
            json!({"event_type": "Reply-Type", "event_payload": {}}),
            "invalid_metadata_schema",
        ),
        (json!({"event_type": "reply"}), "invalid_metadata_format"),
        (json!("not json"), "invalid_metadata_format"),
        (
            json!({"event_type": 7, "event_payload": {}}),
            "invalid_metadata_format",
        ),
    ] {
        // The string case sends a form field whose text is not JSON.
        let reply: Value = if let Value::String(text) = &metadata {
            http.post(format!("{}chat.postMessage", sim.base_url()))
                .bearer_auth(token.expose())
                .form(&[
                    ("channel", CHANNEL),
                    ("text", "x"),
                    ("metadata", text.as_str()),
                ])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        } else {
            http.post(format!("{}chat.postMessage", sim.base_url()))
                .bearer_auth(token.expose())
                .json(&json!({"channel": CHANNEL, "text": "x", "metadata": metadata}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        };
        assert_eq!(reply["error"], error, "{metadata}: {reply}");
    }
    for i in 0..3 {
        sim.post_user_message(
            TEAM,
            CHANNEL,
            USER,
            &format!("reply {i}"),
            Some(root.as_str()),
        )
        .unwrap();
    }

    let replies = async |query: &[(&str, &str)]| -> Value {
        http.get(format!("{}conversations.replies", sim.base_url()))
            .bearer_auth(token.expose())
            .query(&[("channel", CHANNEL), ("ts", root.as_str())])
            .query(query)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let plain = replies(&[]).await;
    assert_eq!(plain["ok"], true, "{plain}");
    let messages = plain["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 6, "the parent and five replies");
    assert!(messages.iter().all(|m| m.get("metadata").is_none()));
    let with = replies(&[("include_all_metadata", "true")]).await;
    let marked: Vec<&Value> = with["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m.get("metadata"))
        .collect();
    assert_eq!(
        marked,
        vec![&metadata_json(id, 0), &metadata_json(id, 1)],
        "kept as posted, whichever body carried it"
    );
    assert_eq!(with["messages"][1]["bot_id"], "B0ACMEBOT1");

    // Two at a time: every message once, in order, then no cursor.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut query = vec![("limit", "2"), ("include_all_metadata", "true")];
        if let Some(c) = &cursor {
            query.push(("cursor", c.as_str()));
        }
        let page = replies(&query).await;
        pages += 1;
        assert_eq!(page["ok"], true, "{page}");
        let batch = page["messages"].as_array().unwrap();
        assert!(batch.len() <= 2, "{page}");
        seen.extend(batch.iter().map(|m| m["ts"].as_str().unwrap().to_owned()));
        if page["has_more"] == false {
            assert!(page.get("response_metadata").is_none(), "{page}");
            break;
        }
        cursor = Some(
            page["response_metadata"]["next_cursor"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(pages, 3);
    let all: Vec<String> = messages
        .iter()
        .map(|m| m["ts"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, all);
    assert_eq!(
        replies(&[("cursor", "bm9wZQ==")]).await["error"],
        "invalid_cursor"
    );
}

/// The Web API adapter's lookup over the simulator: only our bot's messages, every page,
/// metadata and shared files included, `after` respected.
#[tokio::test]
async fn the_adapter_finds_our_marked_messages_across_pages() {
    let sim = quiet_sim();
    let cfg = sim.config();
    let team = TeamId::parse(TEAM).unwrap();
    let channel = ChannelId::parse(CHANNEL).unwrap();
    let settings = WebSettings {
        throttle: false,
        ..WebSettings::default()
    };
    let client = Arc::new(web_client(&sim.base_url(), &settings).unwrap());
    let tokens = StaticTokens::new().with(team.clone(), cfg.teams[0].bot_token.clone());
    let web = SlackWeb::new(client, Arc::new(tokens), settings);
    let root = MessageTs::parse(
        sim.post_user_message(TEAM, CHANNEL, USER, "hello", None)
            .unwrap(),
    )
    .unwrap();
    let id = ReplyIntentId::new_random();
    let mut posted = Vec::new();
    for i in 0..230 {
        let metadata = intent_metadata(id, i);
        posted.push(
            web.post_message(
                &team,
                &channel,
                Some(&root),
                &format!("part {i}"),
                Some(&metadata),
            )
            .await
            .unwrap(),
        );
        if i % 50 == 0 {
            sim.post_user_message(TEAM, CHANNEL, USER, "a person", Some(root.as_str()))
                .unwrap();
        }
    }
    let file = web
        .upload_file(&team, "answer.md", "# all of it")
        .await
        .unwrap();
    web.share_file(&team, &channel, &root, &file, "The whole answer")
        .await
        .unwrap();

    let found = web
        .bot_messages_in_thread(&team, &channel, &root, None)
        .await
        .unwrap();
    assert_eq!(found.len(), 231, "230 posts and the file share");
    for (i, m) in found.iter().take(230).enumerate() {
        assert_eq!(m.ts, posted[i]);
        let metadata = m.metadata.as_ref().expect("metadata");
        assert_eq!(metadata.event_type, REPLY_EVENT_TYPE);
        assert_eq!(metadata.event_payload["part"], json!(i));
    }
    assert_eq!(found[230].file_ids, vec![file]);
    assert!(found[230].metadata.is_none());
    let calls = sim.calls("conversations.replies");
    assert_eq!(calls.len(), 2, "two pages of 200");
    assert!(calls[1].params["cursor"].is_string());

    let later = web
        .bot_messages_in_thread(&team, &channel, &root, Some(&posted[199]))
        .await
        .unwrap();
    assert_eq!(later.len(), 31);
    assert_eq!(later[0].ts, posted[200]);
}
