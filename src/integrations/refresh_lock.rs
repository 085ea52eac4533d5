//! Credential refreshes are single-flight across replicas: [`RefreshLock`] is a
//! transaction-scoped PostgreSQL advisory lock per integration, held on a dedicated pooled
//! connection for the length of one refresh (or first load). The vault actor serializes
//! within a process; this serializes the processes sharing the database.
//!
//! Why this rather than a session lock or a lease column (`ARCHITECTURE.md`, "Refresh across
//! replicas"):
//! * the waiters are woken by PostgreSQL the moment the holder commits: no polling, no schema;
//! * a holder that crashes loses its connection, and the lock with it, at once;
//! * a holder that hangs or is cut off (frozen process, partition) is ended by the server:
//!   `idle_in_transaction_session_timeout`, set for this transaction only, terminates the
//!   session once it has been idle for [`LockBounds::hold`] (no replica's clock involved);
//! * waiting is bounded by `lock_timeout` ([`LockBounds::wait`]);
//! * nothing outlives COMMIT or ROLLBACK (it also works through a transaction-mode pooler).
//!
//! On any error, or when dropped unreleased, the connection is closed rather than pooled, so
//! no pooled session ever sits inside a lock's transaction.
//!
//! Each lock (held or awaited) ties up a pooled connection while the refresh itself needs
//! others for its reads and writes, so [`RefreshLocks`] lets only a few refreshes of one
//! process take or wait for a lock at once: a burst of due credentials (many installations
//! after a restart) cannot take every connection and starve their own writes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::db::{Conn, Pool, StoreError, conn};

/// Extra time the client gives a lock statement beyond the server-side bound, so a server
/// that stops answering cannot hold a caller forever either.
const CLIENT_GRACE: Duration = Duration::from_secs(5);

/// How long a refresh may hold the lock and how long others wait for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockBounds {
    /// Longest wait for the lock (server-side `lock_timeout`); longer than `hold`, so a
    /// waiter outlasts a holder the server has to cut off.
    pub wait: Duration,
    /// Longest time the holder's transaction may stay idle (server-side
    /// `idle_in_transaction_session_timeout`): the whole refresh runs while it is idle, so
    /// this must exceed the provider call's timeout.
    pub hold: Duration,
}

/// The lock could not be taken or given back.
#[derive(Debug, thiserror::Error)]
pub enum RefreshLockError {
    /// Every refresh slot of this process stayed taken for the whole wait bound.
    #[error(
        "no refresh slot of this process came free within {after:?} for integration {integration_id}"
    )]
    Busy {
        /// Integration.
        integration_id: Uuid,
        /// The wait bound.
        after: Duration,
    },
    /// A statement taking the lock failed; a `lock_timeout` (another replica's refresh did not
    /// end within [`LockBounds::wait`]) shows as PostgreSQL's "canceling statement due to lock
    /// timeout".
    #[error("taking the refresh lock of integration {integration_id} failed: {source}")]
    Acquire {
        /// Integration.
        integration_id: Uuid,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The server did not answer within the wait bound plus a grace period.
    #[error("taking the refresh lock of integration {integration_id}: no answer within {after:?}")]
    Unanswered {
        /// Integration.
        integration_id: Uuid,
        /// The client-side limit.
        after: Duration,
    },
    /// COMMIT failed: the session was gone (held past [`LockBounds::hold`]) or broke.
    #[error("releasing the refresh lock of integration {integration_id} failed: {source}")]
    Release {
        /// Integration.
        integration_id: Uuid,
        /// Why.
        #[source]
        source: StoreError,
    },
}

/// The advisory lock key of an integration's refreshes (a 64-bit hash of a namespaced text;
/// a collision only serializes two unrelated refreshes).
fn key_text(integration_id: Uuid) -> String {
    format!("infragpt.credential_refresh:{integration_id}")
}

/// Milliseconds as PostgreSQL's setting text, at least 1 (0 would mean "no limit").
fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// Closes a connection instead of returning it to the pool.
fn close(conn: Conn) {
    drop(deadpool::managed::Object::take(conn));
}

/// Where one process's refresh locks come from: the pool, the bounds, and a few slots (see
/// the module documentation). Cheap to clone.
#[derive(Clone)]
pub struct RefreshLocks {
    pool: Pool,
    bounds: LockBounds,
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for RefreshLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshLocks")
            .field("bounds", &self.bounds)
            .field("free_slots", &self.slots.available_permits())
            .finish_non_exhaustive()
    }
}

impl RefreshLocks {
    /// Locks on `pool` within `bounds`, at most `slots` taken or awaited at once, and never
    /// more than half the pool (at least one).
    pub fn new(pool: Pool, bounds: LockBounds, slots: usize) -> Self {
        let slots = slots.min(pool.status().max_size / 2).max(1);
        Self {
            pool,
            bounds,
            slots: Arc::new(Semaphore::new(slots)),
        }
    }

    /// Waits for a slot, then for the lock of `integration_id`: [`LockBounds::wait`] in all.
    pub async fn acquire(&self, integration_id: Uuid) -> Result<RefreshLock, RefreshLockError> {
        let started = Instant::now();
        let busy = || RefreshLockError::Busy {
            integration_id,
            after: self.bounds.wait,
        };
        let permit = tokio::time::timeout(self.bounds.wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| busy())?
            // The semaphore is never closed; a closed one would hand out no slot either.
            .map_err(|_| busy())?;
        let bounds = LockBounds {
            wait: self
                .bounds
                .wait
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(1)),
            ..self.bounds
        };
        let mut lock = RefreshLock::acquire(&self.pool, integration_id, bounds).await?;
        lock.permit = Some(permit);
        Ok(lock)
    }
}

/// An integration's refresh lock, held until [`RefreshLock::release`] (or closed with its
/// connection when dropped).
pub struct RefreshLock {
    integration_id: Uuid,
    conn: Option<Conn>,
    /// The process's refresh slot, given back with the lock.
    permit: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for RefreshLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshLock")
            .field("integration_id", &self.integration_id)
            .field("held", &self.conn.is_some())
            .finish()
    }
}

impl RefreshLock {
    /// Waits (at most `bounds.wait`) for the refresh lock of `integration_id`, outside any
    /// slot limit (the vault goes through [`RefreshLocks`]).
    pub async fn acquire(
        pool: &Pool,
        integration_id: Uuid,
        bounds: LockBounds,
    ) -> Result<Self, RefreshLockError> {
        let acquire = |source| RefreshLockError::Acquire {
            integration_id,
            source,
        };
        let mut conn = conn(pool).await.map_err(acquire)?;
        let limit = bounds.wait + CLIENT_GRACE;
        match tokio::time::timeout(limit, Self::lock(&mut conn, integration_id, bounds)).await {
            Ok(Ok(())) => Ok(Self {
                integration_id,
                conn: Some(conn),
                permit: None,
            }),
            Ok(Err(e)) => {
                close(conn);
                Err(acquire(e))
            }
            Err(_) => {
                close(conn);
                Err(RefreshLockError::Unanswered {
                    integration_id,
                    after: limit,
                })
            }
        }
    }

    async fn lock(
        conn: &mut Conn,
        integration_id: Uuid,
        bounds: LockBounds,
    ) -> Result<(), StoreError> {
        diesel::sql_query("BEGIN").execute(conn).await?;
        diesel::sql_query(
            "SELECT set_config('lock_timeout', $1, true), \
             set_config('idle_in_transaction_session_timeout', $2, true)",
        )
        .bind::<Text, _>(millis(bounds.wait))
        .bind::<Text, _>(millis(bounds.hold))
        .execute(conn)
        .await?;
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind::<Text, _>(key_text(integration_id))
            .execute(conn)
            .await?;
        Ok(())
    }

    /// The integration whose refreshes this lock serializes.
    pub fn integration_id(&self) -> Uuid {
        self.integration_id
    }

    /// Commits the lock's transaction (releasing the lock) and pools the connection again.
    pub async fn release(mut self) -> Result<(), RefreshLockError> {
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        match diesel::sql_query("COMMIT").execute(&mut conn).await {
            Ok(_) => Ok(()),
            Err(e) => {
                close(conn);
                Err(RefreshLockError::Release {
                    integration_id: self.integration_id,
                    source: e.into(),
                })
            }
        }
    }
}

impl Drop for RefreshLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Cancelled or failed before release: closing ends the transaction and its lock.
            close(conn);
            tracing::debug!(integration_id = %self.integration_id, "refresh lock closed with its connection");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_milliseconds_and_never_zero() {
        assert_eq!(millis(Duration::from_secs(30)), "30000ms");
        assert_eq!(millis(Duration::from_micros(10)), "1ms");
    }

    #[test]
    fn keys_are_namespaced_per_integration() {
        let a = Uuid::new_v4();
        assert_eq!(
            key_text(a),
            format!("infragpt.credential_refresh:{a}"),
            "one lock per integration"
        );
        assert_ne!(key_text(a), key_text(Uuid::new_v4()));
    }
}
