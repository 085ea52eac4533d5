//! The identity store: users, organizations, memberships and organization metadata mirrored
//! from Clerk, in PostgreSQL.
//!
//! # How out-of-order webhooks converge
//!
//! * Rows are keyed by Clerk ids. Memberships reference users and organizations by Clerk id
//!   (no foreign keys), so any event can be stored whatever arrived before it. A membership is
//!   *visible* only while its user, its organization and itself are live.
//! * Every mirrored row remembers the Clerk `updated_at` (ms) it was written from
//!   (`clerk_updated_at`). An upsert applies only when the row has no version yet or an older
//!   one, so an old `*.created` arriving after an `*.updated` changes nothing, and replaying an
//!   event changes nothing (not even `updated_at`).
//! * Deletes are soft (`deleted_at`) and terminal for that Clerk id: a later upsert may still
//!   refresh the fields (it may be newer than what we had) but never clears `deleted_at`. A
//!   delete for an id we have not seen yet stores a tombstone row, which the (late) upsert then
//!   fills in. Clerk never reuses user, organization or membership ids; a user removed from an
//!   organization and added again gets a *new* membership id, hence a new row.
//! * `organization.created` makes its creator an admin through an *implicit* membership row
//!   (no membership id), written only when the pair has no row at all; an explicit membership
//!   row for the pair (created, updated or deleted) replaces it, whichever came first.
//!
//! # Audit entries
//!
//! The writes that are audited take a closure building the entry from what the write did;
//! the store calls it only when a row changed and inserts its entry in the write's
//! transaction, so a change and its entry commit together (a failed entry fails the write)
//! and a repeated or older event, which changes nothing, records nothing.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use infragpt_actors::audit::AuditEntry;
use infragpt_actors::ids::OrganizationId;
use serde::Serialize;
use uuid::Uuid;

use super::clerk_events::ClerkUser;
use super::{ClerkMembershipId, ClerkOrgId, ClerkUserId};
use crate::db::audit::insert_entry;
use crate::db::committed::CommittedExt as _;
use crate::db::schema::{organization_members, organization_metadata, organizations, users};
use crate::db::{Pool, StoreError, conn};

/// Role given to an organization's creator by the implicit membership.
pub(crate) const CREATOR_ROLE: &str = "org:admin";

/// What an upsert or delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A new row was written.
    Inserted,
    /// An existing row was changed.
    Updated,
    /// A live row was soft-deleted, or a tombstone was stored for an unseen id.
    Deleted,
    /// Nothing changed (older or repeated event, or already deleted).
    Unchanged,
}

impl Applied {
    /// True when a row changed.
    pub fn changed(self) -> bool {
        self != Applied::Unchanged
    }
}

/// A live user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Queryable, Selectable)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg))]
pub struct UserRecord {
    /// Our id.
    pub id: Uuid,
    pub clerk_id: String,
    /// Primary email address.
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub username: Option<String>,
    /// Avatar URL.
    pub image_url: Option<String>,
    /// When we first stored it.
    pub created_at: DateTime<Utc>,
    /// When we last changed it.
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = organizations, check_for_backend(diesel::pg::Pg))]
struct OrganizationRow {
    id: Uuid,
    clerk_id: String,
    name: String,
    slug: Option<String>,
    image_url: Option<String>,
    created_by_clerk_id: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// A live organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrganizationRecord {
    /// Our id.
    pub id: OrganizationId,
    pub clerk_id: ClerkOrgId,
    /// Display name.
    pub name: String,
    /// URL slug.
    pub slug: Option<String>,
    /// Logo URL.
    pub image_url: Option<String>,
    /// Clerk id of the creator.
    pub created_by: Option<ClerkUserId>,
    /// When we first stored it.
    pub created_at: DateTime<Utc>,
    /// When we last changed it.
    pub updated_at: DateTime<Utc>,
}

impl From<OrganizationRow> for OrganizationRecord {
    fn from(r: OrganizationRow) -> Self {
        Self {
            id: OrganizationId(r.id),
            clerk_id: ClerkOrgId::new(r.clerk_id),
            name: r.name,
            slug: r.slug,
            image_url: r.image_url,
            created_by: r.created_by_clerk_id.map(ClerkUserId::new),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Onboarding answers of an organization (empty when never written).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OrganizationMetadata {
    /// One of [`super::api::COMPANY_SIZES`].
    pub company_size: Option<String>,
    /// One of [`super::api::TEAM_SIZES`].
    pub team_size: Option<String>,
    /// Values of [`super::api::USE_CASES`].
    pub use_cases: Vec<String>,
    /// Values of [`super::api::OBSERVABILITY_STACK`].
    pub observability_stack: Vec<String>,
    /// When the metadata was first written.
    pub onboarding_completed_at: Option<DateTime<Utc>>,
    /// When it was last written (`None` when never).
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = organization_metadata, check_for_backend(diesel::pg::Pg))]
struct MetadataRow {
    company_size: Option<String>,
    team_size: Option<String>,
    use_cases: Vec<String>,
    observability_stack: Vec<String>,
    onboarding_completed_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
}

impl From<MetadataRow> for OrganizationMetadata {
    fn from(r: MetadataRow) -> Self {
        Self {
            company_size: r.company_size,
            team_size: r.team_size,
            use_cases: r.use_cases,
            observability_stack: r.observability_stack,
            onboarding_completed_at: r.onboarding_completed_at,
            updated_at: Some(r.updated_at),
        }
    }
}

/// New metadata values (already validated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MetadataUpdate {
    pub company_size: Option<String>,
    pub team_size: Option<String>,
    pub use_cases: Vec<String>,
    pub observability_stack: Vec<String>,
}

/// An organization to upsert (from `organization.created` / `organization.updated`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrganizationUpsert {
    pub clerk_id: ClerkOrgId,
    pub name: String,
    pub slug: Option<String>,
    /// Logo URL.
    pub image_url: Option<String>,
    pub created_by: Option<ClerkUserId>,
}

/// A membership to upsert (from `organizationMembership.created` / `.updated`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipUpsert {
    pub clerk_membership_id: ClerkMembershipId,
    pub org_clerk_id: ClerkOrgId,
    pub user_clerk_id: ClerkUserId,
    /// Role (`org:admin`, `org:member`, ...).
    pub role: String,
}

/// Result of a membership write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipApplied {
    /// What happened.
    pub applied: Applied,
    /// The role before the write (`None` for a new row).
    pub previous_role: Option<String>,
    /// Our id of the organization, when we know it (for the audit log).
    pub organization_id: Option<OrganizationId>,
}

/// Whether a user may act in an organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrgAccess {
    /// A live member of a live organization.
    Member {
        organization: OrganizationRecord,
        role: String,
    },
    /// No live organization has this Clerk id.
    UnknownOrganization,
    /// The organization exists, but the user is not a live member (or not a live user).
    NotMember,
}

/// The identity tables in PostgreSQL. Cheap to clone.
#[derive(Clone)]
pub struct IdentityStore {
    pool: Pool,
}

impl std::fmt::Debug for IdentityStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityStore")
            .field("pool", &self.pool.status())
            .finish()
    }
}

/// `clerk_updated_at` of an existing row allows a write of `version` when it is unknown or
/// older. An event without a version (never seen from Clerk) only fills rows without one.
fn newer(stored: Option<i64>, version: Option<i64>) -> bool {
    match (stored, version) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(s), Some(v)) => s < v,
    }
}

impl IdentityStore {
    /// A store on `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    // ----- webhook side -------------------------------------------------------------------

    /// Applies `user.created` / `user.updated` written at Clerk `version` (ms).
    pub async fn upsert_user(
        &self,
        user: &ClerkUser,
        version: Option<i64>,
    ) -> Result<Applied, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let user = user.clone();
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let existing: Option<Option<i64>> = users::table
                .filter(users::clerk_id.eq(user.clerk_id.as_str()))
                .select(users::clerk_updated_at)
                .for_update()
                .first(conn)
                .await
                .optional()?;
            match existing {
                None => {
                    diesel::insert_into(users::table)
                        .values((
                            users::clerk_id.eq(user.clerk_id.as_str()),
                            users::email.eq(&user.email),
                            users::first_name.eq(&user.first_name),
                            users::last_name.eq(&user.last_name),
                            users::username.eq(&user.username),
                            users::image_url.eq(&user.image_url),
                            users::clerk_updated_at.eq(version),
                        ))
                        .execute(conn)
                        .await?;
                    Ok(Applied::Inserted)
                }
                Some(stored) if newer(stored, version) => {
                    diesel::update(users::table.filter(users::clerk_id.eq(user.clerk_id.as_str())))
                        .set((
                            users::email.eq(&user.email),
                            users::first_name.eq(&user.first_name),
                            users::last_name.eq(&user.last_name),
                            users::username.eq(&user.username),
                            users::image_url.eq(&user.image_url),
                            users::clerk_updated_at.eq(version),
                            users::updated_at.eq(diesel::dsl::now),
                        ))
                        .execute(conn)
                        .await?;
                    Ok(Applied::Updated)
                }
                Some(_) => Ok(Applied::Unchanged),
            }
        })
        .await
    }

    /// Applies `user.deleted` (soft; a tombstone when the user is unknown).
    pub(crate) async fn delete_user(&self, clerk_id: &ClerkUserId) -> Result<Applied, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let updated = diesel::update(
            users::table
                .filter(users::clerk_id.eq(clerk_id.as_str()))
                .filter(users::deleted_at.is_null()),
        )
        .set((
            users::deleted_at.eq(diesel::dsl::now),
            users::updated_at.eq(diesel::dsl::now),
        ))
        .execute(&mut conn)
        .await?;
        if updated > 0 {
            return Ok(Applied::Deleted);
        }
        let inserted = diesel::insert_into(users::table)
            .values((
                users::clerk_id.eq(clerk_id.as_str()),
                users::deleted_at.eq(diesel::dsl::now),
            ))
            .on_conflict(users::clerk_id)
            .do_nothing()
            .execute(&mut conn)
            .await?;
        Ok(if inserted > 0 {
            Applied::Deleted
        } else {
            Applied::Unchanged
        })
    }

    /// Applies `organization.created` / `organization.updated` written at Clerk `version`.
    /// Returns our id of the organization and what happened; when a row changed, the entry
    /// `audit` makes of them is written in the same transaction.
    pub async fn upsert_organization(
        &self,
        org: &OrganizationUpsert,
        version: Option<i64>,
        audit: impl FnOnce(OrganizationId, Applied) -> Option<AuditEntry> + Send,
    ) -> Result<(OrganizationId, Applied), StoreError> {
        let mut conn = conn(&self.pool).await?;
        let org = org.clone();
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let (id, applied) = upsert_organization_in(conn, &org, version).await?;
            if applied.changed()
                && let Some(entry) = audit(id, applied)
            {
                insert_entry(conn, &entry).await?;
            }
            Ok((id, applied))
        })
        .await
    }

    /// Applies `organization.deleted` (soft; a tombstone when the organization is unknown).
    /// When a row changed, the entry `audit` makes of our id is written in the same
    /// transaction.
    pub async fn delete_organization(
        &self,
        clerk_id: &ClerkOrgId,
        audit: impl FnOnce(OrganizationId) -> Option<AuditEntry> + Send,
    ) -> Result<(OrganizationId, Applied), StoreError> {
        let mut conn = conn(&self.pool).await?;
        let clerk_id = clerk_id.clone();
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let (id, applied) = delete_organization_in(conn, &clerk_id).await?;
            if applied.changed()
                && let Some(entry) = audit(id)
            {
                insert_entry(conn, &entry).await?;
            }
            Ok((id, applied))
        })
        .await
    }

    /// Our id of an organization (live or deleted), if any row exists.
    pub async fn organization_id(
        &self,
        clerk_id: &ClerkOrgId,
    ) -> Result<Option<OrganizationId>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        organization_id_in(&mut conn, clerk_id).await
    }

    /// Applies `organizationMembership.created` / `.updated` written at Clerk `version`.
    /// When the row changed, the entry `audit` makes of the result (if any: a write that
    /// keeps the role may not be worth one) is written in the same transaction.
    pub async fn upsert_membership(
        &self,
        m: &MembershipUpsert,
        version: Option<i64>,
        audit: impl FnOnce(&MembershipApplied) -> Option<AuditEntry> + Send,
    ) -> Result<MembershipApplied, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let m = m.clone();
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let (applied, previous_role) = upsert_membership_in(conn, &m, version).await?;
            let result = MembershipApplied {
                applied,
                previous_role,
                organization_id: organization_id_in(conn, &m.org_clerk_id).await?,
            };
            if applied.changed()
                && let Some(entry) = audit(&result)
            {
                insert_entry(conn, &entry).await?;
            }
            Ok(result)
        })
        .await
    }

    /// Applies `organizationMembership.deleted` (soft; a tombstone with `role` when the
    /// membership is unknown). When a row changed, the entry `audit` makes of the result is
    /// written in the same transaction.
    pub async fn delete_membership(
        &self,
        membership: &ClerkMembershipId,
        org: &ClerkOrgId,
        user: &ClerkUserId,
        role: Option<&str>,
        audit: impl FnOnce(&MembershipApplied) -> Option<AuditEntry> + Send,
    ) -> Result<MembershipApplied, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let (membership, org_id, user_id) = (membership.clone(), org.clone(), user.clone());
        let role = role.unwrap_or_default().to_owned();
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let (applied, previous_role) = {
                let deleted: Option<String> = diesel::update(
                    organization_members::table
                        .filter(organization_members::clerk_membership_id.eq(membership.as_str()))
                        .filter(organization_members::deleted_at.is_null()),
                )
                .set((
                    organization_members::deleted_at.eq(diesel::dsl::now),
                    organization_members::updated_at.eq(diesel::dsl::now),
                ))
                .returning(organization_members::role)
                .get_committed(conn)
                .await
                .optional()?;
                if let Some(previous) = deleted {
                    (Applied::Deleted, Some(previous))
                } else {
                    let inserted = diesel::insert_into(organization_members::table)
                        .values((
                            organization_members::clerk_membership_id.eq(membership.as_str()),
                            organization_members::organization_clerk_id.eq(org_id.as_str()),
                            organization_members::user_clerk_id.eq(user_id.as_str()),
                            organization_members::role.eq(&role),
                            organization_members::deleted_at.eq(diesel::dsl::now),
                        ))
                        .on_conflict(organization_members::clerk_membership_id)
                        .do_nothing()
                        .execute(conn)
                        .await?;
                    if inserted == 0 {
                        (Applied::Unchanged, None)
                    } else {
                        // Explicit data about the pair replaces the implicit creator membership.
                        remove_implicit(conn, &org_id, &user_id).await?;
                        (Applied::Deleted, None)
                    }
                }
            };
            let result = MembershipApplied {
                applied,
                previous_role,
                organization_id: organization_id_in(conn, &org_id).await?,
            };
            if applied.changed()
                && let Some(entry) = audit(&result)
            {
                insert_entry(conn, &entry).await?;
            }
            Ok(result)
        })
        .await
    }

    /// Makes `creator` an admin of `org` through an implicit membership, unless the pair
    /// already has any membership row (explicit data wins, whatever its role or state).
    /// Returns true when the row was written, with the entry `audit` makes in the same
    /// transaction.
    pub(crate) async fn ensure_creator_membership(
        &self,
        org: &ClerkOrgId,
        creator: &ClerkUserId,
        audit: impl FnOnce() -> AuditEntry + Send,
    ) -> Result<bool, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let (org, creator) = (org.clone(), creator.clone());
        conn.transaction::<_, StoreError, _>(async move |conn| {
            // Serialise against concurrent writers of the same pair (the sync worker is
            // serial, but the lock makes that no precondition).
            diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))")
                .bind::<diesel::sql_types::Text, _>(org.as_str())
                .bind::<diesel::sql_types::Text, _>(creator.as_str())
                .execute(conn)
                .await?;
            let rows: i64 = organization_members::table
                .filter(organization_members::organization_clerk_id.eq(org.as_str()))
                .filter(organization_members::user_clerk_id.eq(creator.as_str()))
                .count()
                .get_committed(conn)
                .await?;
            if rows > 0 {
                return Ok(false);
            }
            diesel::insert_into(organization_members::table)
                .values((
                    organization_members::organization_clerk_id.eq(org.as_str()),
                    organization_members::user_clerk_id.eq(creator.as_str()),
                    organization_members::role.eq(CREATOR_ROLE),
                ))
                .execute(conn)
                .await?;
            insert_entry(conn, &audit()).await?;
            Ok(true)
        })
        .await
    }

    // ----- API side -----------------------------------------------------------------------

    /// A live user.
    pub async fn user(&self, clerk_id: &ClerkUserId) -> Result<Option<UserRecord>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        Ok(users::table
            .filter(users::clerk_id.eq(clerk_id.as_str()))
            .filter(users::deleted_at.is_null())
            .select(UserRecord::as_select())
            .first(&mut conn)
            .await
            .optional()?)
    }

    /// Whether `user` is a live member of the live organization `org`, and with which role.
    pub async fn access(
        &self,
        user: &ClerkUserId,
        org: &ClerkOrgId,
    ) -> Result<OrgAccess, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let organization: Option<OrganizationRow> = organizations::table
            .filter(organizations::clerk_id.eq(org.as_str()))
            .filter(organizations::deleted_at.is_null())
            .select(OrganizationRow::as_select())
            .first(&mut conn)
            .await
            .optional()?;
        let Some(organization) = organization else {
            return Ok(OrgAccess::UnknownOrganization);
        };
        let user_live: i64 = users::table
            .filter(users::clerk_id.eq(user.as_str()))
            .filter(users::deleted_at.is_null())
            .count()
            .get_committed(&mut conn)
            .await?;
        if user_live == 0 {
            return Ok(OrgAccess::NotMember);
        }
        let role: Option<String> = organization_members::table
            .filter(organization_members::organization_clerk_id.eq(org.as_str()))
            .filter(organization_members::user_clerk_id.eq(user.as_str()))
            .filter(organization_members::deleted_at.is_null())
            .order(organization_members::clerk_updated_at.desc().nulls_last())
            .select(organization_members::role)
            .first(&mut conn)
            .await
            .optional()?;
        Ok(match role {
            Some(role) => OrgAccess::Member {
                organization: organization.into(),
                role,
            },
            None => OrgAccess::NotMember,
        })
    }

    /// A live organization by our id.
    pub async fn organization(
        &self,
        id: OrganizationId,
    ) -> Result<Option<OrganizationRecord>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let row: Option<OrganizationRow> = organizations::table
            .find(id.0)
            .filter(organizations::deleted_at.is_null())
            .select(OrganizationRow::as_select())
            .first(&mut conn)
            .await
            .optional()?;
        Ok(row.map(Into::into))
    }

    /// The organization's metadata (defaults when never written).
    pub async fn metadata(&self, id: OrganizationId) -> Result<OrganizationMetadata, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let row: Option<MetadataRow> = organization_metadata::table
            .find(id.0)
            .select(MetadataRow::as_select())
            .first(&mut conn)
            .await
            .optional()?;
        Ok(row.map(Into::into).unwrap_or_default())
    }

    /// Replaces the organization's metadata; returns (before, after). The first write sets
    /// `onboarding_completed_at`. The entry `audit` makes of (before, after), if any, is
    /// written in the same transaction.
    pub(crate) async fn put_metadata(
        &self,
        id: OrganizationId,
        update: &MetadataUpdate,
        audit: impl FnOnce(&OrganizationMetadata, &OrganizationMetadata) -> Option<AuditEntry> + Send,
    ) -> Result<(OrganizationMetadata, OrganizationMetadata), StoreError> {
        let mut conn = conn(&self.pool).await?;
        let update = update.clone();
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let before: Option<MetadataRow> = organization_metadata::table
                .find(id.0)
                .select(MetadataRow::as_select())
                .for_update()
                .first(conn)
                .await
                .optional()?;
            let after: MetadataRow = diesel::insert_into(organization_metadata::table)
                .values((
                    organization_metadata::organization_id.eq(id.0),
                    organization_metadata::company_size.eq(&update.company_size),
                    organization_metadata::team_size.eq(&update.team_size),
                    organization_metadata::use_cases.eq(&update.use_cases),
                    organization_metadata::observability_stack.eq(&update.observability_stack),
                    organization_metadata::onboarding_completed_at.eq(Some(Utc::now())),
                ))
                .on_conflict(organization_metadata::organization_id)
                .do_update()
                .set((
                    organization_metadata::company_size.eq(&update.company_size),
                    organization_metadata::team_size.eq(&update.team_size),
                    organization_metadata::use_cases.eq(&update.use_cases),
                    organization_metadata::observability_stack.eq(&update.observability_stack),
                    organization_metadata::updated_at.eq(diesel::dsl::now),
                ))
                .returning(MetadataRow::as_returning())
                .get_committed(conn)
                .await?;
            let (before, after) = (before.map(Into::into).unwrap_or_default(), after.into());
            if let Some(entry) = audit(&before, &after) {
                insert_entry(conn, &entry).await?;
            }
            Ok((before, after))
        })
        .await
    }
}

/// The body of [`IdentityStore::upsert_organization`], on the caller's transaction.
async fn upsert_organization_in(
    conn: &mut AsyncPgConnection,
    org: &OrganizationUpsert,
    version: Option<i64>,
) -> Result<(OrganizationId, Applied), StoreError> {
    let existing: Option<(Uuid, Option<i64>, Option<DateTime<Utc>>)> = organizations::table
        .filter(organizations::clerk_id.eq(org.clerk_id.as_str()))
        .select((
            organizations::id,
            organizations::clerk_updated_at,
            organizations::deleted_at,
        ))
        .for_update()
        .first(conn)
        .await
        .optional()?;
    if let Some((id, stored, _)) = existing
        && !newer(stored, version)
    {
        return Ok((OrganizationId(id), Applied::Unchanged));
    }
    let live = existing.is_none_or(|(_, _, deleted)| deleted.is_none());
    if live && let Some(slug) = &org.slug {
        // Slugs are unique among live organizations. Clerk keeps them unique at any
        // moment, so a clash here means another organization's rename has not reached
        // us yet: the newer write takes the slug, the other one's own event restores it.
        let cleared = diesel::update(
            organizations::table
                .filter(organizations::slug.eq(slug))
                .filter(organizations::deleted_at.is_null())
                .filter(organizations::clerk_id.ne(org.clerk_id.as_str())),
        )
        .set((
            organizations::slug.eq(None::<String>),
            organizations::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
        if cleared > 0 {
            tracing::warn!(org = %org.clerk_id, slug = %slug, "slug taken over from another organization (events out of order)");
        }
    }
    match existing {
        None => {
            let id: Uuid = diesel::insert_into(organizations::table)
                .values((
                    organizations::clerk_id.eq(org.clerk_id.as_str()),
                    organizations::name.eq(&org.name),
                    organizations::slug.eq(&org.slug),
                    organizations::image_url.eq(&org.image_url),
                    organizations::created_by_clerk_id
                        .eq(org.created_by.as_ref().map(ClerkUserId::as_str)),
                    organizations::clerk_updated_at.eq(version),
                ))
                .returning(organizations::id)
                .get_committed(conn)
                .await?;
            Ok((OrganizationId(id), Applied::Inserted))
        }
        Some((id, _, _)) => {
            diesel::update(organizations::table.find(id))
                .set((
                    organizations::name.eq(&org.name),
                    organizations::slug.eq(&org.slug),
                    organizations::image_url.eq(&org.image_url),
                    organizations::created_by_clerk_id
                        .eq(org.created_by.as_ref().map(ClerkUserId::as_str)),
                    organizations::clerk_updated_at.eq(version),
                    organizations::updated_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
                .await?;
            Ok((OrganizationId(id), Applied::Updated))
        }
    }
}

/// The body of [`IdentityStore::delete_organization`], on the caller's transaction.
async fn delete_organization_in(
    conn: &mut AsyncPgConnection,
    clerk_id: &ClerkOrgId,
) -> Result<(OrganizationId, Applied), StoreError> {
    let deleted: Option<Uuid> = diesel::update(
        organizations::table
            .filter(organizations::clerk_id.eq(clerk_id.as_str()))
            .filter(organizations::deleted_at.is_null()),
    )
    .set((
        organizations::deleted_at.eq(diesel::dsl::now),
        organizations::updated_at.eq(diesel::dsl::now),
    ))
    .returning(organizations::id)
    .get_committed(conn)
    .await
    .optional()?;
    if let Some(id) = deleted {
        return Ok((OrganizationId(id), Applied::Deleted));
    }
    // Unknown: a tombstone (the name is filled in by a late upsert, if one comes).
    let inserted: Option<Uuid> = diesel::insert_into(organizations::table)
        .values((
            organizations::clerk_id.eq(clerk_id.as_str()),
            organizations::name.eq(""),
            organizations::deleted_at.eq(diesel::dsl::now),
        ))
        .on_conflict(organizations::clerk_id)
        .do_nothing()
        .returning(organizations::id)
        .get_committed(conn)
        .await
        .optional()?;
    if let Some(id) = inserted {
        return Ok((OrganizationId(id), Applied::Deleted));
    }
    let id: Uuid = organizations::table
        .filter(organizations::clerk_id.eq(clerk_id.as_str()))
        .select(organizations::id)
        .first(conn)
        .await?;
    Ok((OrganizationId(id), Applied::Unchanged))
}

/// The body of [`IdentityStore::upsert_membership`], on the caller's transaction: what
/// happened and the role before.
async fn upsert_membership_in(
    conn: &mut AsyncPgConnection,
    m: &MembershipUpsert,
    version: Option<i64>,
) -> Result<(Applied, Option<String>), StoreError> {
    let existing: Option<(Uuid, String, Option<i64>)> = organization_members::table
        .filter(organization_members::clerk_membership_id.eq(m.clerk_membership_id.as_str()))
        .select((
            organization_members::id,
            organization_members::role,
            organization_members::clerk_updated_at,
        ))
        .for_update()
        .first(conn)
        .await
        .optional()?;
    match existing {
        None => {
            diesel::insert_into(organization_members::table)
                .values((
                    organization_members::clerk_membership_id.eq(m.clerk_membership_id.as_str()),
                    organization_members::organization_clerk_id.eq(m.org_clerk_id.as_str()),
                    organization_members::user_clerk_id.eq(m.user_clerk_id.as_str()),
                    organization_members::role.eq(&m.role),
                    organization_members::clerk_updated_at.eq(version),
                ))
                .execute(conn)
                .await?;
            remove_implicit(conn, &m.org_clerk_id, &m.user_clerk_id).await?;
            Ok((Applied::Inserted, None))
        }
        Some((id, role, stored)) if newer(stored, version) => {
            diesel::update(organization_members::table.find(id))
                .set((
                    organization_members::role.eq(&m.role),
                    organization_members::clerk_updated_at.eq(version),
                    organization_members::updated_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
                .await?;
            Ok((Applied::Updated, Some(role)))
        }
        Some((_, role, _)) => Ok((Applied::Unchanged, Some(role))),
    }
}

/// Our id of the organization with `clerk_id` (live or deleted), on `conn`.
async fn organization_id_in(
    conn: &mut AsyncPgConnection,
    clerk_id: &ClerkOrgId,
) -> Result<Option<OrganizationId>, StoreError> {
    let id: Option<Uuid> = organizations::table
        .filter(organizations::clerk_id.eq(clerk_id.as_str()))
        .select(organizations::id)
        .first(conn)
        .await
        .optional()?;
    Ok(id.map(OrganizationId))
}

/// Deletes the implicit creator membership of a pair (explicit data replaces it).
async fn remove_implicit(
    conn: &mut AsyncPgConnection,
    org: &ClerkOrgId,
    user: &ClerkUserId,
) -> Result<(), StoreError> {
    let removed = diesel::delete(
        organization_members::table
            .filter(organization_members::organization_clerk_id.eq(org.as_str()))
            .filter(organization_members::user_clerk_id.eq(user.as_str()))
            .filter(organization_members::clerk_membership_id.is_null()),
    )
    .execute(conn)
    .await?;
    if removed > 0 {
        tracing::debug!(org = %org, user = %user, "implicit creator membership replaced by explicit data");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::newer;

    #[test]
    fn version_guard() {
        assert!(newer(None, None));
        assert!(newer(None, Some(1)));
        assert!(!newer(Some(1), None));
        assert!(newer(Some(1), Some(2)));
        assert!(!newer(Some(2), Some(2)));
        assert!(!newer(Some(3), Some(2)));
    }
}
