//! End to end with real payloads: the served service (`app::start`), the Slack simulator and
//! the development agent (a real tonic `AgentService`). GitHub's fixtures come from
//! octokit/webhooks, PagerDuty's from its documentation, Alertmanager's follow its documented
//! schema (`tests/data/*/README.md`).

use std::sync::Arc;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::config::Config;
use infragpt::db::schema::inbound_events;
use infragpt::events::store::{PgEvents, SourceAuth};
use infragpt::events::webhook::{sign_pagerduty, sign_sha256};
use infragpt::github::signature::sign;
use infragpt::testkit::slack_sim::{SimConfig, SimMessage};
use infragpt_actors::Secret;
use infragpt_actors::events::normalize::GITHUB_ROUTED_EVENTS;
use infragpt_actors::events::{
    LabelMatcher, MatchOp, RuleSource, RuleSpec, SlackTarget, SourceKind,
};
use infragpt_actors::inbox::EventStatus;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::app::{TestApp, VAULT_KEY};
use crate::support::fixtures;
use crate::support::integrations::{create_org, insert_integration, keyring};
use crate::support::wait::{eventually, poll};

const GH_SECRET: &str = "events-test-github-webhook-secret";
const TEAM: &str = "T0SIMACME1";
const OPS: &str = "C0OPS00001";
const INSTALLATION: i64 = 4242;
const AM_TOKEN: &str = "igs_alertmanager-test-token-0123456789";
const PD_SECRET: &str = "pagerduty-subscription-secret-0123";

struct Env {
    app: TestApp,
    events: PgEvents,
    org: Uuid,
}

async fn env(tweak: impl FnOnce(&mut Config) + 'static) -> Env {
    let app = TestApp::builder()
        .with_slack_sim(SimConfig::default())
        .with_dev_agent()
        .configure(|c| {
            c.integrations.github.webhook_secret = Some(Secret::new(GH_SECRET));
            c.events.flush_interval_ms = 100;
            // Slack's method tiers would pace the many updates of these tests for minutes.
            c.slack.throttle = false;
            c.events.digest_update_interval_ms = 300;
        })
        .configure(tweak)
        .start()
        .await;
    let pool = app.pool().clone();
    let org = create_org(&pool, "Acme").await;
    insert_integration(
        &pool,
        org,
        "github",
        "active",
        Some(&INSTALLATION.to_string()),
    )
    .await;
    let events = PgEvents::new(
        pool,
        Arc::new(keyring(&[("k1", &Secret::new(VAULT_KEY))], "k1")),
        "events-test",
    );
    Env { app, events, org }
}

fn spec(kind: &str, source_id: Option<Uuid>, events: &[&str], triage: bool) -> RuleSpec {
    RuleSpec {
        name: format!("{kind} into #ops"),
        enabled: true,
        source: RuleSource {
            kind: kind.to_owned(),
            source_id,
        },
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        slack: SlackTarget {
            team_id: TEAM.to_owned(),
            channel_id: OPS.to_owned(),
        },
        triage,
        ..RuleSpec::default()
    }
}

impl Env {
    async fn rule(&self, spec: RuleSpec) {
        spec.validate().expect("valid rule");
        self.events
            .create_rule(self.org, spec, "user/test")
            .await
            .expect("rule");
    }

    /// Top-level messages of the bot in #ops (event messages and digests).
    fn posts(&self) -> Vec<SimMessage> {
        self.app
            .sim()
            .messages_in(TEAM, OPS)
            .into_iter()
            .filter(|m| m.bot_id.is_some() && m.thread_ts.is_none())
            .collect()
    }

    /// Bot replies in the thread of `ts`.
    fn thread_replies(&self, ts: &str) -> Vec<SimMessage> {
        self.app
            .sim()
            .messages_in(TEAM, OPS)
            .into_iter()
            .filter(|m| m.bot_id.is_some() && m.thread_ts.as_deref() == Some(ts) && m.ts != ts)
            .collect()
    }

    async fn github(&self, event: &str, delivery: &str, body: &Value) -> (u16, Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        let r = self
            .app
            .http()
            .post(format!("{}/webhooks/github", self.app.base_url()))
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .header("X-Hub-Signature-256", sign(&Secret::new(GH_SECRET), &bytes))
            .header("content-type", "application/json")
            .body(bytes)
            .send()
            .await
            .expect("http");
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn post_raw(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut req = self
            .app
            .http()
            .post(format!("{}{path}", self.app.base_url()))
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let r = req.body(body).send().await.expect("http");
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn alert(&self, source: Uuid, body: &Value) -> (u16, Value) {
        self.post_raw(
            &format!("/webhooks/alertmanager/{source}"),
            &[("Authorization", format!("Bearer {AM_TOKEN}"))],
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    async fn pagerduty(&self, source: Uuid, body: &[u8]) -> (u16, Value) {
        self.post_raw(
            &format!("/webhooks/pagerduty/{source}"),
            &[(
                "X-PagerDuty-Signature",
                sign_pagerduty(&Secret::new(PD_SECRET), body),
            )],
            body.to_vec(),
        )
        .await
    }

    async fn inbox_rows(&self, source: &str) -> i64 {
        let mut conn = self.app.pool().get().await.unwrap();
        inbound_events::table
            .filter(inbound_events::source.eq(source))
            .count()
            .get_result(&mut conn)
            .await
            .unwrap()
    }

    /// The agent requests of triage turns (context `source: event`).
    fn triage_requests(&self) -> Vec<Value> {
        self.app
            .agent()
            .requests()
            .into_iter()
            .map(|r| serde_json::from_str::<Value>(&r.context).expect("context is JSON"))
            .filter(|c| c["source"] == "event")
            .collect()
    }
}

fn text_of(m: &SimMessage) -> String {
    format!(
        "{} {}",
        m.text,
        m.blocks.as_ref().map(Value::to_string).unwrap_or_default()
    )
}

/// A workflow run of the fixture, delivered by installation 4242, with this action,
/// status, conclusion and attempt.
fn workflow_run(file: &str, status: &str, conclusion: Option<&str>, attempt: i64) -> Value {
    let mut v = fixtures::json(&format!("github-webhooks/workflow_run/{file}"));
    v["installation"] = json!({ "id": INSTALLATION });
    v["workflow_run"]["status"] = json!(status);
    v["workflow_run"]["conclusion"] = json!(conclusion);
    v["workflow_run"]["run_attempt"] = json!(attempt);
    v
}

#[actix_rt::test]
async fn failed_workflow_run_posts_once_its_rerun_updates_it_and_triage_asks_the_agent_once() {
    let env = env(|_| {}).await;
    env.rule(spec(
        "github",
        None,
        &["workflow_run.completed/failure"],
        true,
    ))
    .await;
    // The fixture's run, failed (octokit's example completed with success).
    let failed = workflow_run("completed.json", "completed", Some("failure"), 1);
    let (status, answer) = env.github("workflow_run", "wr-failed-1", &failed).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (202, Some("recorded")),
        "{answer}"
    );
    let root = eventually("the failure is posted in #ops", async || {
        let posts = env.posts();
        (posts.len() == 1).then(|| posts[0].clone())
    })
    .await;
    let shown = text_of(&root);
    assert!(shown.contains("failure"), "{shown}");
    assert!(
        shown.contains("https://github.com/octo-org/octo-repo/actions/runs/289782451"),
        "the run's link: {shown}"
    );
    assert!(
        root.metadata
            .as_ref()
            .is_some_and(|m| m["event_type"] == "infragpt_event"),
        "{:?}",
        root.metadata
    );

    // Triage: the agent is asked once, with the event in the context, and answers in the thread.
    let context = eventually("the agent is asked to triage", async || {
        env.triage_requests().into_iter().next()
    })
    .await;
    assert_eq!(context["event"]["kind"], "workflow_run.completed");
    assert_eq!(context["event"]["source"], "github");
    assert_eq!(context["event"]["conclusion"], "failure");
    assert_eq!(context["event"]["repository"], "octo-org/octo-repo");
    assert!(
        context["event"]["links"][0]["url"].as_str().is_some(),
        "{context}"
    );
    assert_eq!(context["thread_ts"], root.ts.as_str());
    eventually(
        "the agent's answer is in the message's thread",
        async || !env.thread_replies(&root.ts).is_empty(),
    )
    .await;

    // A redelivery (same delivery id) is a duplicate; nothing new is posted.
    let (status, answer) = env.github("workflow_run", "wr-failed-1", &failed).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (202, Some("duplicate"))
    );

    // The re-run: requested (attempt 2), then completed with success: the same message.
    let rerun = workflow_run("requested.json", "queued", None, 2);
    let (status, _) = env
        .github("workflow_run", "wr-rerun-requested", &rerun)
        .await;
    assert_eq!(status, 202);
    eventually("the message shows the re-run", async || {
        let posts = env.posts();
        posts.len() == 1 && posts[0].updates >= 1 && text_of(&posts[0]).contains("queued")
    })
    .await;
    let green = workflow_run("completed.json", "completed", Some("success"), 2);
    let (status, _) = env
        .github("workflow_run", "wr-rerun-completed", &green)
        .await;
    assert_eq!(status, 202);
    eventually("the message shows the re-run's success", async || {
        let posts = env.posts();
        posts.len() == 1 && text_of(&posts[0]).contains("success")
    })
    .await;
    env.app.wait_idle().await;
    assert_eq!(env.posts().len(), 1, "one message for the run");
    assert_eq!(env.posts()[0].ts, root.ts, "the same message");
    assert_eq!(
        env.triage_requests().len(),
        1,
        "triage asked the agent once"
    );

    // People continue the thread as usual: a reply there is a turn of the conversation.
    let before = env.thread_replies(&root.ts).len();
    env.app
        .sim()
        .post_user_message(
            TEAM,
            OPS,
            "U0ALICE001",
            "what failed in that run?",
            Some(&root.ts),
        )
        .expect("reply in the thread");
    eventually("the agent answers the person in the thread", async || {
        env.thread_replies(&root.ts).len() > before
    })
    .await;
    let follow_up = env
        .app
        .agent()
        .requests()
        .into_iter()
        .find(|r| r.current_message.contains("what failed"))
        .expect("the follow-up reached the agent");
    assert!(
        follow_up
            .past_messages
            .iter()
            .any(|m| m.content.contains("workflow_run")),
        "the event is the thread's first message: {:?}",
        follow_up.past_messages
    );
    env.app.wait_idle().await;
    assert_eq!(
        env.app.count(EventStatus::Failed).await,
        0,
        "no dead letter"
    );
    env.app.stop().await;
}

#[actix_rt::test]
async fn every_github_fixture_is_routed_without_a_dead_letter() {
    let env = env(|c| c.events.storm_threshold = 1000).await;
    // Every event a rule can name, into #ops (no triage).
    env.rule(spec("github", None, &[], false)).await;
    let mut deliveries = 0;
    for (n, (event, file, body)) in fixtures::github_webhooks().into_iter().enumerate() {
        let mut v: Value = serde_json::from_slice(&body).unwrap();
        // The routed events come from the linked installation; the installation's own
        // lifecycle fixtures keep theirs (they would unlink it).
        if GITHUB_ROUTED_EVENTS.contains(&event.as_str()) {
            v["installation"] = json!({ "id": INSTALLATION });
        }
        let (status, answer) = env
            .github(&event, &format!("fx-{n}-{event}-{file}"), &v)
            .await;
        assert_eq!(status, 202, "{event}/{file}: {answer}");
        deliveries += 1;
    }
    assert_eq!(deliveries, 147);
    env.app.wait_idle().await;
    assert_eq!(
        env.app.count(EventStatus::Failed).await,
        0,
        "no dead letter"
    );
    let posts = env.posts();
    assert!(!posts.is_empty());
    // One message per thing: the fixtures of one run, check, PR or release share theirs.
    let mut things: Vec<String> = Vec::new();
    for (event, _, body) in fixtures::github_webhooks() {
        let v: Value = serde_json::from_slice(&body).unwrap();
        if let Some(e) = infragpt_actors::events::normalize::github(&event, &v, "x") {
            things.push(e.thing_key);
        }
    }
    things.sort();
    things.dedup();
    assert_eq!(posts.len(), things.len(), "one message per thing");
    env.app.stop().await;
}

/// 200 Alertmanager groups derived from the fixture (distinct group keys and fingerprints).
fn storm_group(n: usize) -> Value {
    let mut v = fixtures::json("alertmanager/firing.json");
    let name = format!("DiskFull{n:03}");
    v["groupKey"] = json!(format!(
        "{{}}/{{severity=\"critical\"}}:{{alertname=\"{name}\"}}"
    ));
    v["groupLabels"]["alertname"] = json!(name);
    v["commonLabels"]["alertname"] = json!(name);
    for (i, a) in v["alerts"].as_array_mut().unwrap().iter_mut().enumerate() {
        a["labels"]["alertname"] = json!(name);
        a["fingerprint"] = json!(format!("{n:08x}{i:08x}"));
    }
    v
}

#[actix_rt::test]
async fn alerts_resolve_their_message_and_a_storm_of_200_gives_one_digest() {
    let env = env(|c| c.events.storm_threshold = 10).await;
    let source = env
        .events
        .create_source(
            env.org,
            SourceKind::Alertmanager,
            "prometheus",
            SourceAuth::Bearer,
            &Secret::new(AM_TOKEN),
            "user/test",
        )
        .await
        .expect("source");
    let mut rule = spec("alertmanager", Some(source.id), &["alert.firing"], false);
    rule.matchers = vec![LabelMatcher {
        label: "severity".into(),
        op: MatchOp::Eq,
        value: "critical".into(),
    }];
    env.rule(rule).await;

    let firing = fixtures::json("alertmanager/firing.json");
    let (status, answer) = env.alert(source.id, &firing).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (202, Some("recorded")),
        "{answer}"
    );
    let first = eventually("the firing alert is posted", async || {
        let posts = env.posts();
        (posts.len() == 1).then(|| posts[0].clone())
    })
    .await;
    assert!(text_of(&first).contains("firing"), "{}", text_of(&first));
    // Alertmanager repeats the notification: the same group, status and alerts.
    let (_, answer) = env.alert(source.id, &firing).await;
    assert_eq!(answer["status"], "duplicate");
    // Resolved: the firing message is updated, nothing new is posted (the rule names
    // alert.firing only: an update of a posted group goes through all the same).
    let (status, _) = env
        .alert(source.id, &fixtures::json("alertmanager/resolved.json"))
        .await;
    assert_eq!(status, 202);
    eventually("the firing message shows resolved", async || {
        let posts = env.posts();
        posts.len() == 1 && posts[0].ts == first.ts && text_of(&posts[0]).contains("resolved")
    })
    .await;

    // The storm: 200 groups within the rule's minute. The window opened with the first
    // alert, so 9 more get their own message and 191 go into one digest.
    for n in 0..200 {
        let (status, answer) = env.alert(source.id, &storm_group(n)).await;
        assert_eq!(status, 202, "{n}: {answer}");
    }
    env.app.wait_idle().await;
    let digest = eventually("the digest counts the storm", async || {
        let posts = env.posts();
        let digests: Vec<SimMessage> = posts
            .iter()
            .filter(|m| m.text.contains("Event storm"))
            .cloned()
            .collect();
        (digests.len() == 1 && digests[0].text.contains("191 more events"))
            .then(|| digests[0].clone())
            .ok_or_else(|| posts.iter().map(|m| m.text.clone()).collect::<Vec<_>>())
    })
    .await;
    let posts = env.posts();
    assert_eq!(
        posts.len(),
        10 + 1,
        "the threshold's messages and one digest"
    );
    assert!(
        digest.updates <= 200,
        "the digest is updated, not posted again ({} updates)",
        digest.updates
    );
    assert_eq!(
        env.app.count(EventStatus::Failed).await,
        0,
        "no dead letter"
    );
    let metrics = env.app.metrics_text().await;
    assert!(
        metrics.contains("infragpt_events_digested_total{source=\"alertmanager\"} 191"),
        "{metrics}"
    );
    assert!(
        metrics.contains("infragpt_events_posted_total{source=\"alertmanager\"} 10"),
        "{metrics}"
    );
    env.app.stop().await;
}

#[actix_rt::test]
async fn pagerduty_incident_lifecycle_is_one_message() {
    let env = env(|_| {}).await;
    let source = env
        .events
        .create_source(
            env.org,
            SourceKind::Pagerduty,
            "pd",
            SourceAuth::Hmac,
            &Secret::new(PD_SECRET),
            "user/test",
        )
        .await
        .expect("source");
    env.rule(spec("pagerduty", None, &["incident.triggered"], false))
        .await;
    let triggered = fixtures::read("pagerduty/incident.triggered.json");
    let (status, answer) = env.pagerduty(source.id, &triggered).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (202, Some("recorded")),
        "{answer}"
    );
    let root = eventually("the incident is posted", async || {
        let posts = env.posts();
        (posts.len() == 1).then(|| posts[0].clone())
    })
    .await;
    assert!(text_of(&root).contains("A little bump in the road"));
    for (file, shows) in [
        ("incident.acknowledged.json", "acknowledged"),
        (
            "incident.annotated.json",
            "I sure am glad we are using PagerDuty!",
        ),
        ("incident.resolved.json", "resolved"),
    ] {
        let (status, _) = env
            .pagerduty(source.id, &fixtures::read(&format!("pagerduty/{file}")))
            .await;
        assert_eq!(status, 202, "{file}");
        eventually(format!("the message shows {shows}"), async || {
            let posts = env.posts();
            posts.len() == 1 && text_of(&posts[0]).contains(shows)
        })
        .await;
    }
    // A redelivery of the trigger is a duplicate; a service event is recorded and ignored.
    let (_, answer) = env.pagerduty(source.id, &triggered).await;
    assert_eq!(answer["status"], "duplicate");
    let (status, _) = env
        .pagerduty(source.id, &fixtures::read("pagerduty/service.updated.json"))
        .await;
    assert_eq!(status, 202);
    env.app.wait_idle().await;
    let posts = env.posts();
    assert_eq!(posts.len(), 1);
    assert!(
        text_of(&posts[0]).contains("resolved"),
        "{}",
        text_of(&posts[0])
    );
    assert_eq!(env.app.count(EventStatus::Failed).await, 0);
    env.app.stop().await;
}

/// A webhook request and the status it must get: path, headers, body, status.
type Case = (String, Vec<(&'static str, String)>, Vec<u8>, u16);

#[actix_rt::test]
async fn bad_credentials_get_401_unknown_sources_404_and_nothing_is_stored() {
    let env = env(|_| {}).await;
    let am = env
        .events
        .create_source(
            env.org,
            SourceKind::Alertmanager,
            "prom",
            SourceAuth::Bearer,
            &Secret::new(AM_TOKEN),
            "user/test",
        )
        .await
        .unwrap();
    let am_hmac = env
        .events
        .create_source(
            env.org,
            SourceKind::Alertmanager,
            "relay",
            SourceAuth::Hmac,
            &Secret::new(AM_TOKEN),
            "user/test",
        )
        .await
        .unwrap();
    let pd = env
        .events
        .create_source(
            env.org,
            SourceKind::Pagerduty,
            "pd",
            SourceAuth::Hmac,
            &Secret::new(PD_SECRET),
            "user/test",
        )
        .await
        .unwrap();
    let body = fixtures::read("alertmanager/firing.json");
    let pd_body = fixtures::read("pagerduty/incident.triggered.json");
    let am_path = format!("/webhooks/alertmanager/{}", am.id);
    let cases: Vec<Case> = vec![
        (am_path.clone(), vec![], body.clone(), 401),
        (
            am_path.clone(),
            vec![("Authorization", "Bearer wrong-token".into())],
            body.clone(),
            401,
        ),
        (
            am_path.clone(),
            vec![("Authorization", format!("Basic {AM_TOKEN}"))],
            body.clone(),
            401,
        ),
        (
            format!("/webhooks/alertmanager/{}", am_hmac.id),
            vec![(
                "X-InfraGPT-Signature",
                sign_sha256(&Secret::new("other-secret-0123456"), &body),
            )],
            body.clone(),
            401,
        ),
        (
            format!("/webhooks/alertmanager/{}", am_hmac.id),
            vec![("X-InfraGPT-Signature", "sha256=xyz".into())],
            body.clone(),
            401,
        ),
        (
            format!("/webhooks/pagerduty/{}", pd.id),
            vec![],
            pd_body.clone(),
            401,
        ),
        (
            format!("/webhooks/pagerduty/{}", pd.id),
            vec![(
                "X-PagerDuty-Signature",
                sign_pagerduty(&Secret::new("not-the-secret-01234"), &pd_body),
            )],
            pd_body.clone(),
            401,
        ),
        (
            format!("/webhooks/alertmanager/{}", Uuid::new_v4()),
            vec![("Authorization", format!("Bearer {AM_TOKEN}"))],
            body.clone(),
            404,
        ),
        (
            "/webhooks/alertmanager/not-a-uuid".into(),
            vec![("Authorization", format!("Bearer {AM_TOKEN}"))],
            body.clone(),
            404,
        ),
        // A PagerDuty source is not an Alertmanager one.
        (
            format!("/webhooks/alertmanager/{}", pd.id),
            vec![("Authorization", format!("Bearer {PD_SECRET}"))],
            body.clone(),
            404,
        ),
        (
            format!("/webhooks/pagerduty/{}", Uuid::new_v4()),
            vec![(
                "X-PagerDuty-Signature",
                sign_pagerduty(&Secret::new(PD_SECRET), &pd_body),
            )],
            pd_body.clone(),
            404,
        ),
    ];
    for (path, headers, body, expect) in cases {
        let (status, answer) = env.post_raw(&path, &headers, body).await;
        assert_eq!(status, expect, "{path} {headers:?}: {answer}");
        assert!(
            answer["error"]["code"].is_string(),
            "one error shape: {answer}"
        );
    }
    assert_eq!(env.inbox_rows("alertmanager").await, 0, "nothing stored");
    assert_eq!(env.inbox_rows("pagerduty").await, 0, "nothing stored");
    // The right credentials are accepted; a deleted source answers 404.
    let (status, _) = env
        .post_raw(
            &format!("/webhooks/alertmanager/{}", am_hmac.id),
            &[(
                "X-InfraGPT-Signature",
                sign_sha256(&Secret::new(AM_TOKEN), &body),
            )],
            body.clone(),
        )
        .await;
    assert_eq!(status, 202);
    let (status, _) = env.pagerduty(pd.id, &pd_body).await;
    assert_eq!(status, 202);
    assert!(
        env.events
            .delete_source(env.org, am.id, "user/test")
            .await
            .unwrap()
    );
    let (status, _) = env
        .alert(am.id, &fixtures::json("alertmanager/firing.json"))
        .await;
    assert_eq!(status, 404);
    assert_eq!(env.inbox_rows("alertmanager").await, 1);
    assert_eq!(env.inbox_rows("pagerduty").await, 1);
    // No rule: recorded, nothing posted.
    env.app.wait_idle().await;
    assert!(env.posts().is_empty());
    let quiet = poll(std::time::Duration::from_millis(300), async || {
        !env.posts().is_empty()
    })
    .await;
    assert!(quiet.is_err(), "nothing is posted without a rule");
    env.app.stop().await;
}

#[actix_rt::test]
async fn a_source_over_its_rate_limit_gets_429_and_nothing_more_is_stored() {
    let env = env(|c| {
        c.webhooks.rate_limits.sources.per_second = 0.001;
        c.webhooks.rate_limits.sources.burst = 2;
    })
    .await;
    let source = env
        .events
        .create_source(
            env.org,
            SourceKind::Alertmanager,
            "prom",
            SourceAuth::Bearer,
            &Secret::new(AM_TOKEN),
            "user/test",
        )
        .await
        .unwrap();
    for n in 0..2 {
        let (status, answer) = env.alert(source.id, &storm_group(n)).await;
        assert_eq!(status, 202, "{answer}");
    }
    let r = env
        .app
        .http()
        .post(format!(
            "{}/webhooks/alertmanager/{}",
            env.app.base_url(),
            source.id
        ))
        .header("content-type", "application/json")
        .header("Authorization", format!("Bearer {AM_TOKEN}"))
        .body(serde_json::to_vec(&storm_group(2)).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(
        env.inbox_rows("alertmanager").await,
        2,
        "the refused one is not stored"
    );
    env.app.stop().await;
}
