//! Clerk session token (JWT) verification.
//!
//! * Only RS256 is accepted. The header's `alg` is read and checked before any key is looked
//!   up, so `none`, HS256 (including HS256 "signed" with the RSA public key as HMAC secret) and
//!   every other algorithm are refused with [`JwtError::UnsupportedAlg`].
//! * Keys come from Clerk's JWKS URL through a [`JwksCache`]. Keys are cached without an age
//!   limit; a token with an unknown `kid` triggers a refetch, at most once per
//!   [`JwksCacheConfig::min_refetch_interval`] (default 30 s), which replaces the whole set (so
//!   keys Clerk removed are dropped then). A failed fetch is an error, never "accept".
//! * Time claims are checked against a caller-supplied `now` with a leeway (default 5 s):
//!   `exp` (required), `nbf` and `iat` (when present).
//! * `iss` must equal the configured issuer exactly. `azp`, when the token has one, must be in
//!   the configured authorized parties; **an empty list means no `azp` check** (useful in
//!   development; production should list its front-end origins). `aud` is not checked: Clerk
//!   session tokens carry none unless a custom template adds one.
//! * Organizations: v2 tokens (`v: 2`) carry `o: {id, rol, slg, per}` where `per` is one
//!   comma-joined string; v1 tokens carry flat `org_id`, `org_role`, `org_slug`
//!   (`org_permissions` as an array). Both map to [`OrgClaim`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::{ClerkOrgId, ClerkSessionId, ClerkUserId};
use crate::config::ClerkConfig;

/// Default clock-skew allowance for `exp`, `nbf` and `iat`.
pub(crate) const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);
/// Default minimum time between two JWKS fetches.
pub(crate) const DEFAULT_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Default timeout of one JWKS request.
pub(crate) const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a session token was refused. The HTTP layer logs [`JwtError::reason`] and answers 401
/// (or 503 for the JWKS variants, at its choice); it never shows the details to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// No token was presented.
    #[error("no session token")]
    Missing,
    /// The token is not a well-formed JWT (segments, base64url, JSON, header fields).
    #[error("malformed session token: {0}")]
    Malformed(String),
    /// A required claim is absent.
    #[error("session token lacks the {0} claim")]
    MissingClaim(&'static str),
    /// The header names an algorithm other than RS256.
    #[error("unsupported JWT algorithm {0:?} (only RS256 is accepted)")]
    UnsupportedAlg(String),
    /// No JWKS key has this `kid`, even after a refetch (or a refetch was rate-limited).
    #[error("no signing key with kid {0:?}")]
    UnknownKid(String),
    /// The signature does not verify.
    #[error("session token signature does not verify")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("session token expired at {0}")]
    Expired(DateTime<Utc>),
    /// `nbf` or `iat` is in the future (beyond the leeway).
    #[error("session token not valid yet ({claim} = {at})")]
    NotYetValid {
        /// `nbf` or `iat`.
        claim: &'static str,
        /// Its value.
        at: DateTime<Utc>,
    },
    /// `iss` is not the configured issuer.
    #[error("session token issuer {0:?} is not the configured issuer")]
    BadIssuer(String),
    /// `azp` is not one of the authorized parties.
    #[error("session token azp {0:?} is not an authorized party")]
    BadAzp(String),
    /// Fetching or parsing the JWKS failed.
    #[error("fetching JWKS failed: {0}")]
    JwksFetch(String),
    /// No keys are cached and the last fetch failed less than the refetch interval ago.
    #[error("JWKS unavailable (last fetch failed: {0}); retrying later")]
    JwksUnavailable(String),
}

impl JwtError {
    /// A short stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Missing => "missing",
            JwtError::Malformed(_) => "malformed",
            JwtError::MissingClaim(_) => "missing_claim",
            JwtError::UnsupportedAlg(_) => "unsupported_alg",
            JwtError::UnknownKid(_) => "unknown_kid",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired(_) => "expired",
            JwtError::NotYetValid { .. } => "not_yet_valid",
            JwtError::BadIssuer(_) => "bad_issuer",
            JwtError::BadAzp(_) => "bad_azp",
            JwtError::JwksFetch(_) => "jwks_fetch",
            JwtError::JwksUnavailable(_) => "jwks_unavailable",
        }
    }
}

/// The organization a session is active in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgClaim {
    /// `o.id` / `org_id`
    pub id: ClerkOrgId,
    /// The role as sent: v2 sends `admin`, v1 sends `org:admin`. See [`OrgClaim::normalized_role`].
    pub role: String,
    /// `o.slg` / `org_slug`
    pub slug: Option<String>,
    /// `o.per` split on commas (v2) or `org_permissions` (v1).
    pub permissions: Vec<String>,
}

impl OrgClaim {
    /// The role without the `org:` prefix (`admin`, `member`, custom roles), the same for v1
    /// and v2 tokens.
    pub fn normalized_role(&self) -> &str {
        self.role.strip_prefix("org:").unwrap_or(&self.role)
    }
}

/// What a verified session token tells us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSession {
    /// `sub`
    pub user_id: ClerkUserId,
    /// `sid`
    pub session_id: ClerkSessionId,
    /// The active organization, if any.
    pub organization: Option<OrgClaim>,
    /// `exp`
    pub expires_at: DateTime<Utc>,
}

/// Settings of [`ClerkJwtVerifier`].
#[derive(Debug, Clone)]
pub struct ClerkJwtConfig {
    /// Expected `iss` (the Clerk Frontend API URL, e.g. `https://clerk.example.com`).
    pub issuer: String,
    /// Accepted `azp` values (front-end origins). Empty: no `azp` check.
    pub authorized_parties: Vec<String>,
    /// Clock-skew allowance for `exp`, `nbf`, `iat`.
    pub leeway: Duration,
}

impl ClerkJwtConfig {
    /// Config with the default leeway and no authorized-party check.
    pub fn new(issuer: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            authorized_parties: Vec::new(),
            leeway: DEFAULT_LEEWAY,
        }
    }

    /// The settings from `identity.clerk`, or `None` when no issuer is configured.
    pub(crate) fn from_clerk_config(clerk: &ClerkConfig) -> Option<Self> {
        let issuer = clerk.issuer.clone()?;
        Some(Self {
            issuer,
            authorized_parties: clerk.authorized_parties.clone(),
            leeway: Duration::from_secs(clerk.leeway_secs),
        })
    }
}

/// Settings of [`JwksCache`].
#[derive(Debug, Clone)]
pub struct JwksCacheConfig {
    /// Minimum time between two fetches (successful or not).
    pub min_refetch_interval: Duration,
    /// Timeout of one fetch.
    pub fetch_timeout: Duration,
}

impl Default for JwksCacheConfig {
    fn default() -> Self {
        Self {
            min_refetch_interval: DEFAULT_MIN_REFETCH_INTERVAL,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
        }
    }
}

/// Signing keys by `kid`.
pub type KeyMap = HashMap<String, Arc<DecodingKey>>;

#[derive(Default)]
struct FetchState {
    fetched: bool,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

/// Clerk's signing keys, fetched from the JWKS URL and cached.
pub struct JwksCache {
    url: Url,
    client: reqwest::Client,
    config: JwksCacheConfig,
    // Known keys: read without waiting, even while a fetch is in flight.
    keys: parking_lot::RwLock<Arc<KeyMap>>,
    // Held across a fetch, so concurrent requests with a new kid wait for one fetch instead
    // of each starting their own.
    fetch: tokio::sync::Mutex<FetchState>,
    fetches: AtomicU64,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("url", &self.url.as_str())
            .field("config", &self.config)
            .field("fetches", &self.fetch_count())
            .finish()
    }
}

impl JwksCache {
    /// A cache that fetches from `url` with `client` on first use.
    pub fn new(url: Url, client: reqwest::Client, config: JwksCacheConfig) -> Self {
        Self {
            url,
            client,
            config,
            keys: parking_lot::RwLock::new(Arc::new(KeyMap::new())),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
            fetches: AtomicU64::new(0),
        }
    }

    /// How many fetches were attempted so far (for tests and metrics).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The key with this `kid`: from the cache, or after a (rate-limited) refetch.
    pub(crate) async fn key_for(&self, kid: &str) -> Result<Arc<DecodingKey>, JwtError> {
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        let mut state = self.fetch.lock().await;
        // Another request may have fetched while this one waited for the lock.
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        let now = Instant::now();
        if let Some(last) = state.last_attempt
            && now.duration_since(last) < self.config.min_refetch_interval
        {
            return Err(match (&state.last_error, state.fetched) {
                (Some(error), false) => JwtError::JwksUnavailable(error.clone()),
                _ => JwtError::UnknownKid(kid.to_owned()),
            });
        }
        state.last_attempt = Some(now);
        match self.fetch_keys().await {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "fetched JWKS");
                *self.keys.write() = Arc::new(keys);
                state.fetched = true;
                state.last_error = None;
            }
            Err(error) => {
                tracing::warn!(url = %self.url, error = %error, "JWKS fetch failed");
                state.last_error = Some(error.to_string());
                return Err(error);
            }
        }
        self.cached(kid)
            .ok_or_else(|| JwtError::UnknownKid(kid.to_owned()))
    }

    fn cached(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.keys.read().get(kid).cloned()
    }

    async fn fetch_keys(&self) -> Result<KeyMap, JwtError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let response = self
            .client
            .get(self.url.clone())
            .timeout(self.config.fetch_timeout)
            .send()
            .await
            .map_err(|e| JwtError::JwksFetch(format!("request to {} failed: {e}", self.url)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(JwtError::JwksFetch(format!(
                "{} answered HTTP {status}",
                self.url
            )));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| JwtError::JwksFetch(format!("reading {} failed: {e}", self.url)))?;
        parse_jwks(&body)
    }
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<Value>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(rename = "use", default)]
    key_use: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

/// Parses a JWKS document, keeping RSA signing keys usable with RS256 (the keys by `kid`).
pub fn parse_jwks(body: &[u8]) -> Result<KeyMap, JwtError> {
    let jwks: RawJwks = serde_json::from_slice(body)
        .map_err(|e| JwtError::JwksFetch(format!("JWKS is not valid JSON: {e}")))?;
    let mut keys = HashMap::new();
    for raw in jwks.keys {
        let Ok(jwk) = serde_json::from_value::<RawJwk>(raw) else {
            tracing::debug!("skipping unreadable JWKS entry");
            continue;
        };
        let usable = jwk.kty == "RSA"
            && jwk.alg.as_deref().is_none_or(|a| a == "RS256")
            && jwk.key_use.as_deref().is_none_or(|u| u == "sig");
        let (Some(kid), Some(n), Some(e), true) = (jwk.kid, jwk.n, jwk.e, usable) else {
            tracing::debug!(kty = %jwk.kty, "skipping JWKS entry that is not an RS256 signing key with a kid");
            continue;
        };
        match DecodingKey::from_rsa_components(&n, &e) {
            Ok(key) => {
                keys.insert(kid, Arc::new(key));
            }
            Err(error) => {
                tracing::warn!(kid = %kid, error = %error, "skipping invalid JWKS RSA key")
            }
        }
    }
    if keys.is_empty() {
        return Err(JwtError::JwksFetch(
            "JWKS holds no usable RS256 signing key".to_owned(),
        ));
    }
    Ok(keys)
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Deserialize)]
struct RawOrgV2 {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    rol: Option<String>,
    #[serde(default)]
    slg: Option<String>,
    #[serde(default)]
    per: Option<String>,
}

#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    v: Option<u32>,
    #[serde(default)]
    o: Option<RawOrgV2>,
    #[serde(default)]
    org_id: Option<String>,
    #[serde(default)]
    org_role: Option<String>,
    #[serde(default)]
    org_slug: Option<String>,
    #[serde(default)]
    org_permissions: Option<Vec<String>>,
}

/// Verifies Clerk session tokens.
#[derive(Debug)]
pub struct ClerkJwtVerifier {
    config: ClerkJwtConfig,
    jwks: Arc<JwksCache>,
    validation: Validation,
}

impl ClerkJwtVerifier {
    /// A verifier using `jwks` for keys.
    pub fn new(config: ClerkJwtConfig, jwks: Arc<JwksCache>) -> Self {
        let mut validation = Validation::new(Algorithm::RS256);
        // Time, issuer and audience checks are done below against the caller's clock, so
        // they can be tested and reported precisely; jsonwebtoken checks the signature only.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        Self {
            config,
            jwks,
            validation,
        }
    }

    /// The key cache (shared, e.g. for metrics).
    pub fn jwks(&self) -> &Arc<JwksCache> {
        &self.jwks
    }

    /// Verifies an `Authorization` header value (`Bearer <token>`).
    pub async fn verify_bearer(
        &self,
        authorization: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<VerifiedSession, JwtError> {
        let token = authorization
            .and_then(crate::http::bearer_token)
            .ok_or(JwtError::Missing)?;
        self.verify(token, now).await
    }

    /// Verifies a session token at time `now`.
    pub async fn verify(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<VerifiedSession, JwtError> {
        let kid = token_kid(token)?;
        let key = self.jwks.key_for(&kid).await?;
        self.verify_with_key(token, &key, now)
    }

    /// Verifies a session token with `key` (the one its `kid` names) at time `now`: the
    /// signature (RS256 only), then the claims. No I/O, so the fuzz targets reach it.
    pub fn verify_with_key(
        &self,
        token: &str,
        key: &DecodingKey,
        now: DateTime<Utc>,
    ) -> Result<VerifiedSession, JwtError> {
        let data = jsonwebtoken::decode::<RawClaims>(token.trim(), key, &self.validation)
            .map_err(map_jwt_error)?;
        self.check_claims(data.claims, now)
    }

    /// The claim checks alone, on a claims document whose signature was verified already
    /// (the fuzz targets reach the claim parsing through it without signing every input).
    pub fn check_claims_json(
        &self,
        claims: &[u8],
        now: DateTime<Utc>,
    ) -> Result<VerifiedSession, JwtError> {
        let claims: RawClaims = serde_json::from_slice(claims)
            .map_err(|e| JwtError::Malformed(format!("claims: {e}")))?;
        self.check_claims(claims, now)
    }

    fn check_claims(
        &self,
        claims: RawClaims,
        now: DateTime<Utc>,
    ) -> Result<VerifiedSession, JwtError> {
        let now_ts = now.timestamp();
        let leeway = i64::try_from(self.config.leeway.as_secs()).unwrap_or(i64::MAX);

        let exp = claims.exp.ok_or(JwtError::MissingClaim("exp"))?;
        let expires_at = timestamp(exp, "exp")?;
        if now_ts > exp.saturating_add(leeway) {
            return Err(JwtError::Expired(expires_at));
        }
        for (claim, value) in [("nbf", claims.nbf), ("iat", claims.iat)] {
            if let Some(value) = value
                && value > now_ts.saturating_add(leeway)
            {
                return Err(JwtError::NotYetValid {
                    claim,
                    at: timestamp(value, claim)?,
                });
            }
        }

        let iss = claims.iss.ok_or(JwtError::MissingClaim("iss"))?;
        if iss != self.config.issuer {
            return Err(JwtError::BadIssuer(iss));
        }
        if let Some(azp) = claims.azp
            && !self.config.authorized_parties.is_empty()
            && !self.config.authorized_parties.contains(&azp)
        {
            return Err(JwtError::BadAzp(azp));
        }

        let sub = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(JwtError::MissingClaim("sub"))?;
        let sid = claims
            .sid
            .filter(|s| !s.is_empty())
            .ok_or(JwtError::MissingClaim("sid"))?;

        let organization = match (claims.o, claims.org_id) {
            (Some(o), _) => {
                // v2. `o` without an id is not an organization claim.
                match o.id.filter(|id| !id.is_empty()) {
                    Some(id) => Some(OrgClaim {
                        id: ClerkOrgId::new(id),
                        role: o.rol.ok_or(JwtError::MissingClaim("o.rol"))?,
                        slug: o.slg,
                        permissions: o.per.as_deref().map(split_permissions).unwrap_or_default(),
                    }),
                    None => return Err(JwtError::MissingClaim("o.id")),
                }
            }
            (None, Some(org_id)) if !org_id.is_empty() => Some(OrgClaim {
                id: ClerkOrgId::new(org_id),
                role: claims.org_role.ok_or(JwtError::MissingClaim("org_role"))?,
                slug: claims.org_slug,
                permissions: claims.org_permissions.unwrap_or_default(),
            }),
            _ => None,
        };
        if claims.v.is_some_and(|v| v > 2) {
            tracing::debug!(version = claims.v, "session token version newer than 2");
        }

        Ok(VerifiedSession {
            user_id: ClerkUserId::new(sub),
            session_id: ClerkSessionId::new(sid),
            organization,
            expires_at,
        })
    }
}

/// The `kid` of a session token's header, after the checks that need no key: three
/// dot-separated parts, a base64url JSON header, `alg` RS256 (`none`, HS256 and the rest are
/// refused before any key is looked up) and a non-empty `kid`.
pub fn token_kid(token: &str) -> Result<String, JwtError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(JwtError::Missing);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed(
            "a JWT has three dot-separated parts".into(),
        ));
    };
    let header_json = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| JwtError::Malformed("header is not base64url".into()))?;
    let header: RawHeader = serde_json::from_slice(&header_json)
        .map_err(|e| JwtError::Malformed(format!("header: {e}")))?;
    if header.alg != "RS256" {
        return Err(JwtError::UnsupportedAlg(header.alg));
    }
    header
        .kid
        .filter(|k| !k.is_empty())
        .ok_or_else(|| JwtError::Malformed("header has no kid".into()))
}

fn split_permissions(per: &str) -> Vec<String> {
    per.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

fn timestamp(value: i64, claim: &'static str) -> Result<DateTime<Utc>, JwtError> {
    DateTime::from_timestamp(value, 0)
        .ok_or_else(|| JwtError::Malformed(format!("{claim} is out of range")))
}

fn map_jwt_error(error: jsonwebtoken::errors::Error) -> JwtError {
    match error.kind() {
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            JwtError::UnsupportedAlg("(rejected by verifier)".into())
        }
        ErrorKind::Json(e) => JwtError::Malformed(format!("claims: {e}")),
        ErrorKind::Base64(_) => JwtError::Malformed("not base64url".into()),
        ErrorKind::Utf8(_) => JwtError::Malformed("not UTF-8".into()),
        other => JwtError::Malformed(format!("{other:?}")),
    }
}
