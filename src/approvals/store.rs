//! The approvals in PostgreSQL: the [`ApprovalStore`] port (every change with its audit
//! entry in the same transaction; decisions and expiry as conditional updates, so with
//! several replicas each happens once) and the organization-scoped reads of the REST API.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::OptionalExtension as _;
use diesel::sql_types::{
    Array, BigInt, Double, Int4, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use infragpt_actors::approvals::model::{
    Approval, ApprovalStatus, Decision, NewApproval, Refusal, RiskLevel,
};
use infragpt_actors::approvals::ports::{ApprovalStore, ApprovalStoreError, PostClaim};
use infragpt_actors::audit::AuditEntry;
use infragpt_actors::ids::{
    ApprovalId, ChannelId, ConversationId, MessageTs, SlackUserId, TeamId, ThreadKey,
};
use infragpt_actors::inbox::EventRowId;
use serde_json::json;
use uuid::Uuid;

use crate::db::audit::insert_entry;
use crate::db::committed::CommittedExt as _;
use crate::db::{Pool, StoreError, conn};

/// Every column an [`Approval`] is read from.
const COLUMNS: &str = "id, conversation_id, team_id, channel_id, thread_ts, action_key, \
    summary, details, risk, approvers, requested_by, turn_ts, status, expires_at, created_at, \
    message_ts, decided_by, decided_at, reason, decided_event";

#[derive(Debug, diesel::QueryableByName)]
struct Row {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    conversation_id: Uuid,
    #[diesel(sql_type = Text)]
    team_id: String,
    #[diesel(sql_type = Text)]
    channel_id: String,
    #[diesel(sql_type = Text)]
    thread_ts: String,
    #[diesel(sql_type = Text)]
    action_key: String,
    #[diesel(sql_type = Text)]
    summary: String,
    #[diesel(sql_type = Text)]
    details: String,
    #[diesel(sql_type = Text)]
    risk: String,
    #[diesel(sql_type = Array<Text>)]
    approvers: Vec<String>,
    #[diesel(sql_type = Nullable<Text>)]
    requested_by: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    turn_ts: Option<String>,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Timestamptz)]
    expires_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Text>)]
    message_ts: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    decided_by: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    decided_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    reason: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    decided_event: Option<i64>,
}

fn corrupt(what: &str, id: Uuid) -> ApprovalStoreError {
    ApprovalStoreError::Corrupt(format!("approval {id}: {what}"))
}

impl Row {
    fn into_approval(self) -> Result<Approval, ApprovalStoreError> {
        let id = self.id;
        let key = ThreadKey::new(
            TeamId::parse(self.team_id).map_err(|_| corrupt("team_id", id))?,
            ChannelId::parse(self.channel_id).map_err(|_| corrupt("channel_id", id))?,
            MessageTs::parse(self.thread_ts).map_err(|_| corrupt("thread_ts", id))?,
        );
        let user = |raw: Option<String>, what: &str| {
            raw.map(|u| SlackUserId::parse(u).map_err(|_| corrupt(what, id)))
                .transpose()
        };
        let ts = |raw: Option<String>, what: &str| {
            raw.map(|t| MessageTs::parse(t).map_err(|_| corrupt(what, id)))
                .transpose()
        };
        Ok(Approval {
            id: ApprovalId(id),
            conversation_id: ConversationId(self.conversation_id),
            key,
            action_key: self.action_key,
            summary: self.summary,
            details: self.details,
            risk: RiskLevel::parse(&self.risk).ok_or_else(|| corrupt("risk", id))?,
            approvers: self
                .approvers
                .into_iter()
                .map(|a| SlackUserId::parse(a).map_err(|_| corrupt("approvers", id)))
                .collect::<Result<_, _>>()?,
            requested_by: user(self.requested_by, "requested_by")?,
            turn_ts: ts(self.turn_ts, "turn_ts")?,
            status: ApprovalStatus::parse(&self.status).ok_or_else(|| corrupt("status", id))?,
            expires_at: self.expires_at,
            created_at: self.created_at,
            message_ts: ts(self.message_ts, "message_ts")?,
            decided_by: user(self.decided_by, "decided_by")?,
            decided_at: self.decided_at,
            reason: self.reason,
            decided_event: self.decided_event.map(EventRowId),
        })
    }
}

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> ApprovalStoreError {
    ApprovalStoreError::Unavailable(Box::new(e))
}

impl From<StoreError> for ApprovalStoreError {
    fn from(e: StoreError) -> Self {
        unavailable(e)
    }
}

#[derive(diesel::QueryableByName)]
struct OrgRow {
    #[diesel(sql_type = Nullable<SqlUuid>)]
    organization_id: Option<Uuid>,
}

#[derive(diesel::QueryableByName)]
struct Flag {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    flag: bool,
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(diesel::QueryableByName)]
struct ClaimRow {
    #[diesel(sql_type = Int4)]
    post_claims: i32,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    post_started: bool,
}

#[derive(diesel::QueryableByName)]
struct TsRow {
    #[diesel(sql_type = Nullable<Text>)]
    message_ts: Option<String>,
}

/// The organization a workspace is installed for (audit entries name it).
async fn organization_of(
    conn: &mut AsyncPgConnection,
    team: &str,
) -> Result<Option<Uuid>, diesel::result::Error> {
    Ok(
        diesel::sql_query("SELECT organization_id FROM slack_workspaces WHERE team_id = $1")
            .bind::<Text, _>(team)
            .get_committed::<OrgRow>(conn)
            .await
            .optional()?
            .and_then(|r| r.organization_id),
    )
}

/// The PostgreSQL adapter of [`ApprovalStore`].
#[derive(Clone)]
pub struct PgApprovalStore {
    pool: Pool,
}

impl std::fmt::Debug for PgApprovalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgApprovalStore").finish_non_exhaustive()
    }
}

impl PgApprovalStore {
    /// The store over `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// The organization's approvals, newest first, optionally of one status (REST).
    pub async fn list_for_org(
        &self,
        organization_id: Uuid,
        status: Option<ApprovalStatus>,
        limit: i64,
    ) -> Result<Vec<Approval>, ApprovalStoreError> {
        let mut c = conn(&self.pool).await?;
        let sql = format!(
            "SELECT {} FROM approvals a JOIN slack_workspaces w ON w.team_id = a.team_id \
             WHERE w.organization_id = $1 AND ($2::text IS NULL OR a.status = $2) \
             ORDER BY a.created_at DESC, a.id LIMIT $3",
            prefixed()
        );
        let rows: Vec<Row> = diesel::sql_query(sql)
            .bind::<SqlUuid, _>(organization_id)
            .bind::<Nullable<Text>, _>(status.map(ApprovalStatus::as_str))
            .bind::<BigInt, _>(limit)
            .load(&mut c)
            .await
            .map_err(unavailable)?;
        rows.into_iter().map(Row::into_approval).collect()
    }

    /// One of the organization's approvals (REST).
    pub async fn get_for_org(
        &self,
        organization_id: Uuid,
        id: Uuid,
    ) -> Result<Option<Approval>, ApprovalStoreError> {
        let mut c = conn(&self.pool).await?;
        let sql = format!(
            "SELECT {} FROM approvals a JOIN slack_workspaces w ON w.team_id = a.team_id \
             WHERE w.organization_id = $1 AND a.id = $2",
            prefixed()
        );
        diesel::sql_query(sql)
            .bind::<SqlUuid, _>(organization_id)
            .bind::<SqlUuid, _>(id)
            .get_committed::<Row>(&mut c)
            .await
            .optional()
            .map_err(unavailable)?
            .map(Row::into_approval)
            .transpose()
    }
}

fn prefixed() -> String {
    COLUMNS
        .split(", ")
        .map(|c| format!("a.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait]
impl ApprovalStore for PgApprovalStore {
    async fn create(&self, new: &NewApproval) -> Result<(Approval, bool), ApprovalStoreError> {
        let mut c = conn(&self.pool).await?;
        let new = new.clone();
        c.transaction::<_, diesel::result::Error, _>(async move |conn| {
            let sql = format!(
                "INSERT INTO approvals (id, conversation_id, team_id, channel_id, thread_ts, \
                 action_key, summary, details, risk, approvers, requested_by, turn_ts, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
                 now() + make_interval(secs => $13)) \
                 ON CONFLICT (conversation_id, action_key) DO NOTHING RETURNING {COLUMNS}"
            );
            let inserted: Option<Row> = diesel::sql_query(sql)
                .bind::<SqlUuid, _>(new.id.0)
                .bind::<SqlUuid, _>(new.conversation_id.0)
                .bind::<Text, _>(new.key.team.as_str())
                .bind::<Text, _>(new.key.channel.as_str())
                .bind::<Text, _>(new.key.thread_ts.as_str())
                .bind::<Text, _>(&new.action_key)
                .bind::<Text, _>(&new.summary)
                .bind::<Text, _>(&new.details)
                .bind::<Text, _>(new.risk.as_str())
                .bind::<Array<Text>, _>(
                    new.approvers
                        .iter()
                        .map(|a| a.as_str().to_owned())
                        .collect::<Vec<_>>(),
                )
                .bind::<Nullable<Text>, _>(new.requested_by.as_ref().map(|u| u.as_str()))
                .bind::<Nullable<Text>, _>(new.turn_ts.as_ref().map(|t| t.as_str()))
                .bind::<Double, _>(new.expires_in.as_secs_f64())
                .get_committed(conn)
                .await
                .optional()?;
            match inserted {
                Some(row) => {
                    let organization_id = organization_of(conn, new.key.team.as_str()).await?;
                    insert_entry(
                        conn,
                        &AuditEntry {
                            organization_id,
                            actor: "agent".to_owned(),
                            action: "approval.requested".to_owned(),
                            target: Some(new.id.to_string()),
                            details: json!({
                                "conversation_id": new.conversation_id.to_string(),
                                "action_key": new.action_key,
                                "summary": new.summary,
                                "risk": new.risk.as_str(),
                                "approvers": new.approvers,
                                "requested_by": new.requested_by,
                                "expires_in_secs": new.expires_in.as_secs(),
                            }),
                        },
                    )
                    .await?;
                    Ok((row, true))
                }
                None => {
                    let sql = format!(
                        "SELECT {COLUMNS} FROM approvals WHERE conversation_id = $1 AND action_key = $2"
                    );
                    let row: Row = diesel::sql_query(sql)
                        .bind::<SqlUuid, _>(new.conversation_id.0)
                        .bind::<Text, _>(&new.action_key)
                        .get_committed(conn)
                        .await?;
                    Ok((row, false))
                }
            }
        })
        .await
        .map_err(unavailable)
        .and_then(|(row, created)| Ok((row.into_approval()?, created)))
    }

    async fn get(&self, id: ApprovalId) -> Result<Option<Approval>, ApprovalStoreError> {
        let mut c = conn(&self.pool).await?;
        diesel::sql_query(format!("SELECT {COLUMNS} FROM approvals WHERE id = $1"))
            .bind::<SqlUuid, _>(id.0)
            .get_committed::<Row>(&mut c)
            .await
            .optional()
            .map_err(unavailable)?
            .map(Row::into_approval)
            .transpose()
    }

    async fn claim_post(
        &self,
        id: ApprovalId,
        lease: Duration,
    ) -> Result<PostClaim, ApprovalStoreError> {
        let mut c = conn(&self.pool).await?;
        let claimed: Option<ClaimRow> = diesel::sql_query(
            "UPDATE approvals SET post_claims = post_claims + 1, \
             post_claimed_until = now() + make_interval(secs => $2) \
             WHERE id = $1 AND message_ts IS NULL \
             AND (post_claimed_until IS NULL OR post_claimed_until <= now()) \
             RETURNING post_claims, post_started",
        )
        .bind::<SqlUuid, _>(id.0)
        .bind::<Double, _>(lease.as_secs_f64())
        .get_committed(&mut c)
        .await
        .optional()
        .map_err(unavailable)?;
        if let Some(row) = claimed {
            return Ok(PostClaim::Claimed {
                token: row.post_claims,
                maybe_posted: row.post_started,
            });
        }
        let ts: Option<TsRow> = diesel::sql_query("SELECT message_ts FROM approvals WHERE id = $1")
            .bind::<SqlUuid, _>(id.0)
            .get_committed(&mut c)
            .await
            .optional()
            .map_err(unavailable)?;
        match ts.and_then(|t| t.message_ts) {
            Some(ts) => Ok(PostClaim::Posted(
                MessageTs::parse(ts).map_err(|_| corrupt("message_ts", id.0))?,
            )),
            None => Ok(PostClaim::Busy),
        }
    }

    async fn start_post(&self, id: ApprovalId, token: i32) -> Result<bool, ApprovalStoreError> {
        let mut c = conn(&self.pool).await?;
        let n = diesel::sql_query(
            "UPDATE approvals SET post_started = true WHERE id = $1 AND post_claims = $2 \
             AND message_ts IS NULL AND post_claimed_until > now()",
        )
        .bind::<SqlUuid, _>(id.0)
        .bind::<Int4, _>(token)
        .execute(&mut c)
        .await
        .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn record_post(&self, id: ApprovalId, ts: &MessageTs) -> Result<(), ApprovalStoreError> {
        let mut c = conn(&self.pool).await?;
        diesel::sql_query(
            "UPDATE approvals SET message_ts = $2, post_claimed_until = NULL \
             WHERE id = $1 AND message_ts IS NULL",
        )
        .bind::<SqlUuid, _>(id.0)
        .bind::<Text, _>(ts.as_str())
        .execute(&mut c)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn release_post(
        &self,
        id: ApprovalId,
        token: i32,
        clear_started: bool,
    ) -> Result<(), ApprovalStoreError> {
        let mut c = conn(&self.pool).await?;
        diesel::sql_query(
            "UPDATE approvals SET post_claimed_until = now(), \
             post_started = CASE WHEN $3 THEN false ELSE post_started END \
             WHERE id = $1 AND post_claims = $2 AND message_ts IS NULL",
        )
        .bind::<SqlUuid, _>(id.0)
        .bind::<Int4, _>(token)
        .bind::<diesel::sql_types::Bool, _>(clear_started)
        .execute(&mut c)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn decide(
        &self,
        id: ApprovalId,
        decision: Decision,
        by: &SlackUserId,
        reason: Option<&str>,
        event: EventRowId,
    ) -> Result<Option<Approval>, ApprovalStoreError> {
        let mut c = conn(&self.pool).await?;
        let by = by.clone();
        let reason = reason.map(str::to_owned);
        let decided = c
            .transaction::<_, diesel::result::Error, _>(async move |conn| {
                let sql = format!(
                    "UPDATE approvals SET status = $2, decided_by = $3, decided_at = now(), \
                     reason = $4, decided_event = $5 \
                     WHERE id = $1 AND status = 'pending' AND expires_at > now() \
                     RETURNING {COLUMNS}"
                );
                let row: Option<Row> = diesel::sql_query(sql)
                    .bind::<SqlUuid, _>(id.0)
                    .bind::<Text, _>(decision.status().as_str())
                    .bind::<Text, _>(by.as_str())
                    .bind::<Nullable<Text>, _>(reason.as_deref())
                    .bind::<BigInt, _>(event.0)
                    .get_committed(conn)
                    .await
                    .optional()?;
                if let Some(row) = &row {
                    let organization_id = organization_of(conn, &row.team_id).await?;
                    insert_entry(
                        conn,
                        &AuditEntry {
                            organization_id,
                            actor: format!("slack/{by}"),
                            action: format!("approval.{}", decision.as_str()),
                            target: Some(id.to_string()),
                            details: json!({
                                "conversation_id": row.conversation_id.to_string(),
                                "action_key": row.action_key,
                                "decided_by": by.as_str(),
                                "reason": reason,
                                "event_id": event.0,
                            }),
                        },
                    )
                    .await?;
                }
                Ok(row)
            })
            .await
            .map_err(unavailable)?;
        decided.map(Row::into_approval).transpose()
    }

    async fn refuse(
        &self,
        approval: &Approval,
        by: &SlackUserId,
        refusal: Refusal,
        event: EventRowId,
    ) -> Result<(), ApprovalStoreError> {
        let mut c = conn(&self.pool).await?;
        let approval = approval.clone();
        let by = by.clone();
        c.transaction::<_, diesel::result::Error, _>(async move |conn| {
            // Once per inbound event: a retried refusal writes nothing new.
            let seen = diesel::sql_query(
                "SELECT EXISTS (SELECT 1 FROM audit_log WHERE action = 'approval.refused' \
                 AND target = $1 AND details->>'event_id' = $2) AS flag",
            )
            .bind::<Text, _>(approval.id.to_string())
            .bind::<Text, _>(event.0.to_string())
            .get_committed::<Flag>(conn)
            .await?
            .flag;
            if seen {
                return Ok(());
            }
            let organization_id = organization_of(conn, approval.key.team.as_str()).await?;
            insert_entry(
                conn,
                &AuditEntry {
                    organization_id,
                    actor: format!("slack/{by}"),
                    action: "approval.refused".to_owned(),
                    target: Some(approval.id.to_string()),
                    details: json!({
                        "conversation_id": approval.conversation_id.to_string(),
                        "action_key": approval.action_key,
                        "user": by.as_str(),
                        "refusal": refusal.as_str(),
                        "status": approval.status.as_str(),
                        "event_id": event.0.to_string(),
                    }),
                },
            )
            .await
        })
        .await
        .map_err(unavailable)
    }

    async fn expire_due(&self, limit: i64) -> Result<Vec<Approval>, ApprovalStoreError> {
        let mut c = conn(&self.pool).await?;
        let rows = c
            .transaction::<_, diesel::result::Error, _>(async move |conn| {
                // SKIP LOCKED: two replicas sweeping at once split the due rows; the status
                // condition makes each expiry happen once whatever the timing.
                let sql = format!(
                    "UPDATE approvals SET status = 'expired' WHERE id IN ( \
                     SELECT id FROM approvals WHERE status = 'pending' AND expires_at <= now() \
                     ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
                     AND status = 'pending' RETURNING {COLUMNS}"
                );
                let rows: Vec<Row> = diesel::sql_query(sql)
                    .bind::<BigInt, _>(limit)
                    .load(conn)
                    .await?;
                for row in &rows {
                    let organization_id = organization_of(conn, &row.team_id).await?;
                    insert_entry(
                        conn,
                        &AuditEntry {
                            organization_id,
                            actor: "system".to_owned(),
                            action: "approval.expired".to_owned(),
                            target: Some(row.id.to_string()),
                            details: json!({
                                "conversation_id": row.conversation_id.to_string(),
                                "action_key": row.action_key,
                                "expires_at": row.expires_at,
                            }),
                        },
                    )
                    .await?;
                }
                Ok(rows)
            })
            .await
            .map_err(unavailable)?;
        rows.into_iter().map(Row::into_approval).collect()
    }

    async fn count_pending(&self) -> Result<i64, ApprovalStoreError> {
        let mut c = conn(&self.pool).await?;
        Ok(
            diesel::sql_query("SELECT count(*) AS n FROM approvals WHERE status = 'pending'")
                .get_committed::<Count>(&mut c)
                .await
                .map_err(unavailable)?
                .n,
        )
    }

    async fn is_org_admin(&self, team: &TeamId, email: &str) -> Result<bool, ApprovalStoreError> {
        let mut c = conn(&self.pool).await?;
        Ok(diesel::sql_query(
            "SELECT EXISTS (SELECT 1 FROM slack_workspaces w \
             JOIN organizations o ON o.id = w.organization_id AND o.deleted_at IS NULL \
             JOIN organization_members m ON m.organization_clerk_id = o.clerk_id \
               AND m.deleted_at IS NULL \
             JOIN users u ON u.clerk_id = m.user_clerk_id AND u.deleted_at IS NULL \
             WHERE w.team_id = $1 AND lower(u.email) = lower($2) \
               AND m.role IN ('org:admin', 'admin')) AS flag",
        )
        .bind::<Text, _>(team.as_str())
        .bind::<Text, _>(email)
        .get_committed::<Flag>(&mut c)
        .await
        .map_err(unavailable)?
        .flag)
    }

    async fn workspace_active(&self, team: &TeamId) -> Result<bool, ApprovalStoreError> {
        #[derive(diesel::QueryableByName)]
        struct Status {
            #[diesel(sql_type = Text)]
            status: String,
        }
        let mut c = conn(&self.pool).await?;
        let status: Option<Status> =
            diesel::sql_query("SELECT status FROM slack_workspaces WHERE team_id = $1")
                .bind::<Text, _>(team.as_str())
                .get_committed(&mut c)
                .await
                .optional()
                .map_err(unavailable)?;
        // A workspace of the single-workspace token (`slack.bot_token`) may have no row.
        Ok(status.is_none_or(|s| s.status == "active"))
    }
}
