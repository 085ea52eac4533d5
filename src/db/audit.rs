//! The `audit_log` table: [`insert_entry`], the one way entries are written (on the
//! connection of the transaction that makes the change they record), and [`PgAudit::query`],
//! the one query the audit routes read it with.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use infragpt_actors::audit::AuditEntry;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::schema::audit_log;
use super::{Pool, StoreError, conn};

/// Reads the audit log in PostgreSQL ([`PgAudit::query`]). Writing is [`insert_entry`]'s.
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
    /// The audit log on `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

/// Inserts `entry` on `conn`. Called inside the transaction of the change the entry records,
/// so both commit or neither: a failed entry fails (and rolls back) the change.
pub async fn insert_entry(
    conn: &mut AsyncPgConnection,
    entry: &AuditEntry,
) -> Result<(), diesel::result::Error> {
    diesel::insert_into(audit_log::table)
        .values((
            audit_log::organization_id.eq(entry.organization_id),
            audit_log::actor.eq(&entry.actor),
            audit_log::action.eq(&entry.action),
            audit_log::target.eq(&entry.target),
            audit_log::details.eq(&entry.details),
        ))
        .execute(conn)
        .await?;
    tracing::debug!(actor = %entry.actor, action = %entry.action, target = ?entry.target, "audit entry written");
    Ok(())
}

/// Largest page [`PgAudit::query`] answers.
pub const MAX_AUDIT_PAGE: i64 = 500;

/// Which entries [`PgAudit::query`] reads: newest first (by id, which only grows), at most
/// `limit`, older than the cursor `before`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditQuery {
    /// Only this organization's entries; `None` reads every organization (and entries of
    /// none, such as admin actions).
    pub organization_id: Option<Uuid>,
    /// Only entries with an id below this (the previous page's [`AuditPage::next_cursor`]).
    pub before: Option<AuditCursor>,
    /// Only these actions.
    pub action: Option<ActionFilter>,
    /// Only entries created at or after this.
    pub since: Option<DateTime<Utc>>,
    /// Only entries created before this.
    pub until: Option<DateTime<Utc>>,
    /// Page size, 1 to [`MAX_AUDIT_PAGE`] (clamped).
    pub limit: i64,
}

/// An action filter: `integration.` (ending in a dot) matches every action under it,
/// anything else only that action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionFilter {
    /// This action only.
    Exact(String),
    /// Actions starting with this (ends with `.`).
    Prefix(String),
}

impl ActionFilter {
    /// The filter `?action=` means.
    pub fn parse(raw: &str) -> Self {
        if raw.ends_with('.') {
            Self::Prefix(raw.to_owned())
        } else {
            Self::Exact(raw.to_owned())
        }
    }
}

/// Where the next page starts: opaque to clients, the last id of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditCursor(i64);

/// A cursor that is not one we issued.
#[derive(Debug, thiserror::Error)]
#[error("not a cursor this API issued")]
pub struct InvalidCursor;

impl AuditCursor {
    /// Reads a cursor from [`AuditCursor::encode`].
    pub fn decode(raw: &str) -> Result<Self, InvalidCursor> {
        // Digits only: `+1` or ` 1` would parse but are not ours.
        if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidCursor);
        }
        match raw.parse::<i64>() {
            Ok(id) if id > 0 => Ok(Self(id)),
            _ => Err(InvalidCursor),
        }
    }

    /// The cursor as clients see it.
    pub fn encode(self) -> String {
        self.0.to_string()
    }
}

/// One stored entry as the audit routes answer it.
#[derive(Debug, Clone, PartialEq, Queryable, Serialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// Row id (ascending with time of writing).
    pub id: i64,
    /// Organization, if any.
    pub organization_id: Option<Uuid>,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Which thing.
    pub target: Option<String>,
    /// Extra facts.
    pub details: serde_json::Value,
    /// When it was written.
    pub at: DateTime<Utc>,
}

/// A page of entries, newest first, and the cursor of the next page when there is one.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// The entries.
    pub entries: Vec<AuditRecord>,
    /// `?before=` for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Default page size of the audit routes.
pub const DEFAULT_AUDIT_PAGE: i64 = 50;

/// The query string of `GET /audit` and `GET /admin/audit`, as sent: every value is read
/// by [`AuditParams::into_query`] so that a bad one is answered naming it.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Page size.
    pub limit: Option<String>,
    /// Cursor from the previous page.
    pub before: Option<String>,
    /// Exact action, or a prefix ending in `.`.
    pub action: Option<String>,
    /// RFC 3339, inclusive.
    pub since: Option<String>,
    /// RFC 3339, exclusive.
    pub until: Option<String>,
    /// Only on the admin route.
    pub organization_id: Option<String>,
}

/// A query parameter that does not read.
#[derive(Debug, thiserror::Error)]
#[error("invalid {param}: {reason}")]
pub struct InvalidAuditParam {
    /// The parameter's name.
    pub param: &'static str,
    /// Why.
    pub reason: String,
}

fn invalid(param: &'static str, reason: impl Into<String>) -> InvalidAuditParam {
    InvalidAuditParam {
        param,
        reason: reason.into(),
    }
}

fn rfc3339(param: &'static str, raw: &str) -> Result<DateTime<Utc>, InvalidAuditParam> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| invalid(param, format!("not an RFC 3339 time ({e})")))
}

impl AuditParams {
    /// The query these parameters ask for. `organization_id` has been decided by the route:
    /// the token's organization on `/audit` (where the parameter itself is refused), the
    /// parameter on `/admin/audit`.
    pub fn into_query(
        self,
        organization_id: Option<Uuid>,
    ) -> Result<AuditQuery, InvalidAuditParam> {
        let limit = match self.limit.as_deref() {
            None => DEFAULT_AUDIT_PAGE,
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) if (1..=MAX_AUDIT_PAGE).contains(&n) => n,
                _ => {
                    return Err(invalid(
                        "limit",
                        format!("must be a number from 1 to {MAX_AUDIT_PAGE}"),
                    ));
                }
            },
        };
        let before = self
            .before
            .as_deref()
            .map(AuditCursor::decode)
            .transpose()
            .map_err(|e| invalid("before", e.to_string()))?;
        let action = match self.action.as_deref() {
            Some("") => return Err(invalid("action", "must not be empty")),
            other => other.map(ActionFilter::parse),
        };
        let since = self
            .since
            .as_deref()
            .map(|s| rfc3339("since", s))
            .transpose()?;
        let until = self
            .until
            .as_deref()
            .map(|s| rfc3339("until", s))
            .transpose()?;
        if let (Some(since), Some(until)) = (since, until)
            && since >= until
        {
            return Err(invalid("until", "must be after since"));
        }
        Ok(AuditQuery {
            organization_id,
            before,
            action,
            since,
            until,
            limit,
        })
    }
}

/// `%`, `_` and `\` taken literally in a LIKE pattern (actions contain `_`).
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

impl PgAudit {
    /// One page of entries matching `q`: the one query behind `GET /audit` (scoped to the
    /// caller's organization) and `GET /admin/audit` (any organization).
    pub async fn query(&self, q: &AuditQuery) -> Result<AuditPage, StoreError> {
        let limit = q.limit.clamp(1, MAX_AUDIT_PAGE);
        let mut sql = audit_log::table
            .select((
                audit_log::id,
                audit_log::organization_id,
                audit_log::actor,
                audit_log::action,
                audit_log::target,
                audit_log::details,
                audit_log::created_at,
            ))
            .into_boxed();
        if let Some(org) = q.organization_id {
            sql = sql.filter(audit_log::organization_id.eq(org));
        }
        if let Some(AuditCursor(id)) = q.before {
            sql = sql.filter(audit_log::id.lt(id));
        }
        match &q.action {
            Some(ActionFilter::Exact(action)) => {
                sql = sql.filter(audit_log::action.eq(action.clone()))
            }
            Some(ActionFilter::Prefix(prefix)) => {
                sql = sql.filter(audit_log::action.like(like_prefix(prefix)).escape('\\'))
            }
            None => {}
        }
        if let Some(since) = q.since {
            sql = sql.filter(audit_log::created_at.ge(since));
        }
        if let Some(until) = q.until {
            sql = sql.filter(audit_log::created_at.lt(until));
        }
        let mut conn = conn(&self.pool).await?;
        // One row more than the page tells whether there is a next page.
        let mut entries: Vec<AuditRecord> = sql
            .order(audit_log::id.desc())
            .limit(limit + 1)
            .load(&mut conn)
            .await?;
        let next_cursor = if entries.len() as i64 > limit {
            entries.truncate(limit as usize);
            entries.last().map(|e| AuditCursor(e.id).encode())
        } else {
            None
        };
        tracing::debug!(
            organization_id = ?q.organization_id,
            entries = entries.len(),
            more = next_cursor.is_some(),
            "audit page read"
        );
        Ok(AuditPage {
            entries,
            next_cursor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_what_we_never_issue() {
        let c = AuditCursor::decode("42").expect("ours");
        assert_eq!(c.encode(), "42");
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            " 1",
            "abc",
            "1.5",
            "99999999999999999999",
        ] {
            assert!(AuditCursor::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn action_prefixes_end_with_a_dot_and_match_literally() {
        assert_eq!(
            ActionFilter::parse("integration."),
            ActionFilter::Prefix("integration.".into())
        );
        assert_eq!(
            ActionFilter::parse("integration"),
            ActionFilter::Exact("integration".into())
        );
        assert_eq!(like_prefix("a_b%c\\."), "a\\_b\\%c\\\\.%");
    }
}
