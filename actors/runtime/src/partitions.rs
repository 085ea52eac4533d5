//! Several replicas on one database: which replica handles which routing keys.
//!
//! Routing keys hash into [`PARTITIONS`](crate::inbox::PARTITIONS) partitions ([`Partition::of`]). Each partition is
//! leased to at most one replica at a time through the [`Membership`] port (rows in the
//! database: an owner, a fencing epoch and a lease end in the database's clock). A replica
//! handles the events of the partitions it holds and no others, so a key's events run on one
//! replica, one at a time, in id order, while keys spread over the replicas.
//!
//! * **Who should own what.** Every replica heartbeats; the live ones (heartbeat within the
//!   lease, not draining) are the candidates, and each partition's preferred owner is the
//!   candidate with the highest rendezvous hash ([`preferred_owner`]): every replica computes
//!   the same answer from the same list, and a replica joining or leaving moves only about
//!   1/N of the partitions.
//! * **Taking and giving.** A replica acquires preferred partitions that are free or whose
//!   lease lapsed (its owner died) and renews what it holds at every heartbeat. A partition it
//!   holds but should not (a new replica joined, or it is draining) is handed over: no new
//!   events of it are dispatched, the ones in flight finish, then the lease is released and
//!   the others are told at once.
//! * **Fencing.** The inbox claims and marks an event only for the replica whose lease on the
//!   event's partition is current, and every mark names its claim, so a replica that was
//!   paused past its lease (or cut off from the database) cannot record anything for a
//!   partition another replica took over. Locally, a replica stops dispatching when its last
//!   successful renewal is older than the lease allows ([`Ownership::owns`]).
//! * **Events recorded elsewhere.** A replica that records an event of a partition it does
//!   not hold announces it ([`Membership::announce`]); the owner dispatches it within
//!   milliseconds. Acquiring a partition, reconnecting the announcement stream, and a
//!   periodic rescan all scan the inbox, so a lost announcement only delays an event.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::inbox::{EventRowId, Partition, RoutingKey, StoreError};

pub use crate::coordinator::ReplicaStatus;

/// The name a replica goes by in the membership table and in logs. Unique per process: a
/// restarted process is a new replica (it takes over its predecessor's partitions when their
/// leases lapse, or at once when the predecessor released them on a graceful stop).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReplicaId(pub String);

impl ReplicaId {
    /// `{host}-{pid}-{random}`: readable in `/cluster` and in reply claims, and unique even
    /// when two processes on one host reuse a pid over time, or one process runs two
    /// replicas (tests).
    pub fn generate(host: &str) -> Self {
        let random = uuid::Uuid::new_v4().simple().to_string();
        Self(format!("{host}-{}-{}", std::process::id(), &random[..8]))
    }

    /// [`Self::generate`] on [`host_name`].
    pub fn for_this_process() -> Self {
        Self::generate(&host_name())
    }
}

/// This host's name (`HOSTNAME`, else the kernel's): only a label for people reading replica
/// and claim names, so an unreadable one is `unknown-host`.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

impl std::fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One partition held under a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub partition: Partition,
    /// Grows by one at every change of owner: the fencing token of this tenure.
    pub epoch: i64,
}

/// A partition acquired by [`Membership::renew_and_acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquired {
    pub lease: Lease,
    /// When it was taken from a lease that had lapsed (its owner stopped renewing): how long
    /// ago that owner's last renewal was, i.e. how long the partition's events waited.
    pub lapsed_for: Option<Duration>,
}

/// The outcome of one renewal round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseReport {
    /// Every partition this replica holds after the round (renewed and newly acquired).
    pub held: Vec<Lease>,
    /// Those acquired in this round.
    pub acquired: Vec<Acquired>,
}

/// An event recorded by a replica that does not hold its partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedNotice {
    /// The source's stored spelling.
    pub source: String,
    pub partition: Partition,
    pub id: EventRowId,
    pub routing_key: RoutingKey,
    /// When the announcing replica sent it (milliseconds since the epoch, its clock): the
    /// notice lag metric.
    pub sent_at_ms: i64,
}

/// What the announcement stream carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterSignal {
    /// An event to dispatch if this replica holds its partition.
    Recorded(RecordedNotice),
    /// Partitions were released (a hand-over): their preferred owner acquires them now
    /// instead of at its next heartbeat.
    Released,
}

/// A replica as the membership table shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaView {
    pub id: ReplicaId,
    pub host: String,
    pub pid: i32,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// `active`, `draining` or `stopped`.
    pub status: String,
    /// Heartbeat within the lease and not stopped.
    pub live: bool,
    /// Partitions it holds a current lease on.
    pub partitions: Vec<u16>,
}

/// A partition as the lease table shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionView {
    pub partition: u16,
    pub owner: Option<ReplicaId>,
    pub epoch: i64,
    pub lease_until: Option<DateTime<Utc>>,
    pub acquired_at: Option<DateTime<Utc>>,
    /// Unfinished (`pending` + `processing`) events of the partition.
    pub backlog: i64,
}

/// The whole cluster as the database sees it (`GET /cluster`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    /// The database's clock when this was read (leases are in that clock).
    pub now: DateTime<Utc>,
    pub replicas: Vec<ReplicaView>,
    pub partitions: Vec<PartitionView>,
}

/// The replicas' shared state in the database (implemented on PostgreSQL in the root crate).
/// One instance per replica: it knows its own [`ReplicaId`].
#[async_trait]
pub trait Membership: Send + Sync + 'static {
    /// This replica.
    fn replica(&self) -> &ReplicaId;
    /// Records this replica's heartbeat (and whether it is draining) and returns the live
    /// replicas that may own partitions: active, heartbeat within `lease`, this one included
    /// unless it is draining.
    async fn heartbeat(
        &self,
        draining: bool,
        lease: Duration,
    ) -> Result<Vec<ReplicaId>, StoreError>;
    /// Renews every lease this replica holds and acquires those of `wanted` that are free or
    /// lapsed, each for `lease` from the database's now. A lease this replica lost (another
    /// took it over after it lapsed) is simply absent from the report.
    async fn renew_and_acquire(
        &self,
        wanted: &[Partition],
        lease: Duration,
    ) -> Result<LeaseReport, StoreError>;
    /// Gives up `partitions` (only those this replica holds) and tells the other replicas.
    async fn release(&self, partitions: &[Partition]) -> Result<(), StoreError>;
    /// Marks this replica stopped (after releasing everything).
    async fn leave(&self) -> Result<(), StoreError>;
    /// Tells the replicas that an event of a partition this one does not hold was recorded.
    async fn announce(&self, notice: &RecordedNotice) -> Result<(), StoreError>;
    /// The announcement stream, on a connection of its own; it ends when that connection is
    /// lost (subscribe again, then rescan: announcements sent meanwhile are gone).
    async fn subscribe(
        &self,
    ) -> Result<BoxStream<'static, Result<ClusterSignal, StoreError>>, StoreError>;
    /// Replicas (live: heartbeat within `lease`), leases and per-partition backlogs.
    async fn view(&self, lease: Duration) -> Result<ClusterView, StoreError>;
}

/// Timing of the lease protocol (`cluster:` in the service configuration). Durations in
/// milliseconds; every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// How long a lease lasts without renewal: the bound on failover after a replica dies
    /// (its partitions wait at most this long, plus one heartbeat, for a new owner).
    pub lease_ms: u64,
    /// How often a replica heartbeats and renews its leases (well under `lease_ms`).
    pub heartbeat_ms: u64,
    /// A replica stops dispatching when its last successful renewal is older than
    /// `lease_ms - safety_margin_ms` (its own monotonic clock), and a handler's side effects
    /// need at least this much lease left: margin for a slow statement or a clock running a
    /// little fast.
    pub safety_margin_ms: u64,
    /// How often the owned partitions are rescanned for events whose announcement was lost.
    pub rescan_interval_ms: u64,
    /// How long a hand-over waits for the partition's events in flight to finish before it
    /// releases the lease anyway (their outcomes are then fenced off and redone by the new
    /// owner).
    pub handover_timeout_ms: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            lease_ms: 5_000,
            heartbeat_ms: 1_000,
            safety_margin_ms: 1_000,
            rescan_interval_ms: 10_000,
            handover_timeout_ms: 10_000,
        }
    }
}

impl ReplicationConfig {
    /// Rejects timings under which a replica would lose its own leases between heartbeats.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        let err = |m: &str| Err(crate::config::ConfigError(m.to_owned()));
        if self.heartbeat_ms == 0 || self.rescan_interval_ms == 0 {
            return err("heartbeat_ms and rescan_interval_ms must be greater than 0");
        }
        if self.lease_ms < 2 * self.heartbeat_ms + self.safety_margin_ms {
            return err("lease_ms must be at least 2 x heartbeat_ms + safety_margin_ms");
        }
        Ok(())
    }

    pub(crate) fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
    pub(crate) fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }
    pub(crate) fn rescan_interval(&self) -> Duration {
        Duration::from_millis(self.rescan_interval_ms)
    }
    pub(crate) fn handover_timeout(&self) -> Duration {
        Duration::from_millis(self.handover_timeout_ms)
    }
    /// How long after the start of a successful renewal this replica may still dispatch.
    pub(crate) fn local_validity(&self) -> Duration {
        Duration::from_millis(self.lease_ms.saturating_sub(self.safety_margin_ms))
    }
}

/// Which partitions this process may dispatch now.
#[derive(Debug)]
pub struct Ownership {
    /// A lone process (no membership): it handles every partition.
    everything: bool,
    state: RwLock<Held>,
}

#[derive(Debug, Default)]
struct Held {
    leases: BTreeMap<Partition, i64>,
    /// Held but being handed over: nothing new is dispatched.
    releasing: BTreeSet<Partition>,
    /// End of local validity of the last renewal.
    valid_until: Option<Instant>,
}

impl Ownership {
    /// A process alone on its inbox: it owns every partition, always.
    pub fn everything() -> Arc<Self> {
        Arc::new(Self {
            everything: true,
            state: RwLock::new(Held::default()),
        })
    }

    /// A replica: it owns what its leases say, while they are valid.
    pub(crate) fn leased() -> Arc<Self> {
        Arc::new(Self {
            everything: false,
            state: RwLock::new(Held::default()),
        })
    }

    /// True when this process may dispatch events of `partition` now.
    pub fn owns(&self, partition: Partition) -> bool {
        if self.everything {
            return true;
        }
        let st = self.state.read();
        st.valid_until.is_some_and(|t| Instant::now() < t)
            && st.leases.contains_key(&partition)
            && !st.releasing.contains(&partition)
    }

    /// The partitions an inbox scan should cover: `None` for all (a lone process).
    pub(crate) fn scan_filter(&self) -> Option<Vec<Partition>> {
        if self.everything {
            return None;
        }
        let st = self.state.read();
        if st.valid_until.is_none_or(|t| Instant::now() >= t) {
            return Some(Vec::new());
        }
        Some(
            st.leases
                .keys()
                .filter(|p| !st.releasing.contains(p))
                .copied()
                .collect(),
        )
    }

    /// Partitions held (releasing ones included), with their epochs.
    pub fn held(&self) -> Vec<Lease> {
        self.state
            .read()
            .leases
            .iter()
            .map(|(p, e)| Lease {
                partition: *p,
                epoch: *e,
            })
            .collect()
    }

    /// Replaces the held set with a renewal's result; returns the partitions lost (held
    /// before, absent now).
    pub(crate) fn renewed(&self, held: &[Lease], valid_until: Instant) -> Vec<Partition> {
        let mut st = self.state.write();
        let now: BTreeMap<Partition, i64> = held.iter().map(|l| (l.partition, l.epoch)).collect();
        let lost: Vec<Partition> = st
            .leases
            .keys()
            .filter(|p| !now.contains_key(p))
            .copied()
            .collect();
        st.releasing.retain(|p| now.contains_key(p));
        st.leases = now;
        st.valid_until = Some(valid_until);
        lost
    }

    /// Stops dispatching `partitions` (a hand-over begins).
    pub(crate) fn begin_release(&self, partitions: &[Partition]) {
        self.state
            .write()
            .releasing
            .extend(partitions.iter().copied());
    }

    /// The hand-over of `partitions` is done: they are no longer held.
    pub(crate) fn released(&self, partitions: &[Partition]) {
        let mut st = self.state.write();
        for p in partitions {
            st.leases.remove(p);
            st.releasing.remove(p);
        }
    }

    /// Partitions being handed over.
    pub(crate) fn releasing(&self) -> Vec<Partition> {
        self.state.read().releasing.iter().copied().collect()
    }

    /// Forgets every lease (the database cannot be reached: they lapse anyway).
    pub(crate) fn drop_all(&self) -> usize {
        let mut st = self.state.write();
        let n = st.leases.len();
        st.leases.clear();
        st.releasing.clear();
        st.valid_until = None;
        n
    }

    /// True when this is a replica among others (not a lone process).
    pub fn is_replicated(&self) -> bool {
        !self.everything
    }
}

/// splitmix64's finalizer: spreads similar inputs over the whole range.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn rendezvous_score(partition: Partition, replica: &ReplicaId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in replica.0.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h ^ u64::from(partition.0).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The replica of `live` that should own `partition` (highest rendezvous score; ties broken
/// by id), or `None` when no replica is live.
pub fn preferred_owner(partition: Partition, live: &[ReplicaId]) -> Option<&ReplicaId> {
    live.iter().max_by(|a, b| {
        rendezvous_score(partition, a)
            .cmp(&rendezvous_score(partition, b))
            .then_with(|| a.cmp(b))
    })
}

/// The partitions `me` should own among `live`.
pub fn preferred_share(me: &ReplicaId, live: &[ReplicaId]) -> Vec<Partition> {
    Partition::all()
        .filter(|p| preferred_owner(*p, live) == Some(me))
        .collect()
}

/// What a replica holds but should not (a hand-over is due): `held` minus `wanted`.
pub(crate) fn surplus(held: &[Lease], wanted: &[Partition]) -> Vec<Partition> {
    held.iter()
        .map(|l| l.partition)
        .filter(|p| !wanted.contains(p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbox::PARTITIONS;

    fn ids(n: usize) -> Vec<ReplicaId> {
        (0..n)
            .map(|i| ReplicaId(format!("host-{i}-0000abcd")))
            .collect()
    }

    #[test]
    fn every_partition_has_one_preferred_owner_and_shares_are_even() {
        for n in 1..=10 {
            let live = ids(n);
            let shares: Vec<usize> = live
                .iter()
                .map(|r| preferred_share(r, &live).len())
                .collect();
            assert_eq!(shares.iter().sum::<usize>(), usize::from(PARTITIONS), "{n}");
            let fair = usize::from(PARTITIONS) / n;
            // Rendezvous hashing is even in expectation; with 64 partitions no replica
            // should be starved or get more than about twice its share.
            assert!(
                shares.iter().all(|s| *s * 3 >= fair && *s <= 2 * fair + 4),
                "{n} replicas: {shares:?}"
            );
        }
    }

    #[test]
    fn a_joining_replica_moves_only_its_own_share() {
        let three = ids(3);
        let four = ids(4);
        let moved: Vec<Partition> = Partition::all()
            .filter(|p| preferred_owner(*p, &three) != preferred_owner(*p, &four))
            .collect();
        // Every moved partition went to the newcomer.
        assert!(
            moved
                .iter()
                .all(|p| preferred_owner(*p, &four) == Some(&four[3]))
        );
        assert_eq!(moved.len(), preferred_share(&four[3], &four).len());
    }

    #[test]
    fn surplus_is_what_is_held_and_not_wanted() {
        let held = [1, 2, 3].map(|p| Lease {
            partition: Partition(p),
            epoch: 1,
        });
        assert_eq!(
            surplus(&held, &[Partition(2), Partition(9)]),
            [Partition(1), Partition(3)]
        );
        assert!(surplus(&held, &[Partition(1), Partition(2), Partition(3)]).is_empty());
    }

    #[test]
    fn ownership_follows_renewals_and_hand_overs() {
        let own = Ownership::leased();
        let p = Partition(3);
        assert!(!own.owns(p));
        let lease = Lease {
            partition: p,
            epoch: 1,
        };
        let later = Instant::now() + Duration::from_secs(60);
        assert!(own.renewed(&[lease], later).is_empty());
        assert!(own.owns(p));
        assert_eq!(own.scan_filter(), Some(vec![p]));
        own.begin_release(&[p]);
        assert!(!own.owns(p));
        assert_eq!(own.scan_filter(), Some(vec![]));
        own.released(&[p]);
        assert!(own.held().is_empty());
        // A renewal that no longer lists a partition reports it lost.
        own.renewed(&[lease], later);
        assert_eq!(own.renewed(&[], later), vec![p]);
        // An expired renewal owns nothing.
        own.renewed(&[lease], Instant::now());
        assert!(!own.owns(p));
        assert!(Ownership::everything().owns(p));
    }

    #[test]
    fn partition_of_is_stable_fnv1a() {
        // FNV-1a 32 of "" is 0x811c9dc5; of "a" 0xe40c292c (reference values).
        assert_eq!(
            Partition::of(&RoutingKey(String::new())).0,
            (0x811c_9dc5u32 % 64) as u16
        );
        assert_eq!(
            Partition::of(&RoutingKey("a".into())).0,
            (0xe40c_292cu32 % 64) as u16
        );
    }

    #[test]
    fn config_rejects_leases_shorter_than_two_heartbeats() {
        ReplicationConfig::default().validate().unwrap();
        let c = ReplicationConfig {
            lease_ms: 1_500,
            ..ReplicationConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
