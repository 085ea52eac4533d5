//! PostgreSQL side of event routing: the organization's sources (secrets sealed with the
//! vault's AES-256-GCM keys), its rules (every change audited in the same transaction), and
//! the event messages with their claims and the storm windows (the ports of
//! [`infragpt_actors::events`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::OptionalExtension as _;
use diesel::QueryableByName;
use diesel::sql_types::{
    BigInt, Bool, Bytea, Integer, Interval, Jsonb, Nullable, Text, Timestamptz,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use infragpt_actors::Secret;
use infragpt_actors::audit::AuditEntry;
use infragpt_actors::events::{
    Desired, DigestState, EventMessageKey, EventMessageStore, EventRule, MessageClaim, MessageSlot,
    Rendered, RuleSpec, RuleStore, SourceKind, StoreFailure, StormHit, TriageRequest,
};
use infragpt_actors::ids::{ChannelId, MessageTs, TeamId};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use crate::crypto::vault::{CredentialAad, KeyRing, Sealed, VaultError};
use crate::db::audit::insert_entry;
use crate::db::committed::CommittedExt as _;
use crate::db::{Pool, StoreError, conn};

type SqlUuid = diesel::sql_types::Uuid;

/// The AAD credential type of a source's secret.
const SECRET_TYPE: &str = "event_source_secret";

/// How a source authenticates its deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceAuth {
    /// `Authorization: Bearer <secret>` (Alertmanager's `http_config.authorization`).
    Bearer,
    /// HMAC-SHA256 of the raw body with the secret: `X-InfraGPT-Signature: sha256=<hex>` for
    /// Alertmanager, `X-PagerDuty-Signature: v1=<hex>[,v1=<hex>]` for PagerDuty.
    Hmac,
}

impl SourceAuth {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bearer => "bearer",
            Self::Hmac => "hmac",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "bearer" => Some(Self::Bearer),
            "hmac" => Some(Self::Hmac),
            _ => None,
        }
    }
}

/// A source as the API shows it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SourceView {
    pub id: Uuid,
    /// `alertmanager` or `pagerduty`.
    pub kind: String,
    pub name: String,
    /// `bearer` or `hmac`.
    pub auth: String,
    /// Where the source delivers: `/webhooks/{kind}/{id}`.
    pub webhook_path: String,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(QueryableByName)]
struct SourceRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    organization_id: Uuid,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    auth: String,
    #[diesel(sql_type = Bytea)]
    secret_nonce: Vec<u8>,
    #[diesel(sql_type = Bytea)]
    secret_ciphertext: Vec<u8>,
    #[diesel(sql_type = Text)]
    secret_key_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    created_by: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
}

impl SourceRow {
    fn view(&self) -> SourceView {
        SourceView {
            id: self.id,
            kind: self.kind.clone(),
            name: self.name.clone(),
            auth: self.auth.clone(),
            webhook_path: format!("/webhooks/{}/{}", self.kind, self.id),
            created_by: self.created_by.clone(),
            created_at: self.created_at,
        }
    }
}

/// A source the webhook route verifies against.
#[derive(Debug)]
pub struct WebhookSource {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub auth: SourceAuth,
    /// The decrypted secret.
    pub secret: Secret,
}

#[derive(QueryableByName)]
struct RuleRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    organization_id: Uuid,
    #[diesel(sql_type = Jsonb)]
    spec: serde_json::Value,
    #[diesel(sql_type = Nullable<Text>)]
    created_by: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    updated_at: DateTime<Utc>,
}

/// A rule as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleView {
    #[serde(flatten)]
    pub rule: EventRule,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl RuleRow {
    fn view(self) -> Result<RuleView, StoreError> {
        let spec: RuleSpec = serde_json::from_value(self.spec)
            .map_err(|e| StoreError::corrupt(format!("event rule {}", self.id), e))?;
        Ok(RuleView {
            rule: EventRule {
                id: self.id,
                organization_id: self.organization_id,
                spec,
            },
            created_by: self.created_by,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// Why a rule could not be written.
#[derive(Debug, thiserror::Error)]
pub enum RuleWriteError {
    /// A field names something the organization does not have.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<diesel::result::Error> for RuleWriteError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Store(e.into())
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

/// The event stores over one pool.
#[derive(Clone)]
pub struct PgEvents {
    pool: Pool,
    keyring: Arc<KeyRing>,
    owner: String,
}

impl std::fmt::Debug for PgEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEvents")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

fn failure(e: StoreError) -> StoreFailure {
    StoreFailure(Box::new(e))
}

fn q(e: diesel::result::Error) -> StoreFailure {
    failure(StoreError::from(e))
}

const SOURCE_COLUMNS: &str = "id, organization_id, kind, name, auth, secret_nonce, secret_ciphertext, secret_key_id, created_by, created_at";
const RULE_COLUMNS: &str = "id, organization_id, spec, created_by, created_at, updated_at";

async fn audit(
    conn: &mut AsyncPgConnection,
    organization: Uuid,
    actor: &str,
    action: &str,
    target: Uuid,
    details: serde_json::Value,
) -> Result<(), StoreError> {
    insert_entry(
        conn,
        &AuditEntry {
            organization_id: Some(organization),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: Some(target.to_string()),
            details,
        },
    )
    .await?;
    Ok(())
}

impl PgEvents {
    /// The stores; `owner` names this process in claims (a label for people).
    pub fn new(pool: Pool, keyring: Arc<KeyRing>, owner: impl Into<String>) -> Self {
        Self {
            pool,
            keyring,
            owner: owner.into(),
        }
    }

    fn seal(&self, id: Uuid, secret: &Secret) -> Result<Sealed, VaultError> {
        self.keyring.seal(
            &CredentialAad {
                integration_id: id,
                credential_type: SECRET_TYPE,
            },
            secret,
        )
    }

    // ----- sources ----------------------------------------------------------------------

    /// Creates a source of `organization` with `secret` (sealed), audited
    /// (`event_source.created`) in the same transaction.
    pub async fn create_source(
        &self,
        organization: Uuid,
        kind: SourceKind,
        name: &str,
        auth: SourceAuth,
        secret: &Secret,
        actor: &str,
    ) -> Result<SourceView, StoreError> {
        let id = Uuid::new_v4();
        let sealed = self
            .seal(id, secret)
            .map_err(|e| StoreError::corrupt("event source secret", e))?;
        let mut conn = conn(&self.pool).await?;
        let (name, actor) = (name.to_owned(), actor.to_owned());
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let row: SourceRow = diesel::sql_query(format!(
                "INSERT INTO event_sources (id, organization_id, kind, name, auth, secret_nonce, secret_ciphertext, secret_key_id, created_by) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {SOURCE_COLUMNS}"
            ))
            .bind::<SqlUuid, _>(id)
            .bind::<SqlUuid, _>(organization)
            .bind::<Text, _>(kind.as_str())
            .bind::<Text, _>(&name)
            .bind::<Text, _>(auth.as_str())
            .bind::<Bytea, _>(sealed.nonce.to_vec())
            .bind::<Bytea, _>(&sealed.ciphertext)
            .bind::<Text, _>(sealed.key_id.as_str())
            .bind::<Text, _>(&actor)
            .get_committed(conn)
            .await?;
            audit(
                conn,
                organization,
                &actor,
                "event_source.created",
                id,
                json!({ "kind": kind.as_str(), "name": name, "auth": auth.as_str() }),
            )
            .await?;
            Ok(row.view())
        })
        .await
    }

    /// The organization's live sources, oldest first.
    pub async fn list_sources(&self, organization: Uuid) -> Result<Vec<SourceView>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let rows: Vec<SourceRow> = diesel::sql_query(format!(
            "SELECT {SOURCE_COLUMNS} FROM event_sources WHERE organization_id = $1 AND deleted_at IS NULL ORDER BY created_at, id"
        ))
        .bind::<SqlUuid, _>(organization)
        .load(&mut conn)
        .await?;
        Ok(rows.iter().map(SourceRow::view).collect())
    }

    /// Deletes (soft) the organization's source `id`, audited; false when it is not theirs
    /// or already gone. Its webhook answers 404 from then on.
    pub async fn delete_source(
        &self,
        organization: Uuid,
        id: Uuid,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let actor = actor.to_owned();
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let gone: Option<IdRow> = diesel::sql_query(
                "UPDATE event_sources SET deleted_at = now() WHERE id = $1 AND organization_id = $2 AND deleted_at IS NULL RETURNING id",
            )
            .bind::<SqlUuid, _>(id)
            .bind::<SqlUuid, _>(organization)
            .get_committed(conn)
            .await
            .optional()?;
            if gone.is_none() {
                return Ok(false);
            }
            audit(conn, organization, &actor, "event_source.deleted", id, json!({})).await?;
            Ok(true)
        })
        .await
    }

    /// A live source of `kind` with its secret, for the webhook route.
    pub async fn webhook_source(
        &self,
        id: Uuid,
        kind: SourceKind,
    ) -> Result<Option<WebhookSource>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let row: Option<SourceRow> = diesel::sql_query(format!(
            "SELECT {SOURCE_COLUMNS} FROM event_sources WHERE id = $1 AND kind = $2 AND deleted_at IS NULL"
        ))
        .bind::<SqlUuid, _>(id)
        .bind::<Text, _>(kind.as_str())
        .get_committed(&mut conn)
        .await
        .optional()?;
        let Some(row) = row else {
            return Ok(None);
        };
        let sealed = Sealed::from_parts(
            row.secret_key_id.clone(),
            &row.secret_nonce,
            row.secret_ciphertext.clone(),
        )
        .map_err(|e| StoreError::corrupt("event source secret", e))?;
        let secret = self
            .keyring
            .open(
                &CredentialAad {
                    integration_id: row.id,
                    credential_type: SECRET_TYPE,
                },
                &sealed,
            )
            .map_err(|e| StoreError::corrupt("event source secret", e))?;
        let auth = SourceAuth::parse(&row.auth)
            .ok_or_else(|| StoreError::corrupt("event source auth", row.auth.clone()))?;
        Ok(Some(WebhookSource {
            id: row.id,
            organization_id: row.organization_id,
            auth,
            secret,
        }))
    }

    /// The organization of a live source (the stream handler's lookup).
    pub async fn source_organization(&self, id: Uuid) -> Result<Option<Uuid>, StoreError> {
        #[derive(QueryableByName)]
        struct Org {
            #[diesel(sql_type = SqlUuid)]
            organization_id: Uuid,
        }
        let mut conn = conn(&self.pool).await?;
        let row: Option<Org> = diesel::sql_query(
            "SELECT organization_id FROM event_sources WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind::<SqlUuid, _>(id)
        .get_committed(&mut conn)
        .await
        .optional()?;
        Ok(row.map(|r| r.organization_id))
    }

    /// Deletes the storm windows' hits older than an hour (a window lasts a minute; they are
    /// only read while it is open). Returns how many went.
    pub async fn prune_storm_windows(&self) -> Result<usize, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let n = diesel::sql_query(
            "DELETE FROM event_rule_hits WHERE id = ANY(ARRAY(SELECT id FROM event_rule_hits \
             WHERE window_start < now() - interval '1 hour' ORDER BY id LIMIT 10000))",
        )
        .execute(&mut conn)
        .await?;
        Ok(n)
    }

    // ----- rules ------------------------------------------------------------------------

    /// The references of `spec` that the organization must own: its source, its workspace
    /// (a team of another organization is refused; the configured bot token's team, which
    /// belongs to none, is allowed).
    async fn check_refs(
        conn: &mut AsyncPgConnection,
        organization: Uuid,
        spec: &RuleSpec,
    ) -> Result<(), RuleWriteError> {
        if let Some(source) = spec.source.source_id {
            let n = diesel::sql_query(
                "SELECT count(*) AS n FROM event_sources WHERE id = $1 AND organization_id = $2 AND kind = $3 AND deleted_at IS NULL",
            )
            .bind::<SqlUuid, _>(source)
            .bind::<SqlUuid, _>(organization)
            .bind::<Text, _>(&spec.source.kind)
            .get_committed::<Count>(conn)
            .await
            .map_err(StoreError::from)?
            .n;
            if n == 0 {
                return Err(RuleWriteError::Invalid {
                    field: "source.source_id",
                    reason: format!(
                        "no {} source of this organization has that id",
                        spec.source.kind
                    ),
                });
            }
        }
        let foreign = diesel::sql_query(
            "SELECT count(*) AS n FROM slack_workspaces WHERE team_id = $1 AND organization_id IS NOT NULL AND organization_id <> $2",
        )
        .bind::<Text, _>(&spec.slack.team_id)
        .bind::<SqlUuid, _>(organization)
        .get_committed::<Count>(conn)
        .await
        .map_err(StoreError::from)?
        .n;
        if foreign > 0 {
            return Err(RuleWriteError::Invalid {
                field: "slack.team_id",
                reason: "that Slack workspace belongs to another organization".to_owned(),
            });
        }
        Ok(())
    }

    fn spec_json(spec: &RuleSpec) -> Result<serde_json::Value, StoreError> {
        serde_json::to_value(spec).map_err(|e| StoreError::corrupt("event rule", e))
    }

    /// Creates a rule (validated by the caller), audited (`event_rule.created`).
    pub async fn create_rule(
        &self,
        organization: Uuid,
        spec: RuleSpec,
        actor: &str,
    ) -> Result<RuleView, RuleWriteError> {
        let json = Self::spec_json(&spec)?;
        let mut conn = conn(&self.pool).await?;
        let actor = actor.to_owned();
        conn.transaction::<_, RuleWriteError, _>(async move |conn| {
            Self::check_refs(conn, organization, &spec).await?;
            let row: RuleRow = diesel::sql_query(format!(
                "INSERT INTO event_rules (organization_id, source_kind, enabled, spec, created_by) VALUES ($1, $2, $3, $4, $5) RETURNING {RULE_COLUMNS}"
            ))
            .bind::<SqlUuid, _>(organization)
            .bind::<Text, _>(&spec.source.kind)
            .bind::<Bool, _>(spec.enabled)
            .bind::<Jsonb, _>(&json)
            .bind::<Text, _>(&actor)
            .get_committed(conn)
            .await
            .map_err(StoreError::from)?;
            audit(conn, organization, &actor, "event_rule.created", row.id, json!({ "rule": json })).await?;
            Ok(row.view()?)
        })
        .await
    }

    /// Replaces the organization's rule `id`, audited (`event_rule.updated`, before and
    /// after); `None` when it is not theirs.
    pub async fn update_rule(
        &self,
        organization: Uuid,
        id: Uuid,
        spec: RuleSpec,
        actor: &str,
    ) -> Result<Option<RuleView>, RuleWriteError> {
        let json = Self::spec_json(&spec)?;
        let mut conn = conn(&self.pool).await?;
        let actor = actor.to_owned();
        conn.transaction::<_, RuleWriteError, _>(async move |conn| {
            let before: Option<RuleRow> = diesel::sql_query(format!(
                "SELECT {RULE_COLUMNS} FROM event_rules WHERE id = $1 AND organization_id = $2 FOR UPDATE"
            ))
            .bind::<SqlUuid, _>(id)
            .bind::<SqlUuid, _>(organization)
            .get_committed(conn)
            .await
            .optional()
            .map_err(StoreError::from)?;
            let Some(before) = before else {
                return Ok(None);
            };
            Self::check_refs(conn, organization, &spec).await?;
            let row: RuleRow = diesel::sql_query(format!(
                "UPDATE event_rules SET source_kind = $3, enabled = $4, spec = $5, updated_at = now() WHERE id = $1 AND organization_id = $2 RETURNING {RULE_COLUMNS}"
            ))
            .bind::<SqlUuid, _>(id)
            .bind::<SqlUuid, _>(organization)
            .bind::<Text, _>(&spec.source.kind)
            .bind::<Bool, _>(spec.enabled)
            .bind::<Jsonb, _>(&json)
            .get_committed(conn)
            .await
            .map_err(StoreError::from)?;
            audit(
                conn,
                organization,
                &actor,
                "event_rule.updated",
                id,
                json!({ "before": before.spec, "after": json }),
            )
            .await?;
            Ok(Some(row.view()?))
        })
        .await
    }

    /// Deletes the organization's rule `id`, audited; false when it is not theirs.
    pub async fn delete_rule(
        &self,
        organization: Uuid,
        id: Uuid,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let actor = actor.to_owned();
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let gone: Option<RuleRow> = diesel::sql_query(format!(
                "DELETE FROM event_rules WHERE id = $1 AND organization_id = $2 RETURNING {RULE_COLUMNS}"
            ))
            .bind::<SqlUuid, _>(id)
            .bind::<SqlUuid, _>(organization)
            .get_committed(conn)
            .await
            .optional()?;
            let Some(gone) = gone else {
                return Ok(false);
            };
            audit(conn, organization, &actor, "event_rule.deleted", id, json!({ "rule": gone.spec })).await?;
            Ok(true)
        })
        .await
    }

    /// The organization's rules, oldest first.
    pub async fn list_rules(&self, organization: Uuid) -> Result<Vec<RuleView>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let rows: Vec<RuleRow> = diesel::sql_query(format!(
            "SELECT {RULE_COLUMNS} FROM event_rules WHERE organization_id = $1 ORDER BY created_at, id"
        ))
        .bind::<SqlUuid, _>(organization)
        .load(&mut conn)
        .await?;
        rows.into_iter().map(RuleRow::view).collect()
    }

    /// One of the organization's rules.
    pub async fn get_rule(
        &self,
        organization: Uuid,
        id: Uuid,
    ) -> Result<Option<RuleView>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let row: Option<RuleRow> = diesel::sql_query(format!(
            "SELECT {RULE_COLUMNS} FROM event_rules WHERE id = $1 AND organization_id = $2"
        ))
        .bind::<SqlUuid, _>(id)
        .bind::<SqlUuid, _>(organization)
        .get_committed(&mut conn)
        .await
        .optional()?;
        row.map(RuleRow::view).transpose()
    }
}

#[async_trait]
impl RuleStore for PgEvents {
    async fn rules_for(
        &self,
        organization: Uuid,
        kind: SourceKind,
    ) -> Result<Vec<EventRule>, StoreFailure> {
        let mut conn = conn(&self.pool).await.map_err(failure)?;
        let rows: Vec<RuleRow> = diesel::sql_query(format!(
            "SELECT {RULE_COLUMNS} FROM event_rules WHERE organization_id = $1 AND source_kind = $2 AND enabled ORDER BY created_at, id"
        ))
        .bind::<SqlUuid, _>(organization)
        .bind::<Text, _>(kind.as_str())
        .load(&mut conn)
        .await
        .map_err(q)?;
        rows.into_iter()
            .map(|r| r.view().map(|v| v.rule).map_err(failure))
            .collect()
    }
}

// ----- event messages -------------------------------------------------------------------

#[derive(QueryableByName)]
struct SlotRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Nullable<Text>)]
    slack_ts: Option<String>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    event: Option<serde_json::Value>,
}

#[derive(QueryableByName)]
struct ClaimRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Integer)]
    claims: i32,
    #[diesel(sql_type = Text)]
    team_id: String,
    #[diesel(sql_type = Text)]
    channel_id: String,
    #[diesel(sql_type = Text)]
    thing_key: String,
    #[diesel(sql_type = Nullable<Text>)]
    slack_ts: Option<String>,
    #[diesel(sql_type = Bool)]
    posting: bool,
    #[diesel(sql_type = Jsonb)]
    rendered: serde_json::Value,
    #[diesel(sql_type = BigInt)]
    version: i64,
    #[diesel(sql_type = BigInt)]
    shown_version: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    shown_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    triage: Option<serde_json::Value>,
}

fn corrupt(what: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreFailure {
    failure(StoreError::corrupt(what.to_owned(), e))
}

impl ClaimRow {
    fn into_claim(self) -> Result<MessageClaim, StoreFailure> {
        let rendered: Rendered =
            serde_json::from_value(self.rendered).map_err(|e| corrupt("event message", e))?;
        let triage = self
            .triage
            .map(serde_json::from_value::<TriageRequest>)
            .transpose()
            .map_err(|e| corrupt("event message triage", e))?;
        let digest = self.thing_key.starts_with("digest:");
        Ok(MessageClaim {
            id: self.id,
            claim: self.claims,
            key: EventMessageKey {
                team: TeamId::parse(self.team_id).map_err(|e| corrupt("event message team", e))?,
                channel: ChannelId::parse(self.channel_id)
                    .map_err(|e| corrupt("event message channel", e))?,
                thing: self.thing_key,
            },
            slack_ts: self
                .slack_ts
                .map(MessageTs::parse)
                .transpose()
                .map_err(|e| corrupt("event message ts", e))?,
            uncertain: self.posting,
            rendered,
            version: self.version,
            shown_version: self.shown_version,
            shown_at: self.shown_at,
            created_at: self.created_at,
            digest,
            triage,
        })
    }
}

fn interval(d: Duration) -> diesel::pg::data_types::PgInterval {
    diesel::pg::data_types::PgInterval::from_microseconds(
        i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
    )
}

#[async_trait]
impl EventMessageStore for PgEvents {
    async fn find(&self, key: &EventMessageKey) -> Result<Option<MessageSlot>, StoreFailure> {
        let mut conn = conn(&self.pool).await.map_err(failure)?;
        let row: Option<SlotRow> = diesel::sql_query(
            "SELECT id, slack_ts, rendered->'event' AS event FROM event_messages WHERE team_id = $1 AND channel_id = $2 AND thing_key = $3",
        )
        .bind::<Text, _>(key.team.as_str())
        .bind::<Text, _>(key.channel.as_str())
        .bind::<Text, _>(&key.thing)
        .get_committed(&mut conn)
        .await
        .optional()
        .map_err(q)?;
        row.map(|r| {
            Ok(MessageSlot {
                id: r.id,
                slack_ts: r
                    .slack_ts
                    .map(MessageTs::parse)
                    .transpose()
                    .map_err(|e| corrupt("event message ts", e))?,
                event: r.event,
            })
        })
        .transpose()
    }

    async fn upsert(&self, key: &EventMessageKey, d: &Desired) -> Result<Uuid, StoreFailure> {
        let rendered =
            json!({ "text": d.rendered.text, "blocks": d.rendered.blocks, "event": d.event });
        let triage = d
            .triage
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| corrupt("triage", e))?;
        let mut conn = conn(&self.pool).await.map_err(failure)?;
        let row: IdRow = diesel::sql_query(
            "INSERT INTO event_messages (organization_id, team_id, channel_id, thing_key, rendered, version, triage) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (team_id, channel_id, thing_key) DO UPDATE SET \
               rendered = CASE WHEN excluded.version > event_messages.version THEN excluded.rendered ELSE event_messages.rendered END, \
               version = GREATEST(excluded.version, event_messages.version), \
               triage = COALESCE(event_messages.triage, excluded.triage) \
             RETURNING id",
        )
        .bind::<SqlUuid, _>(d.organization_id)
        .bind::<Text, _>(key.team.as_str())
        .bind::<Text, _>(key.channel.as_str())
        .bind::<Text, _>(&key.thing)
        .bind::<Jsonb, _>(&rendered)
        .bind::<BigInt, _>(d.version)
        .bind::<Nullable<Jsonb>, _>(&triage)
        .get_committed(&mut conn)
        .await
        .map_err(q)?;
        Ok(row.id)
    }

    async fn claim(&self, id: Uuid, lease: Duration) -> Result<Option<MessageClaim>, StoreFailure> {
        let mut conn = conn(&self.pool).await.map_err(failure)?;
        let row: Option<ClaimRow> = diesel::sql_query(
            "UPDATE event_messages SET claims = claims + 1, claimed_by = $2, claimed_until = now() + $3 \
             WHERE id = $1 AND (claimed_until IS NULL OR claimed_until <= now()) \
             RETURNING id, claims, team_id, channel_id, thing_key, slack_ts, posting, rendered, version, shown_version, shown_at, created_at, triage",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<Text, _>(&self.owner)
        .bind::<Interval, _>(interval(lease))
        .get_committed(&mut conn)
        .await
        .optional()
        .map_err(q)?;
        row.map(ClaimRow::into_claim).transpose()
    }

    async fn mark_posting(
        &self,
        id: Uuid,
        claim: i32,
        lease: Duration,
    ) -> Result<bool, StoreFailure> {
        let mut conn = conn(&self.pool).await.map_err(failure)?;
        let n = diesel::sql_query(
            "UPDATE event_messages SET posting = true, claimed_until = now() + $3 \
             WHERE id = $1 AND claims = $2 AND claimed_until > now()",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<Integer, _>(claim)
        .bind::<Interval, _>(interval(lease))
        .execute(&mut conn)
        .await
        .map_err(q)?;
        Ok(n == 1)
    }

    async fn record_posted(
        &self,
        id: Uuid,
        ts: &MessageTs,
        version: i64,
    ) -> Result<(), StoreFailure> {
        let mut conn = conn(&self.pool).await.map_err(failure)?;
        diesel::sql_query(
            "UPDATE event_messages SET slack_ts = COALESCE(slack_ts, $2), posting = false, \
               shown_version = $3, shown_at = now() WHERE id = $1",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<Text, _>(ts.as_str())
        .bind::<BigInt, _>(version)
        .execute(&mut conn)
        .await
        .map_err(q)?;
        Ok(())
    }

    async fn record_shown(&self, id: Uuid, claim: i32, version: i64) -> Result<bool, StoreFailure> {
        let mut conn = conn(&self.pool).await.map_err(failure)?;
        let n = diesel::sql_query(
            "UPDATE event_messages SET shown_version = GREATEST(shown_version, $3), shown_at = now() \
             WHERE id = $1 AND claims = $2",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<Integer, _>(claim)
        .bind::<BigInt, _>(version)
        .execute(&mut conn)
        .await
        .map_err(q)?;
        Ok(n == 1)
    }

    async fn triage_queued(&self, id: Uuid) -> Result<(), StoreFailure> {
        let mut conn = conn(&self.pool).await.map_err(failure)?;
        diesel::sql_query("UPDATE event_messages SET triage = NULL WHERE id = $1")
            .bind::<SqlUuid, _>(id)
            .execute(&mut conn)
            .await
            .map_err(q)?;
        Ok(())
    }

    async fn release(&self, id: Uuid, claim: i32, uncertain: bool) -> Result<(), StoreFailure> {
        let mut conn = conn(&self.pool).await.map_err(failure)?;
        diesel::sql_query(
            "UPDATE event_messages SET claimed_until = now(), posting = (posting AND $3 AND slack_ts IS NULL) \
             WHERE id = $1 AND claims = $2",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<Integer, _>(claim)
        .bind::<Bool, _>(uncertain)
        .execute(&mut conn)
        .await
        .map_err(q)?;
        Ok(())
    }

    async fn storm_hit(
        &self,
        rule: Uuid,
        thing: &str,
        title: &str,
    ) -> Result<StormHit, StoreFailure> {
        #[derive(QueryableByName)]
        struct Hit {
            #[diesel(sql_type = BigInt)]
            ordinal: i64,
            #[diesel(sql_type = Timestamptz)]
            window_start: DateTime<Utc>,
        }
        let mut conn = conn(&self.pool).await.map_err(failure)?;
        // The rule's window: it opens with a hit when none is open and lasts a minute. The
        // thing's place among the window's things by insertion order (ids grow), the same on
        // every retry.
        let hit: Hit = diesel::sql_query(
            "WITH w AS (SELECT COALESCE((SELECT max(window_start) FROM event_rule_hits \
                                         WHERE rule_id = $1 AND window_start > now() - interval '1 minute'), now()) AS start), \
             ins AS (INSERT INTO event_rule_hits (rule_id, window_start, thing_key, title) \
                     SELECT $1, w.start, $2, $3 FROM w ON CONFLICT (rule_id, window_start, thing_key) DO NOTHING RETURNING id, window_start), \
             mine AS (SELECT id, window_start FROM ins \
                      UNION ALL SELECT h.id, h.window_start FROM event_rule_hits h, w \
                      WHERE h.rule_id = $1 AND h.window_start = w.start AND h.thing_key = $2) \
             SELECT (SELECT count(*) FROM event_rule_hits h WHERE h.rule_id = $1 AND h.window_start = m.window_start AND h.id < m.id) + 1 AS ordinal, \
                    m.window_start FROM mine m LIMIT 1",
        )
        .bind::<SqlUuid, _>(rule)
        .bind::<Text, _>(thing)
        .bind::<Text, _>(title)
        .get_committed(&mut conn)
        .await
        .map_err(q)?;
        Ok(StormHit {
            ordinal: hit.ordinal,
            window_start: hit.window_start,
        })
    }

    async fn digest_state(
        &self,
        rule: Uuid,
        window_start: DateTime<Utc>,
        threshold: i64,
    ) -> Result<DigestState, StoreFailure> {
        #[derive(QueryableByName)]
        struct Title {
            #[diesel(sql_type = Text)]
            title: String,
        }
        let mut conn = conn(&self.pool).await.map_err(failure)?;
        let total = diesel::sql_query(
            "SELECT count(*) AS n FROM event_rule_hits WHERE rule_id = $1 AND window_start = $2",
        )
        .bind::<SqlUuid, _>(rule)
        .bind::<Timestamptz, _>(window_start)
        .get_committed::<Count>(&mut conn)
        .await
        .map_err(q)?
        .n;
        let recent: Vec<Title> = diesel::sql_query(
            "SELECT title FROM event_rule_hits WHERE rule_id = $1 AND window_start = $2 ORDER BY id DESC LIMIT 10",
        )
        .bind::<SqlUuid, _>(rule)
        .bind::<Timestamptz, _>(window_start)
        .load(&mut conn)
        .await
        .map_err(q)?;
        let count = (total - threshold).max(0);
        let recent = recent
            .into_iter()
            .take(usize::try_from(count).unwrap_or(0))
            .map(|t| t.title)
            .collect();
        Ok(DigestState { count, recent })
    }

    async fn lagging(&self, limit: i64) -> Result<Vec<Uuid>, StoreFailure> {
        let mut conn = conn(&self.pool).await.map_err(failure)?;
        let rows: Vec<IdRow> = diesel::sql_query(
            "SELECT id FROM event_messages WHERE slack_ts IS NOT NULL AND shown_version < version \
             AND (claimed_until IS NULL OR claimed_until <= now()) ORDER BY created_at LIMIT $1",
        )
        .bind::<BigInt, _>(limit)
        .load(&mut conn)
        .await
        .map_err(q)?;
        Ok(rows.into_iter().map(|r| r.id).collect())
    }
}
