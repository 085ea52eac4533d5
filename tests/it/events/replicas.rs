//! Two replicas on one database, and a replica that dies mid-way: the event messages' rows
//! (unique per thing and channel) and their claims keep every thing at one Slack message.
//! Real PostgreSQL stores; a recording Slack so the test can lose a post's answer.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use infragpt::events::store::PgEvents;
use infragpt_actors::conversation::{MessageMetadata, NoFence, SlackApiError, ThreadMessage};
use infragpt_actors::events::normalize;
use infragpt_actors::events::{
    EventMessageKey, EventMessageStore, EventRouter, EventRule, EventSlack, RouteError,
    RouterSettings, RuleSource, RuleSpec, RuleStore, SlackTarget, SourceKind, StoreFailure,
    TriageQueue, TriageRequest, event_metadata,
};
use infragpt_actors::ids::{ChannelId, MessageTs, TeamId};
use parking_lot::Mutex;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::app::TestApp;
use crate::support::fixtures;
use crate::support::integrations::{create_org, keyring, random_key};

/// A channel that records posts; it can lose the answer of the next post (the message lands,
/// the caller sees a network failure).
#[derive(Default)]
struct RecordingSlack {
    posts: Mutex<Vec<(String, MessageMetadata)>>,
    updates: Mutex<u32>,
    lose_next_answer: Mutex<bool>,
}

#[async_trait]
impl EventSlack for RecordingSlack {
    async fn post_event(
        &self,
        _team: &TeamId,
        _channel: &ChannelId,
        _text: &str,
        _blocks: &Value,
        metadata: &MessageMetadata,
    ) -> Result<MessageTs, SlackApiError> {
        // Long enough for the other replica to try meanwhile.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let ts = {
            let mut posts = self.posts.lock();
            let ts = format!("1800000000.{:06}", posts.len() + 1);
            posts.push((ts.clone(), metadata.clone()));
            ts
        };
        if std::mem::take(&mut *self.lose_next_answer.lock()) {
            return Err(SlackApiError::Transport(
                "connection reset after sending".into(),
            ));
        }
        Ok(MessageTs::parse(ts).unwrap())
    }

    async fn update_event(
        &self,
        _team: &TeamId,
        _channel: &ChannelId,
        _ts: &MessageTs,
        _text: &str,
        _blocks: &Value,
    ) -> Result<(), SlackApiError> {
        *self.updates.lock() += 1;
        Ok(())
    }

    async fn bot_messages_in_channel(
        &self,
        _team: &TeamId,
        _channel: &ChannelId,
        _oldest: &MessageTs,
    ) -> Result<Vec<ThreadMessage>, SlackApiError> {
        Ok(self
            .posts
            .lock()
            .iter()
            .map(|(ts, m)| ThreadMessage {
                ts: MessageTs::parse(ts.as_str()).unwrap(),
                metadata: Some(m.clone()),
                file_ids: vec![],
            })
            .collect())
    }
}

struct OneRule(EventRule);

#[async_trait]
impl RuleStore for OneRule {
    async fn rules_for(&self, _: Uuid, kind: SourceKind) -> Result<Vec<EventRule>, StoreFailure> {
        Ok(if kind == SourceKind::Github {
            vec![self.0.clone()]
        } else {
            vec![]
        })
    }
}

#[derive(Default)]
struct CountingTriage(Mutex<Vec<Uuid>>);

#[async_trait]
impl TriageQueue for CountingTriage {
    async fn enqueue(
        &self,
        id: Uuid,
        _: &TeamId,
        _: &ChannelId,
        _: &MessageTs,
        _: &TriageRequest,
    ) -> Result<(), StoreFailure> {
        self.0.lock().push(id);
        Ok(())
    }
}

struct Setup {
    _app: TestApp,
    org: Uuid,
    slack: Arc<RecordingSlack>,
    triage: Arc<CountingTriage>,
    stores: [PgEvents; 2],
    rule: Arc<OneRule>,
}

async fn setup() -> Setup {
    let app = TestApp::builder().build().await;
    let org = create_org(app.pool(), "Acme").await;
    let ring = Arc::new(keyring(&[("a", &random_key())], "a"));
    let stores = [
        PgEvents::new(app.pool().clone(), ring.clone(), "replica-a"),
        PgEvents::new(app.pool().clone(), ring, "replica-b"),
    ];
    let rule = Arc::new(OneRule(EventRule {
        id: Uuid::new_v4(),
        organization_id: org,
        spec: RuleSpec {
            name: "ci".into(),
            enabled: true,
            source: RuleSource {
                kind: "github".into(),
                source_id: None,
            },
            events: vec!["workflow_run.completed/failure".into()],
            slack: SlackTarget {
                team_id: "T0SIMACME1".into(),
                channel_id: "C0OPS00001".into(),
            },
            triage: true,
            ..RuleSpec::default()
        },
    }));
    Setup {
        _app: app,
        org,
        slack: Arc::new(RecordingSlack::default()),
        triage: Arc::new(CountingTriage::default()),
        stores,
        rule,
    }
}

impl Setup {
    fn router(&self, replica: usize, settings: RouterSettings) -> EventRouter {
        EventRouter::new(
            self.rule.clone(),
            Arc::new(self.stores[replica].clone()),
            self.slack.clone(),
            self.triage.clone(),
            settings,
        )
    }
}

fn failed_run() -> infragpt_actors::events::OpsEvent {
    let mut v = fixtures::json("github-webhooks/workflow_run/completed.json");
    v["workflow_run"]["conclusion"] = json!("failure");
    normalize::github("workflow_run", &v, "d1").expect("routed")
}

#[actix_rt::test]
async fn two_replicas_routing_one_run_at_once_post_one_message() {
    let s = setup().await;
    let (a, b) = (
        s.router(0, RouterSettings::default()),
        s.router(1, RouterSettings::default()),
    );
    let event = failed_run();
    for round in 0..5 {
        // Two deliveries of one run (a redelivery with a new id reaching another replica).
        let (ra, rb) = tokio::join!(
            a.route(s.org, &event, 100 + round, &NoFence),
            b.route(s.org, &event, 101 + round, &NoFence)
        );
        let (ra, rb) = (ra.expect("a"), rb.expect("b"));
        assert_eq!(ra.matched + rb.matched, 2);
    }
    assert_eq!(s.slack.posts.lock().len(), 1, "one message for the run");
    assert_eq!(s.triage.0.lock().len(), 1, "one triage turn");
}

/// A replica whose contact with the cluster broke after it claimed the event's message (it
/// was paused: another replica may hold the event now) neither posts nor updates it; the
/// retry with its standing back posts once.
#[actix_rt::test]
async fn a_replica_whose_contact_broke_after_the_claim_posts_nothing() {
    let s = setup().await;
    let event = failed_run();
    let contact = Arc::new(infragpt_actors::testing::Contact::default());
    contact.set_broken(true);
    let paused = s
        .router(0, RouterSettings::default())
        .with_standing(contact);
    let err = paused
        .route(s.org, &event, 7, &NoFence)
        .await
        .expect_err("refused");
    assert!(matches!(err, RouteError::Fenced(_)), "{err}");
    assert!(s.slack.posts.lock().is_empty(), "nothing posted");
    s.router(1, RouterSettings::default())
        .route(s.org, &event, 7, &NoFence)
        .await
        .expect("the retry");
    assert_eq!(s.slack.posts.lock().len(), 1, "posted once");
}

#[actix_rt::test]
async fn a_post_whose_answer_was_lost_is_found_in_the_channel_not_posted_again() {
    let s = setup().await;
    let a = s.router(0, RouterSettings::default());
    let event = failed_run();
    *s.slack.lose_next_answer.lock() = true;
    let err = a
        .route(s.org, &event, 7, &NoFence)
        .await
        .expect_err("the answer was lost");
    assert!(
        matches!(err, RouteError::Slack(_)) && err.is_transient(),
        "{err}"
    );
    assert_eq!(
        s.slack.posts.lock().len(),
        1,
        "the message is in the channel"
    );
    // The event is retried, here on the other replica: it looks before posting.
    let b = s.router(1, RouterSettings::default());
    b.route(s.org, &event, 7, &NoFence).await.expect("retry");
    assert_eq!(s.slack.posts.lock().len(), 1, "not posted again");
    let key = EventMessageKey {
        team: TeamId::parse("T0SIMACME1").unwrap(),
        channel: ChannelId::parse("C0OPS00001").unwrap(),
        thing: event.thing_key.clone(),
    };
    let slot = s.stores[0].find(&key).await.unwrap().expect("row");
    assert_eq!(slot.slack_ts.unwrap().as_str(), s.slack.posts.lock()[0].0);
    assert_eq!(s.triage.0.lock().len(), 1);
}

#[actix_rt::test]
async fn a_replica_that_died_holding_the_claim_is_taken_over_after_its_lease() {
    let s = setup().await;
    let event = failed_run();
    let short = RouterSettings {
        lease: Duration::from_millis(800),
        busy_wait: Duration::from_secs(5),
        ..RouterSettings::default()
    };
    // Replica A records the message, claims it, marks the post under way, posts, and dies
    // (its claim is never released, its ts never recorded).
    let a = s.stores[0].clone();
    let key = EventMessageKey {
        team: TeamId::parse("T0SIMACME1").unwrap(),
        channel: ChannelId::parse("C0OPS00001").unwrap(),
        thing: event.thing_key.clone(),
    };
    let rendered = infragpt_actors::events::blocks::event_message(&event);
    let id = a
        .upsert(
            &key,
            &infragpt_actors::events::Desired {
                organization_id: s.org,
                rendered: rendered.clone(),
                event: serde_json::to_value(&event).ok(),
                version: 1,
                triage: None,
            },
        )
        .await
        .unwrap();
    let claim = a.claim(id, short.lease).await.unwrap().expect("claimed");
    assert!(a.mark_posting(id, claim.claim, short.lease).await.unwrap());
    s.slack
        .post_event(
            &key.team,
            &key.channel,
            &rendered.text,
            &rendered.blocks,
            &event_metadata(id),
        )
        .await
        .unwrap();
    // Replica B handles the retried event: it waits for the lease, then finds the post.
    let b = s.router(1, short);
    let report = b
        .route(s.org, &event, 1, &NoFence)
        .await
        .expect("taken over");
    assert_eq!(report.matched, 1);
    assert_eq!(
        s.slack.posts.lock().len(),
        1,
        "the dead replica's post is not repeated"
    );
    // Its claim is fenced: a late write of the dead replica's claim changes nothing.
    assert!(!a.record_shown(id, claim.claim, 99).await.unwrap());
}
