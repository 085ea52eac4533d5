//! [`AuditLog`] on the `audit_log` table.

use async_trait::async_trait;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt_actors::audit::{AuditEntry, AuditError, AuditLog};

use super::Pool;
use super::schema::audit_log;

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

#[async_trait]
impl AuditLog for PgAudit {
    async fn append(&self, entry: AuditEntry) -> Result<(), AuditError> {
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| AuditError(e.to_string()))?;
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
            .map_err(|e| AuditError(e.to_string()))?;
        tracing::debug!(actor = %entry.actor, action = %entry.action, "audit entry appended");
        Ok(())
    }
}
