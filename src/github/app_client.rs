//! The GitHub App client (octocrab): app JWT from the PEM private key, installation access
//! tokens, installation details, repositories.
//!
//! Every request uses a path relative to `integrations.github.api_url` (octocrab's
//! `base_uri`): octocrab only attaches credentials to relative URLs or `api.github.com`, so
//! tests can point the client at a local mock. Installation-token calls reuse the app client's
//! connection pool with a different authorization (`Octocrab::user_access_token`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use infragpt_actors::Secret;
use octocrab::Octocrab;
use serde::Deserialize;
use serde_json::Value;

use crate::github::normalize::RepoRef;

pub use crate::integrations::providers::GITHUB;

/// Maximum pages of repositories fetched (100 per page).
const MAX_REPO_PAGES: u32 = 50;

/// GitHub App client failures. Never carries a token or key.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum GithubAppError {
    /// `app_id` or `private_key` missing, or the key is not an RSA PEM.
    #[error("github app is not configured: {0}")]
    NotConfigured(String),
    /// GitHub answered with a client error (bad installation, revoked token...).
    #[error("github rejected the request ({status}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// GitHub's message.
        message: String,
    },
    /// GitHub could not be reached or failed.
    #[error("github is unavailable: {0}")]
    Unavailable(String),
}

impl GithubAppError {
    fn from_octocrab(what: &str, e: octocrab::Error) -> Self {
        match e {
            octocrab::Error::GitHub { source, .. } if source.status_code.is_client_error() => {
                Self::Rejected {
                    status: source.status_code.as_u16(),
                    message: format!("{what}: {}", source.message),
                }
            }
            octocrab::Error::GitHub { source, .. } => Self::Unavailable(format!(
                "{what}: HTTP {}: {}",
                source.status_code, source.message
            )),
            other => {
                // Display only the first line: octocrab appends backtraces to some errors.
                let text = other.to_string();
                let first = text.lines().next().unwrap_or("request failed").to_owned();
                Self::Unavailable(format!("{what}: {first}"))
            }
        }
    }
}

/// An installation access token.
#[derive(Clone)]
pub(crate) struct InstallationToken {
    /// The token (can be ~520 characters).
    pub token: Secret,
    /// When it stops working (one hour after issue).
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for InstallationToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallationToken")
            .field("token", &self.token)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Facts about an installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InstallationInfo {
    /// Installation id.
    pub id: i64,
    /// `account.login`.
    pub account_login: String,
    /// `account.type` (`User`, `Organization`).
    pub account_type: String,
    /// Granted permissions.
    pub permissions: BTreeMap<String, String>,
    /// `all` or `selected`.
    pub repository_selection: Option<String>,
    /// Whether GitHub reports it suspended.
    pub suspended: bool,
}

#[derive(Deserialize)]
struct TokenBody {
    token: String,
    expires_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct ReposPage {
    #[serde(default)]
    total_count: Option<i64>,
    repositories: Vec<RepoBody>,
}

#[derive(Deserialize)]
struct RepoBody {
    id: i64,
    full_name: String,
    #[serde(default)]
    private: bool,
}

/// The GitHub App client.
#[derive(Clone)]
pub(crate) struct GithubApp {
    app: Octocrab,
    api_url: String,
}

impl std::fmt::Debug for GithubApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubApp")
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

impl GithubApp {
    /// A client for app `app_id` signing its JWTs with `private_key` (RSA PEM), talking to
    /// `api_url`.
    pub fn new(app_id: u64, private_key: &Secret, api_url: &str) -> Result<Self, GithubAppError> {
        let key =
            octocrab::EncodingKey::from_rsa_pem(private_key.expose().as_bytes()).map_err(|_| {
                GithubAppError::NotConfigured("private_key is not an RSA PEM key".into())
            })?;
        let app = Octocrab::builder()
            .base_uri(api_url.trim_end_matches('/'))
            .map_err(|_| {
                GithubAppError::NotConfigured(format!("api_url {api_url:?} is not a URI"))
            })?
            .app(octocrab::models::AppId(app_id), key)
            .build()
            .map_err(|e| GithubAppError::NotConfigured(format!("octocrab: {e}")))?;
        Ok(Self {
            app,
            api_url: api_url.to_owned(),
        })
    }

    fn as_installation(&self, token: &Secret) -> Result<Octocrab, GithubAppError> {
        self.app
            .user_access_token(token.expose().to_owned())
            .map_err(|e| GithubAppError::from_octocrab("installation client", e))
    }

    /// `POST /app/installations/{id}/access_tokens` (app JWT).
    pub async fn installation_token(
        &self,
        installation_id: i64,
    ) -> Result<InstallationToken, GithubAppError> {
        let body: TokenBody = self
            .app
            .post(
                format!("/app/installations/{installation_id}/access_tokens"),
                None::<&()>,
            )
            .await
            .map_err(|e| GithubAppError::from_octocrab("creating an installation token", e))?;
        Ok(InstallationToken {
            token: Secret::new(body.token),
            expires_at: body.expires_at,
        })
    }

    /// `GET /app/installations/{id}` (app JWT).
    pub async fn installation(
        &self,
        installation_id: i64,
    ) -> Result<InstallationInfo, GithubAppError> {
        let body: Value = self
            .app
            .get(format!("/app/installations/{installation_id}"), None::<&()>)
            .await
            .map_err(|e| GithubAppError::from_octocrab("reading the installation", e))?;
        let text = |p: &str| body.pointer(p).and_then(Value::as_str).map(str::to_owned);
        let permissions = body
            .get("permissions")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        Ok(InstallationInfo {
            id: body["id"].as_i64().unwrap_or(installation_id),
            account_login: text("/account/login").ok_or_else(|| {
                GithubAppError::Unavailable("installation without account.login".into())
            })?,
            account_type: text("/account/type").unwrap_or_else(|| "User".to_owned()),
            permissions,
            repository_selection: text("/repository_selection"),
            suspended: !body["suspended_at"].is_null(),
        })
    }

    /// `GET /installation/repositories` (installation token), every page.
    pub async fn repositories(&self, token: &Secret) -> Result<Vec<RepoRef>, GithubAppError> {
        let client = self.as_installation(token)?;
        let mut out = Vec::new();
        for page in 1..=MAX_REPO_PAGES {
            let body: ReposPage = client
                .get(
                    format!("/installation/repositories?per_page=100&page={page}"),
                    None::<&()>,
                )
                .await
                .map_err(|e| GithubAppError::from_octocrab("listing repositories", e))?;
            let n = body.repositories.len();
            out.extend(body.repositories.into_iter().map(|r| RepoRef {
                id: r.id,
                full_name: r.full_name,
                private: r.private,
            }));
            let total = body.total_count.unwrap_or(0);
            if n < 100 || i64::try_from(out.len()).unwrap_or(i64::MAX) >= total {
                break;
            }
        }
        Ok(out)
    }

    /// Checks a token: `GET /installation/repositories?per_page=1`; returns the repository
    /// count.
    pub(crate) async fn check_token(&self, token: &Secret) -> Result<i64, GithubAppError> {
        let client = self.as_installation(token)?;
        let body: ReposPage = client
            .get("/installation/repositories?per_page=1", None::<&()>)
            .await
            .map_err(|e| GithubAppError::from_octocrab("checking the installation token", e))?;
        Ok(body
            .total_count
            .unwrap_or_else(|| i64::try_from(body.repositories.len()).unwrap_or(0)))
    }

    /// `DELETE /installation/token`: revokes an installation token. An already invalid token
    /// counts as revoked.
    pub async fn revoke_token(&self, token: &Secret) -> Result<(), GithubAppError> {
        let client = self.as_installation(token)?;
        let response = client
            ._delete("/installation/token", None::<&()>)
            .await
            .map_err(|e| GithubAppError::from_octocrab("revoking the installation token", e))?;
        let status = response.status();
        if status.is_success() || status.as_u16() == 401 {
            Ok(())
        } else if status.is_client_error() {
            Err(GithubAppError::Rejected {
                status: status.as_u16(),
                message: "revoking the installation token".into(),
            })
        } else {
            Err(GithubAppError::Unavailable(format!(
                "revoking the installation token: HTTP {status}"
            )))
        }
    }
}
