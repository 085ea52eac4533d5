//! The Slack Web API adapter: [`SlackWeb`] implements the conversation logic's
//! [`SlackApi`] port over slack-morphism.
//!
//! * Rate limits: slack-morphism's rate control throttles per team and method tier and, on
//!   `429`, waits for `Retry-After` and retries (up to [`WebSettings::rate_limit_retries`]).
//!   Still limited after that → [`SlackApiError::RateLimited`].
//! * Transient failures (connection errors, 5xx, Slack's [`TRANSIENT_SLACK_ERRORS`] codes) are
//!   retried with exponential backoff, bounded by [`WebSettings::transient_retries`]; then
//!   [`SlackApiError::Transport`]. Every other error code is final (see
//!   [`SlackApiError::is_transient`], the one classification). Posts (`chat.postMessage`,
//!   `files.completeUploadExternal`) are retried only after failures that prove nothing was
//!   posted: after a lost answer the message may exist, and the caller looks in the thread
//!   before posting again (`conversation::once`).
//! * `invalid_auth`, `token_revoked`, `account_inactive` mark the workspace inactive in the
//!   [`WorkspaceDirectory`] (the `slack_workspaces` table) and on the [`WorkspaceBoard`], and
//!   answer [`SlackApiError::WorkspaceInactive`].
//! * Caches: `auth.test` per team for the life of the process; `users.info` per
//!   `(team, user)` for [`WebSettings::user_cache_ttl`].
//!
//! Responses are decoded into small local structs (only the fields we use), so a new or odd
//! field in a Slack object never breaks a call.

mod approvals;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use infragpt_actors::conversation::{
    BotIdentity, MessageMetadata, SlackApi, SlackApiError, TRANSIENT_SLACK_ERRORS, ThreadMessage,
    UserProfile,
};
use infragpt_actors::ids::{ChannelId, MessageTs, SlackUserId, TeamId};
use infragpt_actors::{Backoff, Secret};
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::{
    SLACK_TIER3_METHOD_CONFIG, SLACK_TIER4_METHOD_CONFIG, SlackApiMethodRateControlConfig,
    SlackApiRateControlConfig, SlackApiRateControlLimit, SlackApiRateControlSpecialLimit,
    SlackApiToken, SlackApiTokenValue, SlackTeamId,
};

use super::http_connector::{ConnectorError, SlackHyperClient, http_connector, https_connector};
use super::workspaces::{
    CONFIG_TOKEN_REF, TokenSourceError, WorkspaceBoard, WorkspaceDirectory, WorkspaceRegistration,
    WorkspaceTokens,
};

/// Slack error codes that mean the token no longer works for the workspace.
pub const INACTIVE_ERRORS: [&str; 3] = ["invalid_auth", "token_revoked", "account_inactive"];

/// Slack error codes worth retrying: the port's one list, so what this adapter retries and
/// what callers treat as transient ([`SlackApiError::is_transient`]) agree.
const TRANSIENT_ERRORS: [&str; 6] = TRANSIENT_SLACK_ERRORS;

/// Tuning of the Web API adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSettings {
    /// How long a `users.info` answer is reused.
    pub user_cache_ttl: Duration,
    /// Retries of a transient failure (after the first attempt).
    pub transient_retries: u32,
    /// First delay between transient retries; doubles each time.
    pub retry_base: Duration,
    /// `429` retries slack-morphism makes (each after `Retry-After`).
    pub rate_limit_retries: usize,
    /// Longest `Retry-After` wait slack-morphism accepts before giving up.
    pub max_rate_limit_delay: Duration,
    /// Throttle calls to Slack's published per-workspace limits before sending them (method
    /// tiers; `chat.postMessage` 300/min). `false` sends at once and still honours `429` +
    /// `Retry-After`: for simulators and benchmarks, where the throttle would be all we measure.
    pub throttle: bool,
}

impl Default for WebSettings {
    fn default() -> Self {
        Self {
            user_cache_ttl: Duration::from_secs(10 * 60),
            transient_retries: 3,
            retry_base: Duration::from_millis(250),
            rate_limit_retries: 5,
            max_rate_limit_delay: Duration::from_secs(120),
            throttle: true,
        }
    }
}

/// The rate control we give slack-morphism: its per-tier limits per team, `429` retries.
pub fn rate_control(settings: &WebSettings) -> SlackApiRateControlConfig {
    let mut config = SlackApiRateControlConfig::new()
        .with_max_retries(settings.rate_limit_retries)
        .with_max_delay_timeout(settings.max_rate_limit_delay);
    if !settings.throttle {
        // No tier limits: nothing waits before sending; 429 retries stay.
        config.tiers_limits.clear();
    }
    config
}

/// A slack-morphism client for `api_url` with rate control. `https://` URLs get the
/// https-only connector; anything else (the simulator's `http://`) the permissive one.
pub fn web_client(
    api_url: &str,
    settings: &WebSettings,
) -> Result<SlackHyperClient, ConnectorError> {
    let connector = if api_url.starts_with("https://") {
        https_connector()?.with_slack_api_url(api_url.trim_end_matches('/'))
    } else {
        http_connector(api_url)?
    };
    Ok(slack_morphism::SlackClient::new(
        connector.with_rate_control(rate_control(settings)),
    ))
}

/// Building the adapter failed.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The HTTP connector could not be built.
    #[error(transparent)]
    Connector(#[from] ConnectorError),
}

/// Why one call failed, before mapping to [`SlackApiError`].
enum Failure {
    /// Worth retrying; `maybe_done`: the call may have taken effect all the same.
    Retry {
        why: String,
        maybe_done: bool,
    },
    Final(SlackApiError),
    Code(String),
}

/// Transient codes after which Slack may have done the call (Slack's own words for them).
const MAYBE_DONE_ERRORS: [&str; 2] = ["internal_error", "fatal_error"];

fn classify(e: SlackClientError) -> Failure {
    match e {
        SlackClientError::ApiError(api) => {
            if TRANSIENT_ERRORS.contains(&api.code.as_str()) {
                Failure::Retry {
                    maybe_done: MAYBE_DONE_ERRORS.contains(&api.code.as_str()),
                    why: api.code,
                }
            } else {
                Failure::Code(api.code)
            }
        }
        SlackClientError::RateLimitError(r) => Failure::Final(SlackApiError::RateLimited {
            retry_after: r.retry_after.unwrap_or(Duration::from_secs(1)),
        }),
        SlackClientError::HttpError(h) if h.status_code.is_server_error() => Failure::Retry {
            why: format!("http status {}", h.status_code),
            maybe_done: true,
        },
        SlackClientError::HttpError(h) => Failure::Final(SlackApiError::Transport(format!(
            "http status {}",
            h.status_code
        ))),
        // The request may have been sent before the connection failed.
        SlackClientError::HttpProtocolError(_)
        | SlackClientError::EndOfStream(_)
        | SlackClientError::SystemError(_) => Failure::Retry {
            why: e.to_string(),
            maybe_done: true,
        },
        SlackClientError::ProtocolError(p) => Failure::Final(SlackApiError::Transport(format!(
            "unreadable slack response: {}",
            p.json_error
        ))),
        SlackClientError::SocketModeProtocolError(p) => {
            Failure::Final(SlackApiError::Transport(p.message))
        }
    }
}

fn api_token(token: &Secret, team: Option<&TeamId>) -> SlackApiToken {
    let t = SlackApiToken::new(SlackApiTokenValue(token.expose().to_owned()));
    match team {
        Some(team) => t.with_team_id(SlackTeamId(team.as_str().to_owned())),
        None => t,
    }
}

/// Whether a failed call may be sent again blindly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Reads and idempotent writes: retry every transient failure.
    Always,
    /// Posts: retry only failures that prove nothing happened; after the others the caller
    /// must look before posting again.
    IfNothingHappened,
}

/// Runs one Web API request with the transient-retry policy. `Code` failures are returned as
/// `Err(Ok(code))` for the caller to interpret; everything else as `Err(Err(api_error))`.
async fn request<RS, F, Fut>(
    settings: &WebSettings,
    method: &str,
    send: F,
) -> Result<RS, Result<String, SlackApiError>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<RS, SlackClientError>>,
{
    request_with(settings, method, Repeat::Always, send).await
}

/// [`request`] with the given repeat policy.
async fn request_with<RS, F, Fut>(
    settings: &WebSettings,
    method: &str,
    repeat: Repeat,
    mut send: F,
) -> Result<RS, Result<String, SlackApiError>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<RS, SlackClientError>>,
{
    let mut attempt = 0u32;
    loop {
        // A write for a claim this process may have lost is not sent (see `write_gate`).
        if let Err(e) = infragpt_actors::conversation::write_gate() {
            tracing::warn!(method, error = %e, "slack write not sent");
            return Err(Err(SlackApiError::NotSent(e.0)));
        }
        match send().await {
            Ok(rs) => return Ok(rs),
            Err(e) => match classify(e) {
                Failure::Code(code) => return Err(Ok(code)),
                Failure::Final(err) => return Err(Err(err)),
                Failure::Retry { why, maybe_done }
                    if maybe_done && repeat == Repeat::IfNothingHappened =>
                {
                    tracing::warn!(method, error = %why, "slack call failed after it may have taken effect; not repeating it");
                    return Err(Err(SlackApiError::Transport(format!(
                        "{method}: {why} (may have taken effect)"
                    ))));
                }
                Failure::Retry { why, .. } if attempt < settings.transient_retries => {
                    attempt += 1;
                    let delay = Backoff::uncapped(settings.retry_base).delay(attempt);
                    tracing::warn!(method, attempt, error = %why, delay_ms = delay.as_millis() as u64, "slack call failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Failure::Retry { why, .. } => {
                    return Err(Err(SlackApiError::Transport(format!(
                        "{method}: {why} (after {attempt} retries)"
                    ))));
                }
            },
        }
    }
}

/// An `auth.test` answer (the fields we use).
#[derive(Debug, Deserialize)]
pub(crate) struct AuthTest {
    /// The token's user (the bot user for a bot token).
    pub user_id: String,
    /// The workspace.
    pub team_id: String,
    /// The workspace's name.
    pub team: Option<String>,
    /// The bot id.
    pub bot_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Posted {
    ts: String,
}

#[derive(Debug, Deserialize)]
struct Empty {}

/// A `conversations.replies` page (the fields we use).
#[derive(Debug, Deserialize)]
struct RepliesPage {
    #[serde(default)]
    messages: Vec<ReplyObj>,
    #[serde(default)]
    has_more: bool,
    response_metadata: Option<PageCursor>,
}

#[derive(Debug, Deserialize)]
struct PageCursor {
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ReplyObj {
    ts: String,
    user: Option<String>,
    bot_id: Option<String>,
    metadata: Option<Value>,
    #[serde(default)]
    files: Vec<FileObj>,
}

#[derive(Debug, Deserialize)]
struct FileObj {
    id: String,
}

/// Messages per `conversations.replies` page (Slack allows up to 1 000).
const REPLIES_PAGE: u32 = 200;
/// Pages read before a thread counts as unreadable (100 000 messages).
const MAX_REPLIES_PAGES: u32 = 500;

/// Slack's message metadata as our port spells it; metadata of another shape (another
/// app's) is skipped.
fn metadata_of(value: Option<Value>) -> Option<MessageMetadata> {
    serde_json::from_value(value?).ok()
}

#[derive(Debug, Deserialize)]
struct UsersInfo {
    user: UserObj,
}

#[derive(Debug, Deserialize)]
struct UserObj {
    name: Option<String>,
    real_name: Option<String>,
    #[serde(default)]
    profile: ProfileObj,
}

#[derive(Debug, Default, Deserialize)]
struct ProfileObj {
    display_name: Option<String>,
    real_name: Option<String>,
    email: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ConversationsInfo {
    channel: ChannelObj,
}

#[derive(Debug, Deserialize)]
struct ChannelObj {
    name: Option<String>,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

impl From<UserObj> for UserProfile {
    fn from(u: UserObj) -> Self {
        UserProfile {
            name: non_empty(u.profile.display_name)
                .or_else(|| non_empty(u.profile.real_name))
                .or_else(|| non_empty(u.real_name)),
            username: non_empty(u.name),
            email: non_empty(u.profile.email),
        }
    }
}

/// `auth.test` with `token`, with the transient-retry policy: the one place it is called
/// (workspace identity here, integration validation in the Slack connector).
pub(crate) async fn auth_test(
    client: &SlackHyperClient,
    settings: &WebSettings,
    token: &SlackApiToken,
) -> Result<AuthTest, Result<String, SlackApiError>> {
    request(settings, "auth.test", || async {
        let session = client.open_session(token);
        session
            .http_session_api
            .http_get::<AuthTest, _, String>(
                "auth.test",
                &Vec::<(&str, Option<String>)>::new(),
                Some(&SLACK_TIER4_METHOD_CONFIG),
            )
            .await
    })
    .await
}

/// The single-workspace token (`slack.bot_token`): it serves whichever team `auth.test`
/// reports for it, resolved on first use and then recorded in `slack_workspaces` with
/// `token_ref = 'config'`.
pub struct ConfigBotToken {
    token: Secret,
    client: Arc<SlackHyperClient>,
    settings: WebSettings,
    directory: Option<Arc<dyn WorkspaceDirectory>>,
    board: WorkspaceBoard,
    team: tokio::sync::OnceCell<TeamId>,
}

impl std::fmt::Debug for ConfigBotToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigBotToken")
            .field("team", &self.team.get())
            .finish_non_exhaustive()
    }
}

impl ConfigBotToken {
    /// A source for `token`; `directory` (when given) records the workspace once resolved.
    pub fn new(
        token: Secret,
        client: Arc<SlackHyperClient>,
        settings: WebSettings,
        directory: Option<Arc<dyn WorkspaceDirectory>>,
        board: WorkspaceBoard,
    ) -> Self {
        Self {
            token,
            client,
            settings,
            directory,
            board,
            team: tokio::sync::OnceCell::new(),
        }
    }

    /// The team the token belongs to (`auth.test`, once).
    pub async fn team(&self) -> Result<TeamId, TokenSourceError> {
        self.team
            .get_or_try_init(|| async {
                let token = api_token(&self.token, None);
                let auth = auth_test(&self.client, &self.settings, &token)
                    .await
                    .map_err(|e| {
                        let error = TokenSourceError::new(
                            "auth.test for slack.bot_token failed",
                            match e {
                                // Slack's error code: a message from Slack, not an error type.
                                Ok(code) => Box::<dyn std::error::Error + Send + Sync>::from(code),
                                Err(err) => Box::new(err),
                            },
                        );
                        tracing::error!(error = %error.source, "slack.bot_token: auth.test failed");
                        error
                    })?;
                let team = TeamId::parse(auth.team_id.clone())
                    .map_err(|e| TokenSourceError::new("auth.test team_id", e))?;
                let reg = WorkspaceRegistration {
                    team_id: team.clone(),
                    team_name: auth.team.clone(),
                    bot_user_id: Some(auth.user_id.clone()),
                    bot_id: auth.bot_id.clone(),
                    token_ref: Some(CONFIG_TOKEN_REF.to_owned()),
                };
                if let Some(dir) = &self.directory {
                    // Recording is bookkeeping: a database hiccup must not stop replies.
                    if let Err(e) = dir.record(&reg).await {
                        tracing::warn!(team_id = %team, error = %e, "recording the config workspace failed");
                    }
                }
                self.board.active(&team, auth.team);
                tracing::info!(team_id = %team, "slack.bot_token serves this workspace");
                Ok(team)
            })
            .await
            .cloned()
    }
}

#[async_trait]
impl WorkspaceTokens for ConfigBotToken {
    async fn bot_token(&self, team: &TeamId) -> Result<Option<Secret>, TokenSourceError> {
        Ok((&self.team().await? == team).then(|| self.token.clone()))
    }
}

/// The Slack Web API adapter. Cheap to share (`Arc`).
pub struct SlackWeb {
    client: Arc<SlackHyperClient>,
    tokens: Arc<dyn WorkspaceTokens>,
    directory: Option<Arc<dyn WorkspaceDirectory>>,
    board: WorkspaceBoard,
    settings: WebSettings,
    post_message_limit: SlackApiMethodRateControlConfig,
    /// `assistant.threads.setStatus`: slack-morphism's own limit (1/s per workspace) would
    /// hold every thread's "is thinking…" behind the others, and the status holds the turn's
    /// progress lock while it waits (see `conversation::progress`).
    status_limit: SlackApiMethodRateControlConfig,
    identities: RwLock<HashMap<TeamId, BotIdentity>>,
    users: Mutex<HashMap<(TeamId, SlackUserId), (Instant, UserProfile)>>,
    /// `reactions.add` under the throttle (see [`ReactionBudget`]).
    reactions: ReactionBudget,
}

/// The reactions a workspace may still add now, under `slack.throttle`: Slack's Tier 3 rate
/// (about 50 a minute) with a burst of [`Self::BURST`], in the webhook routes' token buckets
/// ([`crate::http::rate_limit::Buckets`]). A reaction beyond it is refused at once rather
/// than queued behind slack-morphism's throttle: the only reaction we add says "seen", which
/// a reaction minutes late does not, and every queued one is a task waiting in the
/// background, as many as the workspace's turns outrun the rate.
#[derive(Debug)]
struct ReactionBudget(crate::http::rate_limit::Buckets);

impl ReactionBudget {
    /// Reactions a quiet workspace may add at once (slack-morphism's Tier 3 bucket holds
    /// more, so these go out without waiting).
    const BURST: u32 = 20;
    /// Workspaces tracked before the busy ones beyond share a bucket.
    const WORKSPACES: usize = 10_000;

    /// Takes one of `team`'s reactions at `now`, or says how long until one is free.
    fn take(&self, team: &TeamId, now: Instant) -> Result<(), Duration> {
        self.0.take(team.as_str(), now)
    }
}

impl Default for ReactionBudget {
    fn default() -> Self {
        let tier3 = crate::config::RateLimit {
            per_second: 50.0 / 60.0,
            burst: Self::BURST,
        };
        Self(
            crate::http::rate_limit::Buckets::new(&tier3, Self::WORKSPACES)
                .expect("a positive rate"),
        )
    }
}

impl std::fmt::Debug for SlackWeb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackWeb")
            .field("settings", &self.settings)
            .field("identities", &self.identities.read().len())
            .finish_non_exhaustive()
    }
}

impl SlackWeb {
    /// An adapter over `client` with tokens from `tokens`.
    pub fn new(
        client: Arc<SlackHyperClient>,
        tokens: Arc<dyn WorkspaceTokens>,
        settings: WebSettings,
    ) -> Self {
        // Slack: about one message per second per channel with bursts, several hundred per
        // minute per workspace. slack-morphism's default (1/s per workspace) would serialise
        // every thread of a workspace, so we allow bursts and rely on 429 + Retry-After.
        let post_message_limit = if settings.throttle {
            SlackApiMethodRateControlConfig::new().with_special_rate_limit(
                SlackApiRateControlSpecialLimit::new(
                    "chat.postMessage".into(),
                    SlackApiRateControlLimit::new(300, Duration::from_secs(60)),
                ),
            )
        } else {
            SlackApiMethodRateControlConfig::new()
        };
        let status_limit = if settings.throttle {
            SlackApiMethodRateControlConfig::new().with_special_rate_limit(
                SlackApiRateControlSpecialLimit::new(
                    "assistant.threads.setStatus".into(),
                    SlackApiRateControlLimit::new(600, Duration::from_secs(60)),
                ),
            )
        } else {
            SlackApiMethodRateControlConfig::new()
        };
        Self {
            client,
            tokens,
            directory: None,
            board: WorkspaceBoard::new(),
            settings,
            post_message_limit,
            status_limit,
            identities: RwLock::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            reactions: ReactionBudget::default(),
        }
    }

    /// Where workspace facts and inactive statuses are written (builder style).
    pub fn with_directory(mut self, directory: Arc<dyn WorkspaceDirectory>) -> Self {
        self.directory = Some(directory);
        self
    }

    /// The status board to update (builder style; by default a private one).
    pub fn with_board(mut self, board: WorkspaceBoard) -> Self {
        self.board = board;
        self
    }

    /// The workspace status board this adapter updates.
    pub fn board(&self) -> &WorkspaceBoard {
        &self.board
    }

    /// The underlying client.
    pub fn client(&self) -> &Arc<SlackHyperClient> {
        &self.client
    }

    async fn token(&self, team: &TeamId) -> Result<SlackApiToken, SlackApiError> {
        match self.tokens.bot_token(team).await {
            Ok(Some(token)) => Ok(api_token(&token, Some(team))),
            Ok(None) => Err(SlackApiError::UnknownWorkspace(team.clone())),
            Err(e) => Err(SlackApiError::Transport(e.to_string())),
        }
    }

    /// Turns an error code into the port's error, marking the workspace inactive when the
    /// code says the token is dead.
    /// `chat.postMessage` of `body`: our per-workspace limit, retried only when nothing can
    /// have been posted; the posted message's ts.
    async fn chat_post(&self, team: &TeamId, body: &Value) -> Result<MessageTs, SlackApiError> {
        let posted: Posted = match self
            .post(
                team,
                "chat.postMessage",
                body,
                &self.post_message_limit,
                Repeat::IfNothingHappened,
            )
            .await?
        {
            Ok(p) => p,
            Err(code) => return Err(self.code_error(team, "chat.postMessage", code).await),
        };
        MessageTs::parse(posted.ts)
            .map_err(|e| SlackApiError::Api(format!("chat.postMessage ts: {e}")))
    }

    /// `chat.update` of `body`: Tier 3; an update is idempotent, so any transient failure is
    /// retried.
    async fn chat_update(&self, team: &TeamId, body: &Value) -> Result<(), SlackApiError> {
        self.idempotent_tier3(team, "chat.update", body, &[]).await
    }

    /// A Tier 3 call whose repetition is harmless (`chat.update`, `chat.delete`): every
    /// transient failure is retried.
    /// A Tier 3 call that may be repeated; an error code in `done` means the call's effect
    /// holds already.
    async fn idempotent_tier3(
        &self,
        team: &TeamId,
        method: &'static str,
        body: &Value,
        done: &[&str],
    ) -> Result<(), SlackApiError> {
        match self
            .post::<Empty>(
                team,
                method,
                body,
                &SLACK_TIER3_METHOD_CONFIG,
                Repeat::Always,
            )
            .await?
        {
            Ok(_) => Ok(()),
            Err(code) if done.contains(&code.as_str()) => {
                tracing::debug!(team_id = %team, method, error = %code, "already done");
                Ok(())
            }
            Err(code) => Err(self.code_error(team, method, code).await),
        }
    }

    async fn code_error(&self, team: &TeamId, method: &str, code: String) -> SlackApiError {
        if INACTIVE_ERRORS.contains(&code.as_str()) {
            self.board.inactive(team, &code);
            self.identities.write().remove(team);
            if let Some(dir) = &self.directory
                && let Err(e) = dir.mark_inactive(team, &code).await
            {
                tracing::error!(team_id = %team, error = %e, "could not record the inactive workspace");
            }
            tracing::warn!(team_id = %team, method, error = %code, "slack workspace is inactive");
            return SlackApiError::WorkspaceInactive {
                team: team.clone(),
                error: code,
            };
        }
        tracing::debug!(team_id = %team, method, error = %code, "slack api error");
        SlackApiError::Api(format!("{method}: {code}"))
    }

    async fn finish<T>(
        &self,
        team: &TeamId,
        method: &str,
        result: Result<T, Result<String, SlackApiError>>,
    ) -> Result<T, SlackApiError> {
        match result {
            Ok(v) => Ok(v),
            Err(Ok(code)) => Err(self.code_error(team, method, code).await),
            Err(Err(e)) => Err(e),
        }
    }

    async fn post<RS: DeserializeOwned + Send>(
        &self,
        team: &TeamId,
        method: &'static str,
        body: &Value,
        limit: &SlackApiMethodRateControlConfig,
        repeat: Repeat,
    ) -> Result<Result<RS, String>, SlackApiError> {
        let token = self.token(team).await?;
        let result = request_with(&self.settings, method, repeat, || async {
            let session = self.client.open_session(&token);
            session
                .http_session_api
                .http_post::<Value, RS>(method, body, Some(limit))
                .await
        })
        .await;
        match result {
            Ok(v) => Ok(Ok(v)),
            Err(Ok(code)) => Ok(Err(code)),
            Err(Err(e)) => Err(e),
        }
    }

    async fn get<RS: DeserializeOwned + Send>(
        &self,
        team: &TeamId,
        method: &'static str,
        params: Vec<(&'static str, Option<String>)>,
        limit: &SlackApiMethodRateControlConfig,
    ) -> Result<RS, SlackApiError> {
        let token = self.token(team).await?;
        let result = request(&self.settings, method, || async {
            let session = self.client.open_session(&token);
            session
                .http_session_api
                .http_get::<RS, _, String>(method, &params, Some(limit))
                .await
        })
        .await;
        self.finish(team, method, result).await
    }

    /// Our bot's messages from a paged history method (`conversations.replies`,
    /// `conversations.history`) called with `params` and `include_all_metadata`, following
    /// `next_cursor`; `None` when there are more than [`MAX_REPLIES_PAGES`] pages. slack-
    /// morphism's requests have no `include_all_metadata` (2.31): plain GETs.
    async fn paged_bot_messages(
        &self,
        team: &TeamId,
        method: &'static str,
        params: Vec<(&'static str, Option<String>)>,
    ) -> Result<Option<Vec<ThreadMessage>>, SlackApiError> {
        let bot = self.bot_identity(team).await?;
        let ours = |m: &ReplyObj| {
            m.user.as_deref() == Some(bot.user_id.as_str())
                || (m.bot_id.is_some() && m.bot_id == bot.bot_id)
        };
        let mut found = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_REPLIES_PAGES {
            let mut page_params = params.clone();
            page_params.push(("include_all_metadata", Some("true".to_owned())));
            page_params.push(("limit", Some(REPLIES_PAGE.to_string())));
            if let Some(c) = &cursor {
                page_params.push(("cursor", Some(c.clone())));
            }
            let page: RepliesPage = self
                .get(team, method, page_params, &SLACK_TIER3_METHOD_CONFIG)
                .await?;
            for m in page.messages {
                if !ours(&m) {
                    continue;
                }
                let ts = MessageTs::parse(m.ts.as_str())
                    .map_err(|e| SlackApiError::Api(format!("{method} ts: {e}")))?;
                found.push(ThreadMessage {
                    ts,
                    file_ids: m.files.into_iter().map(|f| f.id).collect(),
                    metadata: metadata_of(m.metadata),
                });
            }
            cursor = page
                .response_metadata
                .and_then(|r| r.next_cursor)
                .filter(|c| !c.is_empty());
            if !page.has_more || cursor.is_none() {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }
}

#[async_trait]
impl SlackApi for SlackWeb {
    async fn bot_identity(&self, team: &TeamId) -> Result<BotIdentity, SlackApiError> {
        if let Some(id) = self.identities.read().get(team) {
            return Ok(id.clone());
        }
        let token = self.token(team).await?;
        let result = auth_test(&self.client, &self.settings, &token).await;
        let auth = self.finish(team, "auth.test", result).await?;
        if auth.team_id != team.as_str() {
            return Err(SlackApiError::Api(format!(
                "auth.test: the token of {team} belongs to {}",
                auth.team_id
            )));
        }
        let identity = BotIdentity {
            user_id: SlackUserId::parse(auth.user_id)
                .map_err(|e| SlackApiError::Api(format!("auth.test user_id: {e}")))?,
            bot_id: auth.bot_id,
            team_name: auth.team,
        };
        self.board.active(team, identity.team_name.clone());
        self.identities
            .write()
            .insert(team.clone(), identity.clone());
        Ok(identity)
    }

    async fn post_message(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        thread_ts: Option<&MessageTs>,
        text: &str,
        metadata: Option<&MessageMetadata>,
    ) -> Result<MessageTs, SlackApiError> {
        let mut body = json!({ "channel": channel.as_str(), "text": text });
        if let Some(obj) = body.as_object_mut() {
            if let Some(ts) = thread_ts {
                obj.insert("thread_ts".into(), json!(ts.as_str()));
            }
            if let Some(m) = metadata {
                // A JSON body takes the metadata as an object (a form body as its JSON text).
                obj.insert(
                    "metadata".into(),
                    json!({ "event_type": m.event_type, "event_payload": m.event_payload }),
                );
            }
        }
        self.chat_post(team, &body).await
    }

    async fn upload_file(
        &self,
        team: &TeamId,
        filename: &str,
        content: &str,
    ) -> Result<String, SlackApiError> {
        use slack_morphism::prelude::{
            SlackApiFilesGetUploadUrlExternalRequest, SlackApiFilesUploadViaUrlRequest,
        };
        let token = self.token(team).await?;
        let url_request =
            SlackApiFilesGetUploadUrlExternalRequest::new(filename.to_owned(), content.len());
        let result = request(&self.settings, "files.getUploadURLExternal", || async {
            self.client
                .open_session(&token)
                .get_upload_url_external(&url_request)
                .await
        })
        .await;
        let target = self
            .finish(team, "files.getUploadURLExternal", result)
            .await?;
        let upload = SlackApiFilesUploadViaUrlRequest::new(
            target.upload_url,
            content.as_bytes().to_vec(),
            "text/plain; charset=utf-8".to_owned(),
        );
        let result = request(&self.settings, "files.upload (upload URL)", || async {
            self.client
                .open_session(&token)
                .files_upload_via_url(&upload)
                .await
        })
        .await;
        self.finish(team, "files.upload (upload URL)", result)
            .await?;
        Ok(target.file_id.0)
    }

    async fn share_file(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        thread_ts: &MessageTs,
        file_id: &str,
        title: &str,
    ) -> Result<(), SlackApiError> {
        use slack_morphism::prelude::{
            SlackApiFilesComplete, SlackApiFilesCompleteUploadExternalRequest, SlackChannelId,
            SlackFileId, SlackTs,
        };
        let token = self.token(team).await?;
        let complete = SlackApiFilesCompleteUploadExternalRequest::new(vec![
            SlackApiFilesComplete::new(SlackFileId::new(file_id.to_owned()))
                .with_title(title.to_owned()),
        ])
        .with_channel_id(SlackChannelId::new(channel.as_str().to_owned()))
        .with_thread_ts(SlackTs::new(thread_ts.as_str().to_owned()));
        let result = request_with(
            &self.settings,
            "files.completeUploadExternal",
            Repeat::IfNothingHappened,
            || async {
                self.client
                    .open_session(&token)
                    .files_complete_upload_external(&complete)
                    .await
            },
        )
        .await;
        self.finish(team, "files.completeUploadExternal", result)
            .await
            .map(drop)
    }

    async fn bot_messages_in_thread(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        thread_ts: &MessageTs,
        after: Option<&MessageTs>,
    ) -> Result<Vec<ThreadMessage>, SlackApiError> {
        let mut params: Vec<(&'static str, Option<String>)> = vec![
            ("channel", Some(channel.as_str().to_owned())),
            ("ts", Some(thread_ts.as_str().to_owned())),
        ];
        if let Some(after) = after {
            params.push(("oldest", Some(after.as_str().to_owned())));
        }
        self.paged_bot_messages(team, "conversations.replies", params)
            .await?
            .ok_or_else(|| {
                SlackApiError::Api(format!(
                    "conversations.replies: thread {thread_ts} has more than {MAX_REPLIES_PAGES} pages"
                ))
            })
    }

    async fn update_message(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        ts: &MessageTs,
        text: &str,
        metadata: Option<&MessageMetadata>,
    ) -> Result<(), SlackApiError> {
        let mut body = json!({ "channel": channel.as_str(), "ts": ts.as_str(), "text": text });
        if let (Some(obj), Some(m)) = (body.as_object_mut(), metadata) {
            obj.insert(
                "metadata".into(),
                json!({ "event_type": m.event_type, "event_payload": m.event_payload }),
            );
        }
        self.chat_update(team, &body).await
    }

    async fn delete_message(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        ts: &MessageTs,
    ) -> Result<(), SlackApiError> {
        let body = json!({ "channel": channel.as_str(), "ts": ts.as_str() });
        // Gone already: the adapter repeated a delete whose first answer was lost in transit
        // (Slack then says `message_not_found`), or someone deleted it. Either way what the
        // caller asked for holds.
        self.idempotent_tier3(team, "chat.delete", &body, &["message_not_found"])
            .await
    }

    async fn set_thread_status(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        thread_ts: &MessageTs,
        status: &str,
    ) -> Result<(), SlackApiError> {
        let body = json!({
            "channel_id": channel.as_str(),
            "thread_ts": thread_ts.as_str(),
            "status": status,
        });
        match self
            .post::<Empty>(
                team,
                "assistant.threads.setStatus",
                &body,
                &self.status_limit,
                Repeat::Always,
            )
            .await?
        {
            Ok(_) => Ok(()),
            Err(code) => Err(self
                .code_error(team, "assistant.threads.setStatus", code)
                .await),
        }
    }

    async fn add_reaction(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        ts: &MessageTs,
        name: &str,
    ) -> Result<(), SlackApiError> {
        if self.settings.throttle
            && let Err(retry_after) = self.reactions.take(team, Instant::now())
        {
            return Err(SlackApiError::RateLimited { retry_after });
        }
        let body = json!({ "channel": channel.as_str(), "timestamp": ts.as_str(), "name": name });
        match self
            .post::<Empty>(
                team,
                "reactions.add",
                &body,
                &SLACK_TIER3_METHOD_CONFIG,
                Repeat::Always,
            )
            .await?
        {
            Ok(_) => Ok(()),
            Err(code) if code == "already_reacted" => Ok(()),
            Err(code) => Err(self.code_error(team, "reactions.add", code).await),
        }
    }

    async fn user_profile(
        &self,
        team: &TeamId,
        user: &SlackUserId,
    ) -> Result<UserProfile, SlackApiError> {
        let key = (team.clone(), user.clone());
        if let Some((at, profile)) = self.users.lock().get(&key)
            && at.elapsed() < self.settings.user_cache_ttl
        {
            return Ok(profile.clone());
        }
        let info: UsersInfo = self
            .get(
                team,
                "users.info",
                vec![("user", Some(user.as_str().to_owned()))],
                &SLACK_TIER4_METHOD_CONFIG,
            )
            .await?;
        let profile = UserProfile::from(info.user);
        let mut users = self.users.lock();
        // Keep the cache bounded: expired entries go whenever a new one comes in.
        let ttl = self.settings.user_cache_ttl;
        users.retain(|_, (at, _)| at.elapsed() < ttl);
        users.insert(key, (Instant::now(), profile.clone()));
        Ok(profile)
    }

    async fn channel_name(
        &self,
        team: &TeamId,
        channel: &ChannelId,
    ) -> Result<Option<String>, SlackApiError> {
        let info: ConversationsInfo = self
            .get(
                team,
                "conversations.info",
                vec![("channel", Some(channel.as_str().to_owned()))],
                &SLACK_TIER3_METHOD_CONFIG,
            )
            .await?;
        Ok(non_empty(info.channel.name))
    }
}

/// The `chat.postMessage` body of a Block Kit message with `metadata` (event messages at the
/// top of a channel, approval requests in a thread). Links are not unfurled: the blocks say
/// what matters.
fn blocks_message(
    channel: &ChannelId,
    thread_ts: Option<&MessageTs>,
    text: &str,
    blocks: &Value,
    metadata: &MessageMetadata,
) -> Value {
    let mut body = json!({
        "channel": channel.as_str(),
        "text": text,
        "blocks": blocks,
        "unfurl_links": false,
        "metadata": { "event_type": metadata.event_type, "event_payload": metadata.event_payload },
    });
    if let (Some(obj), Some(ts)) = (body.as_object_mut(), thread_ts) {
        obj.insert("thread_ts".into(), json!(ts.as_str()));
    }
    body
}

/// Event messages (`infragpt_actors::events`): top-level posts with Block Kit blocks, their
/// updates, and the channel's history to find a post a crash left unrecorded.
#[async_trait]
impl infragpt_actors::events::EventSlack for SlackWeb {
    async fn post_event(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        text: &str,
        blocks: &Value,
        metadata: &MessageMetadata,
    ) -> Result<MessageTs, SlackApiError> {
        let body = blocks_message(channel, None, text, blocks, metadata);
        self.chat_post(team, &body).await
    }

    async fn update_event(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        ts: &MessageTs,
        text: &str,
        blocks: &Value,
    ) -> Result<(), SlackApiError> {
        let body = json!({
            "channel": channel.as_str(),
            "ts": ts.as_str(),
            "text": text,
            "blocks": blocks,
        });
        self.chat_update(team, &body).await
    }

    async fn bot_messages_in_channel(
        &self,
        team: &TeamId,
        channel: &ChannelId,
        oldest: &MessageTs,
    ) -> Result<Vec<ThreadMessage>, SlackApiError> {
        let params = vec![
            ("channel", Some(channel.as_str().to_owned())),
            ("oldest", Some(oldest.as_str().to_owned())),
        ];
        self.paged_bot_messages(team, "conversations.history", params)
            .await?
            .ok_or_else(|| {
                SlackApiError::Api(format!(
                    "conversations.history: channel {channel} has more than {MAX_REPLIES_PAGES} pages since {oldest}"
                ))
            })
    }
}

/// `apps.connections.open` with the app token: the Socket Mode URL.
pub async fn open_socket_url(
    client: &SlackHyperClient,
    settings: &WebSettings,
    app_token: &Secret,
) -> Result<String, SlackApiError> {
    #[derive(Deserialize)]
    struct Opened {
        url: String,
    }
    let token = api_token(app_token, None);
    let opened: Result<Opened, _> = request(settings, "apps.connections.open", || async {
        let session = client.open_session(&token);
        session
            .http_session_api
            .http_post::<Value, Opened>(
                "apps.connections.open",
                &json!({}),
                Some(&slack_morphism::prelude::SLACK_TIER1_METHOD_CONFIG),
            )
            .await
    })
    .await;
    match opened {
        Ok(o) => Ok(o.url),
        Err(Ok(code)) => Err(SlackApiError::Api(format!("apps.connections.open: {code}"))),
        Err(Err(e)) => Err(e),
    }
}

/// Write methods answering only `ok` (the slash command's and the assistant pane's calls,
/// `src/slack/commands.rs`).
impl SlackWeb {
    /// Calls `method` with the JSON `body`; `idempotent` methods are sent again after any
    /// transient failure, others only after failures that prove nothing happened.
    pub(crate) async fn call_ok(
        &self,
        team: &TeamId,
        method: &'static str,
        body: &Value,
        idempotent: bool,
    ) -> Result<(), SlackApiError> {
        let repeat = if idempotent {
            Repeat::Always
        } else {
            Repeat::IfNothingHappened
        };
        match self
            .post::<Empty>(team, method, body, &SLACK_TIER3_METHOD_CONFIG, repeat)
            .await?
        {
            Ok(_) => Ok(()),
            Err(code) => Err(self.code_error(team, method, code).await),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use infragpt_actors::ids::TeamId;

    use super::ReactionBudget;

    #[test]
    fn the_reaction_budget_allows_a_burst_then_tier_3s_rate_per_workspace() {
        let budget = ReactionBudget::default();
        let (acme, globex) = (
            TeamId::parse("T1").expect("team"),
            TeamId::parse("T2").expect("team"),
        );
        let start = Instant::now();
        for _ in 0..20 {
            budget.take(&acme, start).expect("within the burst");
        }
        let wait = budget.take(&acme, start).expect_err("the burst is spent");
        assert_eq!(wait, Duration::from_secs_f64(1.2));
        // Another workspace has its own budget.
        budget.take(&globex, start).expect("its own burst");
        // One more every 1.2 s, and no more.
        let later = start + Duration::from_millis(1_200);
        budget.take(&acme, later).expect("refilled by one");
        budget.take(&acme, later).expect_err("only one");
        // A quiet minute refills the burst, not more.
        let quiet = later + Duration::from_secs(60);
        for _ in 0..20 {
            budget.take(&acme, quiet).expect("a full burst again");
        }
        budget.take(&acme, quiet).expect_err("capped at the burst");
    }
}
