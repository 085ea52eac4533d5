//! [`AuditLog`] on the `audit_log` table.

use async_trait::async_trait;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt_actors::audit::{AuditEntry, AuditError, AuditLog};

use super::schema::audit_log;
use super::{Pool, StoreError, conn};

/// The audit log in PostgreSQL (append only).
#[derive(Clone)]
pub struct PgAudit {
    pool: Pool,
}

impl std::fmt::Debug for PgAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgAudit")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl PgAudit {
    /// An audit log on `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

fn audit_error(e: StoreError) -> AuditError {
    AuditError(Box::new(e))
}

#[async_trait]
impl AuditLog for PgAudit {
    async fn append(&self, entry: AuditEntry) -> Result<(), AuditError> {
        let mut conn = conn(&self.pool).await.map_err(audit_error)?;
        diesel::insert_into(audit_log::table)
            .values((
                audit_log::organization_id.eq(entry.organization_id),
                audit_log::actor.eq(&entry.actor),
                audit_log::action.eq(&entry.action),
                audit_log::target.eq(&entry.target),
                audit_log::details.eq(&entry.details),
            ))
            .execute(&mut conn)
            .await
            .map_err(|e| audit_error(e.into()))?;
        tracing::debug!(actor = %entry.actor, action = %entry.action, "audit entry appended");
        Ok(())
    }
}
