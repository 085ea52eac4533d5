//! The Slack simulator, driven by slack-morphism's own Socket Mode client and Web API client,
//! and by a raw websocket / HTTP client for the protocol details.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use infragpt::slack::http_connector::http_client;
use infragpt::testkit::slack_sim::{ConnState, SimConfig, SimState, SlackSim};
use serde_json::{Value, json};
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_tungstenite::tungstenite::Message;

use crate::support::fixtures;

const ACME: &str = "T0SIMACME1";
const GENERAL: &str = "C0GENERAL1";
const ALICE: &str = "U0ALICE001";
const BOT: &str = "U0ACMEBOT1";
/// Generous: only reached when something is broken, never part of a passing run's timing.
const WAIT: Duration = Duration::from_secs(15);

fn app_token(sim: &SlackSim) -> String {
    sim.config().apps[0].app_token.expose().to_owned()
}

fn bot_token(sim: &SlackSim) -> String {
    sim.team(ACME).expect("acme").bot_token.expose().to_owned()
}

// ------------------------------------------------------------------------------------------
// slack-morphism's Socket Mode client against the simulator
// ------------------------------------------------------------------------------------------

struct Sinks {
    /// `hello` as JSON (slack-morphism does not export the hello type by a public path).
    hello: UnboundedSender<Value>,
    push: UnboundedSender<SlackPushEventCallback>,
}

async fn on_hello<E: serde::Serialize>(
    ev: E,
    _client: Arc<SlackHyperClient>,
    state: SlackClientEventsUserState,
) {
    if let Some(s) = state.read().await.get_user_state::<Sinks>() {
        let _ = s
            .hello
            .send(serde_json::to_value(&ev).expect("hello serializes"));
    }
}

async fn on_push(
    ev: SlackPushEventCallback,
    _client: Arc<SlackHyperClient>,
    state: SlackClientEventsUserState,
) -> UserCallbackResult<()> {
    if let Some(s) = state.read().await.get_user_state::<Sinks>() {
        let _ = s.push.send(ev);
    }
    Ok(())
}

async fn recv<T>(rx: &mut UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for a callback")
        .expect("callback channel closed")
}

fn acked(st: &SimState, event_id: &str) -> bool {
    st.acks()
        .iter()
        .any(|a| a.event_id.as_deref() == Some(event_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_morphism_socket_mode_and_web_api_against_the_sim() {
    let sim = SlackSim::start(SimConfig::default().with_echo_bot_messages(false)).expect("sim");
    let client = Arc::new(http_client(&sim.base_url()).expect("client"));
    let (hello_tx, mut hello_rx) = unbounded_channel();
    let (push_tx, mut push_rx) = unbounded_channel();
    let env = Arc::new(
        SlackClientEventsListenerEnvironment::new(client.clone()).with_user_state(Sinks {
            hello: hello_tx,
            push: push_tx,
        }),
    );
    let callbacks = SlackSocketModeListenerCallbacks::new()
        .with_hello_events(on_hello)
        .with_push_events(on_push);
    let config = SlackClientSocketModeConfig::new()
        .with_max_connections_count(1)
        .with_reconnect_timeout_in_seconds(1);
    let listener = SlackClientSocketModeListener::new(&config, env, callbacks);
    listener
        .listen_for(&SlackApiToken::new(app_token(&sim).into()))
        .await
        .expect("listen");
    listener.start().await;

    // hello, parsed by slack-morphism's strict model.
    let hello = recv(&mut hello_rx).await;
    assert_eq!(hello["connection_info"]["app_id"], "A0SIMAPP01");
    assert_eq!(hello["num_connections"], 1);
    assert!(
        hello["debug_info"]["host"]
            .as_str()
            .is_some_and(|h| h.starts_with("applink-"))
    );

    // A mention: Slack sends app_mention and message, both reach the callback and are acked.
    let ts = sim
        .post_user_message(ACME, GENERAL, ALICE, &format!("<@{BOT}> is prod up?"), None)
        .expect("post");
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let ev = recv(&mut push_rx).await;
        assert_eq!(ev.team_id.0, ACME);
        match &ev.event {
            SlackEventCallbackBody::AppMention(m) => {
                assert_eq!(m.origin.ts.0, ts);
                kinds.push("app_mention");
            }
            SlackEventCallbackBody::Message(m) => {
                assert_eq!(m.origin.ts.0, ts);
                kinds.push("message");
            }
            other => panic!("slack-morphism did not model the event: {other:?}"),
        }
        let event_id = ev.event_id.0.clone();
        sim.wait_for(|st| acked(st, &event_id), WAIT)
            .await
            .expect("acked");
    }
    kinds.sort();
    assert_eq!(kinds, ["app_mention", "message"]);
    let first_conn = sim.connections()[0].id;

    // disconnect(refresh_requested) → the client reconnects on a new socket and gets hello.
    sim.disconnect(first_conn, "refresh_requested")
        .expect("disconnect");
    let hello2 = recv(&mut hello_rx).await;
    assert_eq!(hello2["connection_info"]["app_id"], "A0SIMAPP01");
    sim.wait_for(
        |st| {
            st.open_connections().iter().any(|c| c.id != first_conn)
                && st
                    .connections()
                    .iter()
                    .any(|c| c.id == first_conn && c.state == ConnState::Closed)
        },
        WAIT,
    )
    .await
    .expect("reconnected");
    assert_eq!(
        sim.connections()[0].end_reason.as_deref(),
        Some("disconnect:refresh_requested")
    );

    // Events flow on the new connection.
    let ts2 = sim
        .post_user_message(ACME, GENERAL, ALICE, "follow-up", Some(&ts))
        .expect("post");
    let ev = recv(&mut push_rx).await;
    let SlackEventCallbackBody::Message(m) = &ev.event else {
        panic!("expected message, got {:?}", ev.event);
    };
    assert_eq!(m.origin.ts.0, ts2);
    assert_eq!(
        m.origin.thread_ts.as_ref().map(|t| t.0.as_str()),
        Some(ts.as_str())
    );
    let event_id = ev.event_id.0.clone();
    sim.wait_for(|st| acked(st, &event_id), WAIT)
        .await
        .expect("acked on the new connection");
    let ack = sim
        .acks()
        .into_iter()
        .find(|a| a.event_id.as_deref() == Some(event_id.as_str()))
        .expect("ack");
    assert_ne!(ack.connection_id, first_conn);

    // Web API through slack-morphism: chat.postMessage is answered and recorded.
    let token = SlackApiToken::new(bot_token(&sim).into());
    let session = client.open_session(&token);
    let posted = session
        .chat_post_message(
            &SlackApiChatPostMessageRequest::new(
                GENERAL.into(),
                SlackMessageContent::new().with_text("prod is up".into()),
            )
            .with_thread_ts(ts.clone().into()),
        )
        .await
        .expect("chat.postMessage");
    assert_eq!(posted.channel.0, GENERAL);
    let bot_msgs: Vec<_> = sim
        .messages_in(ACME, GENERAL)
        .into_iter()
        .filter(|m| m.bot_id.is_some())
        .collect();
    assert_eq!(bot_msgs.len(), 1);
    assert_eq!(bot_msgs[0].ts, posted.ts.0);
    assert_eq!(bot_msgs[0].thread_ts.as_deref(), Some(ts.as_str()));
    let calls = sim.calls("chat.postMessage");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].team_id.as_deref(), Some(ACME));
    assert_eq!(calls[0].params["text"], "prod is up");
    assert_eq!(calls[0].params["thread_ts"], json!(ts));

    // auth.test through slack-morphism.
    let me = session.auth_test().await.expect("auth.test");
    assert_eq!(me.user_id.0, BOT);
    assert_eq!(me.team_id.0, ACME);

    // 429 + Retry-After, surfaced by slack-morphism as a rate limit error.
    sim.inject_rate_limit("chat.postMessage", 1, 7);
    let req = SlackApiChatPostMessageRequest::new(
        GENERAL.into(),
        SlackMessageContent::new().with_text("again".into()),
    );
    match session.chat_post_message(&req).await {
        Err(SlackClientError::RateLimitError(e)) => {
            assert_eq!(e.retry_after, Some(Duration::from_secs(7)))
        }
        other => panic!("expected a rate limit error, got {other:?}"),
    }
    session
        .chat_post_message(&req)
        .await
        .expect("succeeds once the injected 429s are used up");
    let statuses: Vec<u16> = sim
        .calls("chat.postMessage")
        .iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(statuses, [200, 429, 200]);

    listener.shutdown().await;
}

// ------------------------------------------------------------------------------------------
// Raw protocol checks
// ------------------------------------------------------------------------------------------

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn api(sim: &SlackSim, method: &str, token: Option<&str>, form: &[(&str, &str)]) -> Value {
    let mut req = reqwest::Client::new()
        .post(format!("{}{method}", sim.base_url()))
        .form(form);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send()
        .await
        .expect("http")
        .json()
        .await
        .expect("json body")
}

async fn open_socket(sim: &SlackSim) -> Ws {
    let open = api(sim, "apps.connections.open", Some(&app_token(sim)), &[]).await;
    assert_eq!(open["ok"], true, "{open}");
    let url = open["url"].as_str().expect("url");
    assert!(url.starts_with(&format!("ws://127.0.0.1:{}/link/?ticket=", sim.port())));
    tokio_tungstenite::connect_async(url)
        .await
        .expect("ws connect")
        .0
}

/// Next text frame as JSON (control frames skipped).
async fn next_frame(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("socket ended")
            .expect("socket error");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).expect("frame is JSON");
        }
    }
}

async fn ack(ws: &mut Ws, frame: &Value) {
    let ack = json!({"envelope_id": frame["envelope_id"]}).to_string();
    ws.send(Message::text(ack)).await.expect("send ack");
}

/// Socket Mode fixtures (`tests/data/slack/socket_mode`).
fn fixture(name: &str) -> Value {
    fixtures::json(&format!("slack/socket_mode/{name}"))
}

/// Every field of `fixture` exists in `ours` with the same JSON type, recursively.
fn assert_same_shape(fixture: &Value, ours: &Value, path: &str) {
    match (fixture, ours) {
        (Value::Object(f), Value::Object(o)) => {
            for (k, fv) in f {
                let ov = o
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k} missing in {ours}"));
                assert_same_shape(fv, ov, &format!("{path}.{k}"));
            }
        }
        (Value::Array(f), Value::Array(o)) => {
            if let (Some(fv), Some(ov)) = (f.first(), o.first()) {
                assert_same_shape(fv, ov, &format!("{path}[0]"));
            }
        }
        // `enterprise_id: null` in a fixture may be a string elsewhere.
        (Value::Null, _) => {}
        (f, o) => assert_eq!(
            std::mem::discriminant(f),
            std::mem::discriminant(o),
            "{path}: fixture {f} vs ours {o}"
        ),
    }
}

#[actix_rt::test]
async fn frames_match_slack_fixtures_and_acks_are_tracked() {
    let sim = SlackSim::start(SimConfig::default()).expect("sim");
    // Posted before anyone is connected: waits for the first connection.
    let ts = sim
        .post_user_message(ACME, GENERAL, ALICE, &format!("<@{BOT}> hi"), None)
        .expect("post");
    let mut ws = open_socket(&sim).await;
    let hello = next_frame(&mut ws).await;
    assert_same_shape(&fixture("hello.json"), &hello, "hello");
    assert_eq!(hello["connection_info"]["app_id"], "A0SIMAPP01");

    let mention = next_frame(&mut ws).await;
    let message = next_frame(&mut ws).await;
    assert_same_shape(&fixture("events_api.app_mention.json"), &mention, "mention");
    assert_same_shape(&fixture("events_api.message.json"), &message, "message");
    assert_eq!(mention["payload"]["event"]["type"], "app_mention");
    assert_eq!(message["payload"]["event"]["type"], "message");
    assert_eq!(message["payload"]["event"]["ts"], json!(ts));
    assert_ne!(mention["envelope_id"], message["envelope_id"]);
    assert_ne!(
        mention["payload"]["event_id"],
        message["payload"]["event_id"]
    );
    assert_eq!(mention["payload"]["authorizations"][0]["user_id"], BOT);

    // Our classifier reads the sim's payloads: one turn, deduplicated by (team, channel, ts).
    use infragpt_actors::slack_events as se;
    let ctx = se::DecideContext {
        bot_user_id: Some(BOT.parse().expect("id")),
        ..Default::default()
    };
    let decide = |frame: &Value| match se::parse_value(frame["payload"].clone()).expect("parses") {
        se::Inbound::EventCallback(cb) => (se::decide(&cb, &ctx), se::turn_id(&cb)),
        other => panic!("{other:?}"),
    };
    let (d1, id1) = decide(&mention);
    let (d2, id2) = decide(&message);
    assert!(
        matches!(d1, se::Decision::Turn(ref t) if t.text == "hi"),
        "{d1:?}"
    );
    // The `message` twin is the same turn: whichever is handled first makes it.
    match (&d1, &d2) {
        (se::Decision::Turn(a), se::Decision::Turn(b)) => {
            assert_eq!(
                (&a.turn_id, &a.thread, &a.text),
                (&b.turn_id, &b.thread, &b.text)
            );
            assert!(b.marks_channel_monitored);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(id1, id2);

    ack(&mut ws, &mention).await;
    ack(&mut ws, &message).await;
    sim.wait_for(|st| st.acks().len() == 2, WAIT)
        .await
        .expect("acks recorded");
    assert!(sim.deliveries().iter().all(|d| d.acked && d.sends == 1));

    // Deliberate duplicates: the identical envelope again, twice.
    let envelope_id = message["envelope_id"].as_str().expect("id").to_owned();
    sim.redeliver(&envelope_id, 2).expect("redeliver");
    for _ in 0..2 {
        let dup = next_frame(&mut ws).await;
        assert_eq!(dup, message);
        ack(&mut ws, &dup).await;
    }
    sim.wait_for(|st| st.acks().len() == 4, WAIT)
        .await
        .expect("duplicate acks");

    // Websocket ping → pong.
    ws.send(Message::Ping(b"hi".to_vec().into()))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(p))) => break p,
                Some(Ok(_)) => {}
                other => panic!("socket ended before pong: {other:?}"),
            }
        }
    })
    .await
    .expect("pong");
    assert_eq!(pong.as_ref(), b"hi");

    // disconnect frames carry debug_info.host, as slack-morphism requires.
    let conn = sim.connections()[0].id;
    sim.disconnect(conn, "warning").expect("disconnect");
    let disconnect = next_frame(&mut ws).await;
    assert_same_shape(
        &fixture("disconnect.refresh_requested.json"),
        &disconnect,
        "disc",
    );
    assert_eq!(disconnect["reason"], "warning");
    assert!(disconnect["debug_info"]["host"].is_string());
}

#[actix_rt::test]
async fn unacked_envelopes_are_redelivered_then_given_up() {
    let sim = SlackSim::start(
        SimConfig::default()
            .with_ack_timeout(Duration::from_millis(100))
            .with_echo_bot_messages(false),
    )
    .expect("sim");
    let mut ws = open_socket(&sim).await;
    assert_eq!(next_frame(&mut ws).await["type"], "hello");
    sim.post_user_message(ACME, GENERAL, ALICE, "no mention", None)
        .expect("post");
    // Never acked: attempts 0..=3, then the simulator gives up.
    let mut attempts = Vec::new();
    let mut event_ids = Vec::new();
    for _ in 0..4 {
        let f = next_frame(&mut ws).await;
        attempts.push((
            f["retry_attempt"].as_u64().expect("attempt"),
            f["retry_reason"].as_str().expect("reason").to_owned(),
        ));
        event_ids.push(f["payload"]["event_id"].clone());
    }
    assert_eq!(
        attempts,
        [
            (0, String::new()),
            (1, "timeout".into()),
            (2, "timeout".into()),
            (3, "timeout".into())
        ]
    );
    assert!(event_ids.windows(2).all(|w| w[0] == w[1]), "same event_id");
    sim.wait_for(|st| st.deliveries().iter().all(|d| d.exhausted), WAIT)
        .await
        .expect("gave up");
    assert_eq!(sim.deliveries()[0].sends, 4);

    // Acknowledging a redelivery stops further attempts.
    sim.post_user_message(ACME, GENERAL, ALICE, "second", None)
        .expect("post");
    let first = next_frame(&mut ws).await;
    assert_eq!(first["retry_attempt"], 0);
    let retry = next_frame(&mut ws).await;
    assert_eq!(retry["retry_attempt"], 1);
    ack(&mut ws, &retry).await;
    sim.wait_for(|st| st.deliveries()[1].acked, WAIT)
        .await
        .expect("acked");
    // How many more attempts went out before the ack landed depends on machine load.
    let d = &sim.deliveries()[1];
    assert!(d.sends >= 2 && d.sends <= 4, "{d:?}");
}

#[actix_rt::test]
async fn envelopes_round_robin_and_connection_limits() {
    let mut config = SimConfig::default().with_echo_bot_messages(false);
    config.max_connections = 2;
    let sim = SlackSim::start(config).expect("sim");
    let mut a = open_socket(&sim).await;
    let mut b = open_socket(&sim).await;
    assert_eq!(next_frame(&mut a).await["num_connections"], 1);
    assert_eq!(next_frame(&mut b).await["num_connections"], 2);

    // Over the limit: disconnect(too_many_websockets) and close.
    let mut c = open_socket(&sim).await;
    let refused = next_frame(&mut c).await;
    assert_same_shape(
        &fixture("disconnect.too_many_websockets.json"),
        &refused,
        "too_many",
    );
    assert_eq!(refused["reason"], "too_many_websockets");

    // Each envelope goes to one connection, alternating.
    sim.post_user_message(ACME, GENERAL, ALICE, "one", None)
        .expect("post");
    sim.post_user_message(ACME, GENERAL, ALICE, "two", None)
        .expect("post");
    let fa = next_frame(&mut a).await;
    let fb = next_frame(&mut b).await;
    assert_eq!(fa["payload"]["event"]["text"], "one");
    assert_eq!(fb["payload"]["event"]["text"], "two");
    ack(&mut a, &fa).await;
    ack(&mut b, &fb).await;
    sim.wait_for(|st| st.acks().len() == 2, WAIT)
        .await
        .expect("acks");

    // Abrupt drop: no disconnect frame, no close frame.
    let a_id = sim.connections()[0].id;
    sim.drop_connection(a_id).expect("drop");
    match tokio::time::timeout(WAIT, a.next()).await.expect("ends") {
        None | Some(Err(_)) => {}
        Some(Ok(m)) => panic!("expected an abrupt end, got {m:?}"),
    }
    sim.wait_for(
        |st| {
            st.connections()
                .iter()
                .any(|c| c.id == a_id && c.state == ConnState::Closed)
        },
        WAIT,
    )
    .await
    .expect("closed");

    // link_disabled: open sockets are told, and so is every new one.
    sim.set_link_disabled(true);
    let told = next_frame(&mut b).await;
    assert_eq!(told["reason"], "link_disabled");
    let mut d = open_socket(&sim).await;
    assert_eq!(next_frame(&mut d).await["reason"], "link_disabled");
}

#[actix_rt::test]
async fn web_api_shapes_errors_and_faults() {
    let sim = SlackSim::start(SimConfig::default().with_echo_bot_messages(false)).expect("sim");
    let bot = bot_token(&sim);

    let me = api(&sim, "auth.test", Some(&bot), &[]).await;
    assert_eq!(
        me,
        json!({"ok": true, "url": "https://acme.slack.com/", "team": "Acme", "user": "infragpt",
               "team_id": ACME, "user_id": BOT, "bot_id": "B0ACMEBOT1",
               "is_enterprise_install": false})
    );
    assert_eq!(
        api(&sim, "auth.test", Some("xoxb-wrong"), &[]).await,
        json!({"ok": false, "error": "invalid_auth"})
    );
    assert_eq!(
        api(&sim, "auth.test", None, &[]).await["error"],
        "not_authed"
    );
    assert_eq!(
        api(&sim, "apps.connections.open", Some(&bot), &[]).await["error"],
        "not_allowed_token_type"
    );
    sim.set_invalid_auth(ACME, true);
    assert_eq!(
        api(&sim, "auth.test", Some(&bot), &[]).await["error"],
        "invalid_auth"
    );
    sim.set_invalid_auth(ACME, false);

    // chat.postMessage with a form body; then JSON body.
    let posted = api(
        &sim,
        "chat.postMessage",
        Some(&bot),
        &[("channel", GENERAL), ("text", "hello")],
    )
    .await;
    assert_eq!(posted["ok"], true, "{posted}");
    assert_eq!(posted["channel"], GENERAL);
    assert_eq!(posted["message"]["bot_id"], "B0ACMEBOT1");
    assert_eq!(posted["message"]["user"], BOT);
    let ts = posted["ts"].as_str().expect("ts").to_owned();
    let json_post: Value = reqwest::Client::new()
        .post(format!("{}chat.postMessage", sim.base_url()))
        .bearer_auth(&bot)
        .json(&json!({"channel": GENERAL, "text": "reply", "thread_ts": ts}))
        .send()
        .await
        .expect("http")
        .json()
        .await
        .expect("json");
    assert_eq!(json_post["message"]["thread_ts"], json!(ts));
    assert_eq!(
        api(
            &sim,
            "chat.postMessage",
            Some(&bot),
            &[("channel", "C0NOPE"), ("text", "x")]
        )
        .await["error"],
        "channel_not_found"
    );

    // reactions.add: ok, then already_reacted.
    let react = [
        ("channel", GENERAL),
        ("timestamp", ts.as_str()),
        ("name", "eyes"),
    ];
    assert_eq!(
        api(&sim, "reactions.add", Some(&bot), &react).await,
        json!({"ok": true})
    );
    assert_eq!(
        api(&sim, "reactions.add", Some(&bot), &react).await["error"],
        "already_reacted"
    );

    // users.info and conversations.info as GET with query parameters (slack-morphism's way).
    let get = |method: &str, q: &str| {
        let url = format!("{}{method}?{q}", sim.base_url());
        let bot = bot.clone();
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(bot)
                .send()
                .await
                .expect("http")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    let user = get("users.info", &format!("user={ALICE}")).await;
    assert_eq!(user["user"]["profile"]["email"], "alice@acme.example");
    assert_eq!(user["user"]["real_name"], "Alice Liddell");
    let chan = get("conversations.info", &format!("channel={GENERAL}")).await;
    assert_eq!(chan["channel"]["name"], "general");
    assert_eq!(
        get("users.info", "user=U0NOBODY").await["error"],
        "user_not_found"
    );

    // 429 with Retry-After, exactly N times.
    sim.inject_rate_limit("auth.test", 2, 3);
    for _ in 0..2 {
        let resp = reqwest::Client::new()
            .post(format!("{}auth.test", sim.base_url()))
            .bearer_auth(&bot)
            .send()
            .await
            .expect("http");
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "3");
        assert_eq!(
            resp.json::<Value>().await.expect("json"),
            json!({"ok": false, "error": "ratelimited"})
        );
    }
    assert_eq!(api(&sim, "auth.test", Some(&bot), &[]).await["ok"], true);

    // Recording.
    let calls = sim.calls("reactions.add");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].error.as_deref(), Some("already_reacted"));
    assert_eq!(calls[0].params["name"], "eyes");
    let msgs = sim.messages_in(ACME, GENERAL);
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].reactions["eyes"], [BOT]);
}

#[actix_rt::test]
async fn oauth_install_rotation_and_revocation() {
    let sim =
        SlackSim::start(SimConfig::default().with_token_rotation(Duration::from_secs(43_200)))
            .expect("sim");
    let app = sim.config().apps[0].clone();
    let code = sim.issue_oauth_code(ACME, ALICE).expect("code");

    // Exchange the code with HTTP Basic client credentials (slack-morphism's way).
    let exchange = |params: Vec<(&'static str, String)>, basic: bool| {
        let url = format!("{}oauth.v2.access", sim.base_url());
        let app = app.clone();
        async move {
            let mut req = reqwest::Client::new().post(url).form(&params);
            if basic {
                req = req.basic_auth(&app.client_id, Some(app.client_secret.expose()));
            }
            req.send()
                .await
                .expect("http")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    let installed = exchange(vec![("code", code.clone())], true).await;
    assert_eq!(installed["ok"], true, "{installed}");
    assert_eq!(installed["token_type"], "bot");
    assert_eq!(installed["bot_user_id"], BOT);
    assert_eq!(installed["app_id"], "A0SIMAPP01");
    assert_eq!(installed["team"], json!({"id": ACME, "name": "Acme"}));
    assert_eq!(installed["authed_user"]["id"], ALICE);
    assert_eq!(installed["expires_in"], 43_200);
    let access = installed["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert!(access.starts_with("xoxe.xoxb-"), "{access}");
    let refresh = installed["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    assert!(refresh.starts_with("xoxe-1-"));
    assert_eq!(
        api(&sim, "auth.test", Some(&access), &[]).await["team_id"],
        ACME
    );

    // Codes are single use; bad client secrets are refused.
    assert_eq!(
        exchange(vec![("code", code)], true).await["error"],
        "invalid_code"
    );
    let bad = exchange(
        vec![
            ("code", sim.issue_oauth_code(ACME, ALICE).expect("code")),
            ("client_id", app.client_id.clone()),
            ("client_secret", "nope".into()),
        ],
        false,
    )
    .await;
    assert_eq!(bad["error"], "bad_client_secret");

    // Refresh: new access and refresh tokens; the old refresh token is spent.
    let refresh_params = |rt: &str| {
        vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", rt.to_owned()),
            ("client_id", app.client_id.clone()),
            ("client_secret", app.client_secret.expose().to_owned()),
        ]
    };
    let refreshed = exchange(refresh_params(&refresh), false).await;
    assert_eq!(refreshed["ok"], true, "{refreshed}");
    let access2 = refreshed["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_ne!(access2, access);
    assert_ne!(refreshed["refresh_token"], json!(refresh));
    assert_eq!(
        exchange(refresh_params(&refresh), false).await["error"],
        "invalid_refresh_token"
    );

    // Expiry and revocation.
    assert!(sim.expire_token(&access));
    assert_eq!(
        api(&sim, "auth.test", Some(&access), &[]).await["error"],
        "token_expired"
    );
    assert_eq!(
        api(&sim, "auth.revoke", Some(&access2), &[]).await,
        json!({"ok": true, "revoked": true})
    );
    assert_eq!(
        api(&sim, "auth.test", Some(&access2), &[]).await["error"],
        "token_revoked"
    );
    // Secrets never reach the recording.
    assert!(sim.calls("oauth.v2.access").iter().all(
        |c| c.params.get("client_secret").is_none() && c.params.get("refresh_token").is_none()
    ));
}

#[tokio::test]
async fn edits_and_deletes_reach_the_app_and_classify() {
    use infragpt_actors::slack_events as se;
    let sim = SlackSim::start(SimConfig::default()).expect("sim");
    let mut ws = open_socket(&sim).await;
    assert_eq!(next_frame(&mut ws).await["type"], "hello");
    let ts = sim
        .post_user_message(ACME, GENERAL, ALICE, "typo", None)
        .expect("post");
    let _original = next_frame(&mut ws).await;
    sim.edit_message(ACME, GENERAL, &ts, "fixed").expect("edit");
    sim.delete_message(ACME, GENERAL, &ts).expect("delete");
    let decide = |frame: &Value| match se::parse_value(frame["payload"].clone()).expect("parses") {
        se::Inbound::EventCallback(cb) => se::decide(&cb, &se::DecideContext::default()),
        other => panic!("{other:?}"),
    };
    let key = se::MessageKey {
        team_id: ACME.parse().expect("id"),
        channel: GENERAL.parse().expect("id"),
        ts: ts.parse().expect("ts"),
    };
    assert_eq!(
        decide(&next_frame(&mut ws).await),
        se::Decision::Update {
            key: key.clone(),
            new_text: "fixed".into(),
            edited_by: Some(ALICE.parse().expect("id")),
        }
    );
    assert_eq!(
        decide(&next_frame(&mut ws).await),
        se::Decision::Delete { key }
    );
    let stored = sim.messages_in(ACME, GENERAL);
    assert_eq!(
        (stored[0].text.as_str(), stored[0].deleted),
        ("fixed", true)
    );
    assert!(matches!(
        sim.edit_message(ACME, GENERAL, "1.000001", "x"),
        Err(infragpt::testkit::slack_sim::SimError::UnknownMessage { .. })
    ));
    assert!(
        sim.post_user_message(ACME, "C0NOPE", ALICE, "x", None)
            .is_err()
    );
}

#[test]
fn signed_event_requests_verify_with_the_app_signing_secret() {
    use infragpt::slack::signature::{SignatureError, SlackSignatureVerifier};
    let sim = SlackSim::start(SimConfig::default()).expect("sim");
    let req = sim
        .signed_event_request(
            ACME,
            json!({"type": "reaction_added", "user": ALICE, "reaction": "eyes"}),
        )
        .expect("request");
    let secret = sim.config().apps[0].signing_secret.clone();
    let verifier = SlackSignatureVerifier::new(&secret);
    verifier
        .verify(
            Some(&req.timestamp),
            Some(&req.signature),
            req.body.as_bytes(),
        )
        .expect("verifies");
    let mut tampered = req.body.clone();
    tampered.push(' ');
    assert_eq!(
        verifier.verify(
            Some(&req.timestamp),
            Some(&req.signature),
            tampered.as_bytes()
        ),
        Err(SignatureError::Mismatch)
    );
    // Not delivered over Socket Mode.
    assert!(sim.deliveries().is_empty());
}

// ------------------------------------------------------------------------------------------
// Interactivity (issue 14): clicks, views.open and chat.postEphemeral checked like Slack's
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn clicks_issue_single_use_triggers_and_views_and_ephemerals_are_checked() {
    let sim = SlackSim::start(SimConfig::default()).expect("sim");
    let channel = sim.team(ACME).expect("acme").channels[0].id.clone();
    let token = bot_token(&sim);
    let blocks = json!([{"type": "actions", "block_id": "b", "elements": [
        {"type": "button", "action_id": "go", "value": "v1",
         "text": {"type": "plain_text", "text": "Go"}}]}]);
    let posted = api(
        &sim,
        "chat.postMessage",
        Some(&token),
        &[
            ("channel", &channel),
            ("text", "pick"),
            ("blocks", &blocks.to_string()),
        ],
    )
    .await;
    assert_eq!(posted["ok"], true, "{posted}");
    let ts = posted["ts"].as_str().unwrap().to_owned();

    // A button that is not in the message cannot be clicked.
    assert!(
        sim.click_payload(ACME, &channel, &ts, ALICE, "nope")
            .is_err()
    );
    let click = sim
        .click_payload(ACME, &channel, &ts, ALICE, "go")
        .expect("click");
    let p = &click.payload;
    assert_eq!(p["type"], "block_actions");
    assert_eq!(p["user"]["id"], ALICE);
    assert_eq!(p["container"]["message_ts"], ts.as_str());
    assert_eq!(p["actions"][0]["value"], "v1");
    assert_eq!(p["actions"][0]["action_ts"], click.action_ts.as_str());

    let view = json!({"type": "modal", "title": {"type": "plain_text", "text": "Why"},
        "submit": {"type": "plain_text", "text": "Send"},
        "blocks": [{"type": "input", "block_id": "reason", "label": {"type": "plain_text", "text": "Reason"},
                    "element": {"type": "plain_text_input", "action_id": "reason"}}]});
    let open = |trigger: String, view: Value| {
        let sim = &sim;
        let token = token.clone();
        async move {
            api(
                sim,
                "views.open",
                Some(&token),
                &[("trigger_id", &trigger), ("view", &view.to_string())],
            )
            .await
        }
    };
    let mut long_title = view.clone();
    long_title["title"]["text"] = json!("a title longer than twenty-four characters");
    let refused = open(click.trigger_id.clone(), long_title).await;
    assert_eq!(refused["error"], "invalid_arguments", "{refused}");
    let opened = open(click.trigger_id.clone(), view.clone()).await;
    assert_eq!(opened["ok"], true, "{opened}");
    assert!(opened["view"]["id"].as_str().unwrap().starts_with('V'));
    let again = open(click.trigger_id.clone(), view.clone()).await;
    assert_eq!(again["error"], "exchanged_trigger_id");
    let unknown = open("1.2.unknown".into(), view.clone()).await;
    assert_eq!(unknown["error"], "invalid_trigger_id");
    let late = sim
        .click_payload(ACME, &channel, &ts, ALICE, "go")
        .expect("click");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let expired = open(late.trigger_id, view).await;
    assert_eq!(expired["error"], "expired_trigger_id");

    // The modal's submission carries the typed values.
    let (_, submitted) = sim
        .submit_view(ACME, &[("reason", "because")])
        .expect("submit");
    assert_eq!(submitted["type"], "view_submission");
    assert_eq!(
        submitted["view"]["state"]["values"]["reason"]["reason"]["value"],
        "because"
    );

    // chat.postEphemeral: a member of the workspace, and a text.
    let shown = api(
        &sim,
        "chat.postEphemeral",
        Some(&token),
        &[("channel", &channel), ("user", ALICE), ("text", "only you")],
    )
    .await;
    assert_eq!(shown["ok"], true, "{shown}");
    let stranger = api(
        &sim,
        "chat.postEphemeral",
        Some(&token),
        &[("channel", &channel), ("user", "U0NOBODY01"), ("text", "x")],
    )
    .await;
    assert_eq!(stranger["error"], "user_not_in_channel");
    let empty = api(
        &sim,
        "chat.postEphemeral",
        Some(&token),
        &[("channel", &channel), ("user", ALICE)],
    )
    .await;
    assert_eq!(empty["error"], "no_text");
    assert_eq!(sim.ephemerals().len(), 1);
    assert_eq!(sim.ephemerals()[0].text, "only you");
}
