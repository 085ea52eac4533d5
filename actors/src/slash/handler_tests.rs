//! [`SlashHandler`] over in-memory fakes: the question posted once across a lost answer,
//! a refusal that clears the posting mark, `stop`/`watch` answers and audit, `status`, and
//! optional assistant calls skipped after a missing feature.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::ports::{
    ChannelWatch, QuestionPost, SlashSlack, SlashStore, SlashStoreError, WatchChange,
};
use super::{
    ASSISTANT_STARTED_KIND, COMMAND_KIND, Ingest, SlashCommand, SlashHandler, SlashPorts,
    SuggestedPrompt, TriggerId,
};
use crate::audit::AuditEntry;
use crate::conversation::{ConversationHandler, ReplyMode, SlackApiError, ThreadMessage};
use crate::handler::{HandleOutcome, HandlerError};
use crate::health::{ActorId, ActorState, HealthRegistry};
use crate::ids::{ChannelId, MessageTs, SlackUserId, TeamId};
use crate::inbox::{InboundEvent, NewInboundEvent};
use crate::testing::{FakeAgent, FakeSlack, MemoryConversationStore, claimed_event};
use crate::{kinds, sources};

#[derive(Default)]
struct Store {
    posts: Mutex<HashMap<TriggerId, QuestionPost>>,
    watch: Mutex<ChannelWatch>,
    audits: Mutex<Vec<AuditEntry>>,
}

#[async_trait]
impl SlashStore for Store {
    async fn channel_watch(
        &self,
        _: &TeamId,
        _: &ChannelId,
    ) -> Result<ChannelWatch, SlashStoreError> {
        Ok(*self.watch.lock())
    }
    async fn set_channel_watch(
        &self,
        _: &TeamId,
        _: &ChannelId,
        watch: bool,
        audit: AuditEntry,
    ) -> Result<WatchChange, SlashStoreError> {
        let wanted = ChannelWatch {
            monitored: watch,
            stopped: !watch,
        };
        let mut current = self.watch.lock();
        if *current == wanted {
            return Ok(WatchChange::Unchanged);
        }
        *current = wanted;
        self.audits.lock().push(audit);
        Ok(WatchChange::Changed)
    }
    async fn conversations_since(
        &self,
        _: &TeamId,
        _: DateTime<Utc>,
    ) -> Result<i64, SlashStoreError> {
        Ok(7)
    }
    async fn question_post(&self, cmd: &SlashCommand) -> Result<QuestionPost, SlashStoreError> {
        Ok(self
            .posts
            .lock()
            .entry(cmd.trigger_id.clone())
            .or_insert(QuestionPost {
                posted_ts: None,
                posting_since: None,
            })
            .clone())
    }
    async fn question_posting(
        &self,
        trigger: &TriggerId,
        posting: bool,
    ) -> Result<(), SlashStoreError> {
        if let Some(p) = self.posts.lock().get_mut(trigger) {
            p.posting_since = posting.then(Utc::now);
        }
        Ok(())
    }
    async fn question_posted(
        &self,
        trigger: &TriggerId,
        ts: &MessageTs,
    ) -> Result<(), SlashStoreError> {
        if let Some(p) = self.posts.lock().get_mut(trigger) {
            p.posted_ts = Some(ts.clone());
        }
        Ok(())
    }
}

struct Slack {
    web: Arc<FakeSlack>,
    answers: Mutex<Vec<String>>,
    assistant_error: Mutex<Option<SlackApiError>>,
    assistant_calls: AtomicUsize,
    history_reads: AtomicUsize,
}

#[async_trait]
impl SlashSlack for Slack {
    async fn respond(&self, _: &str, text: &str) -> Result<(), SlackApiError> {
        self.answers.lock().push(text.to_owned());
        Ok(())
    }
    async fn post_ephemeral(
        &self,
        _: &TeamId,
        _: &ChannelId,
        _: &SlackUserId,
        text: &str,
    ) -> Result<(), SlackApiError> {
        self.answers.lock().push(text.to_owned());
        Ok(())
    }
    async fn set_suggested_prompts(
        &self,
        _: &TeamId,
        _: &ChannelId,
        _: &MessageTs,
        _: &[SuggestedPrompt],
    ) -> Result<(), SlackApiError> {
        self.assistant_calls.fetch_add(1, Ordering::SeqCst);
        self.assistant_error.lock().clone().map_or(Ok(()), Err)
    }
    async fn set_title(
        &self,
        _: &TeamId,
        _: &ChannelId,
        _: &MessageTs,
        _: &str,
    ) -> Result<(), SlackApiError> {
        self.assistant_calls.fetch_add(1, Ordering::SeqCst);
        self.assistant_error.lock().clone().map_or(Ok(()), Err)
    }
    async fn bot_messages_in_channel(
        &self,
        _: &TeamId,
        channel: &ChannelId,
        _: &MessageTs,
    ) -> Result<Vec<ThreadMessage>, SlackApiError> {
        self.history_reads.fetch_add(1, Ordering::SeqCst);
        Ok(self
            .web
            .posts()
            .into_iter()
            .filter(|p| p.channel == *channel && p.thread_ts.is_none())
            .map(|p| ThreadMessage {
                ts: p.ts,
                metadata: p.metadata,
                file_ids: Vec::new(),
            })
            .collect())
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<NewInboundEvent>>);

#[async_trait]
impl Ingest for Recorder {
    async fn ingest(&self, event: NewInboundEvent) -> Result<(), String> {
        let mut events = self.0.lock();
        if !events.iter().any(|e| e.source_id == event.source_id) {
            events.push(event);
        }
        Ok(())
    }
}

struct Harness {
    handler: SlashHandler,
    store: Arc<Store>,
    slack: Arc<Slack>,
    web: Arc<FakeSlack>,
    ingested: Arc<Recorder>,
}

fn harness(health: Option<HealthRegistry>) -> Harness {
    harness_with(health, Arc::new(crate::conversation::Alone))
}

fn harness_with(
    health: Option<HealthRegistry>,
    standing: Arc<dyn crate::conversation::Standing>,
) -> Harness {
    let web = FakeSlack::new();
    let store = Arc::new(Store::default());
    let slack = Arc::new(Slack {
        web: web.clone(),
        answers: Mutex::default(),
        assistant_error: Mutex::default(),
        assistant_calls: AtomicUsize::new(0),
        history_reads: AtomicUsize::new(0),
    });
    let conversations_store = MemoryConversationStore::new();
    let conversations = Arc::new(
        ConversationHandler::new(
            conversations_store.clone(),
            web.clone(),
            FakeAgent::new(),
            ReplyMode::SendReply,
        )
        .with_standing(standing),
    );
    let ingested = Arc::new(Recorder::default());
    let mut handler = SlashHandler::new(
        SlashPorts {
            store: store.clone(),
            slack: slack.clone(),
            web: web.clone(),
            conversation_store: conversations_store,
            ingest: ingested.clone(),
        },
        conversations,
    );
    if let Some(h) = health {
        handler = handler.with_health(h);
    }
    Harness {
        handler,
        store,
        slack,
        web,
        ingested,
    }
}

fn command(text: &str, trigger: &str) -> InboundEvent {
    let cmd = json!({
        "team_id": "T1", "channel_id": "C1", "user_id": "U1", "command": "/infragpt",
        "text": text, "trigger_id": trigger, "response_url": "https://hooks.slack.com/commands/1/2",
    });
    event(COMMAND_KIND, cmd)
}

fn event(kind: &str, payload: Value) -> InboundEvent {
    claimed_event(1, sources::SLACK, "slash:x", "T1/C1/-", kind, payload)
}

#[tokio::test]
async fn a_question_whose_answer_was_lost_is_found_in_the_channel_not_posted_again() {
    let h = harness(None);
    let ev = command("why is the api slow?", "t1");
    h.web
        .lose_answers(Some(SlackApiError::Transport("connection reset".into())));
    let first = h.handler.command(&ev).await;
    assert!(
        matches!(first, Err(HandlerError::Retryable(_))),
        "{first:?}"
    );
    assert_eq!(h.web.posts().len(), 1, "posted, answer lost");
    h.web.lose_answers(None);
    assert_eq!(
        h.handler.command(&ev).await.expect("retry"),
        HandleOutcome::Done
    );
    assert_eq!(h.web.posts().len(), 1, "found, not posted again");
    assert_eq!(h.slack.history_reads.load(Ordering::SeqCst), 1);
    let posted = &h.web.posts()[0];
    assert_eq!(posted.text, "<@U1> asked: why is the api slow?");
    let turns = h.ingested.0.lock().clone();
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].source_id, "slash:t1:turn");
    assert_eq!(turns[0].routing_key.0, format!("T1/C1/{}", posted.ts));
    // A third run (a replay of the event) changes nothing and does not read the channel.
    assert_eq!(
        h.handler.command(&ev).await.expect("again"),
        HandleOutcome::Done
    );
    assert_eq!((h.web.posts().len(), h.ingested.0.lock().len()), (1, 1));
    assert_eq!(h.slack.history_reads.load(Ordering::SeqCst), 1);
}

/// A replica whose contact with the cluster broke after the fence (paused: the command may
/// be another replica's now) does not post the question; the retry does, once.
#[tokio::test]
async fn a_question_is_not_posted_once_contact_broke_after_the_fence() {
    let contact = Arc::new(crate::testing::Contact::default());
    let h = harness_with(None, contact.clone());
    let ev = command("is prod up?", "t3");
    contact.set_broken(true);
    let refused = h.handler.command(&ev).await;
    assert!(
        matches!(refused, Err(HandlerError::Retryable(_))),
        "{refused:?}"
    );
    assert!(h.web.posts().is_empty());
    assert!(h.ingested.0.lock().is_empty());
    contact.set_broken(false);
    assert_eq!(
        h.handler.command(&ev).await.expect("retry"),
        HandleOutcome::Done
    );
    assert_eq!((h.web.posts().len(), h.ingested.0.lock().len()), (1, 1));
}

#[tokio::test]
async fn a_refused_question_clears_its_mark_and_tells_the_caller() {
    let h = harness(None);
    let ev = command("hello?", "t2");
    h.web.fail_posts(Some(SlackApiError::Api(
        "chat.postMessage: not_in_channel".into(),
    )));
    let refused = h.handler.command(&ev).await;
    assert!(
        matches!(refused, Err(HandlerError::Permanent(_))),
        "{refused:?}"
    );
    assert!(
        h.store.posts.lock()[&TriggerId("t2".into())]
            .posting_since
            .is_none()
    );
    assert!(h.slack.answers.lock()[0].contains("not in this channel"));
    assert!(h.ingested.0.lock().is_empty());
    // Invited now: the retry posts without reading the channel first.
    h.web.fail_posts(None);
    assert_eq!(
        h.handler.command(&ev).await.expect("retry"),
        HandleOutcome::Done
    );
    assert_eq!(h.web.posts().len(), 1);
    assert_eq!(h.slack.history_reads.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn stop_and_watch_change_once_and_say_so() {
    let h = harness(None);
    for (text, trigger) in [
        ("watch", "w1"),
        ("watch", "w2"),
        ("stop", "s1"),
        ("STOP", "s2"),
    ] {
        assert_eq!(
            h.handler
                .command(&command(text, trigger))
                .await
                .expect(text),
            HandleOutcome::Done
        );
    }
    let answers = h.slack.answers.lock().clone();
    assert!(answers[0].contains("now watching"), "{answers:?}");
    assert!(answers[1].contains("already watching"), "{answers:?}");
    assert!(answers[2].contains("stopped watching"), "{answers:?}");
    assert!(answers[3].contains("was not watching"), "{answers:?}");
    let audits = h.store.audits.lock().clone();
    let actions: Vec<&str> = audits.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["channel.watched", "channel.unwatched"]);
    assert_eq!(audits[0].actor, "slack/U1");
    assert_eq!(audits[0].target.as_deref(), Some("T1/C1"));
    assert!(h.web.posts().is_empty(), "answers are ephemeral");
}

#[tokio::test]
async fn status_reads_the_agent_clients_circuit() {
    let health = HealthRegistry::new();
    let h = harness(Some(health.clone()));
    h.handler
        .command(&command("status", "st1"))
        .await
        .expect("status");
    assert!(h.slack.answers.lock()[0].contains("not called yet"));
    let agent = health.register(ActorId::new(kinds::AGENT_CLIENT, "agent"), None);
    agent.set_state(ActorState::Failed);
    h.handler
        .command(&command("status", "st2"))
        .await
        .expect("status");
    let text = h.slack.answers.lock()[1].clone();
    assert!(text.contains("unreachable (circuit open)"), "{text}");
    assert!(
        text.contains("Conversations today (UTC) in this workspace: 7"),
        "{text}"
    );
    assert!(text.contains("not watched"), "{text}");
}

#[tokio::test]
async fn a_missing_assistant_feature_is_called_once_then_skipped() {
    let h = harness(None);
    let started = |ts: &str| {
        event(
            ASSISTANT_STARTED_KIND,
            json!({"type": "event_callback", "team_id": "T1", "event_id": "Ev1", "event_time": 1,
                   "event": {"type": "assistant_thread_started", "assistant_thread": {
                       "user_id": "U1", "channel_id": "D1", "thread_ts": ts}}}),
        )
    };
    *h.slack.assistant_error.lock() = Some(SlackApiError::Api(
        "assistant.threads.setSuggestedPrompts: missing_scope".into(),
    ));
    for ts in ["1700000000.000001", "1700000000.000002"] {
        assert_eq!(
            h.handler
                .assistant_started(&started(ts))
                .await
                .expect("done"),
            HandleOutcome::Done
        );
    }
    assert_eq!(
        h.slack.assistant_calls.load(Ordering::SeqCst),
        1,
        "skipped after missing_scope"
    );
    // Other failures are only logged: called every time.
    let h = harness(None);
    *h.slack.assistant_error.lock() = Some(SlackApiError::Api(
        "assistant.threads.setSuggestedPrompts: invalid_arguments".into(),
    ));
    for ts in ["1700000000.000001", "1700000000.000002"] {
        assert_eq!(
            h.handler
                .assistant_started(&started(ts))
                .await
                .expect("done"),
            HandleOutcome::Done
        );
    }
    assert_eq!(h.slack.assistant_calls.load(Ordering::SeqCst), 2);
}
