//! Credential vault against real PostgreSQL: sealed storage (round-trip, tamper, wrong row,
//! wrong key), rotation and status, start-up key rules, and the per-organization vault actor
//! (100 concurrent requests for an expiring token → one refresh).

use std::sync::Arc;

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::app::integrations::SetupError;
use infragpt::app::integrations::load_keyring;
use infragpt::config::VaultConfig;
use infragpt::crypto::vault::CredentialAad;
use infragpt::db::schema::integration_credentials;
use infragpt::integrations::connector::{ConnectorRegistry, IssuedCredential};
use infragpt::integrations::credentials::PgCredentials;
use infragpt::integrations::store::IntegrationStore;
use infragpt::integrations::vault::{
    CredentialError, CredentialStore, VaultDeps, VaultRegistry, VaultTuning,
};
use infragpt::integrations::vault_cli;
use infragpt::testkit::test_db::TestDb;
use infragpt_actors::{HealthRegistry, Secret, kinds};

use crate::support::integrations::*;

fn issued(kind: &str, value: &str, expires_in_secs: Option<i64>) -> IssuedCredential {
    IssuedCredential {
        credential_type: kind.to_owned(),
        secret: Secret::new(value),
        expires_at: expires_in_secs.map(|s| Utc::now() + chrono::Duration::seconds(s)),
    }
}

#[tokio::test]
async fn sealed_round_trip_and_every_tamper_fails() {
    let db = TestDb::new().await;
    let pool = db.pool().clone();
    let key_a = random_key();
    let store = CredentialStore::new(
        Arc::new(keyring(&[("a", &key_a)], "a")),
        PgCredentials::new(pool.clone()),
    );
    let org = create_org(&pool, "acme").await;
    let i1 = insert_integration(&pool, org, "slack", "active", None).await;
    let i2 = insert_integration(&pool, org, "github", "active", None).await;

    let id = store
        .put(
            i1,
            &issued("bot_token", "xoxb-super-secret-value", Some(3600)),
        )
        .await
        .unwrap();
    let (value, expires) = store.get(i1, "bot_token").await.unwrap().unwrap();
    assert_eq!(value.expose(), "xoxb-super-secret-value");
    assert!(expires.is_some());

    // The stored bytes are not the plaintext.
    let mut conn = pool.get().await.unwrap();
    let (ciphertext, key_id): (Vec<u8>, String) = integration_credentials::table
        .find(id)
        .select((
            integration_credentials::ciphertext,
            integration_credentials::key_id,
        ))
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(key_id, "a");
    assert!(
        !ciphertext
            .windows(b"super-secret".len())
            .any(|w| w == b"super-secret")
    );

    // Tampered ciphertext → error.
    let mut tampered = ciphertext.clone();
    tampered[0] ^= 0x01;
    diesel::update(integration_credentials::table.find(id))
        .set(integration_credentials::ciphertext.eq(&tampered))
        .execute(&mut conn)
        .await
        .unwrap();
    let err = store.get(i1, "bot_token").await.unwrap_err();
    assert!(matches!(err, CredentialError::Crypto(_)), "{err:?}");
    assert!(!err.to_string().contains("super-secret"));
    diesel::update(integration_credentials::table.find(id))
        .set(integration_credentials::ciphertext.eq(&ciphertext))
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(store.get(i1, "bot_token").await.is_ok());

    // Moved to another row (other integration / other type) → the AAD no longer matches.
    diesel::update(integration_credentials::table.find(id))
        .set(integration_credentials::integration_id.eq(i2))
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(matches!(
        store.get(i2, "bot_token").await,
        Err(CredentialError::Crypto(_))
    ));
    diesel::update(integration_credentials::table.find(id))
        .set((
            integration_credentials::integration_id.eq(i1),
            integration_credentials::credential_type.eq("refresh_token"),
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(matches!(
        store.get(i1, "refresh_token").await,
        Err(CredentialError::Crypto(_))
    ));
    diesel::update(integration_credentials::table.find(id))
        .set(integration_credentials::credential_type.eq("bot_token"))
        .execute(&mut conn)
        .await
        .unwrap();

    // Wrong key: a ring with another key under the same id, and a ring without the id.
    let other = CredentialStore::new(
        Arc::new(keyring(&[("a", &random_key())], "a")),
        PgCredentials::new(pool.clone()),
    );
    assert!(matches!(
        other.get(i1, "bot_token").await,
        Err(CredentialError::Crypto(_))
    ));
    let missing = CredentialStore::new(
        Arc::new(keyring(&[("b", &random_key())], "b")),
        PgCredentials::new(pool.clone()),
    );
    let err = missing.get(i1, "bot_token").await.unwrap_err();
    assert!(err.to_string().contains("no vault key with id a"), "{err}");

    // A replacement keeps the row id (what slack_workspaces.token_ref points at).
    let again = store
        .put(i1, &issued("bot_token", "xoxb-replaced", None))
        .await
        .unwrap();
    assert_eq!(again, id);
    assert_eq!(
        store
            .get(i1, "bot_token")
            .await
            .unwrap()
            .unwrap()
            .0
            .expose(),
        "xoxb-replaced"
    );
}

#[tokio::test]
async fn rotation_moves_every_row_and_status_counts_per_key() {
    let db = TestDb::new().await;
    let pool = db.pool().clone();
    let old = random_key();
    let new = random_key();
    let old_store = CredentialStore::new(
        Arc::new(keyring(&[("k1", &old)], "k1")),
        PgCredentials::new(pool.clone()),
    );
    let org = create_org(&pool, "acme").await;
    let mut expected = Vec::new();
    for n in 0..7 {
        let integration = insert_integration(&pool, org, &format!("conn{n}"), "active", None).await;
        for kind in ["bot_token", "refresh_token"] {
            let value = format!("secret-{n}-{kind}");
            old_store
                .put(integration, &issued(kind, &value, None))
                .await
                .unwrap();
            expected.push((integration, kind, value));
        }
    }
    let database = db.database();
    let status = vault_cli::status(&database, None).await.unwrap();
    assert_eq!(status.rows_per_key.get("k1"), Some(&14));

    let ring = keyring(&[("k1", &old), ("k2", &new)], "k2");
    let report = vault_cli::rotate(&database, &ring, 3).await.unwrap();
    assert_eq!(report.rotated, 14, "{report:?}");
    assert_eq!(report.failed, 0);
    assert_eq!(report.batches, 5);
    assert_eq!(report.active_key, "k2");

    let status = vault_cli::status(&database, Some(&ring)).await.unwrap();
    assert_eq!(status.rows_per_key.get("k2"), Some(&14));
    assert_eq!(status.rows_per_key.get("k1"), None);
    assert!(status.keys_pending_rotation.is_empty());

    // Every row opens with a ring that no longer holds the old key.
    let new_only = CredentialStore::new(
        Arc::new(keyring(&[("k2", &new)], "k2")),
        PgCredentials::new(pool.clone()),
    );
    for (integration, kind, value) in &expected {
        let (secret, _) = new_only.get(*integration, kind).await.unwrap().unwrap();
        assert_eq!(secret.expose(), value);
    }

    // Resumable / idempotent: a second run has nothing to do.
    let report = vault_cli::rotate(&database, &ring, 3).await.unwrap();
    assert_eq!((report.examined, report.rotated, report.batches), (0, 0, 0));
}

#[tokio::test]
async fn rotation_reports_rows_it_cannot_open() {
    let db = TestDb::new().await;
    let pool = db.pool().clone();
    let lost = random_key();
    let store = CredentialStore::new(
        Arc::new(keyring(&[("lost", &lost)], "lost")),
        PgCredentials::new(pool.clone()),
    );
    let org = create_org(&pool, "acme").await;
    let integration = insert_integration(&pool, org, "slack", "active", None).await;
    store
        .put(integration, &issued("bot_token", "x", None))
        .await
        .unwrap();
    let ring = keyring(&[("k2", &random_key())], "k2");
    let report = vault_cli::rotate(&db.database(), &ring, 10).await.unwrap();
    assert_eq!((report.examined, report.rotated, report.failed), (1, 0, 1));
    assert_eq!(report.failed_ids.len(), 1);
    // The row is left as it was.
    let status = vault_cli::status(&db.database(), Some(&ring))
        .await
        .unwrap();
    assert_eq!(status.keys_pending_rotation, vec!["lost".to_owned()]);
}

#[test]
fn refuses_to_start_without_a_key_unless_a_dev_key_file_is_set() {
    let err = load_keyring(&VaultConfig::default()).unwrap_err();
    assert!(matches!(err, SetupError::NoVaultKey), "{err}");
    assert!(err.to_string().contains("vault.keys"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/vault.key");
    let config = VaultConfig {
        dev_key_file: Some(path.clone()),
        ..VaultConfig::default()
    };
    let ring = load_keyring(&config).unwrap();
    assert_eq!(ring.active_key_id().as_str(), "dev");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The same key on the next start.
    let sealed = ring
        .seal(
            &CredentialAad {
                integration_id: uuid::Uuid::nil(),
                credential_type: "t",
            },
            &Secret::new("v"),
        )
        .unwrap();
    let again = load_keyring(&config).unwrap();
    let opened = again
        .open(
            &CredentialAad {
                integration_id: uuid::Uuid::nil(),
                credential_type: "t",
            },
            &sealed,
        )
        .unwrap();
    assert_eq!(opened.expose(), "v");

    // The state key is derived, stable, and not the vault key.
    let s1 = infragpt::app::integrations::state_key(&config).unwrap();
    let s2 = infragpt::app::integrations::state_key(&config).unwrap();
    assert_eq!(s1.expose(), s2.expose());
    let file = std::fs::read_to_string(&path).unwrap();
    assert_ne!(s1.expose(), file.trim());
}

async fn vault_setup(
    pool: &infragpt::db::Pool,
) -> (
    VaultRegistry,
    Arc<FakeConnector>,
    CredentialStore,
    HealthRegistry,
) {
    let fake = Arc::new(FakeConnector {
        name: "fake",
        ..FakeConnector::default()
    });
    let mut connectors = ConnectorRegistry::new();
    connectors.register(fake.clone());
    let credentials = CredentialStore::new(
        Arc::new(keyring(&[("a", &random_key())], "a")),
        PgCredentials::new(pool.clone()),
    );
    let health = HealthRegistry::new();
    let registry = VaultRegistry::new(
        VaultDeps {
            store: IntegrationStore::new(pool.clone()),
            credentials: credentials.clone(),
            connectors,
            tuning: VaultTuning::default(),
        },
        health.clone(),
    );
    (registry, fake, credentials, health)
}

#[actix_rt::test]
async fn hundred_concurrent_requests_for_an_expiring_token_refresh_once() {
    let logs = infragpt::telemetry::capture();
    let db = TestDb::new().await;
    let pool = db.pool().clone();
    let (registry, fake, credentials, health) = vault_setup(&pool).await;
    let org = create_org(&pool, "acme").await;
    let integration = insert_integration(&pool, org, "fake", "active", None).await;
    credentials
        .put(
            integration,
            &issued("access_token", "old-secret-token-value", Some(60)),
        )
        .await
        .unwrap();
    // Issued an hour ago, expires in a minute: inside the five-minute refresh margin.
    age_credential(
        &pool,
        integration,
        "access_token",
        chrono::Duration::seconds(60),
        chrono::Duration::hours(1),
    )
    .await;

    let calls = (0..100).map(|_| registry.credential(org, integration));
    let results = futures::future::join_all(calls).await;
    assert_eq!(fake.refresh_count(), 1);
    for r in &results {
        assert_eq!(r.as_ref().unwrap().expose(), "fresh-token-1");
    }
    // The fresh token is stored encrypted, and served without another refresh.
    let (stored, expires) = credentials
        .get(integration, "access_token")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.expose(), "fresh-token-1");
    assert!(expires.unwrap() > Utc::now() + chrono::Duration::minutes(30));
    assert_eq!(
        registry
            .credential(org, integration)
            .await
            .unwrap()
            .expose(),
        "fresh-token-1"
    );
    assert_eq!(fake.refresh_count(), 1);

    // The vault actor is in the health registry under its organization.
    let snapshot = health
        .get(kinds::CREDENTIAL_VAULT, &org.to_string())
        .expect("vault registered");
    assert_eq!(snapshot.state.as_str(), "running");

    // Another organization cannot read this integration through its own vault.
    let other = create_org(&pool, "globex").await;
    assert!(matches!(
        registry.credential(other, integration).await,
        Err(CredentialError::NotFound(_))
    ));

    // A forced refresh refreshes even a fresh token.
    registry.refresh(org, integration, None).await.unwrap();
    assert_eq!(fake.refresh_count(), 2);

    let text = logs.contents();
    for secret in ["old-secret-token-value", "fresh-token-1", "fresh-token-2"] {
        assert!(!text.contains(secret), "{secret} leaked into the logs");
    }
}

#[actix_rt::test]
async fn a_valid_token_is_served_without_refresh_and_inactive_integrations_are_refused() {
    let db = TestDb::new().await;
    let pool = db.pool().clone();
    let (registry, fake, credentials, _health) = vault_setup(&pool).await;
    let org = create_org(&pool, "acme").await;
    let integration = insert_integration(&pool, org, "fake", "active", None).await;
    credentials
        .put(
            integration,
            &issued("access_token", "long-lived", Some(7200)),
        )
        .await
        .unwrap();
    let results =
        futures::future::join_all((0..20).map(|_| registry.credential(org, integration))).await;
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().unwrap().expose() == "long-lived")
    );
    assert_eq!(fake.refresh_count(), 0);

    // A short-lived credential (two minutes, just issued) is not "about to expire": the
    // margin is at most half its lifetime, so it is served, not refreshed in a loop.
    let org2 = create_org(&pool, "initech").await;
    let short = insert_integration(&pool, org2, "fake", "active", None).await;
    credentials
        .put(short, &issued("access_token", "short-lived", Some(120)))
        .await
        .unwrap();
    assert_eq!(
        registry.credential(org2, short).await.unwrap().expose(),
        "short-lived"
    );
    assert_eq!(fake.refresh_count(), 0);

    let pending = insert_integration(&pool, org, "fake2", "pending", None).await;
    assert!(matches!(
        registry.credential(org, pending).await,
        Err(CredentialError::NotActive { .. })
    ));
}

#[tokio::test]
async fn the_database_nonce_ledger_accepts_each_nonce_once() {
    use infragpt::crypto::state::{NonceLedger, StateNonce};
    use infragpt::db::nonces::PgNonceLedger;
    let db = TestDb::new().await;
    let ledger = PgNonceLedger::new(db.pool().clone());
    let nonce = StateNonce::random().unwrap();
    let later = Utc::now() + chrono::Duration::minutes(10);
    assert!(ledger.consume(&nonce, later).await.unwrap());
    assert!(!ledger.consume(&nonce, later).await.unwrap());
    // A second ledger on the same database (another instance) sees the use too.
    let other = PgNonceLedger::new(db.pool().clone());
    assert!(!other.consume(&nonce, later).await.unwrap());
    let expired = StateNonce::random().unwrap();
    assert!(
        ledger
            .consume(&expired, Utc::now() - chrono::Duration::minutes(1))
            .await
            .unwrap()
    );
    assert_eq!(ledger.prune_expired(Utc::now()).await.unwrap(), 1);
    assert!(!ledger.consume(&nonce, later).await.unwrap());
}
