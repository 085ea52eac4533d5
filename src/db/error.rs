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
    /// The database refused the data of a statement: a data exception (SQLSTATE class 22,
    /// e.g. 22P05 untranslatable character, 22021 invalid byte sequence) or an integrity
    /// violation other than a duplicate (class 23). Permanent: the same data fails the same
    /// way, and the database is fine, so never report it as an outage.
    #[error("database refused the data: {0}")]
    Data(#[source] DieselError),
    /// A row the operation needs does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// A grouped write's batch did not commit ([`infragpt_actors::group_commit::Batcher`]):
    /// its statement failed (the first item's error says why), timed out, or never ran.
    /// Worth retrying.
    #[error("database batch write failed: {0}")]
    Batch(String),
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

impl From<infragpt_actors::group_commit::BatchFailure> for StoreError {
    fn from(failure: infragpt_actors::group_commit::BatchFailure) -> Self {
        Self::Batch(failure.to_string())
    }
}

impl From<DieselError> for StoreError {
    fn from(e: DieselError) -> Self {
        match &e {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => Self::Conflict(e),
            DieselError::DatabaseError(kind, info) if is_data_error(kind, info.message()) => {
                Self::Data(e)
            }
            _ => Self::Query(e),
        }
    }
}

/// Server messages of the data exceptions (SQLSTATE class 22) that input values raise.
/// diesel-async does not pass the SQLSTATE on (its error information holds the server's
/// message, detail and hint only), so class 22 is recognised by PostgreSQL's message texts;
/// with a non-English `lc_messages` such an error stays a [`StoreError::Query`] (retried).
const DATA_EXCEPTION_MESSAGES: [&str; 13] = [
    "unsupported unicode escape sequence", // 22P05 (jsonb "\u0000")
    "has no equivalent in encoding",       // 22P05
    "invalid byte sequence for encoding",  // 22021 (a NUL in text)
    "invalid input syntax for type",       // 22P02
    "invalid unicode escape",              // 22P02 / 22025
    "invalid escape string",               // 22025
    "value too long for type",             // 22001
    "numeric field overflow",              // 22003
    "is out of range for type",            // 22003
    "integer out of range",                // 22003
    "date/time field value out of range",  // 22008
    "invalid input value for enum",        // 22P02
    "cannot be converted to text",         // 22P05 (detail of the jsonb case)
];

/// True for errors the statement's data causes: integrity violations other than a duplicate
/// (their kinds carry the SQLSTATE), and data exceptions (by message, see
/// [`DATA_EXCEPTION_MESSAGES`]).
fn is_data_error(kind: &DatabaseErrorKind, message: &str) -> bool {
    match kind {
        DatabaseErrorKind::NotNullViolation
        | DatabaseErrorKind::CheckViolation
        | DatabaseErrorKind::ForeignKeyViolation
        | DatabaseErrorKind::RestrictViolation
        | DatabaseErrorKind::ExclusionViolation => true,
        DatabaseErrorKind::Unknown => {
            let message = message.to_ascii_lowercase();
            DATA_EXCEPTION_MESSAGES.iter().any(|m| message.contains(m))
        }
        _ => false,
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
