//! The GitHub connector: a GitHub App installation. The install URL carries our signed
//! `state`; GitHub redirects back with `installation_id` (+ `setup_action`, `state`). The
//! installation token (one hour) is stored encrypted like any credential and refreshed by the
//! vault five minutes before it expires.

use std::sync::Arc;

use async_trait::async_trait;
use infragpt_actors::Secret;
use serde_json::json;

use super::app_client::{GITHUB, GithubApp, GithubAppError};
use crate::config::GitHubIntegrationConfig;
use crate::integrations::connector::{
    Authorized, CallbackParams, Connector, ConnectorError, CredentialSet, IssuedCredential,
    StoredAuthorization, Validation, WebhookSetup,
};
use crate::integrations::store::{Integration, IntegrationStore};

/// The installation token credential.
pub(crate) const INSTALLATION_TOKEN: &str = "installation_token";

/// The GitHub connector.
pub(crate) struct GithubConnector {
    app: Option<GithubApp>,
    app_slug: Option<String>,
    web_url: String,
    store: IntegrationStore,
    not_configured: String,
}

impl std::fmt::Debug for GithubConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubConnector")
            .field("app", &self.app)
            .field("app_slug", &self.app_slug)
            .finish_non_exhaustive()
    }
}

impl From<GithubAppError> for ConnectorError {
    fn from(e: GithubAppError) -> Self {
        match e {
            GithubAppError::NotConfigured(reason) => ConnectorError::NotConfigured {
                connector: GITHUB,
                reason,
            },
            GithubAppError::Rejected { status, message } => ConnectorError::Rejected {
                connector: GITHUB,
                reason: format!("HTTP {status}: {message}"),
            },
            GithubAppError::Unavailable(reason) => ConnectorError::Unavailable {
                connector: GITHUB,
                source: reason.into(),
            },
        }
    }
}

/// `https://api.github.com` → `https://github.com`; GitHub Enterprise `https://h/api/v3` →
/// `https://h`; anything else (a mock) as is.
fn web_url(api_url: &str) -> String {
    let api = api_url.trim_end_matches('/');
    if let Some(rest) = api.strip_prefix("https://api.github.com") {
        return format!("https://github.com{rest}");
    }
    api.strip_suffix("/api/v3").unwrap_or(api).to_owned()
}

fn installation_id(integration: &Integration) -> Result<i64, ConnectorError> {
    integration
        .external_id
        .as_deref()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ConnectorError::Rejected {
            connector: GITHUB,
            reason: "integration is not linked to an installation".to_owned(),
        })
}

impl GithubConnector {
    /// A connector from the `integrations.github` section. Without `app_id` and `private_key`
    /// it exists (so the API can say why) but every provider call fails with
    /// [`ConnectorError::NotConfigured`].
    pub fn new(
        config: &GitHubIntegrationConfig,
        store: IntegrationStore,
    ) -> Result<Arc<Self>, ConnectorError> {
        let app = match (config.app_id, &config.private_key) {
            (Some(id), Some(key)) if !key.is_empty() => {
                Some(GithubApp::new(id, key, &config.api_url)?)
            }
            _ => None,
        };
        Ok(Arc::new(Self {
            app,
            app_slug: config.app_slug.clone(),
            web_url: web_url(&config.api_url),
            store,
            not_configured: "integrations.github.app_id and private_key are required".to_owned(),
        }))
    }

    fn app(&self) -> Result<&GithubApp, ConnectorError> {
        self.app
            .as_ref()
            .ok_or_else(|| ConnectorError::NotConfigured {
                connector: GITHUB,
                reason: self.not_configured.clone(),
            })
    }
}

#[async_trait]
impl Connector for GithubConnector {
    fn connector_type(&self) -> &'static str {
        GITHUB
    }

    fn primary_credential(&self) -> &'static str {
        INSTALLATION_TOKEN
    }

    fn authorization_url(&self, state: &str) -> Result<String, ConnectorError> {
        let slug = self
            .app_slug
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ConnectorError::NotConfigured {
                connector: GITHUB,
                reason: "integrations.github.app_slug is required".to_owned(),
            })?;
        let mut url = url::Url::parse(&format!("{}/apps/{slug}/installations/new", self.web_url))
            .map_err(|e| ConnectorError::NotConfigured {
            connector: GITHUB,
            reason: format!("integrations.github.api_url: {e}"),
        })?;
        url.query_pairs_mut().append_pair("state", state);
        Ok(url.into())
    }

    async fn complete_authorization(
        &self,
        params: &CallbackParams,
    ) -> Result<Authorized, ConnectorError> {
        let installation_id: i64 = params
            .installation_id
            .as_deref()
            .ok_or_else(|| ConnectorError::BadCallback("installation_id is required".into()))?
            .parse()
            .map_err(|_| ConnectorError::BadCallback("installation_id must be a number".into()))?;
        let app = self.app()?;
        let info = app.installation(installation_id).await?;
        let token = app.installation_token(installation_id).await?;
        tracing::info!(installation_id, account = %info.account_login, "github installation authorized");
        Ok(Authorized {
            external_id: installation_id.to_string(),
            metadata: json!({
                "installation_id": installation_id,
                "account_login": info.account_login,
                "account_type": info.account_type,
                "permissions": info.permissions,
                "repository_selection": info.repository_selection,
                "suspended": info.suspended,
                "setup_action": params.setup_action,
            }),
            credentials: vec![IssuedCredential {
                credential_type: INSTALLATION_TOKEN.to_owned(),
                secret: token.token,
                expires_at: Some(token.expires_at),
            }],
        })
    }

    async fn after_stored(&self, stored: StoredAuthorization<'_>) -> Result<(), ConnectorError> {
        let installation_id = installation_id(stored.integration)?;
        let token = stored
            .authorized
            .credentials
            .iter()
            .find(|c| c.credential_type == INSTALLATION_TOKEN)
            .ok_or_else(|| ConnectorError::MissingCredential(INSTALLATION_TOKEN.to_owned()))?;
        let repos = self.app()?.repositories(&token.secret).await?;
        self.store
            .replace_repositories(installation_id, &repos)
            .await
            .map_err(|e| ConnectorError::Unavailable {
                connector: GITHUB,
                source: Box::new(e),
            })?;
        tracing::info!(
            installation_id,
            repositories = repos.len(),
            "github repositories recorded"
        );
        Ok(())
    }

    async fn validate(
        &self,
        _integration: &Integration,
        credential: &Secret,
    ) -> Result<Validation, ConnectorError> {
        match self.app()?.check_token(credential).await {
            Ok(count) => Ok(Validation {
                valid: true,
                detail: json!({ "repository_count": count }),
            }),
            Err(GithubAppError::Rejected { status, message }) => Ok(Validation {
                valid: false,
                detail: json!({ "error": format!("HTTP {status}: {message}") }),
            }),
            Err(e) => Err(e.into()),
        }
    }

    async fn refresh(
        &self,
        integration: &Integration,
        _current: &CredentialSet,
    ) -> Result<Vec<IssuedCredential>, ConnectorError> {
        let installation_id = installation_id(integration)?;
        let token = self.app()?.installation_token(installation_id).await?;
        tracing::info!(installation_id, "github installation token refreshed");
        Ok(vec![IssuedCredential {
            credential_type: INSTALLATION_TOKEN.to_owned(),
            secret: token.token,
            expires_at: Some(token.expires_at),
        }])
    }

    async fn revoke(
        &self,
        integration: &Integration,
        current: &CredentialSet,
    ) -> Result<(), ConnectorError> {
        if let Some(token) = current.get(INSTALLATION_TOKEN) {
            self.app()?.revoke_token(token).await?;
        }
        if let Ok(id) = installation_id(integration) {
            self.store.remove_all_repositories(id).await.map_err(|e| {
                ConnectorError::Unavailable {
                    connector: GITHUB,
                    source: Box::new(e),
                }
            })?;
        }
        Ok(())
    }

    async fn configure_webhooks(
        &self,
        _integration: &Integration,
    ) -> Result<WebhookSetup, ConnectorError> {
        Ok(WebhookSetup {
            delivery: "/webhooks/github".to_owned(),
            note: "GitHub App webhooks are set on the app; deliveries for this installation \
                   arrive at /webhooks/github signed with integrations.github.webhook_secret"
                .to_owned(),
        })
    }
}
