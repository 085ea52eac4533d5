//! Integrations helpers: key rings, organization and integration rows, a test principal
//! middleware, a fake connector, and a local mock of the GitHub API.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, web};
use async_trait::async_trait;
use base64::Engine as _;
use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt::crypto::vault::{KeyRing, VaultKeysConfig};
use infragpt::db::Pool;
use infragpt::db::schema::{integrations, organizations};
use infragpt::identity::roles::OrgRole;
use infragpt::integrations::Principal;
use infragpt::integrations::connector::{
    Authorized, CallbackParams, Connector, ConnectorError, CredentialSet, IssuedCredential,
    Validation, WebhookSetup,
};
use infragpt::integrations::store::Integration;
use infragpt_actors::Secret;
use parking_lot::Mutex;
use serde_json::json;
use uuid::Uuid;

/// Header the test middleware reads the organization from.
pub const ORG_HEADER: &str = "x-test-org";
/// Header the test middleware reads the user from.
pub const USER_HEADER: &str = "x-test-user";
/// Header the test middleware reads the role from (absent: `org:admin`, so the lifecycle
/// tests may change things; the role matrix uses real tokens instead).
pub const ROLE_HEADER: &str = "x-test-role";

/// A random base64 32-byte key.
pub fn random_key() -> Secret {
    let bytes: [u8; 32] = rand::random();
    Secret::new(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// A key ring holding `keys` (id, base64) with `active` active.
pub fn keyring(keys: &[(&str, &Secret)], active: &str) -> KeyRing {
    KeyRing::from_config(&VaultKeysConfig {
        keys: keys
            .iter()
            .map(|(id, k)| ((*id).to_owned(), (*k).clone()))
            .collect(),
        active: active.to_owned(),
    })
    .expect("key ring")
}

/// Inserts an organization; returns its id.
pub async fn create_org(pool: &Pool, name: &str) -> Uuid {
    let mut conn = pool.get().await.expect("connection");
    diesel::insert_into(organizations::table)
        .values((
            organizations::clerk_id.eq(format!("org_{}", Uuid::new_v4().simple())),
            organizations::name.eq(name),
        ))
        .returning(organizations::id)
        .get_result(&mut conn)
        .await
        .expect("insert organization")
}

/// Inserts an integration row directly.
pub async fn insert_integration(
    pool: &Pool,
    org: Uuid,
    connector_type: &str,
    status: &str,
    external_id: Option<&str>,
) -> Uuid {
    let mut conn = pool.get().await.expect("connection");
    diesel::insert_into(integrations::table)
        .values((
            integrations::organization_id.eq(org),
            integrations::connector_type.eq(connector_type),
            integrations::status.eq(status),
            integrations::external_id.eq(external_id),
        ))
        .returning(integrations::id)
        .get_result(&mut conn)
        .await
        .expect("insert integration")
}

/// Test authentication: `x-test-org` + `x-test-user` (+ `x-test-role`) headers become a
/// [`Principal`].
pub async fn test_auth(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let org = req
        .headers()
        .get(ORG_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Uuid>().ok());
    let user = req
        .headers()
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let role = req
        .headers()
        .get(ROLE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map_or_else(OrgRole::admin, OrgRole::new);
    if let (Some(organization_id), Some(user_id)) = (org, user) {
        req.extensions_mut().insert(Principal {
            organization_id,
            user_id,
            role,
        });
    }
    next.call(req).await
}

/// A connector whose refresh counts calls, waits a little (so concurrent callers overlap)
/// and issues `fresh-token-{n}`.
#[derive(Debug, Default)]
pub struct FakeConnector {
    pub refreshes: AtomicUsize,
    pub revokes: AtomicUsize,
    pub name: &'static str,
}

impl FakeConnector {
    /// Refreshes so far.
    pub fn refresh_count(&self) -> usize {
        AtomicUsize::load(&self.refreshes, Ordering::SeqCst)
    }
    /// Revocations so far.
    pub fn revoke_count(&self) -> usize {
        AtomicUsize::load(&self.revokes, Ordering::SeqCst)
    }
}

#[async_trait]
impl Connector for FakeConnector {
    fn connector_type(&self) -> &'static str {
        self.name
    }
    fn primary_credential(&self) -> &'static str {
        "access_token"
    }
    fn authorization_url(&self, state: &str) -> Result<String, ConnectorError> {
        Ok(format!("https://fake.example/authorize?state={state}"))
    }
    async fn complete_authorization(
        &self,
        params: &CallbackParams,
    ) -> Result<Authorized, ConnectorError> {
        let code = params
            .code
            .clone()
            .ok_or_else(|| ConnectorError::BadCallback("code is required".into()))?;
        Ok(Authorized {
            external_id: format!("ext-{code}"),
            metadata: json!({ "code_seen": true }),
            credentials: vec![IssuedCredential {
                credential_type: "access_token".into(),
                secret: Secret::new(format!("fake-secret-token-{code}")),
                expires_at: Some(Utc::now() + chrono::Duration::hours(1)),
            }],
        })
    }
    async fn validate(
        &self,
        _integration: &Integration,
        credential: &Secret,
    ) -> Result<Validation, ConnectorError> {
        Ok(Validation {
            valid: credential.expose().starts_with("fake-secret-token-")
                || credential.expose().starts_with("fresh-token-"),
            detail: json!({}),
        })
    }
    async fn refresh(
        &self,
        _integration: &Integration,
        _current: &CredentialSet,
    ) -> Result<Vec<IssuedCredential>, ConnectorError> {
        let n = self.refreshes.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(vec![IssuedCredential {
            credential_type: "access_token".into(),
            secret: Secret::new(format!("fresh-token-{n}")),
            expires_at: Some(Utc::now() + chrono::Duration::hours(1)),
        }])
    }
    async fn revoke(
        &self,
        _integration: &Integration,
        _current: &CredentialSet,
    ) -> Result<(), ConnectorError> {
        self.revokes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn configure_webhooks(
        &self,
        _integration: &Integration,
    ) -> Result<WebhookSetup, ConnectorError> {
        Ok(WebhookSetup {
            delivery: "none".into(),
            note: "fake".into(),
        })
    }
}

// ----- GitHub API mock ----------------------------------------------------------------------

/// What the GitHub mock saw and issued.
#[derive(Debug, Default)]
pub struct GithubMockState {
    /// `METHOD path` of every request.
    pub calls: Vec<String>,
    /// Installation tokens issued, in order.
    pub tokens: Vec<String>,
    /// Tokens revoked via `DELETE /installation/token`.
    pub revoked: Vec<String>,
    /// Authorization headers seen on `/app/...` calls.
    pub app_auth: Vec<String>,
    /// Lifetime of the installation tokens issued (`None`: an hour, like GitHub).
    pub token_lifetime: Option<chrono::Duration>,
}

impl GithubMockState {
    /// `POST /app/installations/{installation}/access_tokens` requests so far.
    pub fn token_requests(&self, installation: i64) -> usize {
        let call = format!("POST /app/installations/{installation}/access_tokens");
        self.calls.iter().filter(|c| **c == call).count()
    }
}

/// A local GitHub API: installations, access tokens, repositories.
#[derive(Debug, Clone)]
pub struct GithubMock {
    pub state: Arc<Mutex<GithubMockState>>,
    pub url: String,
}

fn bearer(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
}

async fn mock_access_token(
    req: HttpRequest,
    path: web::Path<i64>,
    st: web::Data<Arc<Mutex<GithubMockState>>>,
) -> HttpResponse {
    let mut st = st.lock();
    st.calls
        .push(format!("POST /app/installations/{}/access_tokens", path));
    let Some(jwt) = bearer(&req).filter(|t| t.split('.').count() == 3) else {
        return HttpResponse::Unauthorized()
            .json(json!({"message": "A JSON web token could not be decoded"}));
    };
    st.app_auth.push(jwt);
    // Real tokens are long (~520 characters): make ours long too.
    let token = format!(
        "ghs_{}",
        "x".repeat(16) + &Uuid::new_v4().simple().to_string().repeat(16)
    );
    st.tokens.push(token.clone());
    let lifetime = st.token_lifetime.unwrap_or(chrono::Duration::hours(1));
    HttpResponse::Created().json(json!({
        "token": token,
        "expires_at": (Utc::now() + lifetime).to_rfc3339(),
        "permissions": {"contents": "read", "issues": "write"},
        "repository_selection": "selected"
    }))
}

async fn mock_installation(
    req: HttpRequest,
    path: web::Path<i64>,
    st: web::Data<Arc<Mutex<GithubMockState>>>,
) -> HttpResponse {
    let id = path.into_inner();
    let mut st = st.lock();
    st.calls.push(format!("GET /app/installations/{id}"));
    if bearer(&req).filter(|t| t.split('.').count() == 3).is_none() {
        return HttpResponse::Unauthorized().json(json!({"message": "Bad credentials"}));
    }
    if id == 404 {
        return HttpResponse::NotFound().json(json!({"message": "Not Found"}));
    }
    HttpResponse::Ok().json(json!({
        "id": id,
        "account": {"login": "octo-org", "id": 9919, "type": "Organization"},
        "repository_selection": "selected",
        "permissions": {"contents": "read", "issues": "write", "metadata": "read"},
        "events": ["push", "pull_request"],
        "suspended_at": null
    }))
}

async fn mock_repositories(
    req: HttpRequest,
    st: web::Data<Arc<Mutex<GithubMockState>>>,
) -> HttpResponse {
    let mut st = st.lock();
    st.calls.push("GET /installation/repositories".to_owned());
    let token = bearer(&req);
    if token.is_none()
        || !st.tokens.contains(token.as_ref().unwrap_or(&String::new()))
        || st
            .revoked
            .contains(token.as_ref().unwrap_or(&String::new()))
    {
        return HttpResponse::Unauthorized().json(json!({"message": "Bad credentials"}));
    }
    HttpResponse::Ok().json(json!({
        "total_count": 2,
        "repositories": [
            {"id": 1296269, "full_name": "octo-org/hello-world", "private": false},
            {"id": 1296270, "full_name": "octo-org/infra", "private": true}
        ]
    }))
}

async fn mock_revoke(req: HttpRequest, st: web::Data<Arc<Mutex<GithubMockState>>>) -> HttpResponse {
    let mut st = st.lock();
    st.calls.push("DELETE /installation/token".to_owned());
    match bearer(&req) {
        Some(token) if st.tokens.contains(&token) => {
            st.revoked.push(token);
            HttpResponse::NoContent().finish()
        }
        _ => HttpResponse::Unauthorized().json(json!({"message": "Bad credentials"})),
    }
}

impl GithubMock {
    /// Starts the mock on a loopback port (inside the current actix system).
    pub fn start() -> GithubMock {
        Self::start_with(GithubMockState::default())
    }

    /// [`GithubMock::start`] from a prepared state (e.g. a short `token_lifetime`).
    pub fn start_with(state: GithubMockState) -> GithubMock {
        let state = Arc::new(Mutex::new(state));
        let data = web::Data::new(state.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind mock");
        let port = listener.local_addr().expect("addr").port();
        let server = actix_web::HttpServer::new(move || {
            actix_web::App::new()
                .app_data(data.clone())
                .route(
                    "/app/installations/{id}/access_tokens",
                    web::post().to(mock_access_token),
                )
                .route("/app/installations/{id}", web::get().to(mock_installation))
                .route(
                    "/installation/repositories",
                    web::get().to(mock_repositories),
                )
                .route("/installation/token", web::delete().to(mock_revoke))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .expect("listen")
        .run();
        actix_rt::spawn(server);
        GithubMock {
            state,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

/// The RSA test key (PEM) as a GitHub App private key.
pub fn test_private_key() -> Secret {
    Secret::new(super::identity::KEY_A)
}

/// Makes a stored credential look issued `age` ago and expiring in `expires_in` (a token
/// near the end of a long life).
pub async fn age_credential(
    pool: &Pool,
    integration_id: Uuid,
    credential_type: &str,
    expires_in: chrono::Duration,
    age: chrono::Duration,
) {
    use infragpt::db::schema::integration_credentials as ic;
    let mut conn = pool.get().await.expect("connection");
    let changed = diesel::update(
        ic::table
            .filter(ic::integration_id.eq(integration_id))
            .filter(ic::credential_type.eq(credential_type)),
    )
    .set((
        ic::expires_at.eq(Some(Utc::now() + expires_in)),
        ic::updated_at.eq(Utc::now() - age),
    ))
    .execute(&mut conn)
    .await
    .expect("age credential");
    assert_eq!(changed, 1);
}

/// A GitHub delivery as the stream's handler sees it: claimed (`processing`, attempt 1),
/// `kind` as the webhook records it (`event.action`).
pub fn github_delivery(
    delivery_id: &str,
    routing_key: &str,
    kind: &str,
    payload: serde_json::Value,
) -> infragpt_actors::inbox::InboundEvent {
    infragpt_actors::testing::claimed_event(
        1,
        infragpt_actors::sources::GITHUB,
        delivery_id,
        routing_key,
        kind,
        payload,
    )
}
