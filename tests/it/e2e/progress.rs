//! Progress while the agent works (issue 13): the thread's assistant status or a placeholder
//! message, the agent's SendProgress reports (gRPC on both paths and `POST /progress`), and
//! the answer ending the indicator, through the real service, the Slack simulator and the
//! development agent.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::db::schema::{conversations, messages};
use infragpt::grpc::pb::backend::SendProgressCommand;
use infragpt::grpc::pb::backend::backend_service_client::BackendServiceClient;
use infragpt::grpc::pb::infragpt::infra_gpt_service_client::InfraGptServiceClient;
use infragpt::testkit::devagent::DEMO_LABEL;
use infragpt::testkit::slack_sim::{SimConfig, StatusChange};
use infragpt_actors::conversation::{ProgressMode, REPLY_EVENT_TYPE};
use serde_json::json;
use tonic::Code;

use super::conversations::{ACME, ALICE, Chat, OPS, service};
use crate::support::app::TestApp;
use crate::support::wait::{GUARD, eventually};

/// The statuses set on `thread`, in order (clears left out).
fn statuses_of(app: &TestApp, thread: &str) -> Vec<StatusChange> {
    app.sim()
        .statuses()
        .into_iter()
        .filter(|s| s.thread_ts == thread && !s.status.is_empty())
        .collect()
}

async fn conversation_of(app: &TestApp, thread: &str) -> uuid::Uuid {
    let mut conn = app.pool().get().await.expect("conn");
    conversations::table
        .filter(conversations::thread_ts.eq(thread))
        .select(conversations::id)
        .first(&mut conn)
        .await
        .expect("conversation")
}

async fn post_progress(app: &TestApp, body: serde_json::Value) -> (u16, serde_json::Value) {
    let resp = app
        .http()
        .post(format!("{}/progress", app.base_url()))
        .json(&body)
        .send()
        .await
        .expect("POST /progress");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

#[actix_rt::test]
async fn the_status_shows_thinking_then_the_agents_steps_and_the_answer_clears_it() {
    // No delay: "is thinking…" shows before the agent's first report, which comes at once.
    let mut app = service(SimConfig::default())
        .configure(|c| c.slack.progress_delay_ms = 0)
        .start()
        .await;
    let mut agent = app.dev_agent_config();
    agent.progress_step = Some(Duration::from_millis(1_200));
    app.start_agent(agent);

    let root = app.mention(ALICE, "what is the status of production?");
    app.wait_replies(&root, 1).await;
    app.settle().await;

    let shown: Vec<String> = statuses_of(&app, &root)
        .iter()
        .map(|s| s.status.clone())
        .collect();
    // The agent reports a step every 1.2 s; a machine too busy to keep the pace may fold
    // the middle one into the next (one change a second at most), never the first or last.
    let expected = [
        "is thinking…",
        "running demo.service_status…",
        "writing the answer…",
    ];
    assert!(shown.len() >= 2, "{shown:?}");
    assert_eq!(shown[0], expected[0], "{shown:?}");
    assert_eq!(shown[shown.len() - 1], expected[2], "{shown:?}");
    let mut remaining = expected.iter();
    assert!(
        shown.iter().all(|s| remaining.any(|e| e == s)),
        "the statuses are the agent's steps in order: {shown:?}"
    );
    // Every status was set while the thread held only the question: none after the answer.
    for change in statuses_of(&app, &root) {
        assert_eq!(change.messages_before, 1, "{change:?}");
    }
    assert_eq!(
        app.sim().thread_status(ACME, OPS, &root),
        None,
        "the answer cleared the status"
    );
    let replies = app.bot_replies(&root);
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(replies[0].text.contains(DEMO_LABEL), "{}", replies[0].text);
    assert_eq!(
        replies[0].updates, 0,
        "status mode posts the answer as it is"
    );

    // A report after the answer is accepted and ignored: nothing changes in the thread.
    let conversation = conversation_of(&app, &root).await;
    let changes = app.sim().statuses().len();
    let (status, body) = post_progress(
        &app,
        json!({"conversation_id": conversation, "text": "late step"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    let mut legacy = InfraGptServiceClient::connect(format!("http://{}", app.grpc_addr()))
        .await
        .expect("grpc");
    let answer = legacy
        .send_progress(SendProgressCommand {
            conversation_id: conversation.to_string(),
            text: "late step over the legacy path".into(),
        })
        .await
        .expect("legacy SendProgress");
    assert!(answer.into_inner().success);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        app.sim().statuses().len(),
        changes,
        "no status after the answer"
    );
    assert_eq!(app.bot_replies(&root).len(), 1);
    app.stop().await;
}

#[actix_rt::test]
async fn send_progress_refuses_bad_input_with_clear_errors_on_every_path() {
    let mut app = service(SimConfig::default()).start().await;
    let agent = app.dev_agent_config();
    app.start_agent(agent);
    let root = app.mention(ALICE, "help");
    app.wait_replies(&root, 1).await;
    let conversation = conversation_of(&app, &root).await;

    let (status, body) = post_progress(&app, json!({"conversation_id": "nope", "text": "x"})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["success"], false);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not a valid UUID")),
        "{body}"
    );
    let (status, body) =
        post_progress(&app, json!({"conversation_id": conversation, "text": "  "})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post_progress(
        &app,
        json!({"conversation_id": uuid::Uuid::new_v4(), "text": "x"}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = post_progress(&app, json!({"conversation_id": conversation})).await;
    assert_eq!(status, 400, "a missing field: {body}");

    let mut backend = BackendServiceClient::connect(format!("http://{}", app.grpc_addr()))
        .await
        .expect("grpc");
    let refused = backend
        .send_progress(SendProgressCommand {
            conversation_id: "nope".into(),
            text: "x".into(),
        })
        .await
        .expect_err("not a UUID");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let refused = backend
        .send_progress(SendProgressCommand {
            conversation_id: uuid::Uuid::new_v4().to_string(),
            text: "x".into(),
        })
        .await
        .expect_err("unknown conversation");
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    app.stop().await;
}

#[actix_rt::test]
async fn reports_within_a_second_are_coalesced_and_the_latest_is_shown() {
    let mut app = service(SimConfig::default()).start().await;
    let mut agent = app.dev_agent_config();
    // Time for the test's own reports before the answer.
    agent.think_time = Duration::from_secs(4);
    app.start_agent(agent);

    let root = app.mention(ALICE, "help");
    let thread = root.clone();
    app.sim()
        .wait_for(
            |s| {
                s.statuses()
                    .iter()
                    .any(|c| c.thread_ts == thread && c.status == "is thinking…")
            },
            GUARD,
        )
        .await
        .expect("is thinking…");
    let conversation = conversation_of(&app, &root).await;
    for step in 1..=5 {
        let (status, body) = post_progress(
            &app,
            json!({"conversation_id": conversation, "text": format!("step {step}")}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    eventually("the latest report is shown", async || {
        let shown = statuses_of(&app, &root);
        match shown.last() {
            Some(last) if last.status == "step 5" => Ok(()),
            _ => Err(format!("{shown:?}")),
        }
    })
    .await;
    app.wait_replies(&root, 1).await;
    app.settle().await;
    let shown: Vec<String> = statuses_of(&app, &root)
        .iter()
        .map(|s| s.status.clone())
        .collect();
    assert!(shown.len() >= 2, "{shown:?}");
    assert_eq!(shown[0], "is thinking…");
    assert_eq!(shown[shown.len() - 1], "step 5");
    // Five reports within about a second of "is thinking…": at most one shown at once,
    // the rest folded into one change a second later.
    assert!(shown.len() <= 3, "coalesced: {shown:?}");
    // The agent worked past the delay: the message got its seen reaction too, once.
    let seen: Vec<_> = app
        .sim()
        .calls("reactions.add")
        .into_iter()
        .filter(|c| c.params["timestamp"] == root.as_str() && c.params["name"] == "eyes")
        .collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
    app.stop().await;
}

#[actix_rt::test]
async fn the_placeholder_shows_progress_and_becomes_the_answer() {
    let mut app = service(SimConfig::default())
        .configure(|c| {
            c.slack.progress = ProgressMode::Placeholder;
            c.slack.progress_delay_ms = 0;
        })
        .start()
        .await;
    let mut agent = app.dev_agent_config();
    agent.progress_step = Some(Duration::from_millis(1_200));
    app.start_agent(agent);

    let root = app.mention(ALICE, "what is the status of production?");
    app.wait_replies(&root, 1).await;
    app.settle().await;
    eventually("the placeholder holds the answer", async || {
        let replies = app.bot_replies(&root);
        match replies.as_slice() {
            [only] if only.text.contains(DEMO_LABEL) => Ok(()),
            _ => Err(format!("{replies:?}")),
        }
    })
    .await;
    let replies = app.bot_replies(&root);
    assert_eq!(replies.len(), 1, "one message, not two: {replies:?}");
    let answer = &replies[0];
    // Placeholder, two progress steps, the answer.
    assert_eq!(answer.updates, 3, "{answer:?}");
    assert_eq!(
        answer.metadata.as_ref().map(|m| m["event_type"].clone()),
        Some(json!(REPLY_EVENT_TYPE)),
        "the answer carries its reply intent, like any posted answer"
    );
    let updates: Vec<String> = app
        .sim()
        .calls("chat.update")
        .iter()
        .filter_map(|c| c.params["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        updates[..2],
        [
            ":hourglass_flowing_sand: _running demo.service_status…_",
            ":hourglass_flowing_sand: _writing the answer…_",
        ],
        "{updates:?}"
    );
    assert!(
        app.sim().statuses().is_empty(),
        "no status in placeholder mode"
    );
    // The stored answer is the placeholder's message.
    let conversation = conversation_of(&app, &root).await;
    let mut conn = app.pool().get().await.expect("conn");
    let stored: Vec<String> = messages::table
        .filter(messages::conversation_id.eq(conversation))
        .filter(messages::sender_kind.eq("agent"))
        .select(messages::slack_ts)
        .load(&mut conn)
        .await
        .expect("messages");
    assert_eq!(stored, std::slice::from_ref(&answer.ts));
    drop(conn);
    app.stop().await;
}

#[actix_rt::test]
async fn without_the_assistant_feature_the_status_falls_back_to_a_placeholder() {
    let mut app = service(SimConfig::default())
        .configure(|c| c.slack.progress_delay_ms = 0)
        .start()
        .await;
    app.sim().set_assistant_enabled(ACME, false);
    let agent = app.dev_agent_config();
    app.start_agent(agent);

    let first = app.mention(ALICE, "help");
    app.wait_replies(&first, 1).await;
    let second = app.mention(ALICE, "what can you do?");
    app.wait_replies(&second, 1).await;
    app.settle().await;
    for root in [&first, &second] {
        let replies = app.bot_replies(root);
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert!(replies[0].text.contains(DEMO_LABEL));
        assert_eq!(replies[0].updates, 1, "the answer replaced the placeholder");
    }
    let refused = app.sim().calls("assistant.threads.setStatus");
    assert_eq!(
        refused.len(),
        1,
        "asked once per workspace, then remembered: {refused:?}"
    );
    assert_eq!(refused[0].error.as_deref(), Some("missing_scope"));
    app.stop().await;
}

#[actix_rt::test]
async fn with_progress_off_the_thread_shows_nothing_and_reports_are_ignored() {
    let mut app = service(SimConfig::default())
        .configure(|c| c.slack.progress = ProgressMode::Off)
        .start()
        .await;
    let mut agent = app.dev_agent_config();
    agent.progress_step = Some(Duration::from_millis(100));
    app.start_agent(agent);
    let root = app.mention(ALICE, "what is the status of production?");
    app.wait_replies(&root, 1).await;
    app.settle().await;
    assert!(app.sim().calls("assistant.threads.setStatus").is_empty());
    assert!(app.sim().calls("chat.update").is_empty());
    let replies = app.bot_replies(&root);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].updates, 0);
    app.stop().await;
}

/// The default delay: an answer that comes within it is all the thread sees, in either mode.
/// No status flashes past, no placeholder is posted to be replaced, and the answer took the
/// indicator over in its own claim.
#[actix_rt::test]
async fn an_answer_within_the_delay_is_all_the_thread_sees() {
    for mode in [ProgressMode::Status, ProgressMode::Placeholder] {
        let mut app = service(SimConfig::default())
            .configure(move |c| {
                c.slack.progress = mode;
                c.slack.progress_delay_ms = 5_000;
            })
            .start()
            .await;
        let agent = app.dev_agent_config();
        app.start_agent(agent);
        let root = app.mention(ALICE, "what is the status of production?");
        app.wait_replies(&root, 1).await;
        app.settle().await;
        assert!(
            app.sim().calls("assistant.threads.setStatus").is_empty(),
            "{mode:?}: no status"
        );
        assert!(
            app.sim().calls("chat.update").is_empty(),
            "{mode:?}: nothing replaced"
        );
        assert!(
            app.sim().calls("reactions.add").is_empty(),
            "{mode:?}: no seen reaction beside the answer"
        );
        let replies = app.bot_replies(&root);
        assert_eq!(replies.len(), 1, "{mode:?}: {replies:?}");
        assert!(replies[0].text.contains(DEMO_LABEL), "{}", replies[0].text);
        assert_eq!(replies[0].updates, 0, "{mode:?}");
        let conversation = conversation_of(&app, &root).await;
        let mut conn = app.pool().get().await.expect("conn");
        let (taken, shown): (bool, bool) = diesel::sql_query(
            "SELECT answer_intent IS NOT NULL AS taken, shown_at IS NOT NULL AS shown \
             FROM turn_progress WHERE conversation_id = $1",
        )
        .bind::<diesel::sql_types::Uuid, _>(conversation)
        .get_result::<IndicatorRow>(&mut conn)
        .await
        .map(|r| (r.taken, r.shown))
        .expect("the turn's indicator");
        assert!(taken && !shown, "{mode:?}: answered, never shown");
        drop(conn);
        app.stop().await;
    }
}

#[derive(diesel::QueryableByName)]
struct IndicatorRow {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    taken: bool,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    shown: bool,
}

/// A report the agent sends within the delay is the first thing the thread shows, at once:
/// as the status, or as the placeholder's text (the placeholder is posted for it). "is
/// thinking…" never comes after it, and the answer still replaces the placeholder.
#[actix_rt::test]
async fn a_report_within_the_delay_is_shown_at_once_and_thinking_never_comes() {
    for mode in [ProgressMode::Status, ProgressMode::Placeholder] {
        let mut app = service(SimConfig::default())
            .configure(move |c| {
                c.slack.progress = mode;
                c.slack.progress_delay_ms = 5_000;
            })
            .start()
            .await;
        let mut agent = app.dev_agent_config();
        // The first report at once, the second 1.2 s later, then the answer.
        agent.progress_step = Some(Duration::from_millis(1_200));
        app.start_agent(agent);
        let root = app.mention(ALICE, "what is the status of production?");
        app.wait_replies(&root, 1).await;
        app.settle().await;
        let steps = ["running demo.service_status…", "writing the answer…"];
        let replies = app.bot_replies(&root);
        assert_eq!(replies.len(), 1, "{mode:?}: one message: {replies:?}");
        assert!(replies[0].text.contains(DEMO_LABEL), "{}", replies[0].text);
        match mode {
            ProgressMode::Status => {
                let shown: Vec<String> = statuses_of(&app, &root)
                    .iter()
                    .map(|s| s.status.clone())
                    .collect();
                assert_eq!(shown, steps, "no \"is thinking…\"");
                assert_eq!(replies[0].updates, 0);
            }
            _ => {
                let posted: Vec<String> = app
                    .sim()
                    .calls("chat.postMessage")
                    .iter()
                    .filter_map(|c| c.params["text"].as_str().map(str::to_owned))
                    .collect();
                assert_eq!(
                    posted,
                    [format!(":hourglass_flowing_sand: _{}_", steps[0])],
                    "the placeholder is posted for the first report, and only it"
                );
                // The second report, then the answer, replaced the placeholder.
                assert_eq!(replies[0].updates, 2, "{:?}", replies[0]);
                assert!(app.sim().statuses().is_empty());
            }
        }
        app.stop().await;
    }
}
