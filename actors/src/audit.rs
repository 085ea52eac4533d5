//! Audit entries: who did what to which thing, when, in which organization.
//!
//! There is no audit port: an entry is written by the adapter that makes the change it
//! records, in the same database transaction (`db::audit::insert_entry` in the root crate),
//! so the change and its entry commit together or not at all.

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
