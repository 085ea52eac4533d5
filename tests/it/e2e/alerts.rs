//! Alerts as input (`slack.alert_sources`), end to end: a monitoring tool's post in a monitored
//! channel of the Slack simulator becomes a turn for the development agent, answered in the
//! post's thread; other bots' posts and our own stay ignored.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::db::schema::messages;
use infragpt::testkit::slack_sim::SimConfig;
use infragpt_actors::slack_alerts::AlertSource;
use infragpt_actors::slack_events::BotId;
use serde_json::Value;

use super::conversations::{ACME, ALICE, Chat, OPS, bot_replies, service};
use crate::support::fixtures;

const ALERTMANAGER: &str = "B0ALERTMGR";
const OTHER_BOT: &str = "B0OTHERBOT";
const OUR_BOT: &str = "B0ACMEBOT1";

#[actix_rt::test]
async fn an_alert_in_a_monitored_channel_is_answered_in_its_thread() {
    let app = service(SimConfig::default())
        .with_dev_agent()
        .configure(|c| {
            c.slack.alert_sources = [ALERTMANAGER, OUR_BOT]
                .into_iter()
                .map(|b| AlertSource {
                    bot_id: Some(BotId::new(b)),
                    ..AlertSource::default()
                })
                .collect();
        })
        .start()
        .await;
    // A mention makes #ops monitored.
    let first = app.mention(ALICE, "hello");
    app.wait_replies(&first, 1).await;

    let webhook = fixtures::json("slack/alerts/alertmanager.webhook.json");
    let alert = app
        .sim()
        .post_bot_message(
            ACME,
            OPS,
            ALERTMANAGER,
            "Alertmanager",
            "",
            webhook["attachments"].clone(),
            Value::Null,
        )
        .expect("alert");
    let other = app
        .sim()
        .post_bot_message(
            ACME,
            OPS,
            OTHER_BOT,
            "Jenkins",
            "build #12 passed",
            Value::Null,
            Value::Null,
        )
        .expect("other bot");
    app.wait_replies(&alert, 1).await;
    app.settle().await;

    // One answer in the alert's thread (our own answers, echoed back as bot messages of a
    // listed bot id, started nothing), none for the other bot.
    assert_eq!(app.bot_replies(&alert).len(), 1);
    assert_eq!(app.bot_replies(&first).len(), 1);
    assert!(bot_replies(app.sim(), ACME, OPS, &other).is_empty());

    let requests = app.agent().requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let turn = &requests[1];
    assert!(
        turn.current_message.starts_with(
            "[FIRING:2] InstanceDown for api-server (env=\"prod\", severity=\"critical\") \
             (https://alertmanager.local//#/alerts?receiver=default)\n"
        ),
        "{}",
        turn.current_message
    );
    assert!(
        turn.current_message
            .contains("• *instance:* `1.2.3.4:8081`")
    );
    let context: Value = serde_json::from_str(&turn.context).expect("context");
    assert_eq!(
        context["alert"],
        serde_json::json!({"bot_id": ALERTMANAGER, "app_id": null, "name": "Alertmanager"})
    );
    assert_eq!(context["message_ts"], alert.as_str());
    assert_eq!(turn.user_id, ALERTMANAGER);
    // No users.info for a bot id.
    assert!(
        app.sim()
            .calls("users.info")
            .iter()
            .all(|c| c.params["user"] != ALERTMANAGER)
    );
    // Stored as the bot's message.
    let mut conn = app.pool().get().await.expect("conn");
    let stored: Vec<(String, String, Option<String>)> = messages::table
        .filter(messages::slack_ts.eq(&alert))
        .select((
            messages::sender_kind,
            messages::sender_id,
            messages::sender_name,
        ))
        .load(&mut conn)
        .await
        .expect("messages");
    assert_eq!(
        stored,
        vec![(
            "bot".to_owned(),
            ALERTMANAGER.to_owned(),
            Some("Alertmanager".to_owned())
        )]
    );
    app.stop().await;
}
