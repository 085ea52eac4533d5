//! The slash command and the assistant pane end to end (issue 13): the assembled service,
//! real PostgreSQL, the Slack simulator (Socket Mode, signed HTTP commands, response_url,
//! the assistant methods) and the development agent.

use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::db::schema::{audit_log, channels, inbound_events, slash_questions};
use infragpt::testkit::slack_sim::{SimConfig, SimMessage, SlackSim};
use serde_json::Value;

use super::conversations::{ACME, ALICE, OPS, bot_replies, service};
use crate::support::app::TestApp;
use crate::support::wait::eventually;

const ACME_BOT: &str = "U0ACMEBOT1";
const ALICE_DM: &str = "D0ALICEDM1";

/// Every envelope acknowledged and no inbox row pending or processing.
async fn quiet(app: &TestApp) {
    eventually("quiet", async || {
        let acked = app.sim().deliveries().iter().all(|d| d.acked);
        let mut conn = app.db.pool().get().await.expect("conn");
        let unfinished: i64 = inbound_events::table
            .filter(inbound_events::status.eq_any(["pending", "processing"]))
            .count()
            .get_result(&mut conn)
            .await
            .expect("count");
        acked && unfinished == 0
    })
    .await;
}

/// The bot's top-level messages in #ops.
fn top_level(sim: &SlackSim) -> Vec<SimMessage> {
    sim.messages_in(ACME, OPS)
        .into_iter()
        .filter(|m| m.bot_id.is_some() && m.thread_ts.is_none())
        .collect()
}

async fn channel_state(app: &TestApp) -> Option<(bool, bool)> {
    let mut conn = app.db.pool().get().await.expect("conn");
    channels::table
        .find((ACME, OPS))
        .select((channels::monitored, channels::watch_stopped))
        .first(&mut conn)
        .await
        .optional()
        .expect("channel")
}

async fn audit_actions(app: &TestApp) -> Vec<String> {
    let mut conn = app.db.pool().get().await.expect("conn");
    audit_log::table
        .filter(audit_log::action.like("channel.%"))
        .order(audit_log::id.asc())
        .select(audit_log::action)
        .load(&mut conn)
        .await
        .expect("audit")
}

async fn status_of(app: &TestApp, source_id: &str) -> Option<String> {
    let mut conn = app.db.pool().get().await.expect("conn");
    inbound_events::table
        .filter(inbound_events::source_id.eq(source_id))
        .select(inbound_events::status)
        .first(&mut conn)
        .await
        .optional()
        .expect("status")
}

async fn wait_question(app: &TestApp, question: &str) -> SimMessage {
    let text = format!("<@{ALICE}> asked: {question}");
    eventually("the question is posted", async || {
        top_level(app.sim()).into_iter().find(|m| m.text == text)
    })
    .await
}

async fn wait_thread_reply(app: &TestApp, channel: &str, thread: &str, n: usize) {
    eventually(format!("{n} replies in {thread}"), async || {
        bot_replies(app.sim(), ACME, channel, thread).len() >= n
    })
    .await;
}

async fn post_command(
    app: &TestApp,
    req: &infragpt::testkit::slack_sim::SignedRequest,
) -> (u16, String) {
    let response = app
        .http()
        .post(format!("{}/slack/commands", app.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", &req.timestamp)
        .header("x-slack-signature", &req.signature)
        .body(req.body.clone())
        .send()
        .await
        .expect("POST /slack/commands");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[actix_rt::test]
async fn a_question_over_socket_mode_is_posted_once_and_answered_in_its_thread() {
    let app = service(SimConfig::default()).with_dev_agent().start().await;
    let sim = app.sim();
    let sent = Instant::now();
    let cmd = sim
        .slash_command(
            ACME,
            OPS,
            ALICE,
            "/infragpt",
            "what is the status of production?",
        )
        .expect("command");
    let envelope = cmd.envelope_id.clone().expect("socket mode");
    let ack = eventually("the command is acknowledged", async || {
        sim.acks().into_iter().find(|a| a.envelope_id == envelope)
    })
    .await;
    assert!(sent.elapsed() < Duration::from_secs(3), "acked within 3 s");
    // Recorded before the ack; its answer is the question in the channel, not the ack.
    assert_eq!(ack.payload, None);
    assert!(
        status_of(&app, &format!("slash:{}", cmd.trigger_id))
            .await
            .is_some()
    );

    let question = wait_question(&app, "what is the status of production?").await;
    wait_thread_reply(&app, OPS, &question.ts, 1).await;
    quiet(&app).await;
    assert_eq!(top_level(sim).len(), 1, "the question is posted once");
    assert_eq!(bot_replies(sim, ACME, OPS, &question.ts).len(), 1);
    let requests = app.agent().requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].current_message,
        "what is the status of production?"
    );
    assert_eq!(requests[0].user_id, ALICE, "the user is the turn's sender");
    assert_eq!(
        status_of(&app, &format!("slash:{}:turn", cmd.trigger_id))
            .await
            .as_deref(),
        Some("done")
    );
    // Like a mention, the question marks the channel watched.
    assert_eq!(channel_state(&app).await, Some((true, false)));
    // A reply in the question's thread is a turn of the same conversation.
    sim.post_user_message(ACME, OPS, ALICE, "and the database?", Some(&question.ts))
        .expect("reply");
    wait_thread_reply(&app, OPS, &question.ts, 2).await;
    let requests = app.agent().requests();
    assert_eq!(requests[1].past_messages.len(), 2);

    // `help` over Socket Mode: the usage in the ack's payload, nothing recorded.
    let help = sim
        .slash_command(ACME, OPS, ALICE, "/infragpt", "help")
        .expect("help");
    let envelope = help.envelope_id.clone().expect("socket mode");
    let ack = eventually("help is acknowledged", async || {
        sim.acks().into_iter().find(|a| a.envelope_id == envelope)
    })
    .await;
    let payload = ack.payload.expect("the usage in the ack");
    assert_eq!(payload["response_type"], "ephemeral");
    assert!(
        payload["text"]
            .as_str()
            .expect("text")
            .contains("/infragpt stop")
    );
    assert_eq!(
        status_of(&app, &format!("slash:{}", help.trigger_id)).await,
        None
    );
    app.stop().await;
}

#[actix_rt::test]
async fn a_question_whose_post_may_have_failed_is_found_in_the_channel_not_posted_twice() {
    let app = service(SimConfig::default()).with_dev_agent().start().await;
    let sim = app.sim();
    // The post reaches the channel, but the answer is a 500: the post may have happened.
    sim.inject_server_error("chat.postMessage", 1, 500, true);
    sim.slash_command(ACME, OPS, ALICE, "/infragpt", "why is checkout slow?")
        .expect("command");
    let question = wait_question(&app, "why is checkout slow?").await;
    wait_thread_reply(&app, OPS, &question.ts, 1).await;
    quiet(&app).await;
    assert_eq!(
        top_level(sim).len(),
        1,
        "the retry found the question instead of posting it again"
    );
    assert!(
        !sim.calls("conversations.history").is_empty(),
        "the retry read the channel"
    );
    let mut conn = app.db.pool().get().await.expect("conn");
    let posted: Option<String> = slash_questions::table
        .select(slash_questions::posted_ts)
        .first(&mut conn)
        .await
        .expect("row");
    assert_eq!(posted.as_deref(), Some(question.ts.as_str()));
    app.stop().await;
}

#[actix_rt::test]
async fn signed_http_commands_help_status_watch_and_stop() {
    let app = service(SimConfig::default()).with_dev_agent().start().await;
    let sim = app.sim();
    let command = |text: &str| {
        sim.signed_slash_command(ACME, OPS, ALICE, "/infragpt", text)
            .expect("signed command")
    };
    let last_response = |n: usize| async move {
        eventually(format!("{n} responses"), async || {
            let r = sim.command_responses();
            (r.len() >= n).then(|| r[n - 1].clone())
        })
        .await
    };

    // help: answered in the acknowledgement, nothing recorded.
    let (cmd, req) = command("help");
    let (status, body) = post_command(&app, &req).await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["response_type"], "ephemeral");
    assert!(
        body["text"]
            .as_str()
            .expect("text")
            .contains("/infragpt watch")
    );
    assert_eq!(
        status_of(&app, &format!("slash:{}", cmd.trigger_id)).await,
        None
    );

    // status: an empty ack, then the answer through response_url.
    let (_, req) = command("status");
    let (status, body) = post_command(&app, &req).await;
    assert_eq!((status, body.as_str()), (200, ""));
    let r = last_response(1).await;
    assert_eq!(
        (r.user_id.as_str(), r.response_type.as_str()),
        (ALICE, "ephemeral")
    );
    assert!(
        r.text.contains("Agent:") && r.text.contains("Conversations today"),
        "{}",
        r.text
    );
    assert!(r.text.contains("not watched"), "{}", r.text);

    // watch: every message is a turn; audited.
    let (_, req) = command("watch");
    assert_eq!(post_command(&app, &req).await.0, 200);
    assert!(last_response(2).await.text.contains("now watching"));
    assert_eq!(channel_state(&app).await, Some((true, false)));
    let plain = sim
        .post_user_message(ACME, OPS, ALICE, "is the deploy done?", None)
        .expect("plain");
    wait_thread_reply(&app, OPS, &plain, 1).await;

    // stop: plain messages are no longer turns, and a mention does not undo it.
    let (stop, stop_req) = command("stop");
    assert_eq!(post_command(&app, &stop_req).await.0, 200);
    assert!(last_response(3).await.text.contains("stopped watching"));
    assert_eq!(channel_state(&app).await, Some((false, true)));
    let mention = sim
        .post_user_message(
            ACME,
            OPS,
            ALICE,
            &format!("<@{ACME_BOT}> still there?"),
            None,
        )
        .expect("mention");
    wait_thread_reply(&app, OPS, &mention, 1).await;
    quiet(&app).await;
    assert_eq!(
        channel_state(&app).await,
        Some((false, true)),
        "a mention does not turn watching back on"
    );
    let ignored = sim
        .post_user_message(ACME, OPS, ALICE, "anyone?", None)
        .expect("plain");
    quiet(&app).await;
    assert!(
        bot_replies(sim, ACME, OPS, &ignored).is_empty(),
        "not a turn after stop"
    );

    // The same request again (a replay): deduplicated on the trigger, nothing changes twice.
    assert_eq!(post_command(&app, &stop_req).await.0, 200);
    quiet(&app).await;
    assert_eq!(
        status_of(&app, &format!("slash:{}", stop.trigger_id))
            .await
            .as_deref(),
        Some("done")
    );
    assert_eq!(sim.command_responses().len(), 3);
    assert_eq!(
        audit_actions(&app).await,
        ["channel.watched", "channel.unwatched"]
    );

    // A bad signature is refused before anything is read.
    let (_, mut forged) = command("watch");
    forged.signature = format!("v0={}", "0".repeat(64));
    assert_eq!(post_command(&app, &forged).await.0, 401);
    quiet(&app).await;
    assert_eq!(channel_state(&app).await, Some((false, true)));
    app.stop().await;
}

#[actix_rt::test]
async fn the_assistant_pane_gets_prompts_and_a_title_and_its_messages_are_turns() {
    let app = service(SimConfig::default()).with_dev_agent().start().await;
    let sim = app.sim();
    let thread = sim
        .start_assistant_thread(ACME, ALICE_DM, ALICE, Some(OPS))
        .expect("assistant thread");
    let prompts = eventually("suggested prompts", async || {
        sim.calls("assistant.threads.setSuggestedPrompts")
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(prompts.error, None);
    assert_eq!(prompts.params["channel_id"], ALICE_DM);
    assert_eq!(prompts.params["thread_ts"], thread.as_str());
    assert_eq!(
        prompts.params["prompts"][0]["message"],
        "What's failing in production right now?"
    );

    sim.post_user_message(
        ACME,
        ALICE_DM,
        ALICE,
        "What's failing in production right now?",
        Some(&thread),
    )
    .expect("first message");
    wait_thread_reply(&app, ALICE_DM, &thread, 1).await;
    let title = eventually("the title", async || {
        sim.calls("assistant.threads.setTitle").into_iter().next()
    })
    .await;
    assert_eq!(title.error, None);
    assert_eq!(
        title.params["title"],
        "What's failing in production right now?"
    );
    sim.post_user_message(ACME, ALICE_DM, ALICE, "and yesterday?", Some(&thread))
        .expect("second message");
    wait_thread_reply(&app, ALICE_DM, &thread, 2).await;
    // A context change is recorded and ignored.
    sim.send_event(
        ACME,
        serde_json::json!({
            "type": "assistant_thread_context_changed",
            "assistant_thread": {"user_id": ALICE, "channel_id": ALICE_DM, "thread_ts": thread,
                                 "context": {"channel_id": OPS, "team_id": ACME}},
            "event_ts": thread,
        }),
    )
    .expect("context changed");
    quiet(&app).await;
    assert_eq!(
        sim.calls("assistant.threads.setTitle").len(),
        1,
        "only the first message titles"
    );
    let mut conn = app.db.pool().get().await.expect("conn");
    let ignored: i64 = inbound_events::table
        .filter(inbound_events::kind.eq("assistant_thread_context_changed"))
        .filter(inbound_events::status.eq("ignored"))
        .count()
        .get_result(&mut conn)
        .await
        .expect("count");
    assert_eq!(ignored, 1);
    app.stop().await;
}

#[actix_rt::test]
async fn without_the_assistant_feature_the_calls_are_skipped_and_turns_still_answered() {
    let app = service(SimConfig::default()).with_dev_agent().start().await;
    let sim = app.sim();
    sim.set_assistant_enabled(ACME, false);
    let thread = sim
        .start_assistant_thread(ACME, ALICE_DM, ALICE, None)
        .expect("assistant thread");
    sim.post_user_message(ACME, ALICE_DM, ALICE, "what failed?", Some(&thread))
        .expect("message");
    wait_thread_reply(&app, ALICE_DM, &thread, 1).await;
    let second = sim
        .start_assistant_thread(ACME, ALICE_DM, ALICE, None)
        .expect("second thread");
    sim.post_user_message(ACME, ALICE_DM, ALICE, "and now?", Some(&second))
        .expect("message");
    wait_thread_reply(&app, ALICE_DM, &second, 1).await;
    quiet(&app).await;
    // Refused once each (missing_scope), then not called again; nothing failed.
    let prompts = sim.calls("assistant.threads.setSuggestedPrompts");
    assert_eq!(prompts.len(), 1);
    assert_eq!(prompts[0].error.as_deref(), Some("missing_scope"));
    assert_eq!(sim.calls("assistant.threads.setTitle").len(), 1);
    let mut conn = app.db.pool().get().await.expect("conn");
    let failed: i64 = inbound_events::table
        .filter(inbound_events::status.eq("failed"))
        .count()
        .get_result(&mut conn)
        .await
        .expect("count");
    assert_eq!(failed, 0);
    app.stop().await;
}

#[actix_rt::test]
async fn commands_reaching_two_replicas_at_once_are_posted_answered_and_audited_once() {
    let app = service(SimConfig::default())
        .with_dev_agent()
        .configure(|c| {
            c.cluster.lease_ms = 1_500;
            c.cluster.heartbeat_ms = 300;
            c.cluster.safety_margin_ms = 300;
        })
        .start()
        .await;
    let (second, second_core) = app.start_replica().await;
    app.wait_connected(2).await;
    eventually("the two replicas split the partitions", async || {
        let held =
            |c: &infragpt_actors::Cluster| c.replica_status().map_or(0, |s| s.partitions.len());
        let (a, b) = (held(app.cluster()), held(&second_core.cluster));
        a + b == 64 && a > 0 && b > 0
    })
    .await;
    let sim = app.sim();
    let urls = [
        format!("{}/slack/commands", app.base_url()),
        format!("http://{}/slack/commands", second.http_addr),
    ];
    let send_everywhere = |req: infragpt::testkit::slack_sim::SignedRequest| {
        let urls = urls.clone();
        let http = app.http().clone();
        async move {
            let calls = urls.iter().flat_map(|url| {
                let (http, req) = (http.clone(), req.clone());
                (0..2).map(move |_| {
                    let (http, req, url) = (http.clone(), req.clone(), url.clone());
                    async move {
                        http.post(url)
                            .header("content-type", "application/x-www-form-urlencoded")
                            .header("x-slack-request-timestamp", &req.timestamp)
                            .header("x-slack-signature", &req.signature)
                            .body(req.body.clone())
                            .send()
                            .await
                            .expect("POST")
                            .status()
                            .as_u16()
                    }
                })
            });
            futures::future::join_all(calls).await
        }
    };
    // `watch` twice at once (one trigger), then `watch` again under a new trigger.
    let (_, req) = sim
        .signed_slash_command(ACME, OPS, ALICE, "/infragpt", "watch")
        .expect("command");
    assert_eq!(send_everywhere(req).await, [200; 4]);
    let (_, req) = sim
        .signed_slash_command(ACME, OPS, ALICE, "/infragpt", "watch")
        .expect("command");
    assert_eq!(send_everywhere(req).await, [200; 4]);
    // The question's turn watches the channel too (without an audit entry), and turns of
    // other keys run in any order: the question comes once the first watch has answered.
    eventually("the first watch answered", async || {
        !sim.command_responses().is_empty()
    })
    .await;
    // The same question (one trigger) arriving four times at two replicas at once.
    let (_, req) = sim
        .signed_slash_command(ACME, OPS, ALICE, "/infragpt", "is the api up?")
        .expect("command");
    assert_eq!(send_everywhere(req).await, [200; 4]);

    let question = wait_question(&app, "is the api up?").await;
    wait_thread_reply(&app, OPS, &question.ts, 1).await;
    quiet(&app).await;
    assert_eq!(top_level(sim).len(), 1, "posted once");
    assert_eq!(
        bot_replies(sim, ACME, OPS, &question.ts).len(),
        1,
        "answered once"
    );
    assert_eq!(app.agent().requests().len(), 1);
    assert_eq!(
        audit_actions(&app).await,
        ["channel.watched"],
        "the second watch changed nothing"
    );
    let responses = sim.command_responses();
    assert_eq!(responses.len(), 2, "one answer per command: {responses:?}");
    assert!(
        responses[1].text.contains("already watching"),
        "{}",
        responses[1].text
    );
    second.stop().await.expect("clean stop");
    app.stop().await;
}
