//! Helpers shared by the identity integration tests: a local JWKS server, JWT and Svix
//! signing, a cluster with the IdentitySync stream on a fresh database, table dumps.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::dev::{Service, ServiceResponse};
use actix_web::test;
use diesel::QueryableByName;
use diesel_async::RunQueryDsl as _;
use infragpt::config::CorsConfig;
use infragpt::db::testing::TestDb;
use infragpt::db::{PgAudit, PgInbox, Pool};
use infragpt::http::auth::Authenticator;
use infragpt::http::{HttpShell, Readiness};
use infragpt::identity::api::{self, IdentityApi};
use infragpt::identity::jwt::{ClerkJwtConfig, ClerkJwtVerifier, JwksCache, JwksCacheConfig};
use infragpt::identity::store::IdentityStore;
use infragpt::identity::svix::SvixVerifier;
use infragpt::identity::sync::IdentitySync;
use infragpt::identity::webhook::{self, ClerkWebhook};
use infragpt_actors::audit::AuditLog;
use infragpt_actors::health::HealthRegistry;
use infragpt_actors::inbox::EventStatus;
use infragpt_actors::{Cluster, ClusterConfig, Metrics, Secret, StreamSpec};
use infragpt_actors::{kinds, sources};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

pub const KEY_A: &str = include_str!("../data/jwt-test-key-a.pem");
pub const KEY_B: &str = include_str!("../data/jwt-test-key-b.pem");
pub const PUB_A: &str = include_str!("../data/jwt-test-key-a.pub.pem");
pub const ISSUER: &str = "https://clerk.example.test";
pub const AZP: &str = "https://app.example.test";
/// The Svix endpoint secret of the tests (from Svix's own test vectors).
pub const SVIX_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Another valid secret (for "wrong secret").
pub const OTHER_SVIX_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
/// Guard against hangs only; no assertion depends on timing.
pub const GUARD: Duration = Duration::from_secs(60);

// ----- fixtures ---------------------------------------------------------------------------

#[path = "../support/fixtures.rs"]
mod fixtures;
pub use fixtures::fixtures_dir;

/// The raw bytes of `svix/clerk/<name>.json`.
pub fn clerk_fixture(name: &str) -> Vec<u8> {
    let path = fixtures_dir()
        .join("svix")
        .join("clerk")
        .join(format!("{name}.json"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every Clerk fixture in natural order (created, updated, deleted; users, organizations,
/// memberships). The list is checked against the folder so a new fixture is not forgotten.
pub fn clerk_fixtures_natural() -> Vec<(String, Vec<u8>)> {
    let names = [
        "user.created.docs",
        "user.created",
        "user.updated",
        "user.deleted",
        "organization.created",
        "organization.updated",
        "organization.deleted",
        "organizationMembership.created",
        "organizationMembership.updated",
        "organizationMembership.deleted",
    ];
    let mut on_disk: Vec<String> = std::fs::read_dir(fixtures_dir().join("svix").join("clerk"))
        .expect("clerk fixtures")
        .map(|e| {
            e.expect("entry")
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".json")
                .to_owned()
        })
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "the fixture list is out of date");
    names
        .iter()
        .map(|n| ((*n).to_owned(), clerk_fixture(n)))
        .collect()
}

// ----- Svix -------------------------------------------------------------------------------

static SVIX_IDS: AtomicUsize = AtomicUsize::new(0);

/// A fresh svix-id.
pub fn new_svix_id() -> String {
    format!(
        "msg_test_{}_{}",
        SVIX_IDS.fetch_add(1, Ordering::SeqCst),
        uuid::Uuid::new_v4().simple()
    )
}

/// `v1,<sig>` of `body` under `secret`.
pub fn svix_sign(secret: &str, id: &str, ts: i64, body: &[u8]) -> String {
    SvixVerifier::new(&Secret::new(secret))
        .expect("secret")
        .sign(id, ts, body)
}

/// Svix headers for `body` signed now with the test secret.
pub fn svix_headers(id: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    let ts = chrono::Utc::now().timestamp();
    vec![
        ("svix-id", id.to_owned()),
        ("svix-timestamp", ts.to_string()),
        ("svix-signature", svix_sign(SVIX_SECRET, id, ts, body)),
    ]
}

// ----- JWT / JWKS -------------------------------------------------------------------------

pub fn jwk_json(pem: &str, kid: &str) -> Value {
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("test key");
    let jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).expect("jwk");
    let AlgorithmParameters::RSA(rsa) = jwk.algorithm else {
        panic!("not RSA")
    };
    json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": rsa.n, "e": rsa.e})
}

pub fn jwks(keys: &[(&str, &str)]) -> String {
    let keys: Vec<Value> = keys.iter().map(|(pem, kid)| jwk_json(pem, kid)).collect();
    json!({ "keys": keys }).to_string()
}

/// A tiny HTTP server that answers every request with the current JWKS and counts requests.
pub struct JwksServer {
    pub url: url::Url,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    pub async fn start(body: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let body = Arc::new(Mutex::new(body));
        let hits = Arc::new(AtomicUsize::new(0));
        let (b, h) = (body.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (b, h) = (b.clone(), h.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let body = b.lock().clone();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self {
            url: format!("http://{addr}/.well-known/jwks.json")
                .parse()
                .expect("url"),
            body,
            hits,
        }
    }

    pub fn serve(&self, body: String) {
        *self.body.lock() = body;
    }

    pub fn hits(&self) -> usize {
        AtomicUsize::load(&self.hits, Ordering::SeqCst)
    }
}

/// A verifier for [`ISSUER`] / [`AZP`] with keys from `url`, refetching on an unknown kid
/// without a rate limit (so key rotation is observable at once).
pub fn jwt_verifier(url: url::Url) -> Arc<ClerkJwtVerifier> {
    let cache = JwksCache::new(
        url,
        reqwest::Client::new(),
        JwksCacheConfig {
            min_refetch_interval: Duration::ZERO,
            fetch_timeout: Duration::from_secs(5),
        },
    );
    let mut config = ClerkJwtConfig::new(ISSUER);
    config.authorized_parties = vec![AZP.to_owned()];
    Arc::new(ClerkJwtVerifier::new(config, Arc::new(cache)))
}

/// Claims of a valid session of `user` right now (no organization).
pub fn claims(user: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "iss": ISSUER,
        "sub": user,
        "sid": "sess_test",
        "azp": AZP,
        "exp": now + 60,
        "iat": now - 1,
        "nbf": now - 6,
    })
}

/// v2 claims with organization `org` and role `role`.
pub fn claims_v2(user: &str, org: &str, role: &str) -> Value {
    let mut c = claims(user);
    c["v"] = json!(2);
    c["o"] = json!({"id": org, "rol": role.trim_start_matches("org:"), "slg": "slug", "per": "read,manage"});
    c
}

/// v1 claims with organization `org` and role `role`.
pub fn claims_v1(user: &str, org: &str, role: &str) -> Value {
    let mut c = claims(user);
    c["org_id"] = json!(org);
    c["org_role"] = json!(role);
    c["org_slug"] = json!("slug");
    c
}

pub fn sign_jwt(pem: &str, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(pem.as_bytes()).expect("key"),
    )
    .expect("encode")
}

// ----- cluster, store, app ----------------------------------------------------------------

/// A fresh database, a cluster with the IdentitySync stream on it, and the pieces the HTTP
/// app is built from.
pub struct Harness {
    pub db: TestDb,
    pub cluster: Cluster,
    pub store: IdentityStore,
    pub audit: Arc<dyn AuditLog>,
}

impl Harness {
    /// Must be called inside an actix system (`#[actix_rt::test]`).
    pub async fn start() -> Harness {
        let db = TestDb::new().await;
        let pool = db.pool().clone();
        let store = IdentityStore::new(pool.clone());
        let audit: Arc<dyn AuditLog> = Arc::new(PgAudit::new(pool.clone()));
        let cluster = Cluster::start(
            ClusterConfig {
                backoff_base_ms: 1,
                backoff_max_ms: 5,
                drain_interval_ms: 10,
                ..ClusterConfig::default()
            },
            Arc::new(PgInbox::new(pool)),
            HealthRegistry::new(),
            Metrics::new().expect("metrics"),
        )
        .expect("cluster");
        cluster
            .register_stream(StreamSpec {
                name: "identity-sync".into(),
                kind: kinds::IDENTITY_SYNC,
                source: sources::CLERK,
                handler: Arc::new(IdentitySync::new(store.clone(), audit.clone())),
            })
            .expect("stream");
        Harness {
            db,
            cluster,
            store,
            audit,
        }
    }

    pub fn pool(&self) -> &Pool {
        self.db.pool()
    }

    /// The webhook with the test secret (or none).
    pub fn webhook(&self, secret: Option<&str>) -> ClerkWebhook {
        ClerkWebhook::new(secret.map(Secret::new).as_ref(), self.cluster.clone()).expect("webhook")
    }

    /// An HTTP shell with the webhook (test secret), the authenticator and the API.
    pub fn shell(
        &self,
        verifier: Option<Arc<infragpt::identity::jwt::ClerkJwtVerifier>>,
    ) -> HttpShell {
        self.shell_with(self.webhook(Some(SVIX_SECRET)), verifier)
    }

    pub fn shell_with(
        &self,
        hook: ClerkWebhook,
        verifier: Option<Arc<infragpt::identity::jwt::ClerkJwtVerifier>>,
    ) -> HttpShell {
        let auth = Authenticator::new(verifier, self.store.clone());
        let api = IdentityApi::new(self.store.clone(), self.audit.clone());
        HttpShell::new(Readiness::default(), false, CorsConfig::default()).with_routes(move |cfg| {
            auth.configure(cfg);
            webhook::configure(cfg, hook.clone());
            api::configure(cfg, api.clone());
        })
    }

    /// Waits until no Clerk event is pending or processing.
    pub async fn wait_idle(&self) {
        let inbox = self.cluster.inbox().clone();
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let counts = inbox.count_by_status().await.expect("counts");
            if counts
                .iter()
                .all(|(status, n)| !status.is_unfinished() || *n == 0)
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "events still unfinished: {counts:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Number of inbox rows with `status`.
    pub async fn count(&self, status: EventStatus) -> i64 {
        self.cluster
            .inbox()
            .count_by_status()
            .await
            .expect("counts")
            .into_iter()
            .find(|(s, _)| *s == status)
            .map(|(_, n)| n)
            .unwrap_or(0)
    }

    /// Total inbox rows.
    pub async fn recorded(&self) -> i64 {
        self.cluster
            .inbox()
            .count_by_status()
            .await
            .expect("counts")
            .into_iter()
            .map(|(_, n)| n)
            .sum()
    }
}

/// POSTs `body` to the webhook with `headers`.
pub async fn post_webhook<S>(app: &S, body: &[u8], headers: &[(&str, String)]) -> ServiceResponse
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    let mut req = test::TestRequest::post()
        .uri("/webhooks/clerk")
        .insert_header(("content-type", "application/json"))
        .set_payload(body.to_vec());
    for (k, v) in headers {
        req = req.insert_header((*k, v.as_str()));
    }
    test::call_service(app, req.to_request()).await
}

/// Delivers `body` as a freshly signed webhook; asserts 200 and returns the JSON answer.
pub async fn deliver<S>(app: &S, id: &str, body: &[u8]) -> Value
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    let resp = post_webhook(app, body, &svix_headers(id, body)).await;
    let status = resp.status();
    let answer = body_json(resp).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

pub async fn body_json(resp: ServiceResponse) -> Value {
    let bytes = test::read_body(resp).await;
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

#[derive(QueryableByName)]
struct JsonRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    j: String,
}

/// Every row of `table` as JSON text (all columns), sorted.
pub async fn dump_table(pool: &Pool, table: &str) -> Vec<String> {
    let mut conn = pool.get().await.expect("conn");
    let mut rows: Vec<String> =
        diesel::sql_query(format!("SELECT to_jsonb(t)::text AS j FROM {table} t"))
            .load::<JsonRow>(&mut conn)
            .await
            .expect("dump")
            .into_iter()
            .map(|r| r.j)
            .collect();
    rows.sort();
    rows
}

/// The identity tables and the audit log, every column.
pub async fn full_dump(pool: &Pool) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for table in [
        "users",
        "organizations",
        "organization_members",
        "organization_metadata",
        "audit_log",
    ] {
        out.push((table.to_owned(), dump_table(pool, table).await));
    }
    out
}

/// The identity state without ids and wall-clock times (which differ between two
/// databases): what the events determine.
pub async fn logical_dump(pool: &Pool) -> Vec<(String, Vec<String>)> {
    let queries = [
        (
            "users",
            "SELECT (to_jsonb(t) - 'id' - 'created_at' - 'updated_at' - 'deleted_at' \
             || jsonb_build_object('deleted', t.deleted_at IS NOT NULL))::text AS j FROM users t",
        ),
        (
            "organizations",
            "SELECT (to_jsonb(t) - 'id' - 'created_at' - 'updated_at' - 'deleted_at' \
             || jsonb_build_object('deleted', t.deleted_at IS NOT NULL))::text AS j FROM organizations t",
        ),
        (
            "organization_members",
            "SELECT (to_jsonb(t) - 'id' - 'created_at' - 'updated_at' - 'deleted_at' \
             || jsonb_build_object('deleted', t.deleted_at IS NOT NULL))::text AS j FROM organization_members t",
        ),
    ];
    let mut conn = pool.get().await.expect("conn");
    let mut out = Vec::new();
    for (table, query) in queries {
        let mut rows: Vec<String> = diesel::sql_query(query)
            .load::<JsonRow>(&mut conn)
            .await
            .expect("dump")
            .into_iter()
            .map(|r| r.j)
            .collect();
        rows.sort();
        out.push((table.to_owned(), rows));
    }
    out
}

/// Audit rows as (actor, action, target).
pub async fn audit_rows(pool: &Pool) -> Vec<Value> {
    dump_table(pool, "audit_log")
        .await
        .into_iter()
        .map(|t| serde_json::from_str(&t).expect("json"))
        .collect()
}
