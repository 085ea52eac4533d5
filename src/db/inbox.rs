//! [`InboundEvents`] on the `inbound_events` table.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::dsl::now;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use infragpt_actors::inbox::{
    EventRowId, EventStatus, InboundEvent, InboundEvents, NewInboundEvent, RecordOutcome,
    RoutingKey, StoreError,
};

use super::schema::inbound_events;
use super::{Pool, conn};

/// Statuses a handler may still claim.
const CLAIMABLE: [&str; 2] = ["pending", "processing"];

/// The durable inbox in PostgreSQL.
#[derive(Clone)]
pub struct PgInbox {
    pool: Pool,
}

impl std::fmt::Debug for PgInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgInbox")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl PgInbox {
    /// An inbox on `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Sets `status`, `last_error` (when given) and the finish time of one event.
    async fn finish(
        &self,
        id: EventRowId,
        status: EventStatus,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut conn = conn(&self.pool).await?;
        let target = inbound_events::table.find(id.0);
        let changed = match error {
            Some(error) => {
                diesel::update(target)
                    .set((
                        inbound_events::status.eq(status.as_str()),
                        inbound_events::last_error.eq(error),
                        inbound_events::processed_at.eq(now),
                        inbound_events::updated_at.eq(now),
                    ))
                    .execute(&mut conn)
                    .await
            }
            None => {
                diesel::update(target)
                    .set((
                        inbound_events::status.eq(status.as_str()),
                        inbound_events::processed_at.eq(now),
                        inbound_events::updated_at.eq(now),
                    ))
                    .execute(&mut conn)
                    .await
            }
        }
        .map_err(unavailable)?;
        expect_one(changed, id)?;
        tracing::debug!(event_id = %id, status = status.as_str(), "inbound event finished");
        Ok(())
    }
}

/// One `inbound_events` row.
#[derive(Debug, Queryable, Selectable)]
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
}

impl TryFrom<EventRow> for InboundEvent {
    type Error = StoreError;
    fn try_from(row: EventRow) -> Result<Self, StoreError> {
        Ok(InboundEvent {
            id: EventRowId(row.id),
            source: infragpt_actors::sources::parse(&row.source)?,
            source_id: row.source_id,
            routing_key: RoutingKey(row.routing_key),
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

/// The port's error: values that do not read back are `Corrupt`; everything else is
/// `Unavailable` (the caller retries later).
impl From<super::StoreError> for StoreError {
    fn from(e: super::StoreError) -> Self {
        match e {
            super::StoreError::Corrupt { .. }
            | super::StoreError::Query(diesel::result::Error::DeserializationError(_)) => {
                StoreError::Corrupt(Box::new(e))
            }
            other => StoreError::Unavailable(Box::new(other)),
        }
    }
}

fn unavailable(e: diesel::result::Error) -> StoreError {
    super::StoreError::from(e).into()
}

fn expect_one(changed: usize, id: EventRowId) -> Result<(), StoreError> {
    if changed == 0 {
        // Ids come from our own rows: a missing one is a bug worth surfacing.
        return Err(super::StoreError::NotFound(format!("inbound event {id}")).into());
    }
    Ok(())
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

#[async_trait]
impl InboundEvents for PgInbox {
    async fn record(&self, event: NewInboundEvent) -> Result<RecordOutcome, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let inserted: Option<EventRow> = diesel::insert_into(inbound_events::table)
            .values((
                inbound_events::source.eq(event.source.as_str()),
                inbound_events::source_id.eq(&event.source_id),
                inbound_events::routing_key.eq(&event.routing_key.0),
                inbound_events::kind.eq(&event.kind),
                inbound_events::payload.eq(&event.payload),
            ))
            .on_conflict((inbound_events::source, inbound_events::source_id))
            .do_nothing()
            .returning(EventRow::as_returning())
            .get_result(&mut conn)
            .await
            .optional()
            .map_err(unavailable)?;
        if let Some(row) = inserted {
            let stored = InboundEvent::try_from(row)?;
            tracing::debug!(
                source = event.source.as_str(),
                source_id = %event.source_id,
                event_id = %stored.id,
                "inbound event recorded"
            );
            return Ok(RecordOutcome::Recorded(stored));
        }
        let existing: EventRow = inbound_events::table
            .filter(inbound_events::source.eq(event.source.as_str()))
            .filter(inbound_events::source_id.eq(&event.source_id))
            .select(EventRow::as_select())
            .first(&mut conn)
            .await
            .map_err(unavailable)?;
        tracing::debug!(
            source = event.source.as_str(),
            source_id = %event.source_id,
            event_id = existing.id,
            "duplicate inbound event ignored"
        );
        Ok(RecordOutcome::Duplicate(existing.try_into()?))
    }

    async fn claim(&self, id: EventRowId) -> Result<Option<InboundEvent>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let row: Option<EventRow> = diesel::update(
            inbound_events::table
                .find(id.0)
                .filter(inbound_events::status.eq_any(CLAIMABLE)),
        )
        .set((
            inbound_events::status.eq(EventStatus::Processing.as_str()),
            inbound_events::attempts.eq(inbound_events::attempts + 1),
            inbound_events::updated_at.eq(now),
        ))
        .returning(EventRow::as_returning())
        .get_result(&mut conn)
        .await
        .optional()
        .map_err(unavailable)?;
        row.map(InboundEvent::try_from).transpose()
    }

    async fn mark_done(&self, id: EventRowId) -> Result<(), StoreError> {
        self.finish(id, EventStatus::Done, None).await
    }

    async fn mark_ignored(&self, id: EventRowId, reason: &str) -> Result<(), StoreError> {
        self.finish(id, EventStatus::Ignored, Some(reason)).await
    }

    async fn mark_retry(&self, id: EventRowId, error: &str) -> Result<(), StoreError> {
        let mut conn = conn(&self.pool).await?;
        let changed = diesel::update(inbound_events::table.find(id.0))
            .set((
                inbound_events::status.eq(EventStatus::Pending.as_str()),
                inbound_events::last_error.eq(error),
                inbound_events::updated_at.eq(now),
            ))
            .execute(&mut conn)
            .await
            .map_err(unavailable)?;
        expect_one(changed, id)
    }

    async fn mark_failed(&self, id: EventRowId, error: &str) -> Result<(), StoreError> {
        self.finish(id, EventStatus::Failed, Some(error)).await
    }

    async fn list_unfinished(
        &self,
        after: Option<EventRowId>,
        limit: i64,
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

    async fn requeue(&self, id: EventRowId) -> Result<Option<InboundEvent>, StoreError> {
        let mut conn = conn(&self.pool).await?;
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
        .get_result(&mut conn)
        .await
        .optional()
        .map_err(unavailable)?;
        if row.is_some() {
            tracing::info!(event_id = %id, "dead letter requeued");
        }
        row.map(InboundEvent::try_from).transpose()
    }

    async fn discard(&self, id: EventRowId) -> Result<bool, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let changed = diesel::update(
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
        .execute(&mut conn)
        .await
        .map_err(unavailable)?;
        if changed > 0 {
            tracing::info!(event_id = %id, "dead letter discarded");
        }
        Ok(changed > 0)
    }

    async fn count_by_status(&self) -> Result<Vec<(EventStatus, i64)>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let rows: Vec<(String, i64)> = inbound_events::table
            .group_by(inbound_events::status)
            .select((inbound_events::status, diesel::dsl::count_star()))
            .order(inbound_events::status.asc())
            .load(&mut conn)
            .await
            .map_err(unavailable)?;
        rows.into_iter()
            .map(|(status, count)| Ok((status.parse()?, count)))
            .collect()
    }
}
