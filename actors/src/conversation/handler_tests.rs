//! [`ConversationHandler`] against in-memory fakes of its ports: no actix, no database.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::{
    AgentAnswer, AgentError, AnswerFormat, AnswerStyle, ConversationHandler,
    DEFAULT_FAILURE_NOTICE, MessageKind, PostError, RepliesHere, ReplyMode, ReplyService, Sender,
    SlackApiError, UNAVAILABLE_REPLY,
};
use crate::handler::{EventHandler, HandleOutcome, HandlerError};
use crate::ids::{ChannelId, MessageTs, SlackUserId, TeamId, ThreadKey};
use crate::inbox::InboundEvent;
use crate::sources;
use crate::testing::{FakeAgent, FakeSlack, MemoryConversationStore, claimed_event, eventually};

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

/// A `SendReply` handler over `f`'s ports whose agent answers "sent by the agent" through
/// a SendReply of the same process, which the handler learns of (`RepliesHere`).
fn replying_here(f: &Fixture) -> ConversationHandler {
    let here = Arc::new(RepliesHere::new());
    let replies = Arc::new(
        ReplyService::new(f.store.clone(), f.slack.clone()).with_replies_here(here.clone()),
    );
    f.agent.send_reply_with(replies, "sent by the agent");
    ConversationHandler::new(
        f.store.clone(),
        f.slack.clone(),
        f.agent.clone(),
        ReplyMode::SendReply,
    )
    .with_replies_here(here)
}

/// How many posts in the fake Slack have `text`.
fn posts_of(slack: &FakeSlack, text: &str) -> usize {
    slack.posts().iter().filter(|p| p.text == text).count()
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
    let kind = payload["event"]["type"]
        .as_str()
        .unwrap_or("unknown")
        .to_owned();
    claimed_event(
        id,
        sources::SLACK,
        &format!("Ev{id}"),
        &format!("T1/C1/{ROOT_TS}"),
        &kind,
        payload,
    )
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

/// Handles the thread's first mention ("hi", answered at once in `Response` mode) and returns
/// its conversation's id, as SendReply takes it.
async fn answered_first_turn(f: &Fixture) -> String {
    f.handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> hi")))
        .await
        .expect("turn");
    f.store
        .conversation(&thread(ROOT_TS))
        .expect("conversation")
        .id
        .to_string()
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
async fn the_seen_reaction_waits_for_the_delay_and_an_answer_within_it_has_none() {
    let delay = Duration::from_millis(150);
    // A fast agent: the answer is all the message gets.
    let mut f = fixture(ReplyMode::Response);
    f.handler = f.handler.with_seen_delay(delay);
    f.handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> hi")))
        .await
        .expect("turn");
    assert_eq!(posts_of(&f.slack, "answer to: hi"), 1);
    tokio::time::sleep(delay * 2).await;
    assert!(f.slack.reactions().is_empty(), "{:?}", f.slack.reactions());

    // An agent working past the delay: the message is marked seen meanwhile, once.
    let mut f = fixture(ReplyMode::Response);
    f.handler = f.handler.with_seen_delay(delay);
    f.agent.think_for(delay * 3);
    f.handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> hi")))
        .await
        .expect("turn");
    let slack = f.slack.clone();
    assert!(eventually(Duration::from_secs(10), || !slack.reactions().is_empty()).await);
    let reactions = f.slack.reactions();
    assert_eq!(reactions.len(), 1, "{reactions:?}");
    assert_eq!(reactions[0].1, ts(ROOT_TS));
    assert_eq!(reactions[0].2, "eyes");

    // An agent whose SendReply (here) posted the answer within the delay and that returns
    // after it: the answer said "seen".
    let f = fixture(ReplyMode::SendReply);
    let handler = replying_here(&f).with_seen_delay(delay);
    f.agent.think_for(delay * 3);
    handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> hi")))
        .await
        .expect("turn");
    assert_eq!(posts_of(&f.slack, "sent by the agent"), 1);
    tokio::time::sleep(delay).await;
    assert!(f.slack.reactions().is_empty(), "{:?}", f.slack.reactions());
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
    // The `message` twin of the mention: the turn is made already.
    let twin = f
        .handler
        .handle(&event(2, message("channel", ROOT_TS, None, text)))
        .await;
    assert_eq!(
        twin,
        Ok(HandleOutcome::Ignored(format!(
            "message {ROOT_TS} already handled as inbound event 1"
        )))
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

/// Over two Socket Mode connections the `message` twin of a mention can be recorded first,
/// and a reply in the thread before the `app_mention`: the twin makes the turn (monitoring
/// the channel, like the mention), so the question is answered before the reply that follows
/// it, and the late `app_mention` finds its turn made.
#[tokio::test]
async fn the_message_twin_of_a_mention_recorded_first_makes_the_turn() {
    let f = fixture(ReplyMode::Response);
    let text = "<@U0BOT> is prod up?";
    assert_eq!(
        f.handler
            .handle(&event(1, message("channel", ROOT_TS, None, text)))
            .await,
        Ok(HandleOutcome::Done)
    );
    assert_eq!(
        f.handler
            .handle(&event(
                2,
                message(
                    "channel",
                    "1700000001.000200",
                    Some(ROOT_TS),
                    "and staging?"
                )
            ))
            .await,
        Ok(HandleOutcome::Done)
    );
    assert_eq!(
        f.handler
            .handle(&event(3, mention(ROOT_TS, None, text)))
            .await,
        Ok(HandleOutcome::Ignored(format!(
            "message {ROOT_TS} already handled as inbound event 1"
        )))
    );
    let asked: Vec<String> = f
        .agent
        .turns()
        .iter()
        .map(|t| t.current_message.clone())
        .collect();
    assert_eq!(asked, ["is prod up?", "and staging?"]);
    assert_eq!(f.slack.posts().len(), 2);
    let channel = f
        .store
        .channel_record(&thread(ROOT_TS).team, &thread(ROOT_TS).channel)
        .expect("channel");
    assert!(channel.monitored, "the mention monitors the channel");
}

/// The twin of a mention this process made a turn of is ignored without asking the store
/// (one round trip saved per mention); a process that did not make it (restarted, or another
/// replica) finds the turn in the store and ignores it the same way.
#[tokio::test]
async fn a_twin_is_ignored_from_memory_and_from_the_store() {
    let f = fixture(ReplyMode::Response);
    let text = "<@U0BOT> is prod up?";
    assert_eq!(
        f.handler
            .handle(&event(1, mention(ROOT_TS, None, text)))
            .await,
        Ok(HandleOutcome::Done)
    );
    let ignored = Ok(HandleOutcome::Ignored(format!(
        "message {ROOT_TS} already handled as inbound event 1"
    )));
    f.store.set_unavailable(true);
    let twin = event(2, message("channel", ROOT_TS, None, text));
    assert_eq!(f.handler.handle(&twin).await, ignored, "from memory");
    f.store.set_unavailable(false);
    let restarted = ConversationHandler::new(
        f.store.clone(),
        f.slack.clone(),
        f.agent.clone(),
        ReplyMode::Response,
    );
    assert_eq!(restarted.handle(&twin).await, ignored, "from the store");
    assert_eq!(f.agent.turns().len(), 1);
    assert_eq!(f.slack.posts().len(), 1);
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
    assert_eq!(
        f.agent.turns().len(),
        1,
        "the retry posts the answer the agent gave, recorded in its intent"
    );
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

/// Within the retry budget an unreachable agent is retried quietly; the last attempt posts
/// the notice; an agent that answered an error is never retried.
#[tokio::test]
async fn an_unreachable_agent_is_retried_within_the_budget() {
    let store = MemoryConversationStore::new();
    let slack = FakeSlack::new();
    let agent = FakeAgent::new();
    let handler = ConversationHandler::new(
        store.clone(),
        slack.clone(),
        agent.clone(),
        ReplyMode::Response,
    )
    .with_agent_retries(2);
    agent.fail_with(AgentError::Unavailable("connection broke mid-call".into()));
    let attempt = |n: i32| {
        let mut e = event(1, mention(ROOT_TS, None, "<@U0BOT> hi"));
        e.attempts = n;
        e
    };
    for n in [1, 2] {
        assert!(
            matches!(
                handler.handle(&attempt(n)).await,
                Err(HandlerError::Retryable(_))
            ),
            "attempt {n} is retried"
        );
        assert!(
            slack.posts().is_empty(),
            "no notice before the last attempt"
        );
    }
    // The agent is back for the next attempt: the answer comes late, once.
    agent.answer_with(FakeAgent::success("late answer"));
    assert_eq!(handler.handle(&attempt(3)).await, Ok(HandleOutcome::Done));
    let texts: Vec<String> = slack.posts().into_iter().map(|p| p.text).collect();
    assert_eq!(texts, ["late answer"]);
    assert_eq!(agent.turns().len(), 3, "asked at every attempt");

    // Down at the last attempt: the notice, and a dead letter.
    agent.fail_with(AgentError::Unavailable("connection refused".into()));
    let next = |n: i32| {
        let mut e = event(
            2,
            mention("1700000001.000300", Some(ROOT_TS), "<@U0BOT> again"),
        );
        e.attempts = n;
        e
    };
    assert!(matches!(
        handler.handle(&next(3)).await,
        Err(HandlerError::Permanent(_))
    ));
    let texts: Vec<String> = slack.posts().into_iter().map(|p| p.text).collect();
    assert_eq!(texts, ["late answer", UNAVAILABLE_REPLY]);

    // An agent that answered with an error status is not retried.
    agent.fail_with(AgentError::Failed("InvalidArgument: bad turn".into()));
    let third = event(
        3,
        mention("1700000001.000400", Some(ROOT_TS), "<@U0BOT> third"),
    );
    assert!(matches!(
        handler.handle(&third).await,
        Err(HandlerError::Permanent(_))
    ));
    assert_eq!(slack.posts().len(), 3);
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

/// The agent answered through a SendReply this process handled: once the agent returns, the
/// turn is done without reading its answer's state from the store again (the store says the
/// same). A worker without that record reads it.
#[tokio::test]
async fn a_turn_answered_by_a_send_reply_here_is_not_read_again() {
    let f = fixture(ReplyMode::SendReply);
    let handler = replying_here(&f);
    assert_eq!(
        handler
            .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> hi")))
            .await,
        Ok(HandleOutcome::Done)
    );
    assert_eq!(f.store.turn_state_reads(), 1, "read as the turn began only");

    let other_root = "1700000000.000200";
    assert_eq!(
        f.handler
            .handle(&event(2, mention(other_root, None, "<@U0BOT> again")))
            .await,
        Ok(HandleOutcome::Done)
    );
    assert_eq!(
        f.store.turn_state_reads(),
        3,
        "without the record: read as the turn began and after the agent"
    );
    let texts: Vec<String> = f.slack.posts().into_iter().map(|p| p.text).collect();
    assert_eq!(texts, vec!["sent by the agent".to_owned(); 2]);
    assert_eq!(f.store.intents().len(), 2);
}

/// An agent that gives up when its SendReply is refused for a moment (the store down before
/// anything was posted) answers `success: false`: the turn is retried within the agent
/// budget rather than answered with a notice, and answered at the next attempt; at the
/// last attempt the notice goes out as for any unsuccessful answer.
#[tokio::test]
async fn a_send_reply_refused_for_a_moment_retries_the_turn() {
    let f = fixture(ReplyMode::SendReply);
    let here = Arc::new(RepliesHere::new());
    let handler = ConversationHandler::new(
        f.store.clone(),
        f.slack.clone(),
        f.agent.clone(),
        ReplyMode::SendReply,
    )
    .with_agent_retries(1)
    .with_replies_here(here.clone());
    let replies =
        Arc::new(ReplyService::new(f.store.clone(), f.slack.clone()).with_replies_here(here));
    f.agent.send_reply_or_report(replies, "sent by the agent");
    let texts = || -> Vec<String> { f.slack.posts().into_iter().map(|p| p.text).collect() };
    let attempt = |id: i64, root: &str, n: i32| {
        let mut e = event(id, mention(root, None, "<@U0BOT> hi"));
        e.attempts = n;
        e
    };

    f.store.fail_next_claim();
    assert!(
        matches!(
            handler.handle(&attempt(1, ROOT_TS, 1)).await,
            Err(HandlerError::Retryable(_))
        ),
        "the refusal was ours: the turn is tried again"
    );
    assert!(texts().is_empty(), "no notice for a refusal that passes");
    assert_eq!(
        handler.handle(&attempt(1, ROOT_TS, 2)).await,
        Ok(HandleOutcome::Done)
    );
    assert_eq!(texts(), ["sent by the agent"]);
    assert_eq!(f.agent.turns().len(), 2, "asked again");

    // Refused again at the last attempt: the notice, and a dead letter.
    f.store.fail_next_claim();
    assert!(matches!(
        handler.handle(&attempt(2, "1700000000.000200", 2)).await,
        Err(HandlerError::Permanent(_))
    ));
    assert_eq!(texts(), ["sent by the agent", DEFAULT_FAILURE_NOTICE]);

    // An agent failing on its own (no SendReply refused) is not retried.
    f.agent.answer_with(AgentAnswer {
        success: false,
        error_message: "quota exceeded".into(),
        ..FakeAgent::success("")
    });
    assert!(matches!(
        handler.handle(&attempt(3, "1700000000.000300", 1)).await,
        Err(HandlerError::Permanent(_))
    ));
}

/// A SendReply caller that gives up while the post is under way (its request future is
/// dropped) does not leave the reply half-done and claimed: the post finishes, and the
/// caller's retry finds it posted at once instead of waiting out the claim.
#[tokio::test]
async fn a_send_reply_caller_going_away_does_not_stop_the_post() {
    let f = fixture(ReplyMode::Response);
    let id = answered_first_turn(&f).await;
    let replies = Arc::new(
        ReplyService::new(f.store.clone(), f.slack.clone())
            .with_claim_timing(Duration::from_secs(30), Duration::from_millis(100)),
    );
    f.slack.delay_posts(Duration::from_millis(300));
    let call = replies.send_reply_detached(id.clone(), "a second thought".into(), None);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), call)
            .await
            .is_err(),
        "the caller gives up while the post is under way"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    f.slack.delay_posts(Duration::ZERO);
    let texts: Vec<String> = f.slack.posts().into_iter().map(|p| p.text).collect();
    assert_eq!(
        texts,
        ["answer to: hi", "a second thought"],
        "the post finished"
    );
    assert_eq!(
        replies
            .send_reply(&id, "a second thought")
            .await
            .expect("the retry"),
        super::ReplyOutcome::AlreadyPosted
    );
}

/// A process whose contact with the cluster broke after it claimed a reply (it was paused,
/// and another replica may have taken the claim over) posts nothing on either path, and
/// posts once when asked again with its standing back.
#[tokio::test]
async fn a_reply_is_not_posted_once_contact_broke_after_the_claim() {
    let contact = Arc::new(crate::testing::Contact::default());
    let Fixture {
        store,
        slack,
        handler,
        ..
    } = fixture(ReplyMode::Response);
    let handler = handler.with_standing(contact.clone());
    contact.set_broken(true);
    let outcome = handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> hi")))
        .await;
    assert!(
        matches!(outcome, Err(HandlerError::Retryable(_))),
        "{outcome:?}"
    );
    assert!(slack.posts().is_empty(), "{:?}", slack.posts());

    let conversation = store.conversation(&thread(ROOT_TS)).expect("conversation");
    let replies = ReplyService::new(store.clone(), slack.clone()).with_standing(contact.clone());
    let refused = replies
        .send_reply(&conversation.id.to_string(), "a second thought")
        .await;
    assert!(
        matches!(
            refused,
            Err(super::ReplyError::Contended(PostError::Fenced(_)))
        ),
        "{refused:?}"
    );
    assert!(slack.posts().is_empty(), "{:?}", slack.posts());

    contact.set_broken(false);
    assert_eq!(
        handler
            .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> hi")))
            .await,
        Ok(HandleOutcome::Done)
    );
    replies
        .send_reply(&conversation.id.to_string(), "a second thought")
        .await
        .expect("posted");
    let texts: Vec<String> = slack.posts().into_iter().map(|p| p.text).collect();
    assert_eq!(texts, ["answer to: hi", "a second thought"]);
}

/// A process whose post left after its claim was taken over (it was paused past every
/// check) while the new holder posted the same reply withdraws its copy: one message stays
/// in the thread and one answer in the store.
#[tokio::test]
async fn a_reply_posted_after_the_claim_was_taken_over_is_withdrawn() {
    let f = fixture(ReplyMode::Response);
    let id = answered_first_turn(&f).await;
    let replies = || {
        Arc::new(
            ReplyService::new(f.store.clone(), f.slack.clone())
                .with_claim_timing(Duration::from_secs(30), Duration::from_secs(2)),
        )
    };
    let (a, b) = (replies(), replies());
    f.slack.delay_posts(Duration::from_millis(300));
    let paused = {
        let id = id.clone();
        tokio::spawn(async move { a.send_reply(&id, "a second thought").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A's post is on its way; its claim lapses and B takes the reply over.
    f.store.expire_claims();
    b.send_reply(&id, "a second thought")
        .await
        .expect("B posts it");
    let lost = paused.await.expect("A's task");
    assert!(
        matches!(
            lost,
            Err(super::ReplyError::Contended(PostError::ClaimLost(_)))
        ),
        "{lost:?}"
    );
    let texts: Vec<String> = f.slack.posts().into_iter().map(|p| p.text).collect();
    assert_eq!(texts, ["answer to: hi", "a second thought"]);
    let stored: Vec<String> =
        super::ConversationStore::history(f.store.as_ref(), id.parse().expect("id"))
            .await
            .expect("history")
            .into_iter()
            .filter(|m| m.sender == super::Sender::Agent)
            .map(|m| m.text)
            .collect();
    assert_eq!(stored, ["answer to: hi", "a second thought"]);
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

// ----- exactly-once posting -------------------------------------------------------------

/// An answer of `n` Slack-sized messages (each line is 1 000 characters).
fn answer_of_parts(n: usize) -> String {
    (0..n * 3)
        .map(|i| format!("{}{}\n", i % 10, "x".repeat(999)))
        .collect()
}

#[tokio::test]
async fn a_post_whose_recording_failed_is_not_posted_again() {
    let f = fixture(ReplyMode::Response);
    f.store.fail_next_record();
    let first = f
        .handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> hi")))
        .await;
    assert!(
        matches!(first, Err(HandlerError::Retryable(_))),
        "{first:?}"
    );
    assert_eq!(
        f.slack.posts().len(),
        1,
        "posted, then the recording failed"
    );
    assert_eq!(f.slack.lookups(), 0);

    assert_eq!(
        f.handler
            .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> hi")))
            .await,
        Ok(HandleOutcome::Done)
    );
    let posts = f.slack.posts();
    assert_eq!(posts.len(), 1, "the retry found the post in the thread");
    assert_eq!(f.slack.lookups(), 1);
    assert_eq!(f.agent.turns().len(), 1);
    let stored = thread_texts(&f, ROOT_TS);
    assert_eq!(
        stored,
        vec![
            (user(), "hi".to_owned()),
            (Sender::Agent, "answer to: hi".to_owned())
        ]
    );
    let conversation = f
        .store
        .conversation(&thread(ROOT_TS))
        .expect("conversation");
    let agent_msg = f.store.messages(conversation.id).pop().expect("answer");
    assert_eq!(agent_msg.slack_ts, posts[0].ts, "recorded with its real ts");
    let intents = f.store.intents();
    assert_eq!(intents.len(), 1);
    assert!(intents[0].posted);
    assert_eq!(intents[0].claims, 2);
    let metadata = posts[0].metadata.as_ref().expect("metadata");
    assert_eq!(metadata.event_type, super::REPLY_EVENT_TYPE);
    assert_eq!(
        metadata.event_payload["intent_id"],
        json!(intents[0].id.to_string())
    );
    assert_eq!(metadata.event_payload["part"], json!(0));
}

#[tokio::test]
async fn parts_posted_before_a_crash_are_not_posted_again() {
    let f = fixture(ReplyMode::Response);
    let answer = answer_of_parts(3);
    f.agent.answer_with(FakeAgent::success(&answer));
    // The process dies right after its second post: nothing more is recorded or released.
    let store = f.store.clone();
    f.slack.after_post(move |n| {
        if n == 2 {
            store.set_unavailable(true);
        }
    });
    let crashed = f
        .handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> report")))
        .await;
    assert!(
        matches!(crashed, Err(HandlerError::Retryable(_))),
        "{crashed:?}"
    );
    assert_eq!(f.slack.posts().len(), 2);
    let intent = &f.store.intents()[0];
    assert_eq!(intent.posting.message_count(), 3);
    assert_eq!(
        (intent.parts_done, intent.posting_part),
        (1, Some(1)),
        "part 0 recorded, part 1 posted but not recorded"
    );

    // Restarted: the claim of the dead process is still leased, so the retry waits...
    f.slack.after_post(|_| {});
    f.store.set_unavailable(false);
    let f = Fixture {
        handler: f
            .handler
            .with_claim_timing(Duration::from_secs(30), Duration::from_millis(200)),
        ..f
    };
    let busy = f
        .handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> report")))
        .await;
    assert!(
        matches!(&busy, Err(HandlerError::Retryable(m)) if m.contains("another process")),
        "{busy:?}"
    );
    assert_eq!(f.slack.posts().len(), 2);
    // ...and finishes it once the lease ran out.
    f.store.expire_claims();
    assert_eq!(
        f.handler
            .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> report")))
            .await,
        Ok(HandleOutcome::Done)
    );
    let posts = f.slack.posts();
    let parts: Vec<_> = posts
        .iter()
        .map(|p| p.metadata.as_ref().expect("metadata").event_payload["part"].clone())
        .collect();
    assert_eq!(parts, vec![json!(0), json!(1), json!(2)], "each part once");
    assert_eq!(f.agent.turns().len(), 1, "the agent is not asked again");
    let stored: Vec<MessageTs> = {
        let conversation = f
            .store
            .conversation(&thread(ROOT_TS))
            .expect("conversation");
        f.store
            .messages(conversation.id)
            .into_iter()
            .filter(|m| m.sender == Sender::Agent)
            .map(|m| m.slack_ts)
            .collect()
    };
    assert_eq!(
        stored,
        posts.iter().map(|p| p.ts.clone()).collect::<Vec<_>>()
    );
    assert!(f.store.intents()[0].posted);
}

#[tokio::test]
async fn a_post_whose_answer_was_lost_is_found_not_repeated() {
    let f = fixture(ReplyMode::Response);
    f.agent.answer_with(FakeAgent::success(&answer_of_parts(2)));
    // Each post reaches the thread but its answer is lost: the attempt looks in the thread
    // before trying again, and records what it finds.
    f.slack
        .lose_answers(Some(SlackApiError::Transport("connection reset".into())));
    assert_eq!(
        f.handler
            .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> report")))
            .await,
        Ok(HandleOutcome::Done)
    );
    let parts: Vec<_> = f
        .slack
        .posts()
        .iter()
        .map(|p| p.metadata.as_ref().expect("metadata").event_payload["part"].clone())
        .collect();
    assert_eq!(parts, vec![json!(0), json!(1)]);
    assert_eq!(f.slack.lookups(), 2);
    assert!(f.store.intents()[0].posted);
}

fn long_answer_fixture() -> Fixture {
    let long: String = (0..400).map(|i| format!("- line **{i}**\n")).collect();
    let f = fixture_with_style(
        ReplyMode::Response,
        AnswerStyle {
            file_threshold: 1_000,
            ..AnswerStyle::default()
        },
    );
    f.agent.answer_with(FakeAgent::success(&long));
    f
}

/// Handles the mention with the process "dying" (the store gone) right after Slack call
/// number `n` (posts and file shares), then again after the dead claim's lease ran out.
async fn crash_after_call(f: &Fixture, n: usize) {
    let store = f.store.clone();
    f.slack.after_post(move |count| {
        if count == n {
            store.set_unavailable(true);
        }
    });
    let crashed = f
        .handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> report")))
        .await;
    assert!(
        matches!(crashed, Err(HandlerError::Retryable(_))),
        "{crashed:?}"
    );
    f.slack.after_post(|_| {});
    f.store.set_unavailable(false);
    f.store.expire_claims();
    assert_eq!(
        f.handler
            .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> report")))
            .await,
        Ok(HandleOutcome::Done)
    );
}

#[tokio::test]
async fn a_long_answer_crashed_after_its_preview_gets_one_preview_and_one_file() {
    let f = long_answer_fixture();
    crash_after_call(&f, 1).await;
    assert_eq!(f.slack.posts().len(), 1, "one preview");
    assert_eq!(f.slack.uploads().len(), 1, "one file in the thread");
    assert_eq!(f.slack.lookups(), 1);
    let intent = &f.store.intents()[0];
    assert!(intent.posted && intent.file_done);
    assert!(thread_texts(&f, ROOT_TS)[1].1.contains("• line *399*"));
}

#[tokio::test]
async fn a_long_answer_crashed_after_its_file_share_shares_nothing_more() {
    let f = long_answer_fixture();
    crash_after_call(&f, 2).await;
    assert_eq!(f.slack.posts().len(), 1);
    assert_eq!(
        f.slack.uploads().len(),
        1,
        "the share was found in the thread"
    );
    assert_eq!(f.slack.lookups(), 1);
    let intent = &f.store.intents()[0];
    assert!(intent.posted && intent.file_done);
    assert_eq!(f.agent.turns().len(), 1);
}

#[tokio::test]
async fn a_notice_is_posted_once_per_turn() {
    let f = fixture(ReplyMode::SendReply);
    f.agent
        .fail_with(AgentError::Unavailable("connection refused".into()));
    for _ in 0..2 {
        // An operator retries the dead letter while the agent is still down.
        let outcome = f
            .handler
            .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> hi")))
            .await;
        assert!(
            matches!(outcome, Err(HandlerError::Permanent(_))),
            "{outcome:?}"
        );
    }
    let texts: Vec<String> = f.slack.posts().into_iter().map(|p| p.text).collect();
    assert_eq!(texts, vec![UNAVAILABLE_REPLY.to_owned()]);
    assert_eq!(f.agent.turns().len(), 2, "the agent is asked each time");
}

#[tokio::test]
async fn the_fallback_answer_and_a_send_reply_of_the_same_text_post_once() {
    let f = fixture(ReplyMode::SendReply);
    let replies = Arc::new(ReplyService::new(f.store.clone(), f.slack.clone()));
    // The agent's SendReply failed half way (the store went away after the post); the
    // agent returns its answer all the same and the worker posts it from the response.
    f.agent
        .send_reply_best_effort(replies.clone(), "sent by the agent");
    f.store.fail_next_record();
    assert_eq!(
        f.handler
            .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> hi")))
            .await,
        Ok(HandleOutcome::Done)
    );
    let texts: Vec<String> = f.slack.posts().into_iter().map(|p| p.text).collect();
    assert_eq!(texts, vec!["sent by the agent".to_owned()]);
    // A late retry of the SendReply.
    let conversation = f
        .store
        .conversation(&thread(ROOT_TS))
        .expect("conversation");
    assert_eq!(
        replies
            .send_reply(&conversation.id.to_string(), "sent by the agent")
            .await
            .expect("send reply"),
        super::ReplyOutcome::AlreadyPosted
    );
    assert_eq!(f.slack.posts().len(), 1);
}

/// The store goes away right after a post and comes back a moment later: the failed
/// SendReply still gives its claim up (asking again while the store is away), so its retry
/// finds the post in the thread at once instead of waiting out the lease.
#[tokio::test]
async fn a_claim_is_given_up_when_the_store_comes_back_in_a_moment() {
    let f = fixture(ReplyMode::SendReply);
    let id = answered_first_turn(&f).await;
    // A lease longer than the test: only giving the claim up frees it.
    let replies = ReplyService::new(f.store.clone(), f.slack.clone())
        .with_claim_timing(Duration::from_secs(300), Duration::from_millis(200));
    let store = f.store.clone();
    f.slack.after_post(move |_| {
        store.set_unavailable(true);
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            store.set_unavailable(false);
        });
    });
    let failed = replies.send_reply(&id, "Search is degraded.").await;
    assert!(
        matches!(failed, Err(super::ReplyError::Store(_))),
        "{failed:?}"
    );
    f.slack.after_post(|_| {});
    let intent = f
        .store
        .intents()
        .into_iter()
        .find(|i| i.text == "Search is degraded.")
        .expect("the intent");
    assert!(
        intent
            .claimed_until
            .is_some_and(|until| until <= chrono::Utc::now()),
        "the claim was given up: {intent:?}"
    );
    assert_eq!(intent.posting_part, Some(0), "its post is marked uncertain");
    assert_eq!(
        replies
            .send_reply(&id, "Search is degraded.")
            .await
            .expect("the retry"),
        super::ReplyOutcome::Posted,
        "the part found in the thread is recorded"
    );
    let posted = posts_of(&f.slack, "Search is degraded.");
    assert_eq!(posted, 1);
}

#[tokio::test]
async fn concurrent_send_replies_post_once_and_a_held_claim_is_waited_for() {
    let f = fixture(ReplyMode::SendReply);
    let id = answered_first_turn(&f).await;
    let replies = Arc::new(ReplyService::new(f.store.clone(), f.slack.clone()));
    let calls = (0..8).map(|_| {
        let (replies, id) = (replies.clone(), id.clone());
        tokio::spawn(async move { replies.send_reply(&id, "All green.").await })
    });
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(call.await.expect("join").expect("send reply"));
    }
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == super::ReplyOutcome::Posted)
            .count(),
        1,
        "{outcomes:?}"
    );
    let greens = posts_of(&f.slack, "All green.");
    assert_eq!(greens, 1);

    // Another process holds the claim of a new text (it stopped mid-way): a caller waits
    // for it, then answers that the reply is contended.
    let impatient = ReplyService::new(f.store.clone(), f.slack.clone())
        .with_claim_timing(Duration::from_secs(30), Duration::from_millis(150));
    let store = f.store.clone();
    f.slack.after_post(move |_| store.set_unavailable(true));
    let crashed = replies.send_reply(&id, "Search is degraded.").await;
    assert!(
        matches!(crashed, Err(super::ReplyError::Store(_))),
        "{crashed:?}"
    );
    f.store.set_unavailable(false);
    f.slack.after_post(|_| {});
    let err = impatient
        .send_reply(&id, "Search is degraded.")
        .await
        .expect_err("contended");
    assert!(matches!(err, super::ReplyError::Contended(_)), "{err:?}");
    f.store.expire_claims();
    assert_eq!(
        impatient
            .send_reply(&id, "Search is degraded.")
            .await
            .expect("taken over"),
        super::ReplyOutcome::Posted,
        "the part found in the thread is recorded: finished here"
    );
    let degraded = posts_of(&f.slack, "Search is degraded.");
    assert_eq!(degraded, 1);
}

#[tokio::test]
async fn a_notice_cut_off_by_a_crash_is_finished_only_when_it_is_due_again() {
    let f = fixture(ReplyMode::SendReply);
    f.agent
        .fail_with(AgentError::Unavailable("connection refused".into()));
    // Dies right after posting the notice.
    let store = f.store.clone();
    f.slack.after_post(move |_| store.set_unavailable(true));
    let first = f
        .handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> hi")))
        .await;
    assert!(first.is_err(), "{first:?}");
    f.slack.after_post(|_| {});
    f.store.set_unavailable(false);
    f.store.expire_claims();
    // The agent is still down: the same notice is due, found in the thread, not posted again.
    let second = f
        .handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> hi")))
        .await;
    assert!(
        matches!(second, Err(HandlerError::Permanent(_))),
        "{second:?}"
    );
    assert_eq!(f.slack.posts().len(), 1);
    assert_eq!(f.slack.lookups(), 1);
    assert!(f.store.intents()[0].posted);
    // An operator's retry once the agent is back: the answer, and nothing else.
    f.agent.answer_with(FakeAgent::success("back"));
    assert_eq!(
        f.handler
            .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> hi")))
            .await,
        Ok(HandleOutcome::Done)
    );
    let texts: Vec<String> = f.slack.posts().into_iter().map(|p| p.text).collect();
    assert_eq!(texts, vec![UNAVAILABLE_REPLY.to_owned(), "back".to_owned()]);
}

/// A SendReply naming an older, answered turn (the late answer of a request a paused replica
/// sent after another replica had answered) is dropped instead of being posted under the
/// current turn; one naming an older unanswered turn is posted under that turn.
#[tokio::test]
async fn a_late_send_reply_for_an_answered_turn_is_dropped() {
    const NEXT_TS: &str = "1700000000.000200";
    const LATER_TS: &str = "1700000000.000300";
    let f = fixture(ReplyMode::Response);
    f.handler
        .handle(&event(1, mention(ROOT_TS, None, "<@U0BOT> one")))
        .await
        .expect("turn one");
    f.handler
        .handle(&event(2, mention(NEXT_TS, Some(ROOT_TS), "<@U0BOT> two")))
        .await
        .expect("turn two");
    let conversation = f
        .store
        .conversation(&thread(ROOT_TS))
        .expect("conversation");
    let id = conversation.id.to_string();
    let replies = ReplyService::new(f.store.clone(), f.slack.clone());
    let posts = f.slack.posts().len();
    assert_eq!(
        replies
            .send_reply_to(&id, "a different, late answer to one", Some(ROOT_TS))
            .await
            .expect("send reply"),
        super::ReplyOutcome::Superseded
    );
    assert_eq!(f.slack.posts().len(), posts, "nothing posted");
    // An older turn that has no answer yet gets the reply under its own ts.
    super::ConversationStore::set_current_turn(
        f.store.as_ref(),
        conversation.id,
        &MessageTs::parse(LATER_TS).expect("ts"),
    )
    .await
    .expect("current turn");
    assert_eq!(
        replies
            .send_reply_to(&id, "a late answer", Some("1700000000.000250"))
            .await
            .expect("send reply"),
        super::ReplyOutcome::Posted
    );
    assert!(matches!(
        replies.send_reply_to(&id, "x", Some("not-a-ts")).await,
        Err(super::ReplyError::InvalidTurn(_))
    ));
}

fn alert_post(ts: &str, bot_id: &str) -> Value {
    callback(json!({
        "type": "message", "subtype": "bot_message", "channel": "C1", "channel_type": "channel",
        "bot_id": bot_id, "username": "Alertmanager", "text": "",
        "attachments": [{"title": "[FIRING:1] HighLatency", "text": "p99 over 2s",
                         "fields": [{"title": "severity", "value": "critical"}]}],
        "ts": ts,
    }))
}

#[tokio::test]
async fn an_alert_sources_post_in_a_monitored_channel_is_a_turn_from_the_bot() {
    use super::ConversationStore as _;
    use crate::slack_alerts::AlertSource;
    use crate::slack_events::BotId;

    let mut f = fixture(ReplyMode::Response);
    f.handler = f.handler.with_alert_sources(vec![AlertSource {
        bot_id: Some(BotId::new("B0ALERTS")),
        ..AlertSource::default()
    }]);
    let team = thread(ROOT_TS).team;
    let channel = thread(ROOT_TS).channel;
    // Not monitored yet: ignored, like a person's message would be.
    let outcome = f
        .handler
        .handle(&event(1, alert_post(ROOT_TS, "B0ALERTS")))
        .await;
    assert!(
        matches!(outcome, Ok(HandleOutcome::Ignored(_))),
        "{outcome:?}"
    );
    f.store
        .upsert_channel(&team, &channel, Some("ops"), true)
        .await
        .expect("monitored");
    // Another bot in the monitored channel: still ignored.
    let other = f
        .handler
        .handle(&event(2, alert_post(ROOT_TS, "B0OTHER")))
        .await;
    assert_eq!(
        other,
        Ok(HandleOutcome::Ignored("message from bot B0OTHER".into()))
    );
    assert!(f.agent.turns().is_empty());

    let outcome = f
        .handler
        .handle(&event(3, alert_post(ROOT_TS, "B0ALERTS")))
        .await;
    assert_eq!(outcome, Ok(HandleOutcome::Done));
    let flattened = "[FIRING:1] HighLatency\np99 over 2s\nseverity: critical";
    assert_eq!(
        thread_texts(&f, ROOT_TS),
        vec![
            (Sender::Bot(BotId::new("B0ALERTS")), flattened.to_owned()),
            (Sender::Agent, format!("answer to: {flattened}")),
        ]
    );
    let turns = f.agent.turns();
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].current_message, flattened);
    assert_eq!(
        turns[0].context["alert"],
        json!({"bot_id": "B0ALERTS", "app_id": null, "name": "Alertmanager"})
    );
    // The name comes from the post: users.info knows no bot ids.
    assert_eq!(turns[0].context["sender"]["name"], "Alertmanager");
    assert_eq!(turns[0].user_id, "B0ALERTS");
    // Our own bot (B0BOT, from auth.test) never starts a turn, even when listed.
    let mut own = fixture(ReplyMode::Response);
    own.handler = own.handler.with_alert_sources(vec![AlertSource {
        bot_id: Some(BotId::new("B0BOT")),
        ..AlertSource::default()
    }]);
    own.store
        .upsert_channel(&team, &channel, None, true)
        .await
        .expect("monitored");
    let outcome = own
        .handler
        .handle(&event(4, alert_post(ROOT_TS, "B0BOT")))
        .await;
    assert_eq!(
        outcome,
        Ok(HandleOutcome::Ignored("message from our own bot".into()))
    );
}
