//! The one error of the PostgreSQL stores, and the one way they get a pooled connection.
//!
//! Every store (`identity`, `integrations`, credentials, conversations, inbox, workspaces,
//! audit, nonces) gets its connections from [`conn`] and answers [`StoreError`] (the port
//! adapters wrap it, as the source, in their port's error).

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::AsyncPgConnection;

use super::Pool;

/// A connection taken from the [`Pool`]; it goes back when dropped.
pub type Conn = diesel_async::pooled_connection::deadpool::Object<AsyncPgConnection>;

/// Why the pool gave no connection (timed out waiting, or the server refused a new one).
pub type PoolError = diesel_async::pooled_connection::deadpool::PoolError;

/// A boxed cause, for sources of several types (the row conversions' parse errors).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A store operation failed. Messages never contain credentials or plaintext secrets.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had from the pool: the database is down, unreachable or
    /// saturated. Worth retrying later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] PoolError),
    /// A statement failed.
    #[error("database query failed: {0}")]
    Query(#[source] DieselError),
    /// A unique constraint refused the write (the row exists already).
    #[error("database write conflicts with an existing row: {0}")]
    Conflict(#[source] DieselError),
    /// A row the operation needs does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// A stored value could not be read back.
    #[error("stored {what} is corrupt: {source}")]
    Corrupt {
        /// Which row or value.
        what: String,
        /// Why it does not read.
        #[source]
        source: BoxError,
    },
}

impl From<DieselError> for StoreError {
    fn from(e: DieselError) -> Self {
        match e {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => Self::Conflict(e),
            other => Self::Query(other),
        }
    }
}

impl StoreError {
    /// A stored value that does not read, with its cause.
    pub fn corrupt(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Corrupt {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// One connection from `pool`, or [`StoreError::Unavailable`].
pub async fn conn(pool: &Pool) -> Result<Conn, StoreError> {
    pool.get().await.map_err(StoreError::Unavailable)
}
