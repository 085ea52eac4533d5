//! [`InboundEvents`] on the `inbound_events` table.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::dsl::now;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Integer, Nullable};
use diesel::sql_types::{Jsonb, Text};
use diesel_async::{AsyncConnection as _, RunQueryDsl};
use infragpt_actors::EventSource;
use infragpt_actors::audit::AuditEntry;
use infragpt_actors::inbox::{
    Claim, EventPayload, EventRowId, EventStatus, InboundEvent, InboundEvents, NewInboundEvent,
    Partition, RecordOutcome, Recording, RoutingKey, StoreError,
};
use infragpt_actors::partitions::ReplicaId;

use super::audit::insert_entry;
use super::prepared::PreparedExt;
use super::schema::inbound_events;
use super::{Conn, Pool, conn};
use crate::db::committed::CommittedExt as _;

/// Statuses a handler may still claim.
const CLAIMABLE: [&str; 2] = ["pending", "processing"];

// Lookups of one event by id: the statements never name its status as a literal in
// their `WHERE`. A literal status lets the plan use a partial index of unfinished events
// (`status IN ('pending', 'processing')`), and the generic plan a connection keeps, made
// on a nearly empty table, read `inbound_events_unfinished_key_idx` by its last column
// (`id`): every unfinished event at every call. A bound status, or the status checked in
// the select list of a lookup by id, leaves only the primary key to probe (BENCHMARKS.md,
// "Plans made on empty tables").

/// The durable inbox in PostgreSQL.
#[derive(Clone)]
pub struct PgInbox {
    pool: Pool,
    /// Where records and batched done marks are written: the pool, or connections of their
    /// own (see [`PgInbox::with_record_pool`]).
    record_pool: Pool,
    /// The replica whose partition leases fence claims and marks (`None`: a process alone on
    /// the inbox, or a tool).
    replica: Option<String>,
    /// How much lease [`InboundEvents::confirm`] wants left, in seconds.
    confirm_margin_secs: f64,
}

/// The fence of claims and marks: the event's partition is leased to the replica bound as
/// `$owner`, with more than `$margin` seconds left (always true for an unfenced inbox, which
/// binds a null owner). A correlated lookup by primary key in a 64-row table.
pub(super) fn fence(owner: &str, margin: &str) -> String {
    format!(
        "({owner}::text IS NULL OR EXISTS (SELECT 1 FROM cluster_partitions cp \
         WHERE cp.partition = inbound_events.partition AND cp.owner = {owner} \
         AND cp.lease_until > now() + make_interval(secs => {margin})))"
    )
}

/// True while event `id` is processing under `attempt` and, for a replica, its partition is
/// leased to `owner` with `margin` seconds left; NULL for an unknown event. The event is
/// found by primary key and its status checked in the select list (see "Lookups of one
/// event by id" above).
pub(super) fn claim_held(id: &str, attempt: &str, owner: &str, margin: &str) -> String {
    format!(
        "(SELECT status = 'processing' AND attempts = {attempt} AND {} \
         FROM inbound_events WHERE id = {id})",
        fence(owner, margin)
    )
}

/// The columns of [`EventRow`], for statements written in SQL.
const EVENT_COLUMNS: &str = "id, source, source_id, routing_key, kind, payload, received_at, \
     status, attempts, last_error, processed_at, partition";

impl std::fmt::Debug for PgInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgInbox")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl PgInbox {
    /// An inbox on `pool` for a process alone on it (tests, tools): claims are not fenced by
    /// partition leases; marks still need their claim.
    pub fn new(pool: Pool) -> Self {
        Self {
            record_pool: pool.clone(),
            pool,
            replica: None,
            confirm_margin_secs: 0.0,
        }
    }

    /// An inbox for `replica` among others: it claims and marks only events of partitions
    /// the replica holds a current lease on, and [`InboundEvents::confirm`] wants at least
    /// `margin` of lease left.
    pub fn fenced(pool: Pool, replica: &ReplicaId, margin: std::time::Duration) -> Self {
        Self {
            record_pool: pool.clone(),
            pool,
            replica: Some(replica.0.clone()),
            confirm_margin_secs: margin.as_secs_f64(),
        }
    }

    /// Records and batched done marks go through `pool` (the group-commit writers' own
    /// connections), so an acknowledgement, or a worker's last step, never waits for a
    /// connection behind the turns' statements.
    pub fn with_record_pool(mut self, pool: Pool) -> Self {
        self.record_pool = pool;
        self
    }

    /// Moves one claimed event to `status` (with `last_error` when given; stamping the finish
    /// time when `finished`), only under its claim and, for a replica, its lease. The
    /// status it must have is a bind (see "Lookups of one event by id" above).
    async fn set_claimed(
        &self,
        claim: Claim,
        status: EventStatus,
        error: Option<&str>,
        finished: bool,
    ) -> Result<(), StoreError> {
        let error = error.map(error_text);
        let mut conn = conn(&self.pool).await?;
        let changed = diesel::sql_query(format!(
            "UPDATE inbound_events SET status = $3, last_error = COALESCE($4, last_error), \
             processed_at = CASE WHEN $5 THEN now() ELSE processed_at END, updated_at = now() \
             WHERE id = $1 AND status = $7 AND attempts = $2 AND {}",
            fence("$6", "0")
        ))
        .bind::<BigInt, _>(claim.id.0)
        .bind::<Integer, _>(claim.attempt)
        .bind::<Text, _>(status.as_str())
        .bind::<Nullable<Text>, _>(error.as_deref())
        .bind::<diesel::sql_types::Bool, _>(finished)
        .bind::<Nullable<Text>, _>(self.replica.as_deref())
        .bind::<Text, _>(EventStatus::Processing.as_str())
        .prepared()
        .execute(&mut conn)
        .await
        .map_err(unavailable)?;
        if changed == 0 {
            return Err(StoreError::Fenced(claim.id));
        }
        tracing::debug!(event_id = %claim.id, status = status.as_str(), "inbound event marked");
        Ok(())
    }
}

/// Why a claim changed nothing.
enum Refusal {
    /// Finished or unknown.
    Finished,
    /// Older events of its key are unfinished (oldest first, at most 100).
    Behind(Vec<EventRowId>),
    /// Unfinished, nothing older, so its partition is not leased to this replica.
    Fenced,
}

async fn claim_refusal(conn: &mut Conn, id: EventRowId) -> Result<Refusal, StoreError> {
    #[derive(QueryableByName)]
    struct Older {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let status: Option<String> = inbound_events::table
        .find(id.0)
        .select(inbound_events::status)
        .first(conn)
        .await
        .optional()
        .map_err(unavailable)?;
    if !status.is_some_and(|s| CLAIMABLE.contains(&s.as_str())) {
        return Ok(Refusal::Finished);
    }
    let older: Vec<Older> = diesel::sql_query(
        "SELECT o.id FROM inbound_events e JOIN inbound_events o \
           ON o.routing_key = e.routing_key AND o.source = e.source AND o.id < e.id \
         WHERE e.id = $1 AND o.status IN ('pending', 'processing') \
         ORDER BY o.id LIMIT 100",
    )
    .bind::<BigInt, _>(id.0)
    .prepared()
    .load(conn)
    .await
    .map_err(unavailable)?;
    if older.is_empty() {
        Ok(Refusal::Fenced)
    } else {
        Ok(Refusal::Behind(
            older.into_iter().map(|o| EventRowId(o.id)).collect(),
        ))
    }
}

/// One `inbound_events` row.
#[derive(Debug, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = inbound_events, check_for_backend(diesel::pg::Pg))]
struct EventRow {
    id: i64,
    source: String,
    source_id: String,
    routing_key: String,
    kind: String,
    payload: serde_json::Value,
    received_at: DateTime<Utc>,
    status: String,
    attempts: i32,
    last_error: Option<String>,
    processed_at: Option<DateTime<Utc>>,
    partition: i16,
}

impl TryFrom<EventRow> for InboundEvent {
    type Error = StoreError;
    fn try_from(row: EventRow) -> Result<Self, StoreError> {
        Ok(InboundEvent {
            id: EventRowId(row.id),
            source: infragpt_actors::sources::parse(&row.source)?,
            source_id: row.source_id,
            routing_key: RoutingKey(row.routing_key),
            partition: Partition::from_stored(row.partition)?,
            kind: row.kind,
            payload: row.payload,
            status: row.status.parse()?,
            attempts: row.attempts,
            last_error: row.last_error,
            received_at: row.received_at,
            processed_at: row.processed_at,
        })
    }
}

/// The port's error: values that do not read back are `Corrupt`; data the database refuses
/// is `Rejected` (permanent, never an outage); everything else is `Unavailable` (the caller
/// retries later).
impl From<super::StoreError> for StoreError {
    fn from(e: super::StoreError) -> Self {
        match e {
            super::StoreError::Corrupt { .. }
            | super::StoreError::Query(diesel::result::Error::DeserializationError(_)) => {
                StoreError::Corrupt(Box::new(e))
            }
            super::StoreError::Data(_) => StoreError::Rejected(Box::new(e)),
            other => StoreError::Unavailable(Box::new(other)),
        }
    }
}

/// Statements moving more than this leave their connection's buffers grown: tokio-postgres
/// keeps the capacity of its read and write buffers for the life of the connection, so a pool
/// that carried a few 20 MB deliveries would hold that memory per connection for good. Such a
/// connection is closed instead of being returned to the pool.
const LARGE_STATEMENT_BYTES: usize = 1 << 20;

/// Returns `conn` to the pool, or closes it when it carried a large statement (see
/// [`LARGE_STATEMENT_BYTES`]).
fn release(conn: Conn, large: bool) {
    if large {
        drop(deadpool::managed::Object::take(conn));
        tracing::debug!("a connection that carried a large payload was closed");
    }
}

/// True when `value` as JSON text is at least `limit` bytes (about; stops counting there).
fn json_len_at_least(value: &serde_json::Value, limit: usize) -> bool {
    use serde_json::Value;
    fn walk(value: &Value, total: &mut usize, limit: usize) -> bool {
        match value {
            Value::String(s) => *total += s.len() + 2,
            Value::Array(items) => {
                *total += 2;
                for item in items {
                    if walk(item, total, limit) {
                        return true;
                    }
                }
            }
            Value::Object(map) => {
                *total += 2;
                for (key, item) in map {
                    *total += key.len() + 3;
                    if walk(item, total, limit) {
                        return true;
                    }
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => *total += 4,
        }
        *total >= limit
    }
    let mut total = 0;
    walk(value, &mut total, limit)
}

/// What PostgreSQL text and jsonb cannot hold (U+0000) becomes U+FFFD.
const NUL_REPLACEMENT: &str = "\u{FFFD}";

/// An error for `last_error`: handler errors may quote payload text, NULs included.
fn error_text(error: &str) -> std::borrow::Cow<'_, str> {
    if error.contains('\0') {
        std::borrow::Cow::Owned(error.replace('\0', NUL_REPLACEMENT))
    } else {
        std::borrow::Cow::Borrowed(error)
    }
}

/// `text` without NUL characters (PostgreSQL text cannot hold them).
fn text_without_nul(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', NUL_REPLACEMENT)
    } else {
        text
    }
}

/// True when a string or key anywhere in `value` holds a NUL.
fn holds_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// `value` with every NUL in its strings and keys replaced (see [`NUL_REPLACEMENT`]).
fn sanitize(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(text_without_nul(s)),
        Value::Array(items) => Value::Array(items.into_iter().map(sanitize).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (text_without_nul(k), sanitize(v)))
                .collect(),
        ),
        other => other,
    }
}

/// A payload ready for the insert: the JSON text PostgreSQL parses into `payload`, the body as
/// received when that text had to differ from it, and the value to return (when the caller
/// gave one).
struct StoredPayload {
    json: String,
    raw_body: Option<String>,
    value: serde_json::Value,
}

impl StoredPayload {
    /// Parsed payloads are serialized once; raw bodies go as they are unless they hold an
    /// escaped NUL (`\u0000`), which jsonb refuses: those are parsed, cleaned and kept
    /// verbatim in `raw_body`. Sanitizing here covers every source (webhooks and Socket Mode).
    fn prepare(payload: EventPayload) -> Result<Self, StoreError> {
        let rejected = |e: serde_json::Error| StoreError::Rejected(Box::new(e));
        match payload {
            EventPayload::Json(value) => {
                if holds_nul(&value) {
                    // No bytes were received for it (Socket Mode frames are parsed by the
                    // transport): the original value's text is the lossless copy.
                    let raw_body = serde_json::to_string(&value).map_err(rejected)?;
                    let value = sanitize(value);
                    let json = serde_json::to_string(&value).map_err(rejected)?;
                    Ok(Self {
                        json,
                        raw_body: Some(raw_body),
                        value,
                    })
                } else {
                    let json = serde_json::to_string(&value).map_err(rejected)?;
                    Ok(Self {
                        json,
                        raw_body: None,
                        value,
                    })
                }
            }
            EventPayload::Raw(text) if text.contains("\\u0000") => {
                let value: serde_json::Value = serde_json::from_str(&text).map_err(rejected)?;
                if !holds_nul(&value) {
                    // An escaped backslash before "u0000": nothing to clean.
                    return Ok(Self {
                        json: text,
                        raw_body: None,
                        value: serde_json::Value::Null,
                    });
                }
                let json = serde_json::to_string(&sanitize(value)).map_err(rejected)?;
                Ok(Self {
                    json,
                    raw_body: Some(text),
                    value: serde_json::Value::Null,
                })
            }
            EventPayload::Raw(text) => Ok(Self {
                json: text,
                raw_body: None,
                value: serde_json::Value::Null,
            }),
        }
    }
}

/// The entry of an operator's action on a dead letter (no organization: the inbox does not
/// know one).
fn admin_entry(action: &str, row: &EventRow) -> AuditEntry {
    AuditEntry {
        organization_id: None,
        actor: "admin".to_owned(),
        action: action.to_owned(),
        target: Some(format!("inbound_event:{}", row.id)),
        details: serde_json::json!({
            "source": row.source,
            "source_id": row.source_id,
            "kind": row.kind,
        }),
    }
}

fn unavailable(e: diesel::result::Error) -> StoreError {
    super::StoreError::from(e).into()
}

fn check_page(limit: i64, offset: i64) -> Result<(), StoreError> {
    if limit < 0 || offset < 0 {
        return Err(StoreError::Unavailable(
            format!("invalid page (limit {limit}, offset {offset}): both must be zero or more")
                .into(),
        ));
    }
    Ok(())
}

fn convert_all(rows: Vec<EventRow>) -> Result<Vec<InboundEvent>, StoreError> {
    rows.into_iter().map(InboundEvent::try_from).collect()
}

/// The batch insert: one row per element of the arrays, in their order. A row whose claim
/// flag (`$8`) is set is recorded claimed (`processing`, attempt 1) when nothing older of its
/// source and key is unfinished and, for a replica (`$9`), its partition is leased to it (as
/// [`PgInbox::claim`] would claim it); the others are recorded `pending`. An older event
/// `processing` under the row's `(id, attempt)` of `$10`/`$11` ([`Recording::behind`]: the
/// one this process's worker for the key is handling) does not count. The checks are
/// `LATERAL … LIMIT 1` so that each row probes the unfinished-key index: as a plain
/// `NOT EXISTS` the generic plan hashes every unfinished event, which a backlog makes slow.
const CLAIMING_INSERT: &str = "\
INSERT INTO inbound_events
    (source, source_id, routing_key, partition, kind, payload, raw_body, status, attempts)
SELECT t.s, t.i, t.r, t.p, t.k, CAST(t.j AS jsonb), t.b,
    CASE WHEN t.c AND older.behind IS NULL AND ($9::text IS NULL OR lease.held)
         THEN 'processing' ELSE 'pending' END,
    CASE WHEN t.c AND older.behind IS NULL AND ($9::text IS NULL OR lease.held) THEN 1 ELSE 0 END
FROM unnest($1::text[], $2::text[], $3::text[], $4::int2[], $5::text[], $6::text[],
            $7::text[], $8::bool[], $10::int8[], $11::int4[])
    WITH ORDINALITY AS t(s, i, r, p, k, j, b, c, bi, ba, n)
LEFT JOIN LATERAL (SELECT true AS behind FROM inbound_events o
    WHERE t.c AND o.routing_key = t.r AND o.source = t.s AND o.status IN ('pending', 'processing')
      AND (o.id = t.bi AND o.status = 'processing' AND o.attempts = t.ba) IS NOT TRUE
    LIMIT 1) AS older ON true
LEFT JOIN LATERAL (SELECT true AS held FROM cluster_partitions cp
    WHERE t.c AND $9::text IS NOT NULL AND cp.partition = t.p AND cp.owner = $9
      AND cp.lease_until > now()
    LIMIT 1) AS lease ON true
ORDER BY t.n
ON CONFLICT (source, source_id) DO NOTHING
RETURNING id, source, source_id, received_at, status, attempts";

/// An event ready to insert: its texts without NUL, its partition, its payload serialized
/// once.
struct NewRow {
    source: EventSource,
    source_id: String,
    routing_key: RoutingKey,
    partition: Partition,
    kind: String,
    payload: StoredPayload,
    /// Claim it in the same insert when it can be ([`Recording::claim`]): asked for, and
    /// `payload.value` is the payload as stored.
    claim: bool,
    /// The older event's claim that does not stop the claim ([`Recording::behind`]).
    behind: Option<Claim>,
}

impl NewRow {
    fn prepare(recording: Recording) -> Result<Self, StoreError> {
        let Recording {
            event:
                NewInboundEvent {
                    source,
                    source_id,
                    routing_key,
                    kind,
                    payload,
                },
            claim,
            behind,
        } = recording;
        // Text columns cannot hold NUL either (a signed payload's `type` or `action` can).
        let routing_key = RoutingKey(text_without_nul(routing_key.0));
        let mut payload = StoredPayload::prepare(payload)?;
        // A claimed event goes to its worker with its payload. A raw body is parsed for it
        // here instead of from the stored jsonb by the claim; a large one, or one whose
        // stored value differs from its text, is left to the claim.
        let claim = claim
            && payload.json.len() < LARGE_STATEMENT_BYTES
            && (!payload.value.is_null()
                || (payload.raw_body.is_none()
                    && serde_json::from_str(&payload.json)
                        .map(|value| payload.value = value)
                        .is_ok()));
        Ok(Self {
            source,
            source_id: text_without_nul(source_id),
            partition: Partition::of(&routing_key),
            routing_key,
            kind: text_without_nul(kind),
            payload,
            claim,
            behind,
        })
    }

    fn large(&self) -> bool {
        self.payload.json.len() >= LARGE_STATEMENT_BYTES
    }

    /// The event as stored under `id`.
    fn recorded(
        self,
        id: i64,
        received_at: DateTime<Utc>,
        status: &str,
        attempts: i32,
    ) -> Result<InboundEvent, StoreError> {
        tracing::debug!(
            source = self.source.as_str(),
            source_id = %self.source_id,
            event_id = id,
            raw_body_kept = self.payload.raw_body.is_some(),
            "inbound event recorded"
        );
        Ok(InboundEvent {
            id: EventRowId(id),
            source: self.source,
            source_id: self.source_id,
            routing_key: self.routing_key,
            partition: self.partition,
            kind: self.kind,
            payload: self.payload.value,
            status: status.parse()?,
            attempts,
            last_error: None,
            received_at,
            processed_at: None,
        })
    }
}

/// A row a batch insert wrote.
#[derive(QueryableByName)]
struct InsertedRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    source: String,
    #[diesel(sql_type = Text)]
    source_id: String,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    received_at: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
}

impl PgInbox {
    /// Records one event with its own insert (and, when it existed, a lookup).
    async fn insert_one(&self, row: NewRow) -> Result<RecordOutcome, StoreError> {
        let mut conn = conn(&self.record_pool).await?;
        // The payload goes as text and PostgreSQL builds the jsonb (no second copy as a bound
        // jsonb value); only the columns the outcome needs come back, never the payload.
        let inserted: Option<(i64, DateTime<Utc>, String, i32)> =
            diesel::insert_into(inbound_events::table)
                .values((
                    inbound_events::source.eq(row.source.as_str()),
                    inbound_events::source_id.eq(&row.source_id),
                    inbound_events::routing_key.eq(&row.routing_key.0),
                    inbound_events::partition.eq(row.partition.stored()),
                    inbound_events::kind.eq(&row.kind),
                    inbound_events::payload.eq(diesel::dsl::sql::<Jsonb>("CAST(")
                        .bind::<Text, _>(row.payload.json.as_str())
                        .sql(" AS jsonb)")),
                    inbound_events::raw_body.eq(row.payload.raw_body.as_deref()),
                ))
                .on_conflict((inbound_events::source, inbound_events::source_id))
                .do_nothing()
                .returning((
                    inbound_events::id,
                    inbound_events::received_at,
                    inbound_events::status,
                    inbound_events::attempts,
                ))
                // Its text is fixed (the `CAST` literal makes diesel assume otherwise).
                .prepared()
                .get_committed(&mut conn)
                .await
                .optional()
                .map_err(unavailable)?;
        let large = row.large();
        if let Some((id, received_at, status, attempts)) = inserted {
            release(conn, large);
            return row
                .recorded(id, received_at, &status, attempts)
                .map(RecordOutcome::Recorded);
        }
        let existing: EventRow = inbound_events::table
            .filter(inbound_events::source.eq(row.source.as_str()))
            .filter(inbound_events::source_id.eq(&row.source_id))
            .select(EventRow::as_select())
            .first(&mut conn)
            .await
            .map_err(unavailable)?;
        release(conn, large);
        tracing::debug!(
            source = row.source.as_str(),
            source_id = %row.source_id,
            event_id = existing.id,
            "duplicate inbound event ignored"
        );
        Ok(RecordOutcome::Duplicate(existing.try_into()?))
    }

    /// Records `rows` (slot in the caller's batch, row) with one insert, filling their
    /// slots of `outcomes`. A row repeating an earlier one's `(source, source_id)` is that
    /// row's duplicate.
    async fn insert_many(
        &self,
        rows: Vec<(usize, NewRow)>,
        outcomes: &mut [Option<Result<RecordOutcome, StoreError>>],
    ) {
        if rows.len() <= 1 && !rows.iter().any(|(_, row)| row.claim) {
            for (slot, row) in rows {
                outcomes[slot] = Some(self.insert_one(row).await);
            }
            return;
        }
        let mut first_of: HashMap<(EventSource, String), usize> = HashMap::new();
        let mut unique: Vec<(usize, NewRow)> = Vec::with_capacity(rows.len());
        let mut twins: Vec<(usize, usize)> = Vec::new();
        for (slot, row) in rows {
            match first_of.entry((row.source, row.source_id.clone())) {
                std::collections::hash_map::Entry::Occupied(first) => {
                    twins.push((slot, *first.get()));
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(slot);
                    unique.push((slot, row));
                }
            }
        }
        match self.insert_unique(unique).await {
            Ok(done) => {
                for (slot, outcome) in done {
                    outcomes[slot] = Some(outcome);
                }
            }
            Err(BatchFailure::Refused(unique, error)) => {
                tracing::warn!(events = unique.len(), %error, "a batch of inbound events was refused; recording them one by one");
                for (slot, row) in unique {
                    outcomes[slot] = Some(self.insert_one(row).await);
                }
            }
            Err(BatchFailure::Unavailable(slots, error)) => {
                for slot in slots {
                    outcomes[slot] = Some(Err(StoreError::Unavailable(error.clone().into())));
                }
            }
        }
        for (slot, first) in twins {
            outcomes[slot] = Some(match &outcomes[first] {
                Some(Ok(outcome)) => Ok(RecordOutcome::Duplicate(outcome.event().clone())),
                Some(Err(e)) => Err(StoreError::Unavailable(e.to_string().into())),
                None => Err(StoreError::Unavailable(
                    "the first copy of a repeated event has no outcome".into(),
                )),
            });
        }
    }

    /// The batch insert of rows with distinct `(source, source_id)`, and the lookup of the
    /// ones that existed.
    async fn insert_unique(
        &self,
        rows: Vec<(usize, NewRow)>,
    ) -> Result<Vec<(usize, Result<RecordOutcome, StoreError>)>, BatchFailure> {
        use diesel::sql_types::{Array, SmallInt};
        let lost = |rows: &[(usize, NewRow)], e: &dyn std::fmt::Display| {
            BatchFailure::Unavailable(rows.iter().map(|(s, _)| *s).collect(), e.to_string())
        };
        let mut conn = match conn(&self.record_pool).await {
            Ok(c) => c,
            Err(e) => return Err(lost(&rows, &e)),
        };
        let sources: Vec<&str> = rows.iter().map(|(_, r)| r.source.as_str()).collect();
        let source_ids: Vec<&str> = rows.iter().map(|(_, r)| r.source_id.as_str()).collect();
        // Only the first row of a key in the statement may be claimed: the check for older
        // unfinished events does not see the rows the statement itself inserts.
        let mut keys_seen = std::collections::HashSet::new();
        let claims: Vec<bool> = rows
            .iter()
            .map(|(_, r)| keys_seen.insert((r.source, r.routing_key.0.as_str())) && r.claim)
            .collect();
        let inserted: Result<Vec<InsertedRow>, _> = diesel::sql_query(CLAIMING_INSERT)
            .bind::<Array<Text>, _>(&sources)
            .bind::<Array<Text>, _>(&source_ids)
            .bind::<Array<Text>, _>(
                rows.iter()
                    .map(|(_, r)| r.routing_key.0.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind::<Array<SmallInt>, _>(
                rows.iter()
                    .map(|(_, r)| r.partition.stored())
                    .collect::<Vec<_>>(),
            )
            .bind::<Array<Text>, _>(
                rows.iter()
                    .map(|(_, r)| r.kind.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind::<Array<Text>, _>(
                rows.iter()
                    .map(|(_, r)| r.payload.json.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind::<Array<Nullable<Text>>, _>(
                rows.iter()
                    .map(|(_, r)| r.payload.raw_body.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind::<Array<diesel::sql_types::Bool>, _>(&claims)
            .bind::<Nullable<Text>, _>(self.replica.as_deref())
            .bind::<Array<Nullable<BigInt>>, _>(
                rows.iter()
                    .map(|(_, r)| r.behind.map(|b| b.id.0))
                    .collect::<Vec<_>>(),
            )
            .bind::<Array<Nullable<Integer>>, _>(
                rows.iter()
                    .map(|(_, r)| r.behind.map(|b| b.attempt))
                    .collect::<Vec<_>>(),
            )
            .prepared()
            .load(&mut conn)
            .await;
        let inserted = match inserted {
            Ok(rows) => rows,
            // The server refused the statement (a payload that is not JSON, say): the
            // connection is fine and one of the events is bad.
            Err(e @ diesel::result::Error::DatabaseError(..)) => {
                return Err(BatchFailure::Refused(rows, e.to_string()));
            }
            Err(e) => return Err(lost(&rows, &e)),
        };
        let mut by_key: HashMap<(String, String), InsertedRow> = inserted
            .into_iter()
            .map(|r| ((r.source.clone(), r.source_id.clone()), r))
            .collect();
        let existed: Vec<usize> = rows
            .iter()
            .enumerate()
            .filter(|(_, (_, r))| {
                !by_key.contains_key(&(r.source.as_str().to_owned(), r.source_id.clone()))
            })
            .map(|(i, _)| i)
            .collect();
        let mut existing: HashMap<(String, String), EventRow> = HashMap::new();
        if !existed.is_empty() {
            let found: Result<Vec<EventRow>, _> = diesel::sql_query(format!(
                "SELECT {EVENT_COLUMNS} FROM inbound_events \
                 WHERE (source, source_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
            ))
            .bind::<Array<Text>, _>(existed.iter().map(|&i| sources[i]).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(existed.iter().map(|&i| source_ids[i]).collect::<Vec<_>>())
            .prepared()
            .load(&mut conn)
            .await;
            match found {
                Ok(found) => {
                    existing = found
                        .into_iter()
                        .map(|r| ((r.source.clone(), r.source_id.clone()), r))
                        .collect();
                }
                Err(e) => return Err(lost(&rows, &e)),
            }
        }
        Ok(rows
            .into_iter()
            .map(|(slot, row)| {
                let key = (row.source.as_str().to_owned(), row.source_id.clone());
                let outcome = if let Some(r) = by_key.remove(&key) {
                    row.recorded(r.id, r.received_at, &r.status, r.attempts)
                        .map(RecordOutcome::Recorded)
                } else if let Some(e) = existing.remove(&key) {
                    tracing::debug!(
                        source = row.source.as_str(),
                        source_id = %row.source_id,
                        event_id = e.id,
                        "duplicate inbound event ignored"
                    );
                    InboundEvent::try_from(e).map(RecordOutcome::Duplicate)
                } else {
                    // Neither inserted nor found: deleted between the two statements.
                    Err(StoreError::Unavailable(
                        format!(
                            "inbound event {} vanished while it was recorded",
                            row.source_id
                        )
                        .into(),
                    ))
                };
                (slot, outcome)
            })
            .collect())
    }
}

/// Why a batch insert wrote nothing.
enum BatchFailure {
    /// The server refused the statement: the rows, to record one by one.
    Refused(Vec<(usize, NewRow)>, String),
    /// The connection failed: the slots, all failed.
    Unavailable(Vec<usize>, String),
}

#[async_trait]
impl InboundEvents for PgInbox {
    async fn record(&self, event: NewInboundEvent) -> Result<RecordOutcome, StoreError> {
        self.insert_one(NewRow::prepare(event.into())?).await
    }

    /// One `INSERT … SELECT … FROM unnest(…)` for the events whose payloads are below
    /// [`LARGE_STATEMENT_BYTES`] (a large one goes alone, between the batches before and
    /// after it, so the ids still follow the order of `events`; a run of payloads that adds
    /// up to that size is cut there), then one lookup of those that existed. A statement the server refuses (a bad payload) is retried event by
    /// event, so one bad event fails alone; a lost connection fails them all.
    async fn record_batch(&self, events: Vec<Recording>) -> Vec<Result<RecordOutcome, StoreError>> {
        let mut outcomes: Vec<Option<Result<RecordOutcome, StoreError>>> =
            events.iter().map(|_| None).collect();
        let mut batch: Vec<(usize, NewRow)> = Vec::new();
        let mut batch_bytes = 0;
        for (slot, event) in events.into_iter().enumerate() {
            match NewRow::prepare(event) {
                Err(e) => outcomes[slot] = Some(Err(e)),
                Ok(row) if row.large() => {
                    self.insert_many(std::mem::take(&mut batch), &mut outcomes)
                        .await;
                    batch_bytes = 0;
                    outcomes[slot] = Some(self.insert_one(row).await);
                }
                Ok(row) => {
                    batch_bytes += row.payload.json.len();
                    batch.push((slot, row));
                    // Many mid-sized payloads (GitHub pushes) make one statement per
                    // LARGE_STATEMENT_BYTES, not one of hundreds of megabytes.
                    if batch_bytes >= LARGE_STATEMENT_BYTES {
                        self.insert_many(std::mem::take(&mut batch), &mut outcomes)
                            .await;
                        batch_bytes = 0;
                    }
                }
            }
        }
        self.insert_many(batch, &mut outcomes).await;
        outcomes
            .into_iter()
            .map(|o| o.expect("every event of the batch has an outcome"))
            .collect()
    }

    async fn claim(&self, id: EventRowId) -> Result<Option<InboundEvent>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        // Per-key order is decided here, not by the dispatch path: an event is claimed only
        // when no older event of its key is unfinished (`inbound_events_unfinished_key_idx`).
        // The event's own statuses are a bind ("Lookups of one event by id" above).
        let row: Option<EventRow> = diesel::sql_query(format!(
            "UPDATE inbound_events SET status = 'processing', attempts = attempts + 1, \
             updated_at = now() \
             WHERE id = $1 AND status = ANY($3::text[]) AND {} \
             AND NOT EXISTS (SELECT 1 FROM inbound_events o \
               WHERE o.routing_key = inbound_events.routing_key \
                 AND o.source = inbound_events.source AND o.id < inbound_events.id \
                 AND o.status IN ('pending', 'processing')) \
             RETURNING {EVENT_COLUMNS}",
            fence("$2", "0")
        ))
        .bind::<BigInt, _>(id.0)
        .bind::<Nullable<Text>, _>(self.replica.as_deref())
        .bind::<diesel::sql_types::Array<Text>, _>(&CLAIMABLE[..])
        .prepared()
        .get_committed(&mut conn)
        .await
        .optional()
        .map_err(unavailable)?;
        let Some(row) = row else {
            let refusal = claim_refusal(&mut conn, id).await;
            release(conn, false);
            return match refusal? {
                Refusal::Finished => Ok(None),
                Refusal::Behind(older) => Err(StoreError::Behind { id, older }),
                Refusal::Fenced => Err(StoreError::Fenced(id)),
            };
        };
        let large = json_len_at_least(&row.payload, LARGE_STATEMENT_BYTES);
        release(conn, large);
        InboundEvent::try_from(row).map(Some)
    }

    async fn confirm(&self, claim: Claim) -> Result<(), StoreError> {
        #[derive(QueryableByName)]
        struct Held {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            held: bool,
        }
        let mut conn = conn(&self.pool).await?;
        let row: Held = diesel::sql_query(format!(
            "SELECT COALESCE({}, false) AS held",
            claim_held("$1", "$2", "$3", "$4")
        ))
        .bind::<BigInt, _>(claim.id.0)
        .bind::<Integer, _>(claim.attempt)
        .bind::<Nullable<Text>, _>(self.replica.as_deref())
        .bind::<Double, _>(self.confirm_margin_secs)
        .prepared()
        .get_committed(&mut conn)
        .await
        .map_err(unavailable)?;
        if row.held {
            Ok(())
        } else {
            Err(StoreError::Fenced(claim.id))
        }
    }

    async fn mark_done(&self, claim: Claim) -> Result<(), StoreError> {
        self.set_claimed(claim, EventStatus::Done, None, true).await
    }

    /// One `UPDATE … FROM unnest(…)` on the writer's connections (the done marks' writer
    /// is the only caller): each row changes only under its own claim and, for a replica,
    /// its lease; a claim whose row did not change is `Fenced`, like a single mark's.
    /// `id = ANY($1)` lets the plan probe the rows by id: without it, the generic plan
    /// these connections keep read every unfinished row (and the finished ones' index
    /// entries not yet vacuumed) through a bitmap scan of the unfinished partial index.
    async fn mark_done_batch(&self, claims: Vec<Claim>) -> Vec<Result<(), StoreError>> {
        #[derive(QueryableByName)]
        struct Marked {
            #[diesel(sql_type = BigInt)]
            id: i64,
        }
        let ids: Vec<i64> = claims.iter().map(|c| c.id.0).collect();
        let attempts: Vec<i32> = claims.iter().map(|c| c.attempt).collect();
        let marked = async {
            let mut conn = conn(&self.record_pool).await?;
            diesel::sql_query(format!(
                "UPDATE inbound_events SET status = 'done', processed_at = now(), \
                 updated_at = now() \
                 FROM unnest($1::bigint[], $2::int[]) AS c(id, attempt) \
                 WHERE inbound_events.id = ANY($1::bigint[]) AND inbound_events.id = c.id \
                 AND inbound_events.status = 'processing' \
                 AND inbound_events.attempts = c.attempt AND {} \
                 RETURNING inbound_events.id",
                fence("$3", "0")
            ))
            .bind::<diesel::sql_types::Array<BigInt>, _>(&ids)
            .bind::<diesel::sql_types::Array<Integer>, _>(&attempts)
            .bind::<Nullable<Text>, _>(self.replica.as_deref())
            .prepared()
            .load::<Marked>(&mut conn)
            .await
            .map_err(unavailable)
        }
        .await;
        match marked {
            Ok(rows) => {
                let done: std::collections::HashSet<i64> = rows.into_iter().map(|r| r.id).collect();
                tracing::debug!(
                    events = claims.len(),
                    marked = done.len(),
                    "inbound events marked done in one batch"
                );
                claims
                    .iter()
                    .map(|c| {
                        if done.contains(&c.id.0) {
                            Ok(())
                        } else {
                            Err(StoreError::Fenced(c.id))
                        }
                    })
                    .collect()
            }
            Err(e) => {
                let error = e.to_string();
                claims
                    .iter()
                    .map(|_| Err(StoreError::Unavailable(error.clone().into())))
                    .collect()
            }
        }
    }

    async fn mark_ignored(&self, claim: Claim, reason: &str) -> Result<(), StoreError> {
        self.set_claimed(claim, EventStatus::Ignored, Some(reason), true)
            .await
    }

    async fn mark_retry(&self, claim: Claim, error: &str) -> Result<(), StoreError> {
        self.set_claimed(claim, EventStatus::Pending, Some(error), false)
            .await
    }

    async fn mark_failed(&self, claim: Claim, error: &str) -> Result<(), StoreError> {
        self.set_claimed(claim, EventStatus::Failed, Some(error), true)
            .await
    }

    async fn list_unfinished(
        &self,
        after: Option<EventRowId>,
        limit: i64,
        partitions: Option<&[Partition]>,
    ) -> Result<Vec<InboundEvent>, StoreError> {
        check_page(limit, 0)?;
        let mut conn = conn(&self.pool).await?;
        let mut query = inbound_events::table
            .filter(inbound_events::status.eq_any(CLAIMABLE))
            .order(inbound_events::id.asc())
            .limit(limit)
            .select(EventRow::as_select())
            .into_boxed();
        if let Some(after) = after {
            query = query.filter(inbound_events::id.gt(after.0));
        }
        if let Some(partitions) = partitions {
            let partitions: Vec<i16> = partitions.iter().map(|p| p.stored()).collect();
            query = query.filter(inbound_events::partition.eq_any(partitions));
        }
        let rows = query.load(&mut conn).await.map_err(unavailable)?;
        convert_all(rows)
    }

    async fn list_failed(&self, limit: i64, offset: i64) -> Result<Vec<InboundEvent>, StoreError> {
        check_page(limit, offset)?;
        let mut conn = conn(&self.pool).await?;
        let rows = inbound_events::table
            .filter(inbound_events::status.eq(EventStatus::Failed.as_str()))
            .order(inbound_events::id.desc())
            .limit(limit)
            .offset(offset)
            .select(EventRow::as_select())
            .load(&mut conn)
            .await
            .map_err(unavailable)?;
        convert_all(rows)
    }

    async fn get(&self, id: EventRowId) -> Result<Option<InboundEvent>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let row = inbound_events::table
            .find(id.0)
            .select(EventRow::as_select())
            .first(&mut conn)
            .await
            .optional()
            .map_err(unavailable)?;
        row.map(InboundEvent::try_from).transpose()
    }

    // Requeueing and discarding a dead letter are the operator's actions (the admin API is
    // their only caller): each writes its entry (actor `admin`) in its own transaction, so
    // the action and its record commit together; an event that is not a dead letter is left
    // alone and records nothing.
    async fn requeue(&self, id: EventRowId) -> Result<Option<InboundEvent>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let row: Option<EventRow> = conn
            .transaction::<_, diesel::result::Error, _>(async move |conn| {
                let row: Option<EventRow> = diesel::update(
                    inbound_events::table
                        .find(id.0)
                        .filter(inbound_events::status.eq(EventStatus::Failed.as_str())),
                )
                .set((
                    inbound_events::status.eq(EventStatus::Pending.as_str()),
                    inbound_events::attempts.eq(0),
                    inbound_events::processed_at.eq(None::<DateTime<Utc>>),
                    inbound_events::updated_at.eq(now),
                ))
                .returning(EventRow::as_returning())
                .get_committed(conn)
                .await
                .optional()?;
                if let Some(row) = &row {
                    insert_entry(conn, &admin_entry("event.requeued", row)).await?;
                }
                Ok(row)
            })
            .await
            .map_err(unavailable)?;
        if row.is_some() {
            tracing::info!(event_id = %id, "dead letter requeued");
        }
        row.map(InboundEvent::try_from).transpose()
    }

    async fn discard(&self, id: EventRowId) -> Result<bool, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let row: Option<EventRow> = conn
            .transaction::<_, diesel::result::Error, _>(async move |conn| {
                let row: Option<EventRow> = diesel::update(
                    inbound_events::table
                        .find(id.0)
                        .filter(inbound_events::status.eq(EventStatus::Failed.as_str())),
                )
                .set((
                    inbound_events::status.eq(EventStatus::Ignored.as_str()),
                    inbound_events::last_error.eq("discarded"),
                    inbound_events::processed_at.eq(now),
                    inbound_events::updated_at.eq(now),
                ))
                .returning(EventRow::as_returning())
                .get_committed(conn)
                .await
                .optional()?;
                if let Some(row) = &row {
                    insert_entry(conn, &admin_entry("event.discarded", row)).await?;
                }
                Ok(row)
            })
            .await
            .map_err(unavailable)?;
        if row.is_some() {
            tracing::info!(event_id = %id, "dead letter discarded");
        }
        Ok(row.is_some())
    }

    async fn count_by_status(&self) -> Result<Vec<(EventStatus, i64)>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        Ok(count_by_status(&mut conn).await?)
    }
}

/// Stored events per status, in status order (the port's `count_by_status`, and retention's
/// report after a run).
pub(super) async fn count_by_status(
    conn: &mut Conn,
) -> Result<Vec<(EventStatus, i64)>, super::StoreError> {
    let rows: Vec<(String, i64)> = inbound_events::table
        .group_by(inbound_events::status)
        .select((inbound_events::status, diesel::dsl::count_star()))
        .order(inbound_events::status.asc())
        .load(conn)
        .await?;
    rows.into_iter()
        .map(|(status, n)| {
            let parsed = status.parse::<EventStatus>().map_err(|e| {
                super::StoreError::corrupt(format!("inbound event status {status:?}"), e)
            })?;
            Ok((parsed, n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nul_is_replaced_in_strings_and_keys() {
        let value = json!({"a\u{0}": ["x\u{0}y", 1, null], "b": {"c": "\u{0}"}});
        assert!(holds_nul(&value));
        let clean = sanitize(value);
        assert!(!holds_nul(&clean));
        assert_eq!(
            clean,
            json!({"a\u{FFFD}": ["x\u{FFFD}y", 1, null], "b": {"c": "\u{FFFD}"}})
        );
    }

    #[test]
    fn raw_bodies_are_kept_only_when_they_must_change() {
        let plain = r#"{"text": "fine"}"#.to_owned();
        let p = StoredPayload::prepare(EventPayload::Raw(plain.clone())).unwrap();
        assert_eq!((p.json, p.raw_body), (plain, None));

        // An escaped backslash followed by "u0000" is text, not a NUL.
        let backslash = r#"{"text": "\\u0000"}"#.to_owned();
        let p = StoredPayload::prepare(EventPayload::Raw(backslash.clone())).unwrap();
        assert_eq!((p.json, p.raw_body), (backslash, None));

        let nul = r#"{"text":  "a\u0000b"}"#.to_owned();
        let p = StoredPayload::prepare(EventPayload::Raw(nul.clone())).unwrap();
        assert_eq!(p.raw_body.as_deref(), Some(nul.as_str()));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&p.json).unwrap(),
            json!({"text": "a\u{FFFD}b"})
        );

        let parsed = json!({"text": "a\u{0}b"});
        let p = StoredPayload::prepare(parsed.clone().into()).unwrap();
        let kept: serde_json::Value = serde_json::from_str(&p.raw_body.unwrap()).unwrap();
        assert_eq!(kept, parsed);
        assert_eq!(p.value, json!({"text": "a\u{FFFD}b"}));
    }

    #[test]
    fn large_payloads_are_recognised() {
        let big = json!({"filler": "x".repeat(2 << 20)});
        assert!(json_len_at_least(&big, LARGE_STATEMENT_BYTES));
        assert!(!json_len_at_least(
            &json!({"a": [1, 2, "b"]}),
            LARGE_STATEMENT_BYTES
        ));
    }
}
