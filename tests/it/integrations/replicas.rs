//! Credential refreshes across replicas: several independent service stacks (each its own
//! pool, actor core, vault registry and Slack adapter) on one database. An expiring rotated
//! Slack token and a GitHub installation token are refreshed once per expiry however many
//! replicas ask at once; a lock holder that dies or hangs blocks the others only up to the
//! bound; a Slack token refused because another replica replaced it does not make the
//! workspace inactive.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{App, middleware::from_fn, test};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::app::Core;
use infragpt::app::integrations::IntegrationParts;
use infragpt::config::Config;
use infragpt::crypto::vault::KeyRing;
use infragpt::db::schema::slack_workspaces;
use infragpt::db::{Database, Pool, build_pool};
use infragpt::integrations::connector::{ConnectorRegistry, IssuedCredential};
use infragpt::integrations::credentials::PgCredentials;
use infragpt::integrations::refresh_lock::{LockBounds, RefreshLock};
use infragpt::integrations::store::IntegrationStore;
use infragpt::integrations::vault::{
    CredentialError, CredentialStore, VaultDeps, VaultRegistry, VaultTuning,
};
use infragpt::slack::integration::VaultSlackTokens;
use infragpt::slack::transport::SlackModule;
use infragpt::slack::web::SlackWeb;
use infragpt::testkit::slack_sim::{SimConfig, SlackSim};
use infragpt::testkit::test_db::TestDb;
use infragpt_actors::conversation::{SlackApi, SlackApiError};
use infragpt_actors::ids::{ChannelId, TeamId};
use infragpt_actors::{HealthRegistry, Secret};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::integrations::*;

const TEAM: &str = "T0SIMACME1";
const GENERAL: &str = "C0GENERAL1";
const INSTALLATION: i64 = 4242;
const REPLICAS: usize = 3;
/// Requests for the credential each replica makes at once in a round.
const PER_REPLICA: usize = 4;

/// One service stack: its own pool, actor core, integrations (vault registry) and, with
/// Slack, its own Web API adapter over the vault-backed token source.
struct Replica {
    _core: Core,
    parts: IntegrationParts,
    web: Arc<SlackWeb>,
}

async fn replicas(db: &TestDb, config: &Config, keyring: &Arc<KeyRing>) -> Vec<Replica> {
    let timeout = Duration::from_secs(5);
    (0..REPLICAS)
        .map(|_| {
            let pool = build_pool(&db.url, 6, timeout).expect("replica pool");
            let database = Database::from_pool(pool.clone(), db.url.clone(), timeout);
            let core = Core::start(config, &database).expect("replica core");
            let parts = IntegrationParts::build(
                pool.clone(),
                config,
                &core.cluster,
                keyring.clone(),
                &Secret::new("s".repeat(40)),
                None,
            )
            .expect("replica integrations");
            let tokens = Arc::new(VaultSlackTokens::new(
                parts.service.store.clone(),
                parts.service.vaults.clone(),
            ));
            let web = SlackModule::build_web(&config.slack, Some(pool), Some(tokens))
                .expect("replica slack adapter");
            Replica {
                _core: core,
                parts,
                web,
            }
        })
        .collect()
}

fn slack_config(sim: &SlackSim) -> Config {
    let app = &sim.config().apps[0];
    let mut config = Config::default();
    config.slack.api_url = sim.base_url();
    // Against one simulated workspace the throttle would only slow the test down.
    config.slack.throttle = false;
    let s = &mut config.integrations.slack;
    s.client_id = Some(app.client_id.clone());
    s.client_secret = Some(app.client_secret.clone());
    s.redirect_url = Some("https://app.example/slack/oauth/callback".to_owned());
    config
}

fn github_config(mock: &GithubMock) -> Config {
    let mut config = Config::default();
    let gh = &mut config.integrations.github;
    gh.app_id = Some(12345);
    gh.app_slug = Some("infragpt-test".to_owned());
    gh.private_key = Some(test_private_key());
    gh.api_url = mock.url.clone();
    config
}

/// Installs the Slack app for [`TEAM`] through `parts`' routes (the OAuth callback): returns
/// the organization and the integration.
async fn install_slack(parts: &IntegrationParts, sim: &SlackSim, pool: &Pool) -> (Uuid, Uuid) {
    let app = test::init_service(
        App::new()
            .wrap(from_fn(test_auth))
            .configure(|c| parts.configure(c)),
    )
    .await;
    let org = create_org(pool, "acme").await;
    let resp = test::call_service(
        &app,
        test::TestRequest::post()
            .uri("/integrations")
            .insert_header((ORG_HEADER, org.to_string()))
            .insert_header((USER_HEADER, "user_alice"))
            .set_json(json!({"connector_type": "slack"}))
            .to_request(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 201);
    let initiated: Value = test::read_body_json(resp).await;
    let state = url::Url::parse(initiated["url"].as_str().unwrap())
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let code = sim.issue_oauth_code(TEAM, "U0ALICE001").unwrap();
    let resp = test::call_service(
        &app,
        test::TestRequest::get()
            .uri(&format!("/slack/oauth/callback?code={code}&state={state}"))
            .to_request(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let id = initiated["integration_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (org, id)
}

/// `oauth.v2.access` calls with the refresh-token grant, and how many of them failed.
fn slack_refreshes(sim: &SlackSim) -> (usize, usize) {
    let calls: Vec<_> = sim
        .calls("oauth.v2.access")
        .into_iter()
        .filter(|c| c.params["grant_type"] == "refresh_token")
        .collect();
    let failed = calls.iter().filter(|c| c.error.is_some()).count();
    (calls.len(), failed)
}

async fn workspace_status(pool: &Pool) -> (String, Option<String>) {
    let mut conn = pool.get().await.unwrap();
    slack_workspaces::table
        .find(TEAM)
        .select((slack_workspaces::status, slack_workspaces::status_reason))
        .first(&mut conn)
        .await
        .unwrap()
}

/// Every replica asks for the credential [`PER_REPLICA`] times at once; all answers must be
/// the same token, which is returned.
async fn round(replicas: &[Replica], org: Uuid, id: Uuid) -> String {
    let asks = replicas
        .iter()
        .flat_map(|r| (0..PER_REPLICA).map(move |_| r.parts.service.vaults.credential(org, id)));
    let served: Vec<String> = futures::future::join_all(asks)
        .await
        .into_iter()
        .map(|r| r.expect("credential served").expose().to_owned())
        .collect();
    assert!(
        served.iter().all(|t| *t == served[0]),
        "every replica serves the same token"
    );
    served[0].clone()
}

#[actix_rt::test]
async fn three_replicas_refresh_a_rotated_slack_token_once_per_expiry() {
    let logs = infragpt::telemetry::capture();
    // Rotated tokens live six seconds: due for a refresh after three (half their life).
    let sim =
        SlackSim::start(SimConfig::default().with_token_rotation(Duration::from_secs(6))).unwrap();
    let db = TestDb::new().await;
    let config = slack_config(&sim);
    let keyring = Arc::new(keyring(&[("a", &random_key())], "a"));
    let replicas = replicas(&db, &config, &keyring).await;
    let (org, id) = install_slack(&replicas[0].parts, &sim, db.pool()).await;
    let team = TeamId::parse(TEAM).unwrap();
    let general = ChannelId::parse(GENERAL).unwrap();

    let mut seen = Vec::new();
    for expiry in 1..=3 {
        tokio::time::sleep(Duration::from_millis(3300)).await;
        // The credential from every replica at once, and a message through each replica's
        // Slack adapter (its own token source and cache) in the same moment.
        let posts = replicas.iter().map(|r| {
            let (team, general) = (team.clone(), general.clone());
            async move {
                r.web
                    .post_message(&team, &general, None, &format!("expiry {expiry}"), None)
                    .await
            }
        });
        let (token, posted) =
            futures::future::join(round(&replicas, org, id), futures::future::join_all(posts))
                .await;
        for p in posted {
            p.expect("posted with a working token");
        }
        assert_eq!(
            slack_refreshes(&sim),
            (expiry, 0),
            "one refresh per expiry, none refused"
        );
        assert!(!seen.contains(&token), "a new token after each expiry");
        seen.push(token);
    }
    // The token all three serve is the one Slack accepts.
    let validation = replicas[2]
        .parts
        .service
        .connectors
        .get("slack")
        .unwrap()
        .validate(
            &replicas[2]
                .parts
                .service
                .store
                .get(org, id)
                .await
                .unwrap()
                .unwrap(),
            &Secret::new(seen.last().unwrap().as_str()),
        )
        .await
        .unwrap();
    assert!(validation.valid, "{:?}", validation.detail);
    assert_eq!(workspace_status(db.pool()).await.0, "active");
    for r in &replicas {
        assert!(
            r.web
                .board()
                .snapshot()
                .iter()
                .all(|w| w.status.as_str() == "active")
        );
    }
    let text = logs.contents();
    for token in &seen {
        assert!(
            !text.contains(token.as_str()),
            "a token leaked into the logs"
        );
    }
}

#[actix_rt::test]
async fn three_replicas_obtain_and_refresh_a_github_installation_token_once() {
    let mock = GithubMock::start_with(GithubMockState {
        token_lifetime: Some(chrono::Duration::seconds(6)),
        ..GithubMockState::default()
    });
    let db = TestDb::new().await;
    let config = github_config(&mock);
    let keyring = Arc::new(keyring(&[("a", &random_key())], "a"));
    let replicas = replicas(&db, &config, &keyring).await;
    let org = create_org(db.pool(), "acme").await;
    // Installed, no token yet: the first load must obtain one.
    let id = insert_integration(
        db.pool(),
        org,
        "github",
        "active",
        Some(&INSTALLATION.to_string()),
    )
    .await;

    let first = round(&replicas, org, id).await;
    assert_eq!(mock.state.lock().token_requests(INSTALLATION), 1);
    assert_eq!(mock.state.lock().tokens.last(), Some(&first));

    let mut seen = vec![first];
    for expiry in 1..=2 {
        tokio::time::sleep(Duration::from_millis(3300)).await;
        let token = round(&replicas, org, id).await;
        let state = mock.state.lock();
        assert_eq!(
            state.token_requests(INSTALLATION),
            1 + expiry,
            "one token request per expiry"
        );
        assert_eq!(state.tokens.last(), Some(&token), "the newest token served");
        drop(state);
        assert!(!seen.contains(&token));
        seen.push(token);
    }
}

/// A vault registry of its own (pool, health, actors) over a shared connector: one replica
/// of the lock tests.
fn fake_replica(
    db: &TestDb,
    keyring: &Arc<KeyRing>,
    fake: &Arc<FakeConnector>,
    tuning: VaultTuning,
) -> (VaultRegistry, CredentialStore, Pool) {
    let pool = build_pool(&db.url, 4, Duration::from_secs(5)).unwrap();
    let mut connectors = ConnectorRegistry::new();
    connectors.register(fake.clone());
    let credentials = CredentialStore::new(keyring.clone(), PgCredentials::new(pool.clone()));
    let registry = VaultRegistry::new(
        VaultDeps {
            store: IntegrationStore::new(pool.clone()),
            credentials: credentials.clone(),
            connectors,
            tuning,
        },
        HealthRegistry::new(),
    );
    (registry, credentials, pool)
}

/// An organization with a `fake` integration whose token is due for a refresh.
async fn expiring_fake(pool: &Pool, credentials: &CredentialStore) -> (Uuid, Uuid) {
    let org = create_org(pool, "acme").await;
    let id = insert_integration(pool, org, "fake", "active", None).await;
    credentials
        .put(
            id,
            &IssuedCredential {
                credential_type: "access_token".into(),
                secret: Secret::new("old-token"),
                expires_at: None,
            },
        )
        .await
        .unwrap();
    age_credential(
        pool,
        id,
        "access_token",
        chrono::Duration::seconds(30),
        chrono::Duration::hours(1),
    )
    .await;
    (org, id)
}

#[actix_rt::test]
async fn a_lock_holder_that_hangs_is_cut_off_by_the_server_within_its_hold_bound() {
    let db = TestDb::new().await;
    let keyring = Arc::new(keyring(&[("a", &random_key())], "a"));
    let fake = Arc::new(FakeConnector {
        name: "fake",
        ..FakeConnector::default()
    });
    let (registry, credentials, pool) = fake_replica(&db, &keyring, &fake, VaultTuning::default());
    let (org, id) = expiring_fake(&pool, &credentials).await;

    // Another replica takes the lock and then hangs (never commits, never closes): its
    // session is idle in the lock's transaction.
    let frozen_pool = build_pool(&db.url, 1, Duration::from_secs(5)).unwrap();
    let hold = Duration::from_secs(1);
    let frozen = RefreshLock::acquire(
        &frozen_pool,
        id,
        LockBounds {
            wait: Duration::from_secs(5),
            hold,
        },
    )
    .await
    .unwrap();

    let started = Instant::now();
    let served = registry.credential(org, id).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(served.expose(), "fresh-token-1");
    assert_eq!(fake.refresh_count(), 1);
    assert!(waited >= hold - Duration::from_millis(100), "{waited:?}");
    assert!(
        waited < VaultTuning::default().lock.wait,
        "served within the hold bound, not after the waiter's bound: {waited:?}"
    );
    // The server ended the frozen replica's session: it no longer holds anything.
    assert!(frozen.release().await.is_err());
}

#[actix_rt::test]
async fn a_lock_holder_that_dies_releases_the_lock_with_its_connection() {
    let db = TestDb::new().await;
    let keyring = Arc::new(keyring(&[("a", &random_key())], "a"));
    let fake = Arc::new(FakeConnector {
        name: "fake",
        ..FakeConnector::default()
    });
    let (registry, credentials, pool) = fake_replica(&db, &keyring, &fake, VaultTuning::default());
    let (org, id) = expiring_fake(&pool, &credentials).await;

    // The holder would keep the lock for a minute, but its process dies after 300 ms: the
    // connection closes and the lock goes with it.
    let dying_pool = build_pool(&db.url, 1, Duration::from_secs(5)).unwrap();
    let dying = RefreshLock::acquire(
        &dying_pool,
        id,
        LockBounds {
            wait: Duration::from_secs(5),
            hold: Duration::from_secs(60),
        },
    )
    .await
    .unwrap();
    actix_rt::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(dying);
    });

    let started = Instant::now();
    let served = registry.credential(org, id).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(served.expose(), "fresh-token-1");
    assert_eq!(fake.refresh_count(), 1);
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    // A dropped lock closed its connection rather than pooling it.
    assert_eq!(dying_pool.status().size, 0);
}

#[actix_rt::test]
async fn waiting_for_another_replicas_refresh_is_bounded() {
    let db = TestDb::new().await;
    let keyring = Arc::new(keyring(&[("a", &random_key())], "a"));
    let fake = Arc::new(FakeConnector {
        name: "fake",
        ..FakeConnector::default()
    });
    let wait = Duration::from_millis(500);
    let tuning = VaultTuning {
        lock: LockBounds {
            wait,
            hold: Duration::from_secs(45),
        },
        ..VaultTuning::default()
    };
    let (registry, credentials, pool) = fake_replica(&db, &keyring, &fake, tuning);
    let (org, id) = expiring_fake(&pool, &credentials).await;

    // A live holder (its refresh still under way) keeps the lock past the waiter's bound.
    let holder = RefreshLock::acquire(
        &pool,
        id,
        LockBounds {
            wait: Duration::from_secs(5),
            hold: Duration::from_secs(30),
        },
    )
    .await
    .unwrap();
    let started = Instant::now();
    let refused = registry.credential(org, id).await;
    let waited = started.elapsed();
    assert!(
        matches!(refused, Err(CredentialError::RefreshLock(_))),
        "{refused:?}"
    );
    assert!(
        waited >= wait && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(fake.refresh_count(), 0, "no refresh without the lock");

    // Released: the next request refreshes.
    holder.release().await.unwrap();
    assert_eq!(
        registry.credential(org, id).await.unwrap().expose(),
        "fresh-token-1"
    );
    assert_eq!(fake.refresh_count(), 1);
}

#[actix_rt::test]
async fn a_refused_token_replaced_by_another_replica_keeps_the_workspace_active() {
    // Rotation on (an hour): the refresh token lets a replica replace the bot token.
    let sim = SlackSim::start(SimConfig::default().with_token_rotation(Duration::from_secs(3600)))
        .unwrap();
    let db = TestDb::new().await;
    let config = slack_config(&sim);
    let keyring = Arc::new(keyring(&[("a", &random_key())], "a"));
    let replicas = replicas(&db, &config, &keyring).await;
    let (org, id) = install_slack(&replicas[0].parts, &sim, db.pool()).await;
    let team = TeamId::parse(TEAM).unwrap();
    let general = ChannelId::parse(GENERAL).unwrap();
    let (a, b) = (&replicas[1], &replicas[2]);

    // Replica A posts: it now has the installed token cached.
    a.web
        .post_message(&team, &general, None, "first", None)
        .await
        .unwrap();
    let old = a.parts.service.vaults.credential(org, id).await.unwrap();

    // Replica B replaces the token, and the old one stops working.
    b.parts.service.vaults.refresh(org, id, None).await.unwrap();
    assert!(sim.revoke_token(old.expose()));

    // A's cached token is refused: that call fails, but the stored token works, so the
    // workspace is not recorded inactive, and A's next call uses the stored token.
    let refused = a
        .web
        .post_message(&team, &general, None, "second", None)
        .await;
    assert!(
        matches!(&refused, Err(SlackApiError::WorkspaceInactive { error, .. }) if error == "token_revoked"),
        "{refused:?}"
    );
    assert_eq!(workspace_status(db.pool()).await.0, "active");
    assert_eq!(
        a.web.board().get(&team).map(|s| s.status.as_str()),
        Some("active")
    );
    a.web
        .post_message(&team, &general, None, "third", None)
        .await
        .expect("the stored token is used after the re-check");

    // When the stored token is refused too, the workspace is inactive for every replica.
    let current = a.parts.service.vaults.credential(org, id).await.unwrap();
    assert_ne!(current.expose(), old.expose());
    assert!(sim.revoke_token(current.expose()));
    let refused = a
        .web
        .post_message(&team, &general, None, "fourth", None)
        .await;
    assert!(
        matches!(&refused, Err(SlackApiError::WorkspaceInactive { .. })),
        "{refused:?}"
    );
    assert_eq!(
        workspace_status(db.pool()).await,
        ("inactive".to_owned(), Some("token_revoked".to_owned()))
    );
    assert!(matches!(
        b.web
            .post_message(&team, &general, None, "fifth", None)
            .await,
        Err(SlackApiError::UnknownWorkspace(_))
    ));
}

#[actix_rt::test]
async fn a_burst_of_due_credentials_does_not_starve_its_own_pool() {
    let db = TestDb::new().await;
    let keyring = Arc::new(keyring(&[("a", &random_key())], "a"));
    let fake = Arc::new(FakeConnector {
        name: "fake",
        ..FakeConnector::default()
    });
    // Four connections: were every due credential to hold one for its lock, none would be
    // left for the refreshes' own reads and writes.
    let (registry, credentials, pool) = fake_replica(&db, &keyring, &fake, VaultTuning::default());
    let mut due = Vec::new();
    for _ in 0..10 {
        due.push(expiring_fake(&pool, &credentials).await);
    }
    let started = Instant::now();
    let served =
        futures::future::join_all(due.iter().map(|&(org, id)| registry.credential(org, id))).await;
    for s in &served {
        assert!(s.as_ref().unwrap().expose().starts_with("fresh-token-"));
    }
    assert_eq!(fake.refresh_count(), 10);
    assert!(started.elapsed() < Duration::from_secs(10));
}
