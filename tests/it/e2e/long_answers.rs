//! Answers over `slack.answer_file_threshold` characters: their first lines are posted in the
//! thread and the whole answer is shared as a file snippet (`files.getUploadURLExternal`, the
//! upload, `files.completeUploadExternal`), through the real Slack adapter and the simulator.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::db::schema::{conversations, messages};
use infragpt::testkit::slack_sim::SimConfig;
use serde_json::json;

use super::conversations::{bot_replies, settle};
use crate::support::app::TestApp;

const ACME: &str = "T0SIMACME1";
const OPS: &str = "C0OPS00001";
const ALICE: &str = "U0ALICE001";
const ACME_BOT: &str = "U0ACMEBOT1";

#[actix_rt::test]
async fn long_answers_are_shared_as_a_file_with_their_first_lines_posted() {
    let mut app = TestApp::builder()
        .with_slack_sim(SimConfig::default())
        .configure(|c| c.slack.answer_file_threshold = 2_000)
        .start()
        .await;
    let agent = app.dev_agent_config();
    app.start_agent(agent);
    let sim = app.sim();
    let root = sim
        .post_user_message(ACME, OPS, ALICE, &format!("<@{ACME_BOT}> help"), None)
        .expect("post");
    settle(sim, &app.db).await;
    assert_eq!(
        bot_replies(sim, ACME, OPS, &root).len(),
        1,
        "the agent answered"
    );

    let mut conn = app.pool().get().await.expect("conn");
    let conversation: uuid::Uuid = conversations::table
        .filter(conversations::thread_ts.eq(&root))
        .select(conversations::id)
        .first(&mut conn)
        .await
        .expect("conversation");
    // A long Markdown answer, as an agent would send it through SendReply.
    let mut answer = String::from("# Incident report\n\n");
    for i in 0..120 {
        answer.push_str(&format!("- **step {i}**: checked `pod-{i}` & its logs\n"));
    }
    assert!(answer.chars().count() > 2_000);
    let resp = app
        .http()
        .post(format!("{}/reply", app.base_url()))
        .json(&json!({ "conversation_id": conversation, "message": answer }))
        .send()
        .await
        .expect("reply");
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);

    let files = sim.files();
    assert_eq!(files.len(), 1, "{files:?}");
    let file = &files[0];
    assert_eq!(file.thread_ts.as_deref(), Some(root.as_str()));
    assert_eq!(file.channel, OPS);
    assert_eq!(file.filename, "answer.md");
    assert_eq!(
        String::from_utf8_lossy(&file.content),
        answer,
        "the file holds the whole answer as the agent wrote it"
    );
    let replies = bot_replies(sim, ACME, OPS, &root);
    // The first answer, the preview, and the file share.
    assert_eq!(replies.len(), 3, "{replies:?}");
    let preview = &replies[1].text;
    assert!(
        preview.starts_with("*Incident report*"),
        "mrkdwn: {preview}"
    );
    assert!(preview.contains("&amp; its logs"), "escaped: {preview}");
    assert!(
        preview.chars().count() < 1_700,
        "only the first lines: {preview}"
    );
    assert!(preview.contains("attached file"), "{preview}");

    // The history keeps the whole answer (as posted to Slack, in mrkdwn).
    let stored: Vec<String> = messages::table
        .filter(messages::conversation_id.eq(conversation))
        .filter(messages::sender_kind.eq("agent"))
        .order((messages::created_at, messages::id))
        .select(messages::text)
        .load(&mut conn)
        .await
        .expect("messages");
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(
        stored[1].contains("*step 119*"),
        "the whole answer is stored"
    );
    drop(conn);
    app.stop().await;
}
