//! The Slack Web API adapter against the simulator and real PostgreSQL: rate limits,
//! inactive workspaces, caches, the single-workspace token.

use std::sync::Arc;
use std::time::Duration;

use infragpt::config::SlackConfig;
use infragpt::slack::transport::SlackModule;
use infragpt::slack::web::{SlackWeb, WebSettings, web_client};
use infragpt::slack::workspaces::{PgWorkspaces, StaticTokens, WorkspaceStatus};
use infragpt::testkit::slack_sim::{SimConfig, SlackSim};
use infragpt::testkit::test_db::TestDb;
use infragpt_actors::conversation::{SlackApi, SlackApiError};
use infragpt_actors::ids::{ChannelId, MessageTs, SlackUserId, TeamId};

const ACME: &str = "T0SIMACME1";
const GLOBEX: &str = "T0SIMGLOB1";
const GENERAL: &str = "C0GENERAL1";
const ALICE: &str = "U0ALICE001";

fn team(id: &str) -> TeamId {
    TeamId::parse(id).unwrap()
}

fn fast() -> WebSettings {
    WebSettings {
        retry_base: Duration::from_millis(10),
        ..WebSettings::default()
    }
}

fn sim() -> SlackSim {
    SlackSim::start(SimConfig::default().with_echo_bot_messages(false)).unwrap()
}

/// An adapter with both simulator teams' tokens and the workspaces table.
fn web_for(sim: &SlackSim, db: &TestDb, settings: WebSettings) -> SlackWeb {
    let cfg = sim.config();
    let tokens = cfg.teams.iter().fold(StaticTokens::new(), |t, team_cfg| {
        t.with(team(&team_cfg.id), team_cfg.bot_token.clone())
    });
    let client = Arc::new(web_client(&sim.base_url(), &settings).unwrap());
    SlackWeb::new(client, Arc::new(tokens), settings)
        .with_directory(Arc::new(PgWorkspaces::new(db.pool().clone())))
}

#[tokio::test]
async fn post_message_waits_out_a_429_and_is_delivered() {
    let db = TestDb::new().await;
    let sim = sim();
    let web = web_for(&sim, &db, fast());
    sim.inject_rate_limit("chat.postMessage", 1, 1);
    let parent = MessageTs::parse("1700000000.000100").unwrap();
    let ts = web
        .post_message(
            &team(ACME),
            &ChannelId::parse(GENERAL).unwrap(),
            Some(&parent),
            "hello *world*",
            None,
        )
        .await
        .expect("delivered after Retry-After");
    let calls = sim.calls("chat.postMessage");
    assert_eq!(calls.len(), 2, "one 429, one retry: {calls:?}");
    assert_eq!(calls[0].status, 429);
    assert_eq!(calls[1].status, 200);
    assert_eq!(calls[1].params["thread_ts"], "1700000000.000100");
    let msgs = sim.messages_in(ACME, GENERAL);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].ts, ts.as_str());
    assert_eq!(msgs[0].text, "hello *world*");
    assert_eq!(msgs[0].thread_ts.as_deref(), Some("1700000000.000100"));
}

#[tokio::test]
async fn rate_limited_beyond_the_retries_is_reported() {
    let db = TestDb::new().await;
    let sim = sim();
    let settings = WebSettings {
        rate_limit_retries: 1,
        ..fast()
    };
    let web = web_for(&sim, &db, settings);
    sim.inject_rate_limit("chat.postMessage", 5, 1);
    let err = web
        .post_message(
            &team(ACME),
            &ChannelId::parse(GENERAL).unwrap(),
            None,
            "x",
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err,
        SlackApiError::RateLimited {
            retry_after: Duration::from_secs(1)
        }
    );
    assert_eq!(sim.calls("chat.postMessage").len(), 2);
    assert!(sim.messages_in(ACME, GENERAL).is_empty());
}

#[tokio::test]
async fn invalid_auth_marks_the_workspace_inactive() {
    let db = TestDb::new().await;
    let sim = sim();
    let web = web_for(&sim, &db, fast());
    // Known and active first.
    let id = web.bot_identity(&team(ACME)).await.unwrap();
    assert_eq!(id.user_id.as_str(), "U0ACMEBOT1");
    sim.set_invalid_auth(ACME, true);
    let err = web
        .post_message(
            &team(ACME),
            &ChannelId::parse(GENERAL).unwrap(),
            None,
            "x",
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err,
        SlackApiError::WorkspaceInactive {
            team: team(ACME),
            error: "invalid_auth".into()
        }
    );
    let row = PgWorkspaces::new(db.pool().clone())
        .get(&team(ACME))
        .await
        .unwrap()
        .expect("row");
    assert_eq!(row.status, "inactive");
    assert_eq!(row.status_reason.as_deref(), Some("invalid_auth"));
    let state = web.board().get(&team(ACME)).expect("on the board");
    assert_eq!(state.status, WorkspaceStatus::Inactive);
    assert_eq!(state.reason.as_deref(), Some("invalid_auth"));
    // The other workspace is untouched.
    web.post_message(
        &team(GLOBEX),
        &ChannelId::parse("C0GLOBGEN1").unwrap(),
        None,
        "ok",
        None,
    )
    .await
    .unwrap();
    // A revoked token is inactive too (identity cache was dropped for the team).
    sim.set_invalid_auth(ACME, false);
    let token = sim.team(ACME).unwrap().bot_token;
    assert!(sim.revoke_token(token.expose()));
    let err = web.bot_identity(&team(ACME)).await.unwrap_err();
    assert!(
        matches!(&err, SlackApiError::WorkspaceInactive { error, .. } if error == "token_revoked"),
        "{err:?}"
    );
}

#[tokio::test]
async fn users_info_and_auth_test_are_cached() {
    let db = TestDb::new().await;
    let sim = sim();
    let web = web_for(&sim, &db, fast());
    let alice = SlackUserId::parse(ALICE).unwrap();
    let p1 = web.user_profile(&team(ACME), &alice).await.unwrap();
    let p2 = web.user_profile(&team(ACME), &alice).await.unwrap();
    assert_eq!(p1, p2);
    assert_eq!(p1.name.as_deref(), Some("alice"));
    assert_eq!(p1.username.as_deref(), Some("alice"));
    assert_eq!(p1.email.as_deref(), Some("alice@acme.example"));
    assert_eq!(sim.calls("users.info").len(), 1);
    web.bot_identity(&team(ACME)).await.unwrap();
    web.bot_identity(&team(ACME)).await.unwrap();
    assert_eq!(sim.calls("auth.test").len(), 1);

    // With a zero TTL every lookup asks Slack.
    let uncached = web_for(
        &sim,
        &db,
        WebSettings {
            user_cache_ttl: Duration::ZERO,
            ..fast()
        },
    );
    uncached.user_profile(&team(ACME), &alice).await.unwrap();
    uncached.user_profile(&team(ACME), &alice).await.unwrap();
    assert_eq!(sim.calls("users.info").len(), 3);
    let unknown = web
        .user_profile(&team(ACME), &SlackUserId::parse("U0NOBODY01").unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        unknown,
        SlackApiError::Api("users.info: user_not_found".into())
    );
}

/// Under the throttle a workspace adds reactions at Tier 3's rate after a burst of 20; one
/// beyond it is refused at once, unsent, instead of waiting in the background for minutes.
/// Without the throttle (benchmarks, simulators) every one is sent.
#[tokio::test]
async fn reactions_beyond_the_workspaces_rate_are_refused_at_once() {
    let db = TestDb::new().await;
    for throttle in [true, false] {
        let sim = sim();
        let web = web_for(&sim, &db, WebSettings { throttle, ..fast() });
        let general = ChannelId::parse(GENERAL).unwrap();
        let mut refused = Vec::new();
        let started = std::time::Instant::now();
        for i in 0..25 {
            let ts = sim
                .post_user_message(ACME, GENERAL, ALICE, &format!("m{i}"), None)
                .unwrap();
            let ts = MessageTs::parse(ts).unwrap();
            if let Err(e) = web.add_reaction(&team(ACME), &general, &ts, "eyes").await {
                refused.push(e);
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nothing waited"
        );
        let sent = sim.calls("reactions.add").len();
        if throttle {
            assert_eq!(sent, 20, "the burst");
            assert_eq!(refused.len(), 5, "{refused:?}");
            assert!(
                refused
                    .iter()
                    .all(|e| matches!(e, SlackApiError::RateLimited { retry_after }
                        if *retry_after <= Duration::from_millis(1_200))),
                "{refused:?}"
            );
            // Another workspace has its own.
            let ts = sim
                .post_user_message(GLOBEX, "C0GLOBGEN1", "U0CAROL001", "hi", None)
                .unwrap();
            web.add_reaction(
                &team(GLOBEX),
                &ChannelId::parse("C0GLOBGEN1").unwrap(),
                &MessageTs::parse(ts).unwrap(),
                "eyes",
            )
            .await
            .unwrap();
        } else {
            assert_eq!(sent, 25);
            assert!(refused.is_empty(), "{refused:?}");
        }
    }
}

#[tokio::test]
async fn reactions_and_channel_names() {
    let db = TestDb::new().await;
    let sim = sim();
    let web = web_for(&sim, &db, fast());
    let ts = sim
        .post_user_message(ACME, GENERAL, ALICE, "hi", None)
        .unwrap();
    let ts = MessageTs::parse(ts).unwrap();
    let general = ChannelId::parse(GENERAL).unwrap();
    web.add_reaction(&team(ACME), &general, &ts, "eyes")
        .await
        .unwrap();
    // Slack answers already_reacted the second time: still success.
    web.add_reaction(&team(ACME), &general, &ts, "eyes")
        .await
        .unwrap();
    let calls = sim.calls("reactions.add");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].error.as_deref(), Some("already_reacted"));
    let msg = &sim.messages_in(ACME, GENERAL)[0];
    assert_eq!(msg.reactions["eyes"], vec!["U0ACMEBOT1".to_owned()]);
    assert_eq!(
        web.channel_name(&team(ACME), &ChannelId::parse("C0OPS00001").unwrap())
            .await
            .unwrap()
            .as_deref(),
        Some("ops")
    );
    let missing = web
        .add_reaction(
            &team(ACME),
            &general,
            &MessageTs::parse("1.000001").unwrap(),
            "eyes",
        )
        .await
        .unwrap_err();
    assert_eq!(
        missing,
        SlackApiError::Api("reactions.add: message_not_found".into())
    );
    // No token for a team: unknown workspace, nothing sent.
    let before = sim.with_state(|st| st.all_calls().len());
    assert_eq!(
        web.bot_identity(&team("T0NOWHERE1")).await.unwrap_err(),
        SlackApiError::UnknownWorkspace(team("T0NOWHERE1"))
    );
    assert_eq!(sim.with_state(|st| st.all_calls().len()), before);
}

#[tokio::test]
async fn config_bot_token_serves_the_team_auth_test_reports() {
    let db = TestDb::new().await;
    let sim = sim();
    let cfg = SlackConfig {
        bot_token: Some(sim.team(ACME).unwrap().bot_token),
        api_url: sim.base_url(),
        ..SlackConfig::default()
    };
    let web = SlackModule::build_web_with(&cfg, Some(db.pool().clone()), None, fast()).unwrap();
    let id = web.bot_identity(&team(ACME)).await.unwrap();
    assert_eq!(id.user_id.as_str(), "U0ACMEBOT1");
    assert_eq!(id.team_name.as_deref(), Some("Acme"));
    assert_eq!(
        web.bot_identity(&team(GLOBEX)).await.unwrap_err(),
        SlackApiError::UnknownWorkspace(team(GLOBEX))
    );
    let row = PgWorkspaces::new(db.pool().clone())
        .get(&team(ACME))
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(row.token_ref.as_deref(), Some("config"));
    assert_eq!(row.status, "active");
    assert_eq!(row.bot_user_id.as_deref(), Some("U0ACMEBOT1"));
    assert_eq!(row.team_name.as_deref(), Some("Acme"));
    // One auth.test to resolve the token's team, one for the identity; none after.
    web.bot_identity(&team(ACME)).await.unwrap();
    web.bot_identity(&team(GLOBEX)).await.unwrap_err();
    assert_eq!(sim.calls("auth.test").len(), 2);
}

/// A write made for a claim this process may have lost (its standing broke since the claim)
/// never leaves the adapter: the contact breaks after the caller's own check, and the adapter's
/// gate, asked before the request, refuses it; no request reaches Slack. With the standing
/// intact it posts.
#[tokio::test]
async fn a_gated_write_is_not_sent_once_the_standing_broke() {
    let db = TestDb::new().await;
    let sim = sim();
    let web = web_for(&sim, &db, fast());
    let contact = Arc::new(infragpt_actors::testing::Contact::default());
    let standing: Arc<dyn infragpt_actors::conversation::Standing> = contact.clone();
    let (acme, general) = (team(ACME), ChannelId::parse(GENERAL).unwrap());
    let post = || web.post_message(&acme, &general, None, "once", None);
    let write = || {
        infragpt_actors::conversation::fenced_write(&standing, std::time::Instant::now(), post())
    };
    // In contact for the caller's check, lost by the time the adapter asks.
    contact.break_after(1);
    let refused = write().await.expect("the caller's check passes");
    assert!(
        matches!(&refused, Err(SlackApiError::NotSent(_))),
        "{refused:?}"
    );
    assert!(!refused.unwrap_err().may_have_taken_effect());
    assert!(sim.calls("chat.postMessage").is_empty());
    // Lost before the caller's check: refused there.
    contact.set_broken(true);
    assert!(write().await.is_err());
    assert!(sim.calls("chat.postMessage").is_empty());
    contact.set_broken(false);
    write().await.expect("in contact").expect("posted");
    assert_eq!(sim.messages_in(ACME, GENERAL).len(), 1);
}

/// `chat.delete` is done once the message is gone: a second delete of it (as when the
/// adapter repeats a delete whose answer was lost) finds it gone and succeeds; a message
/// that is not ours is still refused.
#[tokio::test]
async fn deleting_a_message_that_is_gone_already_succeeds() {
    let db = TestDb::new().await;
    let sim = sim();
    let web = web_for(&sim, &db, fast());
    let channel = ChannelId::parse(GENERAL).unwrap();
    let ts = web
        .post_message(&team(ACME), &channel, None, "a duplicate", None)
        .await
        .expect("posted");
    web.delete_message(&team(ACME), &channel, &ts)
        .await
        .expect("deleted");
    web.delete_message(&team(ACME), &channel, &ts)
        .await
        .expect("gone already: done");
    let calls = sim.calls("chat.delete");
    assert_eq!(calls.len(), 2, "{calls:?}");
    let theirs = sim
        .post_user_message(ACME, GENERAL, ALICE, "from a person", None)
        .unwrap();
    let refused = web
        .delete_message(&team(ACME), &channel, &MessageTs::parse(&theirs).unwrap())
        .await;
    assert!(
        matches!(&refused, Err(SlackApiError::Api(e)) if e.contains("cant_delete_message")),
        "{refused:?}"
    );
}
