//! Encrypted credentials on `integration_credentials`: one row per (integration, credential
//! type), sealed with the vault's key ring (see [`crate::crypto::vault`]). This module stores
//! and loads sealed bytes only; sealing and opening happen in
//! [`crate::integrations::vault::CredentialStore`].

use chrono::{DateTime, Utc};
use diesel::dsl::now;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use infragpt_actors::audit::AuditEntry;
use uuid::Uuid;

use crate::crypto::vault::Sealed;
use crate::db::audit::insert_entry;
use crate::db::committed::CommittedExt as _;
use crate::db::schema::integration_credentials as ic;
use crate::db::{Pool, StoreError, conn};

/// One stored (still sealed) credential.
#[derive(Debug, Clone)]
pub struct StoredCredential {
    /// Row id (what `slack_workspaces.token_ref` points at).
    pub id: Uuid,
    /// Owning integration.
    pub integration_id: Uuid,
    /// `bot_token`, `refresh_token`, `installation_token`, ...
    pub credential_type: String,
    /// Key id, nonce and ciphertext.
    pub sealed: Sealed,
    /// When the provider stops accepting it, if it expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// Last write.
    pub updated_at: DateTime<Utc>,
}

type Row = (
    Uuid,
    Uuid,
    String,
    Vec<u8>,
    Vec<u8>,
    String,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
);

fn columns() -> (
    ic::id,
    ic::integration_id,
    ic::credential_type,
    ic::nonce,
    ic::ciphertext,
    ic::key_id,
    ic::expires_at,
    ic::updated_at,
) {
    (
        ic::id,
        ic::integration_id,
        ic::credential_type,
        ic::nonce,
        ic::ciphertext,
        ic::key_id,
        ic::expires_at,
        ic::updated_at,
    )
}

/// A row as stored; a row that does not read (bad nonce length) is [`StoreError::Corrupt`].
fn from_row(row: Row) -> Result<StoredCredential, StoreError> {
    let (id, integration_id, credential_type, nonce, ciphertext, key_id, expires_at, updated_at) =
        row;
    Ok(StoredCredential {
        id,
        integration_id,
        credential_type,
        sealed: Sealed::from_parts(key_id, &nonce, ciphertext)
            .map_err(|e| StoreError::corrupt(format!("credential {id}"), e))?,
        expires_at,
        updated_at,
    })
}

/// One sealed credential to store ([`PgCredentials::upsert_all`]).
#[derive(Debug)]
pub struct SealedCredential<'a> {
    /// `bot_token`, `refresh_token`, `installation_token`, ...
    pub credential_type: &'a str,
    /// Key id, nonce and ciphertext.
    pub sealed: Sealed,
    /// When the provider stops accepting it, if it expires.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Inserts or replaces one credential on `conn`; returns the row id.
pub(crate) async fn upsert_on(
    conn: &mut AsyncPgConnection,
    integration_id: Uuid,
    credential_type: &str,
    sealed: &Sealed,
    expires_at: Option<DateTime<Utc>>,
) -> Result<Uuid, StoreError> {
    let id = diesel::insert_into(ic::table)
        .values((
            ic::integration_id.eq(integration_id),
            ic::credential_type.eq(credential_type),
            ic::nonce.eq(sealed.nonce.as_slice()),
            ic::ciphertext.eq(&sealed.ciphertext),
            ic::key_id.eq(sealed.key_id.as_str()),
            ic::expires_at.eq(expires_at),
        ))
        .on_conflict((ic::integration_id, ic::credential_type))
        .do_update()
        .set((
            ic::nonce.eq(sealed.nonce.as_slice()),
            ic::ciphertext.eq(&sealed.ciphertext),
            ic::key_id.eq(sealed.key_id.as_str()),
            ic::expires_at.eq(expires_at),
            ic::updated_at.eq(now),
        ))
        .returning(ic::id)
        .get_committed(conn)
        .await?;
    Ok(id)
}

/// Deletes every credential of an integration on `conn`; returns how many rows went.
pub(crate) async fn delete_all_on(
    conn: &mut AsyncPgConnection,
    integration_id: Uuid,
) -> Result<usize, StoreError> {
    Ok(
        diesel::delete(ic::table.filter(ic::integration_id.eq(integration_id)))
            .execute(conn)
            .await?,
    )
}

/// The credential table in PostgreSQL.
#[derive(Clone)]
pub struct PgCredentials {
    pool: Pool,
}

impl std::fmt::Debug for PgCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCredentials")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl PgCredentials {
    /// Credentials on `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// The pool (the refresh lock takes its dedicated connection from it).
    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Inserts or replaces the credential of `credential_type`; returns the row id (stable
    /// across replacements).
    pub async fn upsert(
        &self,
        integration_id: Uuid,
        credential_type: &str,
        sealed: &Sealed,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Uuid, StoreError> {
        let mut conn = conn(&self.pool).await?;
        upsert_on(
            &mut conn,
            integration_id,
            credential_type,
            sealed,
            expires_at,
        )
        .await
    }

    /// [`PgCredentials::upsert`] for several credentials in one transaction: what one refresh
    /// issued (a rotated bot token and its refresh token) is stored together or not at all, so
    /// the stored pair always comes from the same answer. `audit` (an explicit refresh's
    /// entry) is written in the same transaction. Returns the row ids in order.
    pub async fn upsert_all(
        &self,
        integration_id: Uuid,
        credentials: &[SealedCredential<'_>],
        audit: Option<&AuditEntry>,
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let mut ids = Vec::with_capacity(credentials.len());
            for c in credentials {
                ids.push(
                    upsert_on(
                        conn,
                        integration_id,
                        c.credential_type,
                        &c.sealed,
                        c.expires_at,
                    )
                    .await?,
                );
            }
            if let Some(entry) = audit {
                insert_entry(conn, entry).await?;
            }
            Ok(ids)
        })
        .await
    }

    /// The credential of `credential_type`, if stored.
    pub async fn get(
        &self,
        integration_id: Uuid,
        credential_type: &str,
    ) -> Result<Option<StoredCredential>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let row: Option<Row> = ic::table
            .filter(ic::integration_id.eq(integration_id))
            .filter(ic::credential_type.eq(credential_type))
            .select(columns())
            .first(&mut conn)
            .await
            .optional()?;
        row.map(from_row).transpose()
    }

    /// Every credential of an integration.
    pub async fn list(&self, integration_id: Uuid) -> Result<Vec<StoredCredential>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let rows: Vec<Row> = ic::table
            .filter(ic::integration_id.eq(integration_id))
            .order(ic::credential_type.asc())
            .select(columns())
            .load(&mut conn)
            .await?;
        rows.into_iter().map(from_row).collect()
    }

    /// Up to `limit` rows not sealed with `active_key`, in id order after `after` (rotation
    /// batches; a row that could not be moved is skipped by the cursor, not retried forever).
    pub(crate) async fn batch_not_under_key(
        &self,
        active_key: &str,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<StoredCredential>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let mut query = ic::table
            .filter(ic::key_id.ne(active_key))
            .order(ic::id.asc())
            .limit(limit)
            .select(columns())
            .into_boxed();
        if let Some(after) = after {
            query = query.filter(ic::id.gt(after));
        }
        let rows: Vec<Row> = query.load(&mut conn).await?;
        rows.into_iter().map(from_row).collect()
    }

    /// Replaces the sealed value of row `id` only if it is still sealed with `old_key_id`
    /// (compare-and-swap, so a concurrent refresh is never overwritten by rotation). True when
    /// the row was updated.
    pub async fn reseal(
        &self,
        id: Uuid,
        old_key_id: &str,
        sealed: &Sealed,
    ) -> Result<bool, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let changed = diesel::update(
            ic::table
                .filter(ic::id.eq(id))
                .filter(ic::key_id.eq(old_key_id)),
        )
        .set((
            ic::nonce.eq(sealed.nonce.as_slice()),
            ic::ciphertext.eq(&sealed.ciphertext),
            ic::key_id.eq(sealed.key_id.as_str()),
        ))
        .execute(&mut conn)
        .await?;
        Ok(changed == 1)
    }

    /// Number of rows per key id.
    pub(crate) async fn count_by_key(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let rows: Vec<(String, i64)> = ic::table
            .group_by(ic::key_id)
            .select((ic::key_id, diesel::dsl::count_star()))
            .order(ic::key_id.asc())
            .load(&mut conn)
            .await?;
        Ok(rows)
    }
}
