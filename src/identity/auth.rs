//! Clerk session authentication for the REST API: the [`Principal`] and [`OrgPrincipal`]
//! extractors.
//!
//! Add an [`Authenticator`] to the app once ([`Authenticator::configure`]; the identity
//! module does it), then take `Principal` or `OrgPrincipal` as a handler argument:
//!
//! ```ignore
//! async fn list(who: OrgPrincipal) -> Result<HttpResponse, ApiError> {
//!     // Scope every query to who.organization_id; never take an organization from the request.
//! }
//! ```
//!
//! | situation | answer |
//! |---|---|
//! | no `Authorization: Bearer`, malformed/expired/not-yet-valid token, bad signature, wrong `iss`/`azp`, unknown `kid`, `alg` other than RS256 | 401 `unauthorized` |
//! | JWKS cannot be fetched | 503 `unavailable` |
//! | no JWKS URL / issuer configured, or no `Authenticator` in the app (fail closed) | 503 `unavailable` |
//! | `OrgPrincipal`: token has no organization | 403 `forbidden` |
//! | `OrgPrincipal`: organization unknown or deleted, or the user is not a live member | 403 `forbidden` |
//! | admin-only route, caller's role (from the membership mirror) is not an admin role ([`crate::identity::roles`]) | 403 `forbidden` |
//!
//! The rejection reason ([`JwtError::reason`]) is logged as a field; the token never is.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use chrono::{DateTime, Utc};
use infragpt_actors::ids::OrganizationId;

use crate::config::ClerkConfig;
use crate::error::ApiError;
use crate::identity::jwt::{
    ClerkJwtConfig, ClerkJwtVerifier, JwksCache, JwksCacheConfig, JwtError, OrgClaim,
    VerifiedSession,
};
use crate::identity::roles::{self, OrgRole};
use crate::identity::store::{IdentityStore, OrgAccess, OrganizationRecord};
use crate::identity::{ClerkOrgId, ClerkSessionId, ClerkUserId};

/// Why an [`Authenticator`] could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// `identity.clerk.jwks_url` is not a URL.
    #[error("identity.clerk.jwks_url is not a valid URL: {0}")]
    JwksUrl(#[source] url::ParseError),
    /// The HTTP client for JWKS fetches could not be built.
    #[error("cannot build the JWKS HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Verifies session tokens and resolves organizations. Shared app data
/// (`web::Data<Authenticator>`) read by the [`Principal`] and [`OrgPrincipal`] extractors.
#[derive(Clone)]
pub struct Authenticator {
    verifier: Option<Arc<ClerkJwtVerifier>>,
    store: IdentityStore,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("configured", &self.verifier.is_some())
            .field("store", &self.store)
            .finish()
    }
}

impl Authenticator {
    /// An authenticator with `verifier`; `None` refuses every protected request (503).
    pub fn new(verifier: Option<Arc<ClerkJwtVerifier>>, store: IdentityStore) -> Self {
        Self { verifier, store }
    }

    /// Builds the verifier from `identity.clerk` (`jwks_url`, `issuer`, `authorized_parties`,
    /// `leeway_secs`). Without a JWKS URL or an issuer the result refuses every protected
    /// request (and [`Authenticator::is_configured`] is false, so start-up can warn).
    pub fn from_config(clerk: &ClerkConfig, store: IdentityStore) -> Result<Self, AuthConfigError> {
        let (Some(jwks_url), Some(jwt_config)) =
            (&clerk.jwks_url, ClerkJwtConfig::from_clerk_config(clerk))
        else {
            return Ok(Self::new(None, store));
        };
        let url: url::Url = jwks_url.parse().map_err(AuthConfigError::JwksUrl)?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(AuthConfigError::Client)?;
        let cache = JwksCache::new(url, client, JwksCacheConfig::default());
        let verifier = ClerkJwtVerifier::new(jwt_config, Arc::new(cache));
        Ok(Self::new(Some(Arc::new(verifier)), store))
    }

    /// True when session tokens can be verified.
    pub(crate) fn is_configured(&self) -> bool {
        self.verifier.is_some()
    }

    /// The identity store used to resolve organizations.
    pub fn store(&self) -> &IdentityStore {
        &self.store
    }

    /// Registers this authenticator as app-wide data, so every route (of any module) can
    /// use the extractors.
    pub fn configure(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(web::Data::new(self.clone()));
    }

    /// Verifies an `Authorization` header value at `now`.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Principal, ApiError> {
        let Some(verifier) = &self.verifier else {
            tracing::warn!(
                "request refused: session token verification is not configured (identity.clerk.jwks_url, identity.clerk.issuer)"
            );
            return Err(ApiError::unavailable("authentication is not configured"));
        };
        match verifier.verify_bearer(authorization, now).await {
            Ok(session) => Ok(Principal::from(session)),
            Err(e) => Err(reject(&e)),
        }
    }

    /// Resolves the principal's active organization to our organization row and the user's
    /// membership in it.
    pub(crate) async fn authorize_org(
        &self,
        principal: Principal,
    ) -> Result<OrgPrincipal, ApiError> {
        let Some(claim) = principal.org.clone() else {
            tracing::info!(user = %principal.user_id, "request refused: session has no active organization");
            return Err(ApiError::forbidden(
                "the session has no active organization",
            ));
        };
        let access = self
            .store
            .access(&principal.user_id, &claim.id)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "resolving the organization failed");
                ApiError::unavailable("identity store unavailable, retry later")
            })?;
        match access {
            OrgAccess::Member { organization, role } => Ok(OrgPrincipal {
                organization_id: organization.id,
                clerk_org_id: organization.clerk_id.clone(),
                role: OrgRole::new(role),
                organization,
                claim,
                principal,
            }),
            OrgAccess::UnknownOrganization => {
                tracing::info!(user = %principal.user_id, org = %claim.id, "request refused: organization unknown or deleted");
                Err(ApiError::forbidden("organization is not known"))
            }
            OrgAccess::NotMember => {
                tracing::info!(user = %principal.user_id, org = %claim.id, "request refused: not a member");
                Err(ApiError::forbidden("not a member of this organization"))
            }
        }
    }
}

/// 401 for a bad token, 503 when the keys cannot be had; the reason is logged.
fn reject(e: &JwtError) -> ApiError {
    match e {
        JwtError::JwksFetch(_) | JwtError::JwksUnavailable(_) => {
            tracing::error!(reason = e.reason(), detail = %e, "cannot verify session tokens");
            ApiError::unavailable("cannot verify session tokens right now")
        }
        JwtError::Missing => {
            tracing::info!(reason = e.reason(), "request without session token");
            ApiError::unauthorized("missing bearer token")
        }
        _ => {
            tracing::info!(reason = e.reason(), detail = %e, "session token rejected");
            ApiError::unauthorized("invalid session token")
        }
    }
}

/// A verified Clerk session: who is calling. Extract it in a handler to require a valid
/// `Authorization: Bearer <session token>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user (`sub`).
    pub user_id: ClerkUserId,
    /// The session (`sid`).
    pub session_id: ClerkSessionId,
    /// The active organization claimed by the token (v2 `o` or v1 `org_*`), not yet checked
    /// against our tables; use [`OrgPrincipal`] for organization-scoped routes.
    pub org: Option<OrgClaim>,
    /// When the token expires.
    pub expires_at: DateTime<Utc>,
}

impl Principal {
    /// The audit actor for this user: `user/{clerk user id}`.
    pub(crate) fn audit_actor(&self) -> String {
        format!("user/{}", self.user_id)
    }
}

impl From<VerifiedSession> for Principal {
    fn from(s: VerifiedSession) -> Self {
        Self {
            user_id: s.user_id,
            session_id: s.session_id,
            org: s.organization,
            expires_at: s.expires_at,
        }
    }
}

/// A verified session inside a verified organization: the organization comes from the token
/// only, exists (not deleted) in our `organizations` table, and the user is a live member.
/// Scope every query of an organization route to [`OrgPrincipal::organization_id`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OrgPrincipal {
    /// Our id of the organization (`organizations.id`).
    pub organization_id: OrganizationId,
    /// Clerk's id of the organization.
    pub clerk_org_id: ClerkOrgId,
    /// The user's role from our membership mirror (`org:admin`, `org:member`, ...), not the
    /// token's claim; see [`crate::identity::roles`].
    pub role: OrgRole,
    pub organization: OrganizationRecord,
    /// The organization claim as the token carried it (role, slug, permissions).
    pub claim: OrgClaim,
    /// The session.
    pub principal: Principal,
}

impl OrgPrincipal {
    /// The calling user.
    pub fn user_id(&self) -> &ClerkUserId {
        &self.principal.user_id
    }

    /// The audit actor for this user: `user/{clerk user id}`.
    pub(crate) fn audit_actor(&self) -> String {
        self.principal.audit_actor()
    }

    /// 403 unless the caller is an admin of the organization ([`roles::require_admin`]).
    pub(crate) fn require_admin(&self, req: &HttpRequest) -> Result<(), ApiError> {
        roles::require_admin(
            roles::Caller {
                organization_id: self.organization_id.0,
                user_id: self.user_id().as_str(),
                role: &self.role,
            },
            req,
        )
    }
}

type BoxedFuture<T> = Pin<Box<dyn Future<Output = Result<T, actix_web::Error>>>>;

fn authenticator(req: &HttpRequest) -> Result<web::Data<Authenticator>, ApiError> {
    req.app_data::<web::Data<Authenticator>>()
        .cloned()
        .ok_or_else(|| {
            tracing::error!("no Authenticator in the app: protected routes refuse every request");
            ApiError::unavailable("authentication is not configured")
        })
}

fn authorization(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

impl FromRequest for Principal {
    type Error = actix_web::Error;
    type Future = BoxedFuture<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let auth = authenticator(req);
        let header = authorization(req);
        Box::pin(async move {
            let auth = auth?;
            Ok(auth.authenticate(header.as_deref(), Utc::now()).await?)
        })
    }
}

impl FromRequest for OrgPrincipal {
    type Error = actix_web::Error;
    type Future = BoxedFuture<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let auth = authenticator(req);
        let header = authorization(req);
        Box::pin(async move {
            let auth = auth?;
            let principal = auth.authenticate(header.as_deref(), Utc::now()).await?;
            Ok(auth.authorize_org(principal).await?)
        })
    }
}

/// How the routes behind a Clerk session refuse a caller, in the OpenAPI document.
#[derive(Debug, utoipa::IntoResponses)]
pub enum SessionRefusals {
    /// Missing or invalid session token
    #[response(status = 401)]
    Unauthenticated(crate::error::ErrorBody),
    /// Not a live member of the token's organization (or not `org:admin` where the route says so)
    #[response(status = 403)]
    Forbidden(crate::error::ErrorBody),
    /// A store, the provider or the session check is unavailable: retry later
    #[response(status = 503)]
    Unavailable(crate::error::ErrorBody),
}
