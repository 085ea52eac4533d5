//! [`NonceLedger`] on the `oauth_nonces` table: a state nonce is accepted once, across every
//! instance of the service.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::schema::oauth_nonces;
use super::{Pool, conn};
use crate::crypto::state::{NonceLedger, NonceLedgerError, StateNonce};

/// The nonce ledger in PostgreSQL.
#[derive(Clone)]
pub struct PgNonceLedger {
    pool: Pool,
}

impl std::fmt::Debug for PgNonceLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgNonceLedger")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl PgNonceLedger {
    /// A ledger on `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Forgets nonces whose state expired before `now` (those states are refused anyway);
    /// returns how many rows were removed.
    pub async fn prune_expired(&self, now: DateTime<Utc>) -> Result<usize, NonceLedgerError> {
        let mut conn = conn(&self.pool).await.map_err(ledger_err)?;
        diesel::delete(oauth_nonces::table.filter(oauth_nonces::expires_at.lt(now)))
            .execute(&mut conn)
            .await
            .map_err(ledger_err)
    }
}

fn ledger_err(e: impl std::error::Error + Send + Sync + 'static) -> NonceLedgerError {
    NonceLedgerError(Box::new(e))
}

#[async_trait]
impl NonceLedger for PgNonceLedger {
    async fn consume(
        &self,
        nonce: &StateNonce,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, NonceLedgerError> {
        let mut conn = conn(&self.pool).await.map_err(ledger_err)?;
        // The primary key makes the first insert win; a replay inserts nothing.
        let inserted = diesel::insert_into(oauth_nonces::table)
            .values((
                oauth_nonces::nonce.eq(nonce.to_hex()),
                oauth_nonces::expires_at.eq(expires_at),
            ))
            .on_conflict_do_nothing()
            .execute(&mut conn)
            .await
            .map_err(ledger_err)?;
        Ok(inserted == 1)
    }
}
