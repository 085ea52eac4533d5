//! The Slack connector: OAuth v2 install (`oauth.v2.access`, with token rotation when Slack
//! returns `refresh_token` + `expires_in`), `auth.test` validation, `auth.revoke`.
//!
//! Calls go through the same slack-morphism client type as the Web API adapter
//! ([`crate::slack::web::web_client`]), so the base URL can be the simulator's plain `http://`
//! address, and `auth.test` is the adapter's own call.
//!
//! `oauth.v2.access` is sent as a GET with the app credentials and the code (or refresh token)
//! as query parameters, which Slack accepts for every method: slack-morphism's own
//! `oauth2_access` has no `refresh_token`/`expires_in` (token rotation) and logs the request
//! URL at debug level, while a request marked sensitive is logged with its URL redacted. Its
//! answer is read as JSON and only the fields used are taken, as before.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{Duration, Utc};
use infragpt_actors::Secret;
use serde_json::{Value, json};
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::{SlackApiToken, SlackApiTokenValue};
use slack_morphism::{SlackClientApiCallContext, SlackClientHttpApiUri, SlackClientHttpConnector};
use uuid::Uuid;

use crate::config::SlackIntegrationConfig;
use crate::integrations::connector::{
    Authorized, CallbackParams, Connector, ConnectorError, CredentialSet, IssuedCredential,
    StoredAuthorization, Validation, WebhookSetup,
};
use crate::integrations::store::{Integration, IntegrationStore, SlackWorkspaceRecord};
use crate::slack::http_connector::SlackHyperClient;
use crate::slack::web::{WebSettings, auth_test, web_client};

pub use crate::integrations::providers::SLACK;

/// The bot token credential.
pub(crate) const BOT_TOKEN: &str = "bot_token";
/// The rotation refresh token credential.
pub(crate) const REFRESH_TOKEN: &str = "refresh_token";
/// How long one call to Slack may take.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// Scopes requested when none are configured.
const DEFAULT_SCOPES: &[&str] = &[
    "app_mentions:read",
    "channels:history",
    "channels:read",
    "chat:write",
    "groups:history",
    "im:history",
    "reactions:write",
    "users:read",
    "users:read.email",
];

/// Slack connector settings.
#[derive(Debug, Clone)]
pub(crate) struct SlackConnectorConfig {
    /// OAuth client id.
    pub client_id: Option<String>,
    /// OAuth client secret.
    pub client_secret: Option<Secret>,
    /// Redirect URL registered with the app.
    pub redirect_url: Option<String>,
    /// Bot scopes.
    pub scopes: Vec<String>,
    /// Web API base (`https://slack.com/api/` or a simulator's).
    pub api_url: String,
}

impl SlackConnectorConfig {
    /// From the `integrations.slack` section and `slack.api_url`.
    pub fn from_config(section: &SlackIntegrationConfig, api_url: &str) -> Self {
        Self {
            client_id: section.client_id.clone(),
            client_secret: section.client_secret.clone(),
            redirect_url: section.redirect_url.clone(),
            scopes: section.scopes.clone(),
            api_url: api_url.to_owned(),
        }
    }
}

/// The Slack connector.
pub(crate) struct SlackConnector {
    config: SlackConnectorConfig,
    client: SlackHyperClient,
    settings: WebSettings,
    store: IntegrationStore,
}

impl std::fmt::Debug for SlackConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackConnector")
            .field("api_url", &self.config.api_url)
            .field("client_id", &self.config.client_id)
            .finish_non_exhaustive()
    }
}

/// Why a call to Slack got no answer from Slack itself.
#[derive(Debug, thiserror::Error)]
enum CallError {
    /// Slack (or a proxy) answered with an HTTP error status.
    #[error("{method} answered HTTP {status}")]
    Status {
        /// The Web API method.
        method: &'static str,
        /// The status.
        status: http::StatusCode,
    },
    /// The answer is not the JSON Slack sends. (Never the body: it may hold tokens.)
    #[error("{method}: unreadable answer: {source}")]
    Unreadable {
        /// The Web API method.
        method: &'static str,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The request could not be sent or its answer not received.
    #[error("{method}: {source}")]
    Transport {
        /// The Web API method.
        method: &'static str,
        /// The client's error.
        #[source]
        source: SlackClientError,
    },
    /// No answer within [`CALL_TIMEOUT`].
    #[error("{method} timed out after {after:?}")]
    Timeout {
        /// The Web API method.
        method: &'static str,
        /// The limit.
        after: std::time::Duration,
    },
}

fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ConnectorError {
    ConnectorError::Unavailable {
        connector: SLACK,
        source: e.into(),
    }
}

fn rejected(reason: impl Into<String>) -> ConnectorError {
    ConnectorError::Rejected {
        connector: SLACK,
        reason: reason.into(),
    }
}

/// Slack's `ok: false` answers are rejections (their error code is Slack's message); the
/// rest means Slack could not be asked.
fn call_failed(method: &'static str, e: SlackClientError) -> ConnectorError {
    match e {
        SlackClientError::ApiError(api) => rejected(format!("{method}: {}", api.code)),
        SlackClientError::HttpError(h) => unavailable(CallError::Status {
            method,
            status: h.status_code,
        }),
        SlackClientError::RateLimitError(_) => unavailable(CallError::Status {
            method,
            status: http::StatusCode::TOO_MANY_REQUESTS,
        }),
        SlackClientError::ProtocolError(p) => unavailable(CallError::Unreadable {
            method,
            source: p.json_error,
        }),
        other => unavailable(CallError::Transport {
            method,
            source: other,
        }),
    }
}

impl SlackConnector {
    /// A connector with its own slack-morphism client for `config.api_url`.
    pub fn new(
        config: SlackConnectorConfig,
        store: IntegrationStore,
    ) -> Result<Arc<Self>, ConnectorError> {
        let settings = WebSettings::default();
        let client = web_client(&config.api_url, &settings).map_err(|e| ConnectorError::Setup {
            connector: SLACK,
            source: Box::new(e),
        })?;
        Ok(Arc::new(Self {
            config,
            client,
            settings,
            store,
        }))
    }

    fn client(&self) -> Result<(&str, &Secret), ConnectorError> {
        match (&self.config.client_id, &self.config.client_secret) {
            (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => Ok((id, secret)),
            _ => Err(ConnectorError::NotConfigured {
                connector: SLACK,
                reason: "integrations.slack.client_id and client_secret are required".to_owned(),
            }),
        }
    }

    /// Runs one call within [`CALL_TIMEOUT`].
    async fn bounded<T>(
        method: &'static str,
        call: impl std::future::Future<Output = Result<T, SlackClientError>>,
    ) -> Result<T, ConnectorError> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(result) => result.map_err(|e| call_failed(method, e)),
            Err(_) => Err(unavailable(CallError::Timeout {
                method,
                after: CALL_TIMEOUT,
            })),
        }
    }

    /// `oauth.v2.access` with the app's credentials and `params` (a code, or a refresh token);
    /// `Ok(body)` only when `ok: true`.
    async fn oauth_access(&self, params: &[(&str, &str)]) -> Result<Value, ConnectorError> {
        const METHOD: &str = "oauth.v2.access";
        let (client_id, secret) = self.client()?;
        let mut query = vec![
            ("client_id", Some(client_id)),
            ("client_secret", Some(secret.expose())),
        ];
        query.extend(params.iter().map(|&(k, v)| (k, Some(v))));
        let connector = &self.client.http_api.connector;
        let url = connector
            .create_method_uri_path(METHOD)
            .and_then(|base| SlackClientHttpApiUri::create_url_with_params(base, &query))
            .map_err(|e| call_failed(METHOD, e))?;
        let span = tracing::debug_span!("slack_oauth", method = METHOD);
        let context = SlackClientApiCallContext {
            rate_control_params: None,
            token: None,
            tracing_span: &span,
            // The query holds the client secret and the code or refresh token.
            is_sensitive_url: true,
        };
        Self::bounded(METHOD, connector.http_get_uri::<Value>(url, context)).await
    }

    /// The credentials in an `oauth.v2.access` answer.
    fn issued(body: &Value) -> Result<Vec<IssuedCredential>, ConnectorError> {
        let token = body["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| rejected("oauth.v2.access returned no access_token"))?;
        let expires_at = body["expires_in"]
            .as_i64()
            .map(|secs| Utc::now() + Duration::seconds(secs));
        let mut out = vec![IssuedCredential {
            credential_type: BOT_TOKEN.to_owned(),
            secret: Secret::new(token),
            expires_at,
        }];
        if let Some(refresh) = body["refresh_token"].as_str().filter(|t| !t.is_empty()) {
            out.push(IssuedCredential {
                credential_type: REFRESH_TOKEN.to_owned(),
                secret: Secret::new(refresh),
                expires_at: None,
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl Connector for SlackConnector {
    fn connector_type(&self) -> &'static str {
        SLACK
    }

    fn primary_credential(&self) -> &'static str {
        BOT_TOKEN
    }

    fn authorization_url(&self, state: &str) -> Result<String, ConnectorError> {
        let (client_id, _) = self.client()?;
        // `https://slack.com/api/` → `https://slack.com/oauth/v2/authorize`.
        let api = self.config.api_url.trim_end_matches('/');
        let root = api.strip_suffix("/api").unwrap_or(api);
        let scopes = if self.config.scopes.is_empty() {
            DEFAULT_SCOPES.join(",")
        } else {
            self.config.scopes.join(",")
        };
        let mut url = url::Url::parse(&format!("{root}/oauth/v2/authorize")).map_err(|e| {
            ConnectorError::NotConfigured {
                connector: SLACK,
                reason: format!("slack.api_url: {e}"),
            }
        })?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("client_id", client_id);
            q.append_pair("scope", &scopes);
            if let Some(redirect) = &self.config.redirect_url {
                q.append_pair("redirect_uri", redirect);
            }
            q.append_pair("state", state);
        }
        Ok(url.into())
    }

    async fn complete_authorization(
        &self,
        params: &CallbackParams,
    ) -> Result<Authorized, ConnectorError> {
        let code = params
            .code
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| ConnectorError::BadCallback("code is required".to_owned()))?;
        let mut params = vec![("code", code)];
        if let Some(redirect) = &self.config.redirect_url {
            params.push(("redirect_uri", redirect.as_str()));
        }
        let body = self.oauth_access(&params).await?;
        let team_id = body["team"]["id"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| rejected("oauth.v2.access returned no team.id"))?
            .to_owned();
        let credentials = Self::issued(&body)?;
        let metadata = json!({
            "team_id": team_id,
            "team_name": body["team"]["name"],
            "bot_user_id": body["bot_user_id"],
            "app_id": body["app_id"],
            "scope": body["scope"],
            "authed_user": body["authed_user"]["id"],
            "enterprise_id": body["enterprise"]["id"],
            "token_rotation": body["refresh_token"].is_string(),
        });
        tracing::info!(team_id = %team_id, rotation = body["refresh_token"].is_string(), "slack workspace authorized");
        Ok(Authorized {
            external_id: team_id,
            metadata,
            credentials,
        })
    }

    async fn after_stored(&self, stored: StoredAuthorization<'_>) -> Result<(), ConnectorError> {
        let Some(token_ref) = stored.credential_ids.get(BOT_TOKEN).copied() else {
            return Err(ConnectorError::MissingCredential(BOT_TOKEN.to_owned()));
        };
        let meta = &stored.authorized.metadata;
        let text = |k: &str| meta[k].as_str().map(str::to_owned);
        self.store
            .upsert_slack_workspace(&SlackWorkspaceRecord {
                team_id: stored.authorized.external_id.clone(),
                team_name: text("team_name"),
                bot_user_id: text("bot_user_id"),
                app_id: text("app_id"),
                organization_id: stored.integration.organization_id,
                token_ref,
            })
            .await
            .map_err(unavailable)
    }

    async fn validate(
        &self,
        _integration: &Integration,
        credential: &Secret,
    ) -> Result<Validation, ConnectorError> {
        let token = SlackApiToken::new(SlackApiTokenValue(credential.expose().to_owned()));
        let checked = tokio::time::timeout(
            CALL_TIMEOUT,
            auth_test(&self.client, &self.settings, &token),
        )
        .await;
        match checked {
            Ok(Ok(auth)) => Ok(Validation {
                valid: true,
                detail: json!({
                    "team_id": auth.team_id,
                    "team": auth.team,
                    "bot_user_id": auth.user_id,
                }),
            }),
            // Slack's error code: the credential does not work.
            Ok(Err(Ok(code))) => Ok(Validation {
                valid: false,
                detail: json!({ "error": format!("auth.test: {code}") }),
            }),
            Ok(Err(Err(e))) => Err(unavailable(e)),
            Err(_) => Err(unavailable(CallError::Timeout {
                method: "auth.test",
                after: CALL_TIMEOUT,
            })),
        }
    }

    async fn refresh(
        &self,
        integration: &Integration,
        current: &CredentialSet,
    ) -> Result<Vec<IssuedCredential>, ConnectorError> {
        let Some(refresh) = current.get(REFRESH_TOKEN) else {
            // No rotation: the bot token does not expire and there is nothing to refresh.
            return Err(ConnectorError::Unsupported {
                connector: SLACK,
                operation: "refresh without token rotation",
            });
        };
        let body = self
            .oauth_access(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.expose()),
            ])
            .await?;
        tracing::info!(integration_id = %integration.id, "slack bot token refreshed");
        Self::issued(&body)
    }

    async fn revoke(
        &self,
        integration: &Integration,
        current: &CredentialSet,
    ) -> Result<(), ConnectorError> {
        if let Some(token) = current.get(BOT_TOKEN) {
            let token = SlackApiToken::new(SlackApiTokenValue(token.expose().to_owned()));
            let session = self.client.open_session(&token);
            Self::bounded(
                "auth.revoke",
                session.http_session_api.http_get::<Value, _, &str>(
                    "auth.revoke",
                    &Vec::<(&str, Option<&str>)>::new(),
                    None,
                ),
            )
            .await?;
        }
        if let Some(team) = &integration.external_id {
            self.store
                .revoke_slack_workspace(team, "integration deleted")
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn configure_webhooks(
        &self,
        _integration: &Integration,
    ) -> Result<WebhookSetup, ConnectorError> {
        Ok(WebhookSetup {
            delivery: "socket_mode_or_events_api".to_owned(),
            note: "Slack events are subscribed in the app manifest (Socket Mode or /slack/events)"
                .to_owned(),
        })
    }
}

/// Used by tests: the credential row id recorded for a team (`slack_workspaces.token_ref`).
pub async fn workspace_token_ref(
    store: &IntegrationStore,
    team_id: &str,
) -> Result<Option<Uuid>, crate::db::StoreError> {
    Ok(store
        .slack_workspace(team_id)
        .await?
        .and_then(|(_, token_ref, _)| token_ref)
        .and_then(|t| t.parse().ok()))
}

/// The organization and integration that serve `team_id`'s bot token: an active workspace
/// with a `token_ref`, and its organization's Slack integration for that team. `None` when
/// the team is not installed through an integration (unknown, revoked, or served by the
/// configured `slack.bot_token`).
async fn integration_for_team(
    store: &IntegrationStore,
    team_id: &str,
) -> Result<Option<(Uuid, Uuid)>, crate::db::StoreError> {
    let Some((status, Some(_token_ref), Some(organization_id))) =
        store.slack_workspace(team_id).await?
    else {
        return Ok(None);
    };
    if status != "active" {
        return Ok(None);
    }
    let Some(integration) = store.find_for_org(organization_id, SLACK).await? else {
        return Ok(None);
    };
    if integration.external_id.as_deref() != Some(team_id) {
        return Ok(None);
    }
    Ok(Some((organization_id, integration.id)))
}

/// The bot token of an installed workspace, through its organization's vault (refreshed when
/// it is about to expire): what the Slack Web API adapter uses for workspaces whose
/// `slack_workspaces.token_ref` is a credential id. `Ok(None)` when the team is not installed
/// through an integration (unknown, revoked, or served by the configured `slack.bot_token`).
pub async fn bot_token_for_team(
    store: &IntegrationStore,
    vaults: &crate::integrations::vault::VaultRegistry,
    team_id: &str,
) -> Result<Option<Secret>, crate::integrations::vault::CredentialError> {
    let Some((organization_id, integration_id)) = integration_for_team(store, team_id).await?
    else {
        return Ok(None);
    };
    vaults
        .credential(organization_id, integration_id)
        .await
        .map(Some)
}

/// Bot tokens of workspaces installed through the Slack integration, decrypted by the
/// organization's vault actor: the multi-workspace source for the Slack Web API adapter.
/// A refused token is re-checked against the one stored now (another replica may have
/// rotated it), see [`crate::slack::workspaces::RecheckingDirectory`].
#[derive(Clone)]
pub struct VaultSlackTokens {
    store: IntegrationStore,
    vaults: crate::integrations::vault::VaultRegistry,
}

impl std::fmt::Debug for VaultSlackTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultSlackTokens").finish_non_exhaustive()
    }
}

impl VaultSlackTokens {
    /// A source over the integration store and the vault actors.
    pub fn new(store: IntegrationStore, vaults: crate::integrations::vault::VaultRegistry) -> Self {
        Self { store, vaults }
    }
}

#[async_trait::async_trait]
impl crate::slack::workspaces::WorkspaceTokens for VaultSlackTokens {
    async fn bot_token(
        &self,
        team: &infragpt_actors::ids::TeamId,
    ) -> Result<Option<Secret>, crate::slack::workspaces::TokenSourceError> {
        bot_token_for_team(&self.store, &self.vaults, team.as_str())
            .await
            .map_err(|e| crate::slack::workspaces::TokenSourceError::new("vault", e))
    }

    async fn recheck(
        &self,
        team: &infragpt_actors::ids::TeamId,
    ) -> Result<crate::slack::workspaces::TokenRecheck, crate::slack::workspaces::TokenSourceError>
    {
        use crate::slack::workspaces::{TokenRecheck, TokenSourceError};
        let Some((organization_id, integration_id)) =
            integration_for_team(&self.store, team.as_str())
                .await
                .map_err(|e| TokenSourceError::new("finding the workspace's integration", e))?
        else {
            return Ok(TokenRecheck::NotServed);
        };
        let validation = self
            .vaults
            .recheck(organization_id, integration_id)
            .await
            .map_err(|e| TokenSourceError::new("vault recheck", e))?;
        Ok(if validation.valid {
            TokenRecheck::Superseded
        } else {
            TokenRecheck::Refused
        })
    }
}
