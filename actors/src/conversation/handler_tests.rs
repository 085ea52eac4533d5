//! [`ConversationHandler`] against in-memory fakes of its ports: no actix, no database.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};

use super::{
    AgentAnswer, AgentError, AnswerFormat, AnswerStyle, ConversationHandler,
    DEFAULT_FAILURE_NOTICE, MessageKind, ReplyMode, ReplyService, Sender, SlackApiError,
    UNAVAILABLE_REPLY,
};
use crate::handler::{EventHandler, HandleOutcome, HandlerError};
use crate::ids::{ChannelId, MessageTs, SlackUserId, TeamId, ThreadKey};
use crate::inbox::{EventRowId, EventStatus, InboundEvent, Partition, RoutingKey};
use crate::sources;
use crate::testing::{FakeAgent, FakeSlack, MemoryConversationStore, eventually};

const ROOT_TS: &str = "1700000000.000100";

struct Fixture {
    store: Arc<MemoryConversationStore>,
    slack: Arc<FakeSlack>,
    agent: Arc<FakeAgent>,
    handler: ConversationHandler,
}

fn fixture(mode: ReplyMode) -> Fixture {
    fixture_with_style(mode, AnswerStyle::default())
}

fn fixture_with_style(mode: ReplyMode, style: AnswerStyle) -> Fixture {
    let store = MemoryConversationStore::new();
    let slack = FakeSlack::new();
    let agent = FakeAgent::new();
    let handler = ConversationHandler::new(store.clone(), slack.clone(), agent.clone(), mode)
        .with_answer_style(style);
    Fixture {
        store,
        slack,
        agent,
        handler,
    }
}

fn ts(s: &str) -> MessageTs {
    MessageTs::parse(s).expect("ts")
}

fn thread(root: &str) -> ThreadKey {
    ThreadKey::new(
        TeamId::parse("T1").expect("team"),
        ChannelId::parse("C1").expect("channel"),
        ts(root),
    )
}

fn event(id: i64, payload: Value) -> InboundEvent {
    InboundEvent {
        id: EventRowId(id),
        source: sources::SLACK,
        source_id: format!("Ev{id}"),
        routing_key: RoutingKey(format!("T1/C1/{ROOT_TS}")),
        partition: Partition::of(&RoutingKey(format!("T1/C1/{ROOT_TS}"))),
        kind: payload["event"]["type"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned(),
        payload,
        status: EventStatus::Processing,
        attempts: 1,
        last_error: None,
        received_at: Utc::now(),
        processed_at: None,
    }
}

fn callback(event: Value) -> Value {
    json!({
        "type": "event_callback",
        "event_id": "Ev-any",
        "team_id": "T1",
        "event_time": 1_700_000_000,
        "api_app_id": "A1",
        "event": event,
    })
}

fn mention(ts: &str, thread_ts: Option<&str>, text: &str) -> Value {
    callback(json!({
        "type": "app_mention", "channel": "C1", "user": "U1", "text": text,
        "ts": ts, "thread_ts": thread_ts,
    }))
}

fn message(channel_type: &str, ts: &str, thread_ts: Option<&str>, text: &str) -> Value {
    callback(json!({
        "type": "message", "channel": "C1", "channel_type": channel_type, "user": "U1",
        "text": text, "ts": ts, "thread_ts": thread_ts,
    }))
}

fn edited(ts: &str, text: &str) -> Value {
    callback(json!({
        "type": "message", "subtype": "message_changed", "channel": "C1",
        "message": { "ts": ts, "text": text, "edited": { "user": "U1" } },
    }))
}

fn deleted(ts: &str) -> Value {
    callback(json!({
        "type": "message", "subtype": "message_deleted", "channel": "C1", "deleted_ts": ts,
    }))
}

/// The texts stored in the thread, with who wrote them.
fn thread_texts(f: &Fixture, root: &str) -> Vec<(Sender, String)> {
    let conversation = f.store.conversation(&thread(root)).expect("conversation");
    f.store
        .messages(conversation.id)
        .into_iter()
        .map(|m| (m.sender, m.text))
        .collect()
}

fn user() -> Sender {
    Sender::User(SlackUserId::parse("U1").expect("user"))
}

#[tokio::test]
async fn a_mention_stores_the_message_asks_the_agent_and_posts_the_reply() {
    let f = fixture(ReplyMode::Response);
    let outcome = f
        .handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> is prod up?")))
        .await;
    assert_eq!(outcome, Ok(HandleOutcome::Done));

    assert_eq!(
        thread_texts(&f, ROOT_TS),
        vec![
            (user(), "is prod up?".to_owned()),
            (Sender::Agent, "answer to: is prod up?".to_owned()),
        ]
    );
    let conversation = f
        .store
        .conversation(&thread(ROOT_TS))
        .expect("conversation");
    assert_eq!(conversation.current_turn_ts, Some(ts(ROOT_TS)));
    let agent_msg = f.store.messages(conversation.id).pop().expect("reply");
    assert_eq!(agent_msg.in_reply_to, Some(ts(ROOT_TS)));

    let turns = f.agent.turns();
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].conversation_id, conversation.id);
    assert_eq!(turns[0].current_message, "is prod up?");
    assert!(turns[0].past_messages.is_empty());
    assert_eq!(turns[0].context["message_ts"], ROOT_TS);
    assert_eq!(turns[0].context["sender"]["name"], "name of U1");
    assert_eq!(
        (turns[0].user_id.as_str(), turns[0].channel_id.as_str()),
        ("U1", "C1")
    );

    let posts = f.slack.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].thread_ts, Some(ts(ROOT_TS)));
    assert_eq!(posts[0].text, "answer to: is prod up?");

    let channel = f
        .store
        .channel_record(&thread(ROOT_TS).team, &thread(ROOT_TS).channel)
        .expect("channel");
    assert!(channel.monitored);
    assert_eq!(channel.name.as_deref(), Some("ops"));
    let slack = f.slack.clone();
    assert!(eventually(Duration::from_secs(10), || !slack.reactions().is_empty()).await);
    assert_eq!(f.slack.reactions()[0].2, "eyes");
}

#[tokio::test]
async fn the_agent_sees_the_thread_before_the_turn() {
    let f = fixture(ReplyMode::Response);
    f.handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> is prod up?")))
        .await
        .expect("first turn");
    // The mention made the channel monitored: a plain reply in the thread is a turn.
    let reply = message(
        "channel",
        "1700000000.000300",
        Some(ROOT_TS),
        "and staging?",
    );
    assert_eq!(
        f.handler.handle(&event(2, reply)).await,
        Ok(HandleOutcome::Done)
    );

    let turns = f.agent.turns();
    assert_eq!(turns.len(), 2);
    let past: Vec<(&str, &str)> = turns[1]
        .past_messages
        .iter()
        .map(|m| (m.sender.as_str(), m.content.as_str()))
        .collect();
    assert_eq!(
        past,
        vec![
            ("user/U1", "is prod up?"),
            ("agent", "answer to: is prod up?")
        ]
    );
    assert_eq!(f.slack.posts().len(), 2);
    assert!(
        f.slack
            .posts()
            .iter()
            .all(|p| p.thread_ts == Some(ts(ROOT_TS)))
    );
}

#[tokio::test]
async fn twins_and_redeliveries_make_one_turn() {
    let f = fixture(ReplyMode::Response);
    let text = "<@U0BOT> is prod up?";
    assert_eq!(
        f.handler
            .handle(&event(1, mention(ROOT_TS, None, text)))
            .await,
        Ok(HandleOutcome::Done)
    );
    // The `message` twin of the mention: its app_mention makes the turn.
    let twin = f
        .handler
        .handle(&event(2, message("channel", ROOT_TS, None, text)))
        .await;
    assert!(
        matches!(&twin, Ok(HandleOutcome::Ignored(r)) if r.contains("app_mention")),
        "{twin:?}"
    );
    // The same human message under another inbound event (a redelivery with a new id).
    let again = f
        .handler
        .handle(&event(3, mention(ROOT_TS, None, text)))
        .await;
    assert_eq!(
        again,
        Ok(HandleOutcome::Ignored(format!(
            "message {ROOT_TS} already handled as inbound event 1"
        )))
    );
    // The first event handled again (its done mark was lost): the answer is in the thread.
    assert_eq!(
        f.handler
            .handle(&event(1, mention(ROOT_TS, None, text)))
            .await,
        Ok(HandleOutcome::Done)
    );
    assert_eq!(f.agent.turns().len(), 1);
    assert_eq!(f.slack.posts().len(), 1);
    assert_eq!(thread_texts(&f, ROOT_TS).len(), 2);
}

#[tokio::test]
async fn a_retry_resumes_a_turn_whose_reply_was_not_posted() {
    let f = fixture(ReplyMode::Response);
    f.slack
        .fail_posts(Some(SlackApiError::Transport("connection reset".into())));
    let first = f
        .handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> hi")))
        .await;
    assert!(
        matches!(first, Err(HandlerError::Retryable(_))),
        "{first:?}"
    );
    f.slack.fail_posts(None);
    assert_eq!(
        f.handler
            .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> hi")))
            .await,
        Ok(HandleOutcome::Done)
    );
    assert_eq!(f.agent.turns().len(), 2, "the retry asks the agent again");
    assert_eq!(f.slack.posts().len(), 1);
    assert_eq!(
        thread_texts(&f, ROOT_TS),
        vec![
            (user(), "hi".to_owned()),
            (Sender::Agent, "answer to: hi".to_owned())
        ]
    );
}

#[tokio::test]
async fn an_agent_failure_posts_one_notice_and_dead_letters_the_event() {
    let f = fixture(ReplyMode::SendReply);
    f.agent
        .fail_with(AgentError::Unavailable("connection refused".into()));
    let outcome = f
        .handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> hi")))
        .await;
    assert_eq!(
        outcome,
        Err(HandlerError::Permanent(
            "agent unavailable: connection refused".into()
        ))
    );
    let posts = f.slack.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].text, UNAVAILABLE_REPLY);
    assert_eq!(posts[0].thread_ts, Some(ts(ROOT_TS)));
    // The question is kept for an operator's retry; the notice is stored as a notice, so no
    // answer is stored.
    let conversation = f
        .store
        .conversation(&thread(ROOT_TS))
        .expect("conversation");
    let stored: Vec<_> = f
        .store
        .messages(conversation.id)
        .into_iter()
        .map(|m| (m.sender, m.kind, m.text))
        .collect();
    assert_eq!(
        stored,
        vec![
            (user(), MessageKind::Message, "hi".to_owned()),
            (
                Sender::Agent,
                MessageKind::Notice,
                UNAVAILABLE_REPLY.to_owned()
            ),
        ]
    );
}

#[tokio::test]
async fn unsuccessful_and_empty_answers() {
    let f = fixture(ReplyMode::Response);
    f.agent.answer_with(AgentAnswer {
        success: false,
        error_message: "quota exceeded".into(),
        ..FakeAgent::success("")
    });
    // The error text goes to the dead letter, never into the thread.
    assert_eq!(
        f.handler
            .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> one")))
            .await,
        Err(HandlerError::Permanent(
            "the agent answered success=false (agent_type \"fake\"): quota exceeded".into()
        ))
    );
    f.agent.answer_with(AgentAnswer {
        success: false,
        ..FakeAgent::success("")
    });
    assert_eq!(
        f.handler
            .handle(&event(
                2,
                mention("1700000000.000200", None, "<@U0BOT> two"),
            ))
            .await,
        Err(HandlerError::Permanent(
            "the agent answered success=false (agent_type \"fake\"): no reason given".into()
        ))
    );
    f.agent.answer_with(FakeAgent::success("   "));
    assert_eq!(
        f.handler
            .handle(&event(
                3,
                mention("1700000000.000300", None, "<@U0BOT> three")
            ))
            .await,
        Ok(HandleOutcome::Done)
    );
    let texts: Vec<String> = f.slack.posts().into_iter().map(|p| p.text).collect();
    assert_eq!(
        texts,
        vec![
            DEFAULT_FAILURE_NOTICE.to_owned(),
            DEFAULT_FAILURE_NOTICE.to_owned(),
        ],
        "an empty successful answer posts nothing"
    );
}

#[tokio::test]
async fn an_answer_sent_through_send_reply_is_not_posted_again() {
    let f = fixture(ReplyMode::SendReply);
    let replies = Arc::new(ReplyService::new(f.store.clone(), f.slack.clone()));
    f.agent.send_reply_with(replies, "sent by the agent");
    assert_eq!(
        f.handler
            .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> hi")))
            .await,
        Ok(HandleOutcome::Done)
    );
    let texts: Vec<String> = f.slack.posts().into_iter().map(|p| p.text).collect();
    assert_eq!(texts, vec!["sent by the agent".to_owned()]);
}

#[tokio::test]
async fn edits_and_deletes_change_the_stored_message() {
    let f = fixture(ReplyMode::Response);
    f.handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> is prod up?")))
        .await
        .expect("turn");
    assert_eq!(
        f.handler
            .handle(&event(2, edited(ROOT_TS, "<@U0BOT> is prod down?")))
            .await,
        Ok(HandleOutcome::Done)
    );
    assert_eq!(thread_texts(&f, ROOT_TS)[0].1, "is prod down?");
    assert_eq!(
        f.handler
            .handle(&event(3, edited("1600000000.000001", "x")))
            .await,
        Ok(HandleOutcome::Ignored(
            "edited message is not stored".into()
        ))
    );
    assert_eq!(
        f.handler.handle(&event(4, deleted(ROOT_TS))).await,
        Ok(HandleOutcome::Done)
    );
    assert_eq!(
        f.handler
            .handle(&event(5, deleted("1600000000.000001")))
            .await,
        Ok(HandleOutcome::Ignored(
            "deleted message is not stored".into()
        ))
    );
    // The deleted question is no longer part of what the agent sees.
    f.handler
        .handle(&event(
            6,
            mention("1700000000.000500", Some(ROOT_TS), "<@U0BOT> still there?"),
        ))
        .await
        .expect("turn");
    let past: Vec<String> = f.agent.turns()[1]
        .past_messages
        .iter()
        .map(|m| m.content.clone())
        .collect();
    assert_eq!(past, vec!["answer to: is prod up?".to_owned()]);
    assert_eq!(
        f.agent.turns().len(),
        2,
        "edits and deletes never call the agent"
    );
}

#[tokio::test]
async fn plain_messages_need_a_monitored_channel_a_dm_or_the_bots_thread() {
    let f = fixture(ReplyMode::Response);
    let outcome = f
        .handler
        .handle(&event(1, message("channel", ROOT_TS, None, "hello")))
        .await;
    assert_eq!(
        outcome,
        Ok(HandleOutcome::Ignored(
            "channel not monitored and bot not part of the thread".into()
        ))
    );
    assert_eq!(
        f.handler
            .handle(&event(2, message("im", "1700000000.000200", None, "hello")))
            .await,
        Ok(HandleOutcome::Done)
    );
    assert_eq!(f.agent.turns().len(), 1);
    assert_eq!(f.agent.turns()[0].current_message, "hello");
}

#[tokio::test]
async fn bodies_without_an_event_and_unreadable_ones() {
    let f = fixture(ReplyMode::Response);
    assert_eq!(
        f.handler
            .handle(&event(
                1,
                json!({"type": "url_verification", "challenge": "c"})
            ))
            .await,
        Ok(HandleOutcome::Ignored("url_verification".into()))
    );
    assert_eq!(
        f.handler
            .handle(&event(2, json!({"type": "app_rate_limited"})))
            .await,
        Ok(HandleOutcome::Ignored(
            "body type app_rate_limited is not handled".into()
        ))
    );
    let broken = f
        .handler
        .handle(&event(3, json!({"type": "event_callback"})))
        .await;
    assert!(
        matches!(&broken, Err(HandlerError::Permanent(m)) if m.starts_with("unreadable slack event")),
        "{broken:?}"
    );
    assert!(f.agent.turns().is_empty());
}

#[tokio::test]
async fn a_store_outage_is_retried_and_an_inactive_workspace_is_not() {
    let f = fixture(ReplyMode::Response);
    f.store.set_unavailable(true);
    let outcome = f
        .handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> hi")))
        .await;
    assert!(
        matches!(outcome, Err(HandlerError::Retryable(_))),
        "{outcome:?}"
    );
    f.store.set_unavailable(false);
    f.slack.fail_identity(SlackApiError::WorkspaceInactive {
        team: TeamId::parse("T1").expect("team"),
        error: "token_revoked".into(),
    });
    let outcome = f
        .handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> hi")))
        .await;
    assert!(
        matches!(outcome, Err(HandlerError::Permanent(_))),
        "{outcome:?}"
    );
    assert!(f.agent.turns().is_empty());
}

const MARKDOWN_ANSWER: &str = "## Pods\n**api** is _down_, see [the runbook](https://rb.example/a?x=1&y=2):\n\n```\nkubectl get pods | grep **api**\n```";
const MRKDWN_ANSWER: &str = "*Pods*\n\n*api* is _down_, see <https://rb.example/a?x=1&amp;y=2|the runbook>:\n\n```\nkubectl get pods | grep **api**\n```";

#[tokio::test]
async fn markdown_answers_are_posted_and_stored_as_mrkdwn_on_both_paths() {
    // Posted from the agent's response.
    let f = fixture(ReplyMode::Response);
    f.agent.answer_with(FakeAgent::success(MARKDOWN_ANSWER));
    f.handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> pods?")))
        .await
        .expect("turn");
    let texts: Vec<String> = f.slack.posts().into_iter().map(|p| p.text).collect();
    assert_eq!(texts, vec![MRKDWN_ANSWER.to_owned()]);
    assert_eq!(
        thread_texts(&f, ROOT_TS)[1],
        (Sender::Agent, MRKDWN_ANSWER.to_owned())
    );

    // Posted through SendReply.
    let f = fixture(ReplyMode::SendReply);
    let replies = Arc::new(ReplyService::new(f.store.clone(), f.slack.clone()));
    f.agent.send_reply_with(replies, MARKDOWN_ANSWER);
    f.handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> pods?")))
        .await
        .expect("turn");
    let texts: Vec<String> = f.slack.posts().into_iter().map(|p| p.text).collect();
    assert_eq!(texts, vec![MRKDWN_ANSWER.to_owned()]);
}

#[tokio::test]
async fn mrkdwn_answers_and_notices_are_posted_as_they_are() {
    let store = MemoryConversationStore::new();
    let slack = FakeSlack::new();
    let agent = FakeAgent::new();
    let handler = ConversationHandler::new(
        store.clone(),
        slack.clone(),
        agent.clone(),
        ReplyMode::Response,
    )
    .with_answer_style(AnswerStyle {
        format: AnswerFormat::Mrkdwn,
        ..AnswerStyle::default()
    })
    .with_failure_notice("*bold* notice with a <https://status.example|status page>");
    agent.answer_with(FakeAgent::success("*already* mrkdwn"));
    handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> one")))
        .await
        .expect("turn");
    assert_eq!(slack.posts()[0].text, "*already* mrkdwn");

    // A notice is never converted, whatever the answer format.
    let f = fixture(ReplyMode::Response);
    let f = Fixture {
        handler: f
            .handler
            .with_failure_notice("**not** converted <https://status.example|status>"),
        ..f
    };
    f.agent.answer_with(AgentAnswer {
        success: false,
        error_message: "boom".to_owned(),
        ..FakeAgent::success("")
    });
    let _ = f
        .handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> two")))
        .await;
    let texts: Vec<String> = f.slack.posts().into_iter().map(|p| p.text).collect();
    assert_eq!(
        texts,
        vec!["**not** converted <https://status.example|status>".to_owned()]
    );
}

#[tokio::test]
async fn long_answers_post_their_first_lines_and_share_the_whole_answer_as_a_file() {
    let long: String = (0..400).map(|i| format!("- line **{i}**\n")).collect();
    let f = fixture_with_style(
        ReplyMode::Response,
        AnswerStyle {
            file_threshold: 1_000,
            ..AnswerStyle::default()
        },
    );
    f.agent.answer_with(FakeAgent::success(&long));
    f.handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> report")))
        .await
        .expect("turn");
    let posts = f.slack.posts();
    assert_eq!(posts.len(), 1, "one preview message");
    assert!(
        posts[0].text.starts_with("• line *0*\n"),
        "{}",
        posts[0].text
    );
    assert!(posts[0].text.chars().count() < 1_700);
    let uploads = f.slack.uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!(
        uploads[0].content, long,
        "the file is the answer as written"
    );
    assert_eq!(uploads[0].thread_ts, ts(ROOT_TS));
    let stored = &thread_texts(&f, ROOT_TS)[1];
    assert_eq!(stored.0, Sender::Agent);
    assert!(
        stored.1.contains("• line *399*"),
        "the whole answer is stored"
    );

    // Threshold 0: always messages, split at Slack's size.
    let f = fixture_with_style(
        ReplyMode::Response,
        AnswerStyle {
            file_threshold: 0,
            ..AnswerStyle::default()
        },
    );
    let huge: String = (0..1_000).map(|i| format!("line {i}\n")).collect();
    f.agent.answer_with(FakeAgent::success(&huge));
    f.handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> report")))
        .await
        .expect("turn");
    assert!(f.slack.uploads().is_empty());
    assert!(f.slack.posts().len() > 1, "split into several messages");
}
