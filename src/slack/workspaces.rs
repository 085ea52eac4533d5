//! Slack workspaces: where bot tokens come from ([`WorkspaceTokens`]), the `slack_workspaces`
//! table ([`PgWorkspaces`]) and an in-memory status board ([`WorkspaceBoard`]) that the Slack
//! connection actors show in their health detail (so an inactive workspace is visible in
//! `/actors`) and that the composition root can serve as is.
//!
//! Token sources plug in behind [`WorkspaceTokens`]: the single-workspace `slack.bot_token`
//! (see [`crate::slack::web::ConfigBotToken`]), and the encrypted per-team tokens of the
//! integrations vault. [`TokenChain`] asks several sources in order.
//!
//! With several replicas a token this process served may have been replaced since (another
//! replica rotated it, the workspace was reinstalled), so a refused token alone does not make
//! a workspace inactive: [`RecheckingDirectory`] asks the token source to re-read and check
//! the token stored now ([`WorkspaceTokens::recheck`]) before recording the workspace
//! inactive, a status every replica then obeys.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt_actors::Secret;
use infragpt_actors::ids::TeamId;
use parking_lot::RwLock;
use serde::Serialize;

use crate::db::schema::slack_workspaces;
use crate::db::{Pool, StoreError, conn};

/// `token_ref` of the workspace served by `slack.bot_token`.
pub(crate) const CONFIG_TOKEN_REF: &str = "config";

/// A token source failed (not "no token": that is `Ok(None)`).
#[derive(Debug, thiserror::Error)]
#[error("slack token source failed: {what}: {source}")]
pub struct TokenSourceError {
    /// What the source was doing.
    pub what: &'static str,
    /// Why it failed.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl TokenSourceError {
    /// A failure of `what`, caused by `source`.
    pub fn new(
        what: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            what,
            source: source.into(),
        }
    }
}

/// What re-reading a workspace's token after Slack refused one found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRecheck {
    /// This source does not serve the team (or keeps no other copy to re-read).
    NotServed,
    /// The token stored now works: the refused one had been replaced meanwhile.
    Superseded,
    /// The token stored now is refused too.
    Refused,
}

/// Where bot tokens come from, per workspace.
#[async_trait]
pub trait WorkspaceTokens: Send + Sync + 'static {
    /// The bot token of `team`, or `None` when this source does not serve it.
    async fn bot_token(&self, team: &TeamId) -> Result<Option<Secret>, TokenSourceError>;

    /// Slack refused a token this source served for `team`: re-read the stored one and check
    /// it. A source with a single fixed token has nothing to re-read (the default).
    async fn recheck(&self, _team: &TeamId) -> Result<TokenRecheck, TokenSourceError> {
        Ok(TokenRecheck::NotServed)
    }
}

/// Several token sources, asked in order; the first that serves a team wins.
#[derive(Clone, Default)]
pub(crate) struct TokenChain {
    sources: Vec<Arc<dyn WorkspaceTokens>>,
}

impl std::fmt::Debug for TokenChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenChain")
            .field("sources", &self.sources.len())
            .finish()
    }
}

impl TokenChain {
    /// An empty chain (serves nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a source after the existing ones (builder style).
    pub fn with(mut self, source: Arc<dyn WorkspaceTokens>) -> Self {
        self.sources.push(source);
        self
    }
}

#[async_trait]
impl WorkspaceTokens for TokenChain {
    async fn bot_token(&self, team: &TeamId) -> Result<Option<Secret>, TokenSourceError> {
        for source in &self.sources {
            if let Some(token) = source.bot_token(team).await? {
                return Ok(Some(token));
            }
        }
        Ok(None)
    }

    async fn recheck(&self, team: &TeamId) -> Result<TokenRecheck, TokenSourceError> {
        for source in &self.sources {
            match source.recheck(team).await? {
                TokenRecheck::NotServed => {}
                found => return Ok(found),
            }
        }
        Ok(TokenRecheck::NotServed)
    }
}

/// Fixed tokens per team (tests, tools).
#[derive(Clone, Default)]
pub struct StaticTokens {
    tokens: BTreeMap<TeamId, Secret>,
}

impl std::fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticTokens")
            .field("teams", &self.tokens.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl StaticTokens {
    /// No tokens.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a team's token (builder style).
    pub fn with(mut self, team: TeamId, token: Secret) -> Self {
        self.tokens.insert(team, token);
        self
    }
}

#[async_trait]
impl WorkspaceTokens for StaticTokens {
    async fn bot_token(&self, team: &TeamId) -> Result<Option<Secret>, TokenSourceError> {
        Ok(self.tokens.get(team).cloned())
    }
}

/// A workspace's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceStatus {
    /// The token works (as far as we know).
    Active,
    /// Slack refused the token (`invalid_auth`, `token_revoked`, `account_inactive`).
    Inactive,
}

impl WorkspaceStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
        }
    }
}

/// What we learn about a workspace from `auth.test`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceRegistration {
    /// Workspace.
    pub team_id: TeamId,
    pub team_name: Option<String>,
    /// The bot's user id.
    pub bot_user_id: Option<String>,
    pub bot_id: Option<String>,
    /// Where the token lives (`config`, or an `integration_credentials` id).
    pub token_ref: Option<String>,
}

/// A `slack_workspaces` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Queryable, Selectable)]
#[diesel(table_name = slack_workspaces)]
pub struct WorkspaceRecord {
    /// Workspace id.
    pub team_id: String,
    pub team_name: Option<String>,
    pub bot_user_id: Option<String>,
    pub bot_id: Option<String>,
    pub app_id: Option<String>,
    /// Where the token lives.
    pub token_ref: Option<String>,
    /// `active` / `inactive`.
    pub status: String,
    /// Why it is inactive.
    pub status_reason: Option<String>,
    /// First seen.
    pub installed_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// Where workspace facts and statuses are written (the `slack_workspaces` table).
#[async_trait]
pub trait WorkspaceDirectory: Send + Sync + 'static {
    /// Creates or updates the workspace and marks it active.
    async fn record(&self, reg: &WorkspaceRegistration) -> Result<(), StoreError>;
    /// Marks the workspace inactive with Slack's error code (creates the row if needed).
    async fn mark_inactive(&self, team: &TeamId, reason: &str) -> Result<(), StoreError>;
}

/// The `slack_workspaces` table.
#[derive(Clone)]
pub struct PgWorkspaces {
    pool: Pool,
}

impl std::fmt::Debug for PgWorkspaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgWorkspaces")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl PgWorkspaces {
    /// The table on `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// One workspace.
    pub async fn get(&self, team: &TeamId) -> Result<Option<WorkspaceRecord>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        slack_workspaces::table
            .find(team.as_str())
            .select(WorkspaceRecord::as_select())
            .first(&mut conn)
            .await
            .optional()
            .map_err(StoreError::from)
    }

    /// Every workspace, by team id.
    pub async fn list(&self) -> Result<Vec<WorkspaceRecord>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        slack_workspaces::table
            .order(slack_workspaces::team_id)
            .select(WorkspaceRecord::as_select())
            .load(&mut conn)
            .await
            .map_err(StoreError::from)
    }
}

#[async_trait]
impl WorkspaceDirectory for PgWorkspaces {
    async fn record(&self, reg: &WorkspaceRegistration) -> Result<(), StoreError> {
        let mut conn = conn(&self.pool).await?;
        diesel::insert_into(slack_workspaces::table)
            .values((
                slack_workspaces::team_id.eq(reg.team_id.as_str()),
                slack_workspaces::team_name.eq(&reg.team_name),
                slack_workspaces::bot_user_id.eq(&reg.bot_user_id),
                slack_workspaces::bot_id.eq(&reg.bot_id),
                slack_workspaces::token_ref.eq(&reg.token_ref),
                slack_workspaces::status.eq(WorkspaceStatus::Active.as_str()),
            ))
            .on_conflict(slack_workspaces::team_id)
            .do_update()
            .set((
                slack_workspaces::team_name.eq(&reg.team_name),
                slack_workspaces::bot_user_id.eq(&reg.bot_user_id),
                slack_workspaces::bot_id.eq(&reg.bot_id),
                slack_workspaces::token_ref.eq(&reg.token_ref),
                slack_workspaces::status.eq(WorkspaceStatus::Active.as_str()),
                slack_workspaces::status_reason.eq(None::<String>),
                slack_workspaces::updated_at.eq(diesel::dsl::now),
            ))
            .execute(&mut conn)
            .await?;
        tracing::info!(team_id = %reg.team_id, "slack workspace recorded");
        Ok(())
    }

    async fn mark_inactive(&self, team: &TeamId, reason: &str) -> Result<(), StoreError> {
        let mut conn = conn(&self.pool).await?;
        diesel::insert_into(slack_workspaces::table)
            .values((
                slack_workspaces::team_id.eq(team.as_str()),
                slack_workspaces::status.eq(WorkspaceStatus::Inactive.as_str()),
                slack_workspaces::status_reason.eq(reason),
            ))
            .on_conflict(slack_workspaces::team_id)
            .do_update()
            .set((
                slack_workspaces::status.eq(WorkspaceStatus::Inactive.as_str()),
                slack_workspaces::status_reason.eq(reason),
                slack_workspaces::updated_at.eq(diesel::dsl::now),
            ))
            .execute(&mut conn)
            .await?;
        tracing::warn!(team_id = %team, reason, "slack workspace marked inactive");
        Ok(())
    }
}

/// A [`WorkspaceDirectory`] that records a workspace inactive only when the token stored now
/// is refused too (see the module documentation). When the refused token had been replaced
/// and the stored one works, the workspace stays active (here and on the board); when the
/// re-check itself fails, nothing is recorded: an inactive status stops every replica until
/// the workspace is reinstalled, while a workspace left active is checked again at its next
/// refusal.
pub struct RecheckingDirectory {
    inner: Arc<dyn WorkspaceDirectory>,
    tokens: Arc<dyn WorkspaceTokens>,
    board: WorkspaceBoard,
}

impl std::fmt::Debug for RecheckingDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecheckingDirectory")
            .finish_non_exhaustive()
    }
}

impl RecheckingDirectory {
    /// Records into `inner` after re-checking with `tokens`; restores `board` entries.
    pub fn new(
        inner: Arc<dyn WorkspaceDirectory>,
        tokens: Arc<dyn WorkspaceTokens>,
        board: WorkspaceBoard,
    ) -> Self {
        Self {
            inner,
            tokens,
            board,
        }
    }
}

#[async_trait]
impl WorkspaceDirectory for RecheckingDirectory {
    async fn record(&self, reg: &WorkspaceRegistration) -> Result<(), StoreError> {
        self.inner.record(reg).await
    }

    async fn mark_inactive(&self, team: &TeamId, reason: &str) -> Result<(), StoreError> {
        match self.tokens.recheck(team).await {
            Ok(TokenRecheck::Superseded) => {
                let name = self.board.get(team).and_then(|s| s.team_name);
                self.board.active(team, name);
                tracing::info!(
                    team_id = %team,
                    reason,
                    "slack refused a token that had been replaced; the stored one works, the workspace stays active"
                );
                Ok(())
            }
            Ok(TokenRecheck::Refused | TokenRecheck::NotServed) => {
                self.inner.mark_inactive(team, reason).await
            }
            Err(error) => {
                tracing::error!(
                    team_id = %team,
                    reason,
                    %error,
                    "re-checking the refused token failed; the workspace is not recorded inactive"
                );
                Ok(())
            }
        }
    }
}

/// A workspace's status as last seen by this process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkspaceState {
    /// Workspace.
    pub team_id: String,
    /// Name, when known.
    pub team_name: Option<String>,
    pub status: WorkspaceStatus,
    /// Slack's error code when inactive.
    pub reason: Option<String>,
    /// When it last changed.
    pub since: DateTime<Utc>,
}

/// In-memory workspace statuses, shared by the Web API adapter (writer) and the Slack
/// connection actors (which copy it into their health detail under `workspaces`). Cheap to
/// clone.
#[derive(Debug, Clone, Default)]
pub struct WorkspaceBoard {
    inner: Arc<RwLock<BTreeMap<String, WorkspaceState>>>,
}

impl WorkspaceBoard {
    /// An empty board.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an active workspace.
    pub fn active(&self, team: &TeamId, team_name: Option<String>) {
        self.inner.write().insert(
            team.as_str().to_owned(),
            WorkspaceState {
                team_id: team.as_str().to_owned(),
                team_name,
                status: WorkspaceStatus::Active,
                reason: None,
                since: Utc::now(),
            },
        );
    }

    /// Records an inactive workspace.
    pub fn inactive(&self, team: &TeamId, reason: &str) {
        let mut map = self.inner.write();
        let team_name = map.get(team.as_str()).and_then(|s| s.team_name.clone());
        map.insert(
            team.as_str().to_owned(),
            WorkspaceState {
                team_id: team.as_str().to_owned(),
                team_name,
                status: WorkspaceStatus::Inactive,
                reason: Some(reason.to_owned()),
                since: Utc::now(),
            },
        );
    }

    /// One workspace.
    pub fn get(&self, team: &TeamId) -> Option<WorkspaceState> {
        self.inner.read().get(team.as_str()).cloned()
    }

    /// Every workspace, by team id.
    pub fn snapshot(&self) -> Vec<WorkspaceState> {
        self.inner.read().values().cloned().collect()
    }
}
