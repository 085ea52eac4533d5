//! [`Membership`] on PostgreSQL: replica heartbeats (`cluster_replicas`), partition leases
//! (`cluster_partitions`) and announcements over LISTEN/NOTIFY.
//!
//! Every time comparison uses the database's clock (`now()`), so replicas whose clocks
//! disagree still agree on who holds a lease. Statements are single round trips; the only
//! connection kept open is the listener's.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Bool, Double, Int2, Integer, Nullable, Text, Timestamptz};
use diesel::{OptionalExtension, QueryableByName};
use diesel_async::RunQueryDsl;
use futures::StreamExt;
use futures::stream::BoxStream;
use infragpt_actors::Secret;
use infragpt_actors::inbox::{EventRowId, Partition, RoutingKey, StoreError};
use infragpt_actors::partitions::{
    Acquired, ClusterSignal, ClusterView, Lease, LeaseReport, Membership, PartitionView,
    RecordedNotice, ReplicaId, ReplicaView,
};

use super::{Pool, conn};
use crate::db::committed::CommittedExt as _;

/// Announcements of events recorded by a replica that does not hold their partition.
const INBOX_CHANNEL: &str = "infragpt_inbox";
/// Lease changes (a partition released).
const CLUSTER_CHANNEL: &str = "infragpt_cluster";
/// PostgreSQL refuses NOTIFY payloads from 8000 bytes; a longer announcement is not sent (the
/// owner's rescan finds the event).
const MAX_PAYLOAD: usize = 7_999;

/// The replicas' shared state in PostgreSQL, as seen by one replica.
pub struct PgMembership {
    pool: Pool,
    /// For the listener's own connection.
    url: Secret,
    connect_timeout: Duration,
    replica: ReplicaId,
    host: String,
    pid: i32,
    version: String,
}

impl std::fmt::Debug for PgMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgMembership")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl PgMembership {
    /// Membership of `replica` (running on `host`) over `pool`; the listener connects to `url`.
    pub fn new(
        pool: Pool,
        url: Secret,
        connect_timeout: Duration,
        replica: ReplicaId,
        host: String,
    ) -> Self {
        Self {
            pool,
            url,
            connect_timeout,
            replica,
            host,
            pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

fn unavailable(e: diesel::result::Error) -> StoreError {
    super::StoreError::from(e).into()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn partitions_sql(partitions: &[Partition]) -> Vec<i16> {
    partitions.iter().map(|p| p.stored()).collect()
}

#[derive(QueryableByName)]
struct ReplicaIdRow {
    #[diesel(sql_type = Text)]
    replica_id: String,
}

#[derive(QueryableByName)]
struct LeaseRow {
    #[diesel(sql_type = Int2)]
    partition: i16,
    #[diesel(sql_type = BigInt)]
    epoch: i64,
}

#[derive(QueryableByName)]
struct AcquiredRow {
    #[diesel(sql_type = Int2)]
    partition: i16,
    #[diesel(sql_type = BigInt)]
    epoch: i64,
    #[diesel(sql_type = Nullable<Double>)]
    lapsed_secs: Option<f64>,
}

#[derive(QueryableByName)]
struct ReplicaRow {
    #[diesel(sql_type = Text)]
    replica_id: String,
    #[diesel(sql_type = Text)]
    host: String,
    #[diesel(sql_type = Integer)]
    pid: i32,
    #[diesel(sql_type = Text)]
    version: String,
    #[diesel(sql_type = Timestamptz)]
    started_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    heartbeat_at: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Bool)]
    live: bool,
}

#[derive(QueryableByName)]
struct PartitionRow {
    #[diesel(sql_type = Int2)]
    partition: i16,
    #[diesel(sql_type = Nullable<Text>)]
    owner: Option<String>,
    #[diesel(sql_type = BigInt)]
    epoch: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    lease_until: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    acquired_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = BigInt)]
    backlog: i64,
    #[diesel(sql_type = Timestamptz)]
    now: DateTime<Utc>,
}

/// `source \t partition \t id \t sent_at_ms \t routing key` (the key last: it is the only
/// field that could hold a tab).
fn encode_notice(n: &RecordedNotice) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}",
        n.source, n.partition.0, n.id.0, n.sent_at_ms, n.routing_key.0
    )
}

fn decode_notice(payload: &str) -> Option<RecordedNotice> {
    let mut parts = payload.splitn(5, '\t');
    let source = parts.next()?.to_owned();
    let partition = Partition(parts.next()?.parse().ok()?);
    let id = EventRowId(parts.next()?.parse().ok()?);
    let sent_at_ms = parts.next()?.parse().ok()?;
    let routing_key = RoutingKey(parts.next()?.to_owned());
    Some(RecordedNotice {
        source,
        partition,
        id,
        routing_key,
        sent_at_ms,
    })
}

#[async_trait]
impl Membership for PgMembership {
    fn replica(&self) -> &ReplicaId {
        &self.replica
    }

    async fn heartbeat(
        &self,
        draining: bool,
        lease: Duration,
    ) -> Result<Vec<ReplicaId>, StoreError> {
        let mut conn = conn(&self.pool).await?;
        // The CTE's insert is invisible to the outer select (one snapshot): this replica is
        // added from the insert's own result. Replicas silent for a day (killed, never
        // stopped) are forgotten on the way.
        let rows: Vec<ReplicaIdRow> = diesel::sql_query(
            "WITH gone AS ( \
               DELETE FROM cluster_replicas \
               WHERE heartbeat_at < now() - interval '1 day' AND replica_id <> $1), \
             beat AS ( \
               INSERT INTO cluster_replicas (replica_id, host, pid, version, status) \
               VALUES ($1, $2, $3, $4, $5) \
               ON CONFLICT (replica_id) DO UPDATE \
                 SET heartbeat_at = now(), status = EXCLUDED.status \
               RETURNING replica_id, status) \
             SELECT replica_id FROM cluster_replicas \
               WHERE status = 'active' AND replica_id <> $1 \
                 AND heartbeat_at > now() - make_interval(secs => $6) \
             UNION ALL SELECT replica_id FROM beat WHERE status = 'active' \
             ORDER BY replica_id",
        )
        .bind::<Text, _>(&self.replica.0)
        .bind::<Text, _>(&self.host)
        .bind::<Integer, _>(self.pid)
        .bind::<Text, _>(&self.version)
        .bind::<Text, _>(if draining { "draining" } else { "active" })
        .bind::<Double, _>(secs(lease))
        .load(&mut conn)
        .await
        .map_err(unavailable)?;
        Ok(rows.into_iter().map(|r| ReplicaId(r.replica_id)).collect())
    }

    async fn renew_and_acquire(
        &self,
        wanted: &[Partition],
        lease: Duration,
    ) -> Result<LeaseReport, StoreError> {
        let mut conn = conn(&self.pool).await?;
        // Renewing a lease that lapsed while nobody took it is safe: the row lock orders this
        // against a competing acquisition, and the owner's claims were fenced meanwhile.
        let renewed: Vec<LeaseRow> = diesel::sql_query(
            "UPDATE cluster_partitions SET lease_until = now() + make_interval(secs => $2) \
             WHERE owner = $1 RETURNING partition, epoch",
        )
        .bind::<Text, _>(&self.replica.0)
        .bind::<Double, _>(secs(lease))
        .load(&mut conn)
        .await
        .map_err(unavailable)?;
        let free: Vec<i16> = partitions_sql(wanted)
            .into_iter()
            .filter(|p| !renewed.iter().any(|r| r.partition == *p))
            .collect();
        let acquired: Vec<AcquiredRow> = if free.is_empty() {
            Vec::new()
        } else {
            // Free (released or never held) or lapsed; rows another replica is changing right
            // now are skipped, not waited for (the next round sees them).
            diesel::sql_query(
                "WITH prev AS ( \
                   SELECT partition, owner, lease_until FROM cluster_partitions \
                   WHERE partition = ANY($2) \
                     AND (owner IS NULL OR lease_until IS NULL OR lease_until <= now()) \
                   FOR UPDATE SKIP LOCKED) \
                 UPDATE cluster_partitions cp SET owner = $1, epoch = cp.epoch + 1, \
                   lease_until = now() + make_interval(secs => $3), acquired_at = now() \
                 FROM prev WHERE cp.partition = prev.partition \
                 RETURNING cp.partition, cp.epoch, \
                   CASE WHEN prev.owner IS NULL OR prev.lease_until IS NULL THEN NULL \
                     ELSE EXTRACT(EPOCH FROM now() - (prev.lease_until \
                       - make_interval(secs => $3)))::float8 END AS lapsed_secs",
            )
            .bind::<Text, _>(&self.replica.0)
            .bind::<Array<Int2>, _>(&free)
            .bind::<Double, _>(secs(lease))
            .load(&mut conn)
            .await
            .map_err(unavailable)?
        };
        let mut report = LeaseReport::default();
        for r in &renewed {
            report.held.push(Lease {
                partition: Partition::from_stored(r.partition)?,
                epoch: r.epoch,
            });
        }
        for a in &acquired {
            let lease = Lease {
                partition: Partition::from_stored(a.partition)?,
                epoch: a.epoch,
            };
            report.held.push(lease);
            report.acquired.push(Acquired {
                lease,
                lapsed_for: a.lapsed_secs.map(|s| Duration::from_secs_f64(s.max(0.0))),
            });
        }
        report.held.sort_by_key(|l| l.partition);
        Ok(report)
    }

    async fn release(&self, partitions: &[Partition]) -> Result<(), StoreError> {
        let mut conn = conn(&self.pool).await?;
        diesel::sql_query(format!(
            "WITH released AS ( \
               UPDATE cluster_partitions SET owner = NULL, lease_until = NULL \
               WHERE owner = $1 AND partition = ANY($2) RETURNING partition) \
             SELECT pg_notify('{CLUSTER_CHANNEL}', 'released') \
             FROM (SELECT 1 FROM released LIMIT 1) AS any_released"
        ))
        .bind::<Text, _>(&self.replica.0)
        .bind::<Array<Int2>, _>(partitions_sql(partitions))
        .execute(&mut conn)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn leave(&self) -> Result<(), StoreError> {
        let mut conn = conn(&self.pool).await?;
        diesel::sql_query(format!(
            "WITH released AS ( \
               UPDATE cluster_partitions SET owner = NULL, lease_until = NULL \
               WHERE owner = $1 RETURNING partition), \
             stopped AS ( \
               UPDATE cluster_replicas SET status = 'stopped', heartbeat_at = now() \
               WHERE replica_id = $1 RETURNING replica_id) \
             SELECT pg_notify('{CLUSTER_CHANNEL}', 'released') \
             FROM (SELECT 1 FROM released LIMIT 1) AS any_released"
        ))
        .bind::<Text, _>(&self.replica.0)
        .execute(&mut conn)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn announce(&self, notice: &RecordedNotice) -> Result<(), StoreError> {
        let payload = encode_notice(notice);
        if payload.len() > MAX_PAYLOAD {
            tracing::debug!(event_id = %notice.id, "announcement too long for NOTIFY; left to the owner's rescan");
            return Ok(());
        }
        let mut conn = conn(&self.pool).await?;
        diesel::sql_query(format!("SELECT pg_notify('{INBOX_CHANNEL}', $1)"))
            .bind::<Text, _>(payload)
            .execute(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn subscribe(
        &self,
    ) -> Result<BoxStream<'static, Result<ClusterSignal, StoreError>>, StoreError> {
        let mut conn = super::connect(&self.url, self.connect_timeout)
            .await
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        for channel in [INBOX_CHANNEL, CLUSTER_CHANNEL] {
            diesel::sql_query(format!("LISTEN {channel}"))
                .execute(&mut conn)
                .await
                .map_err(unavailable)?;
        }
        let signals = futures::stream::unfold(conn, |mut conn| async move {
            let next = std::pin::pin!(conn.notifications_stream()).next().await?;
            Some((next, conn))
        })
        .filter_map(|n| async move {
            match n {
                Err(e) => Some(Err(unavailable(e))),
                Ok(n) if n.channel == INBOX_CHANNEL => match decode_notice(&n.payload) {
                    Some(notice) => Some(Ok(ClusterSignal::Recorded(notice))),
                    None => {
                        tracing::warn!(payload = %n.payload, "unreadable inbox announcement ignored");
                        None
                    }
                },
                Ok(n) if n.channel == CLUSTER_CHANNEL => Some(Ok(ClusterSignal::Released)),
                Ok(_) => None,
            }
        });
        Ok(signals.boxed())
    }

    async fn view(&self, lease: Duration) -> Result<ClusterView, StoreError> {
        let mut conn = conn(&self.pool).await?;
        let replicas: Vec<ReplicaRow> = diesel::sql_query(
            "SELECT replica_id, host, pid, version, started_at, heartbeat_at, status, \
               (status <> 'stopped' AND heartbeat_at > now() - make_interval(secs => $1)) AS live \
             FROM cluster_replicas \
             WHERE status <> 'stopped' OR heartbeat_at > now() - interval '1 hour' \
             ORDER BY started_at, replica_id",
        )
        .bind::<Double, _>(secs(lease))
        .load(&mut conn)
        .await
        .map_err(unavailable)?;
        let partitions: Vec<PartitionRow> = diesel::sql_query(
            "SELECT cp.partition, \
               CASE WHEN cp.lease_until > now() THEN cp.owner END AS owner, \
               cp.epoch, cp.lease_until, cp.acquired_at, \
               COALESCE(b.n, 0) AS backlog, now() AS now \
             FROM cluster_partitions cp \
             LEFT JOIN (SELECT partition, count(*) AS n FROM inbound_events \
                        WHERE status IN ('pending', 'processing') GROUP BY partition) b \
               ON b.partition = cp.partition \
             ORDER BY cp.partition",
        )
        .load(&mut conn)
        .await
        .map_err(unavailable)?;
        let now = <[PartitionRow]>::first(&partitions).map_or_else(Utc::now, |p| p.now);
        let mut views = Vec::with_capacity(partitions.len());
        for p in partitions {
            views.push(PartitionView {
                partition: Partition::from_stored(p.partition)?.0,
                owner: p.owner.map(ReplicaId),
                epoch: p.epoch,
                lease_until: p.lease_until,
                acquired_at: p.acquired_at,
                backlog: p.backlog,
            });
        }
        let replicas = replicas
            .into_iter()
            .map(|r| {
                let id = ReplicaId(r.replica_id);
                ReplicaView {
                    partitions: views
                        .iter()
                        .filter(|p| p.owner.as_ref() == Some(&id))
                        .map(|p| p.partition)
                        .collect(),
                    id,
                    host: r.host,
                    pid: r.pid,
                    version: r.version,
                    started_at: r.started_at,
                    heartbeat_at: r.heartbeat_at,
                    status: r.status,
                    live: r.live,
                }
            })
            .collect();
        Ok(ClusterView {
            now,
            replicas,
            partitions: views,
        })
    }
}

/// The partition PostgreSQL computes for `key` (`infragpt_partition`), for the test that
/// keeps it equal to [`Partition::of`].
pub async fn sql_partition(pool: &Pool, key: &str) -> Result<u16, StoreError> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Nullable<Int2>)]
        p: Option<i16>,
    }
    let mut conn = conn(pool).await?;
    let row: Option<Row> = diesel::sql_query("SELECT infragpt_partition($1) AS p")
        .bind::<Text, _>(key)
        .get_committed(&mut conn)
        .await
        .optional()
        .map_err(unavailable)?;
    match row.and_then(|r| r.p) {
        Some(p) => Ok(Partition::from_stored(p)?.0),
        None => Err(StoreError::Corrupt(
            "infragpt_partition returned null".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_with_tabs_in_the_key() {
        let n = RecordedNotice {
            source: "slack".into(),
            partition: Partition(17),
            id: EventRowId(42),
            routing_key: RoutingKey("T1/C1/1.2\tx".into()),
            sent_at_ms: 1_700_000_000_000,
        };
        assert_eq!(decode_notice(&encode_notice(&n)), Some(n));
        assert_eq!(decode_notice("slack\tnot-a-number\t1\t2\tk"), None);
    }
}
