//! The audit log port: who did what to which thing, when, in which organization.

use async_trait::async_trait;
use serde::Serialize;

/// One audit entry (`audit_log` row).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    /// Organization the change belongs to (our UUID), if any.
    pub organization_id: Option<uuid::Uuid>,
    /// Who: `user/{clerk id}`, `admin`, `clerk`, `github`, `system`.
    pub actor: String,
    /// What: `membership.created`, `integration.revoked`, `event.requeued`, ...
    pub action: String,
    /// Which thing, e.g. an integration id or an inbound event id.
    pub target: Option<String>,
    /// Extra facts (never secrets).
    pub details: serde_json::Value,
}

/// Audit log failures, with the adapter's error as the source.
#[derive(Debug, thiserror::Error)]
#[error("audit log unavailable: {0}")]
pub struct AuditError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Where audit entries go.
#[async_trait]
pub trait AuditLog: Send + Sync + 'static {
    /// Appends one entry.
    async fn append(&self, entry: AuditEntry) -> Result<(), AuditError>;
}
