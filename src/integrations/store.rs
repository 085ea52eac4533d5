//! Integration rows, GitHub repositories and events, Slack workspaces: the non-secret state of
//! the integrations. Every organization-facing read is scoped by organization id.
//!
//! Every lifecycle change of an integration row (begin, connect, activate, status, revoke)
//! takes the audit entry that records it (or a closure building it from the row before and
//! after) and writes it with `db::audit::insert_entry` in the change's transaction: the
//! change and its entry commit together, and a change that changed nothing records nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::dsl::now;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl};
use futures::FutureExt as _;
use futures::future::BoxFuture;
use infragpt_actors::audit::AuditEntry;
use infragpt_actors::group_commit::{BatchWrite, Batcher};
use infragpt_actors::health::ActorHealth;
use serde::Serialize;
use uuid::Uuid;

use super::credentials::{SealedCredential, delete_all_on, upsert_on};
use super::providers::{NormalizedEvent, RepoRef};
use crate::db::audit::insert_entry;
use crate::db::batch::write_batch;
use crate::db::committed::CommittedExt as _;
use crate::db::prepared::PreparedExt as _;
use crate::db::schema::{github_events, github_repositories, integrations, slack_workspaces};
use crate::db::{Pool, StoreError, conn};

/// Lifecycle state of an integration.
pub mod status {
    /// Started, waiting for the provider's callback.
    pub(crate) const PENDING: &str = "pending";
    /// Authorized and usable.
    pub(crate) const ACTIVE: &str = "active";
    /// Suspended at the provider (GitHub installation suspended).
    pub(crate) const SUSPENDED: &str = "suspended";
    /// Uninstalled or revoked; credentials deleted.
    pub(crate) const REVOKED: &str = "revoked";
    /// The credential no longer works (validation or refresh failed for good).
    pub const ERROR: &str = "error";
}

/// An `integrations` row. Holds no secrets, so it can be answered as is.
#[derive(Debug, Clone, PartialEq, Serialize, Queryable, Selectable)]
#[diesel(table_name = integrations)]
pub struct Integration {
    /// Our id.
    pub id: Uuid,
    /// Owning organization.
    pub organization_id: Uuid,
    /// `slack`, `github`, ...
    pub connector_type: String,
    /// See [`status`].
    pub status: String,
    /// Slack team id, GitHub installation id.
    pub external_id: Option<String>,
    /// Provider facts (account, permissions, team name...).
    pub metadata: serde_json::Value,
    /// Clerk user id of whoever started it.
    pub created_by: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Last time a credential was served.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A stored normalized GitHub event.
#[derive(Debug, Clone, PartialEq, Serialize, Queryable, Selectable)]
#[diesel(table_name = github_events)]
pub struct GithubEventRow {
    /// Row id (the pagination cursor).
    pub id: i64,
    /// `X-GitHub-Delivery`.
    pub delivery_id: String,
    /// Installation.
    pub installation_id: Option<i64>,
    /// Event name.
    pub event: String,
    /// Action.
    pub action: Option<String>,
    /// `owner/name`.
    pub repository: Option<String>,
    /// Sender login.
    pub actor: Option<String>,
    /// Branch or tag.
    pub git_ref: Option<String>,
    /// PR/issue/run number.
    pub number: Option<i64>,
    /// Title or name.
    pub title: Option<String>,
    /// State or status.
    pub state: Option<String>,
    /// Conclusion.
    pub conclusion: Option<String>,
    /// Event-specific facts.
    pub summary: serde_json::Value,
    /// When stored.
    pub created_at: DateTime<Utc>,
}

/// A Slack workspace to record after an install.
#[derive(Debug, Clone)]
pub(crate) struct SlackWorkspaceRecord {
    /// Team id.
    pub team_id: String,
    /// Team name.
    pub team_name: Option<String>,
    /// The bot's user id.
    pub bot_user_id: Option<String>,
    /// The app id.
    pub app_id: Option<String>,
    /// Owning organization.
    pub organization_id: Uuid,
    /// `integration_credentials.id` of the bot token.
    pub token_ref: Uuid,
}

/// The integration tables.
#[derive(Clone)]
pub struct IntegrationStore {
    pool: Pool,
}

impl std::fmt::Debug for IntegrationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegrationStore")
            .field("pool", &self.pool.status())
            .finish()
    }
}

/// The normalized GitHub events handled at the same moment (one per repository worker),
/// stored by one statement and one commit ([`Batcher`]): each delivery's row used to be an
/// insert and a commit of its own, the largest share of a delivery's database work after its
/// inbox record ("Group commit" in ARCHITECTURE.md).
pub(crate) struct GithubEventBatch {
    pool: Pool,
}

/// A delivery id and its normalized event, stored once per delivery id.
pub(crate) type NewGithubEvent = (String, NormalizedEvent);

/// Deliveries whose rows one statement inserts at most.
const GITHUB_EVENTS_BATCH_MAX: usize = 256;

/// How long one batch of event rows may take before its deliveries fail (and are retried).
const GITHUB_EVENTS_BATCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The rows in submission order; a delivery already stored (or twice in the batch) is
/// skipped. Returns the delivery ids inserted.
const INSERT_GITHUB_EVENTS: &str = "\
INSERT INTO github_events (delivery_id, installation_id, event, action, repository, actor,
    git_ref, number, title, state, conclusion, summary)
SELECT d, i, e, a, r, ac, g, n, t, s, c, CAST(j AS jsonb)
FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::int8[], $9::text[], $10::text[], $11::text[], $12::text[])
    WITH ORDINALITY AS x(d, i, e, a, r, ac, g, n, t, s, c, j, o)
ORDER BY o
ON CONFLICT (delivery_id) DO NOTHING
RETURNING delivery_id";

impl GithubEventBatch {
    /// Starts the writer on the caller's arbiter (the handlers that wait for it need no
    /// thread of its own); its state shows in the actor tree as `health`.
    pub(crate) fn start(pool: Pool, health: ActorHealth) -> Batcher<Self> {
        Batcher::start_here(
            Self { pool },
            GITHUB_EVENTS_BATCH_MAX,
            health,
            GITHUB_EVENTS_BATCH_TIMEOUT,
        )
    }
}

impl BatchWrite for GithubEventBatch {
    type Item = NewGithubEvent;
    /// True when the delivery's row is new.
    type Out = bool;
    type Error = StoreError;

    fn write(
        &self,
        rows: Vec<NewGithubEvent>,
    ) -> BoxFuture<'static, Vec<Result<bool, StoreError>>> {
        let pool = self.pool.clone();
        async move {
            write_batch(&rows, |rows| async {
                Ok(insert_github_events(&pool, rows)
                    .await?
                    .into_iter()
                    .map(Ok)
                    .collect())
            })
            .await
        }
        .boxed()
    }
}

/// Inserts `rows` in one statement; for each row, whether it was new.
async fn insert_github_events(
    pool: &Pool,
    rows: &[NewGithubEvent],
) -> Result<Vec<bool>, StoreError> {
    #[derive(QueryableByName)]
    struct Inserted {
        #[diesel(sql_type = Text)]
        delivery_id: String,
    }
    let column = |f: for<'a> fn(&'a NormalizedEvent) -> Option<&'a str>| -> Vec<Option<&str>> {
        rows.iter().map(|(_, e)| f(e)).collect()
    };
    let ids: Vec<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
    let installations: Vec<Option<i64>> = rows.iter().map(|(_, e)| e.installation_id).collect();
    let events: Vec<&str> = rows.iter().map(|(_, e)| e.event.as_str()).collect();
    let numbers: Vec<Option<i64>> = rows.iter().map(|(_, e)| e.number).collect();
    let summaries: Vec<String> = rows.iter().map(|(_, e)| e.summary.to_string()).collect();
    let mut conn = conn(pool).await?;
    let inserted: Vec<Inserted> = diesel::sql_query(INSERT_GITHUB_EVENTS)
        .bind::<Array<Text>, _>(&ids)
        .bind::<Array<Nullable<BigInt>>, _>(&installations)
        .bind::<Array<Text>, _>(&events)
        .bind::<Array<Nullable<Text>>, _>(column(|e| e.action.as_deref()))
        .bind::<Array<Nullable<Text>>, _>(column(|e| e.repository.as_deref()))
        .bind::<Array<Nullable<Text>>, _>(column(|e| e.actor.as_deref()))
        .bind::<Array<Nullable<Text>>, _>(column(|e| e.git_ref.as_deref()))
        .bind::<Array<Nullable<BigInt>>, _>(&numbers)
        .bind::<Array<Nullable<Text>>, _>(column(|e| e.title.as_deref()))
        .bind::<Array<Nullable<Text>>, _>(column(|e| e.state.as_deref()))
        .bind::<Array<Nullable<Text>>, _>(column(|e| e.conclusion.as_deref()))
        .bind::<Array<Text>, _>(&summaries)
        .prepared()
        .load(&mut conn)
        .await?;
    let mut new: std::collections::HashSet<String> =
        inserted.into_iter().map(|row| row.delivery_id).collect();
    // A delivery twice in one batch is new once: its first row.
    Ok(ids.iter().map(|id| new.remove(*id)).collect())
}

impl IntegrationStore {
    /// A store on `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// The pool (shared with the other adapters).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The organization's integration of `connector_type`, if any.
    pub(crate) async fn find_for_org(
        &self,
        organization_id: Uuid,
        connector_type: &str,
    ) -> Result<Option<Integration>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        Ok(integrations::table
            .filter(integrations::organization_id.eq(organization_id))
            .filter(integrations::connector_type.eq(connector_type))
            .select(Integration::as_select())
            .first(&mut conn)
            .await
            .optional()?)
    }

    /// Creates a pending integration, or resets an existing pending/revoked/error one to
    /// pending. `Ok(Err(existing))` when the organization already has a live one (active or
    /// suspended). The entry `audit` makes of the pending row is written in the same
    /// transaction: both commit or neither.
    pub(crate) async fn begin(
        &self,
        organization_id: Uuid,
        connector_type: &str,
        user_id: &str,
        audit: impl FnOnce(&Integration) -> Option<AuditEntry> + Send,
    ) -> Result<Result<Integration, Integration>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let row = match begin_in(conn, organization_id, connector_type, user_id).await? {
                Ok(row) => row,
                Err(existing) => return Ok(Err(existing)),
            };
            if let Some(entry) = audit(&row) {
                insert_entry(conn, &entry).await?;
            }
            Ok(Ok(row))
        })
        .await
    }

    /// One integration of one organization (another organization's → `None`).
    pub async fn get(
        &self,
        organization_id: Uuid,
        id: Uuid,
    ) -> Result<Option<Integration>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        Ok(integrations::table
            .filter(integrations::id.eq(id))
            .filter(integrations::organization_id.eq(organization_id))
            .select(Integration::as_select())
            .first(&mut conn)
            .await
            .optional()?)
    }

    /// One integration by id, whatever its organization (internal use: stream handlers,
    /// rotation).
    pub(crate) async fn get_any(&self, id: Uuid) -> Result<Option<Integration>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        Ok(integrations::table
            .find(id)
            .select(Integration::as_select())
            .first(&mut conn)
            .await
            .optional()?)
    }

    /// The organization's integrations, optionally of one connector type.
    pub async fn list(
        &self,
        organization_id: Uuid,
        connector_type: Option<&str>,
    ) -> Result<Vec<Integration>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let mut query = integrations::table
            .filter(integrations::organization_id.eq(organization_id))
            .order(integrations::created_at.asc())
            .select(Integration::as_select())
            .into_boxed();
        if let Some(t) = connector_type {
            query = query.filter(integrations::connector_type.eq(t.to_owned()));
        }
        Ok(query.load(&mut conn).await?)
    }

    /// The integration linked to a provider-side id (`github` + installation id).
    pub(crate) async fn find_by_external(
        &self,
        connector_type: &str,
        external_id: &str,
    ) -> Result<Option<Integration>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        Ok(integrations::table
            .filter(integrations::connector_type.eq(connector_type))
            .filter(integrations::external_id.eq(external_id))
            .order(integrations::updated_at.desc())
            .select(Integration::as_select())
            .first(&mut conn)
            .await
            .optional()?)
    }

    /// The OAuth/installation callback's one transaction: replaces the integration's
    /// credentials with `credentials` (already sealed), marks it active with the provider id
    /// and metadata, and writes the entry `audit` makes of the row and the credential row ids
    /// (type → id). Returns both.
    pub(crate) async fn connect(
        &self,
        id: Uuid,
        external_id: &str,
        metadata: &serde_json::Value,
        credentials: &[SealedCredential<'_>],
        audit: impl FnOnce(&Integration, &BTreeMap<String, Uuid>) -> AuditEntry + Send,
    ) -> Result<(Integration, BTreeMap<String, Uuid>), StoreError> {
        let mut conn = conn(&self.pool).await?;
        conn.transaction::<_, StoreError, _>(async move |conn| {
            delete_all_on(conn, id).await?;
            let mut ids = BTreeMap::new();
            for c in credentials {
                let row = upsert_on(conn, id, c.credential_type, &c.sealed, c.expires_at).await?;
                ids.insert(c.credential_type.to_owned(), row);
            }
            let (_, row) = activate_in(conn, id, external_id, metadata).await?;
            insert_entry(conn, &audit(&row, &ids)).await?;
            Ok((row, ids))
        })
        .await
    }

    /// Marks an integration authorized: status, provider id and metadata. The entry `audit`
    /// makes of the row before and after, if any, is written in the same transaction.
    pub(crate) async fn activate(
        &self,
        id: Uuid,
        external_id: &str,
        metadata: &serde_json::Value,
        audit: impl FnOnce(&Integration, &Integration) -> Option<AuditEntry> + Send,
    ) -> Result<Integration, StoreError> {
        let mut conn = conn(&self.pool).await?;
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let (before, after) = activate_in(conn, id, external_id, metadata).await?;
            if let Some(entry) = audit(&before, &after) {
                insert_entry(conn, &entry).await?;
            }
            Ok(after)
        })
        .await
    }

    /// Sets the status; returns the updated row (`None` when it does not exist). The entry
    /// `audit` makes of the row before and after, if any, is written in the same transaction
    /// (no row: nothing changed, nothing recorded).
    pub(crate) async fn set_status_audited(
        &self,
        id: Uuid,
        new_status: &str,
        audit: impl FnOnce(&Integration, &Integration) -> Option<AuditEntry> + Send,
    ) -> Result<Option<Integration>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let Some(before) = lock_row(conn, id).await? else {
                return Ok(None);
            };
            let after = diesel::update(integrations::table.find(id))
                .set((
                    integrations::status.eq(new_status),
                    integrations::updated_at.eq(now),
                ))
                .returning(Integration::as_returning())
                .get_committed(conn)
                .await?;
            if let Some(entry) = audit(&before, &after) {
                insert_entry(conn, &entry).await?;
            }
            Ok(Some(after))
        })
        .await
    }

    /// Revokes an integration in one transaction: deletes its credentials, marks it
    /// revoked and writes the entry `audit` makes of what happened, if any. `None` when the
    /// row does not exist.
    pub(crate) async fn revoke(
        &self,
        id: Uuid,
        audit: impl FnOnce(&Revoked) -> Option<AuditEntry> + Send,
    ) -> Result<Option<Revoked>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let Some(before) = lock_row(conn, id).await? else {
                return Ok(None);
            };
            let credentials_deleted = delete_all_on(conn, id).await?;
            let integration = diesel::update(integrations::table.find(id))
                .set((
                    integrations::status.eq(status::REVOKED),
                    integrations::updated_at.eq(now),
                ))
                .returning(Integration::as_returning())
                .get_committed(conn)
                .await?;
            let revoked = Revoked {
                before,
                integration,
                credentials_deleted,
            };
            if let Some(entry) = audit(&revoked) {
                insert_entry(conn, &entry).await?;
            }
            Ok(Some(revoked))
        })
        .await
    }

    /// Merges `patch` (an object) into the metadata.
    pub(crate) async fn merge_metadata(
        &self,
        id: Uuid,
        patch: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let Some(current) = self.get_any(id).await? else {
            return Ok(());
        };
        let mut merged = current.metadata;
        if let (Some(target), Some(src)) = (merged.as_object_mut(), patch.as_object()) {
            for (k, v) in src {
                target.insert(k.clone(), v.clone());
            }
        }
        let mut conn = conn(&self.pool).await?;
        diesel::update(integrations::table.find(id))
            .set((
                integrations::metadata.eq(merged),
                integrations::updated_at.eq(now),
            ))
            .execute(&mut conn)
            .await?;
        Ok(())
    }

    /// Records that a credential of the integration was served.
    pub(crate) async fn touch(&self, id: Uuid) -> Result<(), StoreError> {
        let mut conn = conn(&self.pool).await?;
        diesel::update(integrations::table.find(id))
            .set(integrations::last_used_at.eq(now))
            .execute(&mut conn)
            .await?;
        Ok(())
    }

    // ----- GitHub repositories -------------------------------------------------------------

    /// Adds (or renames) repositories of an installation.
    pub(crate) async fn add_repositories(
        &self,
        installation_id: i64,
        repos: &[RepoRef],
    ) -> Result<(), StoreError> {
        if repos.is_empty() {
            return Ok(());
        }
        let mut conn = conn(&self.pool).await?;
        for repo in repos {
            diesel::insert_into(github_repositories::table)
                .values((
                    github_repositories::installation_id.eq(installation_id),
                    github_repositories::repository_id.eq(repo.id),
                    github_repositories::full_name.eq(&repo.full_name),
                    github_repositories::private.eq(repo.private),
                ))
                .on_conflict((
                    github_repositories::installation_id,
                    github_repositories::repository_id,
                ))
                .do_update()
                .set((
                    github_repositories::full_name.eq(&repo.full_name),
                    github_repositories::private.eq(repo.private),
                ))
                .execute(&mut conn)
                .await?;
        }
        Ok(())
    }

    /// Replaces the repository list of an installation.
    pub(crate) async fn replace_repositories(
        &self,
        installation_id: i64,
        repos: &[RepoRef],
    ) -> Result<(), StoreError> {
        self.remove_all_repositories(installation_id).await?;
        self.add_repositories(installation_id, repos).await
    }

    /// Removes repositories of an installation.
    pub(crate) async fn remove_repositories(
        &self,
        installation_id: i64,
        repository_ids: &[i64],
    ) -> Result<(), StoreError> {
        if repository_ids.is_empty() {
            return Ok(());
        }
        let mut conn = conn(&self.pool).await?;
        diesel::delete(
            github_repositories::table
                .filter(github_repositories::installation_id.eq(installation_id))
                .filter(github_repositories::repository_id.eq_any(repository_ids)),
        )
        .execute(&mut conn)
        .await?;
        Ok(())
    }

    /// Removes every repository of an installation.
    pub(crate) async fn remove_all_repositories(
        &self,
        installation_id: i64,
    ) -> Result<(), StoreError> {
        let mut conn = conn(&self.pool).await?;
        diesel::delete(
            github_repositories::table
                .filter(github_repositories::installation_id.eq(installation_id)),
        )
        .execute(&mut conn)
        .await?;
        Ok(())
    }

    /// Repositories of an installation, by name.
    pub async fn repositories(&self, installation_id: i64) -> Result<Vec<RepoRef>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let rows: Vec<(i64, String, bool)> = github_repositories::table
            .filter(github_repositories::installation_id.eq(installation_id))
            .order(github_repositories::full_name.asc())
            .select((
                github_repositories::repository_id,
                github_repositories::full_name,
                github_repositories::private,
            ))
            .load(&mut conn)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, full_name, private)| RepoRef {
                id,
                full_name,
                private,
            })
            .collect())
    }

    // ----- GitHub events -------------------------------------------------------------------

    /// Newest events of an installation, `limit` at most, older than the `before` row id.
    pub async fn events(
        &self,
        installation_id: i64,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<GithubEventRow>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let mut query = github_events::table
            .filter(github_events::installation_id.eq(installation_id))
            .order(github_events::id.desc())
            .limit(limit)
            .select(GithubEventRow::as_select())
            .into_boxed();
        if let Some(before) = before {
            query = query.filter(github_events::id.lt(before));
        }
        Ok(query.load(&mut conn).await?)
    }

    // ----- Slack workspaces ----------------------------------------------------------------

    /// Records an installed workspace; a reinstall replaces the token reference (one active
    /// token per team).
    pub(crate) async fn upsert_slack_workspace(
        &self,
        ws: &SlackWorkspaceRecord,
    ) -> Result<(), StoreError> {
        let mut conn = conn(&self.pool).await?;
        let token_ref = ws.token_ref.to_string();
        diesel::insert_into(slack_workspaces::table)
            .values((
                slack_workspaces::team_id.eq(&ws.team_id),
                slack_workspaces::team_name.eq(&ws.team_name),
                slack_workspaces::bot_user_id.eq(&ws.bot_user_id),
                slack_workspaces::app_id.eq(&ws.app_id),
                slack_workspaces::organization_id.eq(ws.organization_id),
                slack_workspaces::token_ref.eq(&token_ref),
                slack_workspaces::status.eq("active"),
            ))
            .on_conflict(slack_workspaces::team_id)
            .do_update()
            .set((
                slack_workspaces::team_name.eq(&ws.team_name),
                slack_workspaces::bot_user_id.eq(&ws.bot_user_id),
                slack_workspaces::app_id.eq(&ws.app_id),
                slack_workspaces::organization_id.eq(ws.organization_id),
                slack_workspaces::token_ref.eq(&token_ref),
                slack_workspaces::status.eq("active"),
                slack_workspaces::status_reason.eq(None::<String>),
                slack_workspaces::updated_at.eq(now),
            ))
            .execute(&mut conn)
            .await?;
        Ok(())
    }

    /// Marks a workspace revoked (its token is gone).
    pub(crate) async fn revoke_slack_workspace(
        &self,
        team_id: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let mut conn = conn(&self.pool).await?;
        diesel::update(slack_workspaces::table.find(team_id))
            .set((
                slack_workspaces::status.eq("revoked"),
                slack_workspaces::status_reason.eq(reason),
                slack_workspaces::token_ref.eq(None::<String>),
                slack_workspaces::updated_at.eq(now),
            ))
            .execute(&mut conn)
            .await?;
        Ok(())
    }

    /// `(status, token_ref)` of a workspace.
    pub(crate) async fn slack_workspace(
        &self,
        team_id: &str,
    ) -> Result<Option<(String, Option<String>, Option<Uuid>)>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        Ok(slack_workspaces::table
            .find(team_id)
            .select((
                slack_workspaces::status,
                slack_workspaces::token_ref,
                slack_workspaces::organization_id,
            ))
            .first(&mut conn)
            .await
            .optional()?)
    }
}

/// What [`IntegrationStore::revoke`] did.
#[derive(Debug, Clone)]
pub(crate) struct Revoked {
    /// The row before.
    pub before: Integration,
    /// The row after (revoked).
    pub integration: Integration,
    /// Credential rows deleted.
    pub credentials_deleted: usize,
}

impl Revoked {
    /// False when the integration was revoked already and had no credentials left.
    pub(crate) fn changed(&self) -> bool {
        self.before.status != status::REVOKED || self.credentials_deleted > 0
    }
}

/// The row of integration `id`, locked for the rest of the transaction.
async fn lock_row(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> Result<Option<Integration>, StoreError> {
    Ok(integrations::table
        .find(id)
        .select(Integration::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?)
}

/// Marks integration `id` active with `external_id` and `metadata` on the caller's
/// transaction; returns the row before and after. The row must exist.
async fn activate_in(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    external_id: &str,
    metadata: &serde_json::Value,
) -> Result<(Integration, Integration), StoreError> {
    let before = integrations::table
        .find(id)
        .select(Integration::as_select())
        .for_update()
        .first(conn)
        .await?;
    let after = diesel::update(integrations::table.find(id))
        .set((
            integrations::status.eq(status::ACTIVE),
            integrations::external_id.eq(external_id),
            integrations::metadata.eq(metadata),
            integrations::updated_at.eq(now),
        ))
        .returning(Integration::as_returning())
        .get_committed(conn)
        .await?;
    Ok((before, after))
}

/// The body of [`IntegrationStore::begin`], on the caller's connection (transaction).
async fn begin_in(
    conn: &mut AsyncPgConnection,
    organization_id: Uuid,
    connector_type: &str,
    user_id: &str,
) -> Result<Result<Integration, Integration>, StoreError> {
    let inserted: Option<Integration> = diesel::insert_into(integrations::table)
        .values((
            integrations::organization_id.eq(organization_id),
            integrations::connector_type.eq(connector_type),
            integrations::status.eq(status::PENDING),
            integrations::created_by.eq(user_id),
        ))
        .on_conflict_do_nothing()
        .returning(Integration::as_returning())
        .get_committed(conn)
        .await
        .optional()?;
    if let Some(row) = inserted {
        return Ok(Ok(row));
    }
    // Reuse a finished attempt; a live integration is left alone.
    let reset: Option<Integration> = diesel::update(
        integrations::table
            .filter(integrations::organization_id.eq(organization_id))
            .filter(integrations::connector_type.eq(connector_type))
            .filter(integrations::status.ne_all([status::ACTIVE, status::SUSPENDED])),
    )
    .set((
        integrations::status.eq(status::PENDING),
        integrations::created_by.eq(user_id),
        integrations::updated_at.eq(now),
    ))
    .returning(Integration::as_returning())
    .get_committed(conn)
    .await
    .optional()?;
    if let Some(row) = reset {
        return Ok(Ok(row));
    }
    let existing = integrations::table
        .filter(integrations::organization_id.eq(organization_id))
        .filter(integrations::connector_type.eq(connector_type))
        .select(Integration::as_select())
        .first(conn)
        .await?;
    Ok(Err(existing))
}
