//! The health registry: every actor reports its kind, key, supervisor, state and counters
//! here; the HTTP layer serves snapshots of it (actor tree, groups, single actors).
//!
//! Retention: keyed workers that stop because they were idle deregister at once (their state
//! is in the database; a stopped thread must not cost memory). Actors that stop for any other
//! reason (failure, shutdown) stay visible as `stopped`/`failed` until the same actor registers
//! again or [`HealthRegistry::prune`] removes them after the configured retention.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

/// What an actor is: an open name (`snake_case`, used in JSON, metrics labels and URLs). The
/// runtime defines [`ActorKind::SUPERVISOR`] (the root and one router per stream); the
/// application defines the kinds of its workers and other components as constants.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ActorKind(&'static str);

impl ActorKind {
    /// Owns and supervises other actors (the root and one router per stream).
    pub const SUPERVISOR: ActorKind = ActorKind("supervisor");

    /// A kind named `name` (`snake_case`).
    pub const fn new(name: &'static str) -> Self {
        Self(name)
    }

    /// The name used in JSON, metrics labels and URLs.
    pub const fn as_str(self) -> &'static str {
        self.0
    }

    /// The kind among `known` whose name is `name`.
    pub fn find(name: &str, known: &[ActorKind]) -> Result<Self, UnknownName> {
        known
            .iter()
            .copied()
            .find(|k| k.0 == name)
            .ok_or_else(|| UnknownName {
                what: "kind",
                value: name.to_owned(),
            })
    }
}

impl fmt::Debug for ActorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActorKind({})", self.0)
    }
}

impl fmt::Display for ActorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Supervisors first (the backbone of the tree), then by name.
impl Ord for ActorKind {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self != Self::SUPERVISOR, self.0).cmp(&(*other != Self::SUPERVISOR, other.0))
    }
}

impl PartialOrd for ActorKind {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Serialize for ActorKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

/// An unknown actor kind or state name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown actor {what} {value:?}")]
pub struct UnknownName {
    /// `kind` or `state`.
    pub what: &'static str,
    /// The rejected name.
    pub value: String,
}

/// Lifecycle state of an actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorState {
    /// Registered, not yet serving.
    Starting,
    /// Serving.
    Running,
    /// Failed and waiting for a backoff delay before it tries again.
    Restarting,
    /// Stopped on purpose.
    Stopped,
    /// Gave up (restart storm, fatal error).
    Failed,
}

impl ActorState {
    /// Every state.
    pub const ALL: [ActorState; 5] = [
        Self::Starting,
        Self::Running,
        Self::Restarting,
        Self::Stopped,
        Self::Failed,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        }
    }

    /// Stopped or failed.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Stopped | Self::Failed)
    }
}

impl fmt::Display for ActorState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ActorState {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownName {
                what: "state",
                value: s.to_owned(),
            })
    }
}

/// Identity of an actor in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ActorId {
    pub kind: ActorKind,
    /// Key within the kind (routing key, stream name, connection id, ...). Shared: the
    /// registry's map, the actor's handle and its children's parent links are one copy
    /// (with 100 000 thread actors each copy is megabytes).
    #[serde(serialize_with = "serialize_key")]
    pub key: Arc<str>,
}

fn serialize_key<S: serde::Serializer>(key: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(key)
}

impl ActorId {
    /// An id.
    pub fn new(kind: ActorKind, key: impl Into<String>) -> Self {
        Self {
            kind,
            key: Arc::from(key.into()),
        }
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.key)
    }
}

#[derive(Debug)]
struct Entry {
    parent: Option<ActorId>,
    state: ActorState,
    started_at: DateTime<Utc>,
    stopped_at: Option<Instant>,
    restarts: u64,
    last_error: Option<String>,
    messages_handled: u64,
    backlog: u64,
    last_message_at: Option<DateTime<Utc>>,
    detail: serde_json::Value,
}

/// A point-in-time view of one actor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActorSnapshot {
    pub kind: ActorKind,
    pub key: String,
    /// Supervisor, if any.
    pub parent: Option<ActorId>,
    pub state: ActorState,
    /// When it (last) started.
    pub started_at: DateTime<Utc>,
    /// Restarts since it started.
    pub restarts: u64,
    pub last_error: Option<String>,
    /// Messages handled since it started.
    pub messages_handled: u64,
    /// Messages waiting in its mailbox/queue.
    pub backlog: u64,
    /// When it last finished a message.
    pub last_message_at: Option<DateTime<Utc>>,
    /// Kind-specific facts the actor publishes.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

/// One actor and the actors it supervises.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TreeNode {
    /// The actor.
    #[serde(flatten)]
    pub actor: ActorSnapshot,
    /// Supervised actors, ordered by kind and key.
    pub children: Vec<TreeNode>,
    /// Children left out by the limit of [`HealthRegistry::tree_limited`].
    #[serde(skip_serializing_if = "is_zero")]
    pub children_omitted: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The supervision tree with counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthTree {
    /// Actors registered.
    pub total: usize,
    /// Actors per kind and state.
    pub counts: BTreeMap<ActorKind, BTreeMap<ActorState, u64>>,
    /// Actors without a (registered) supervisor, with their subtrees.
    pub roots: Vec<TreeNode>,
}

type Slot = Arc<Mutex<Entry>>;

/// Registry of live (and recently stopped) actors. Cheap to clone; all clones share state.
#[derive(Clone, Default)]
pub struct HealthRegistry {
    actors: Arc<RwLock<HashMap<ActorId, Slot>>>,
}

impl fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthRegistry")
            .field("actors", &self.actors.read().len())
            .finish()
    }
}

impl HealthRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an actor in state `starting`, replacing an earlier entry with the same id
    /// (a restarted actor starts with fresh counters).
    pub fn register(&self, id: ActorId, parent: Option<ActorId>) -> ActorHealth {
        let slot: Slot = Arc::new(Mutex::new(Entry {
            parent,
            state: ActorState::Starting,
            started_at: Utc::now(),
            stopped_at: None,
            restarts: 0,
            last_error: None,
            messages_handled: 0,
            backlog: 0,
            last_message_at: None,
            detail: serde_json::Value::Null,
        }));
        self.actors.write().insert(id.clone(), slot.clone());
        ActorHealth {
            registry: self.clone(),
            id,
            slot,
        }
    }

    /// Registers a supervisor node `key` under the cluster's `root` (a writer, a registry of
    /// actors started elsewhere), in state `starting`.
    pub fn register_supervisor(&self, key: &str) -> ActorHealth {
        self.register(
            ActorId::new(ActorKind::SUPERVISOR, key),
            Some(ActorId::new(ActorKind::SUPERVISOR, "root")),
        )
    }

    /// One actor.
    pub fn get(&self, kind: ActorKind, key: &str) -> Option<ActorSnapshot> {
        let id = ActorId::new(kind, key);
        let slot = self.actors.read().get(&id).cloned()?;
        Some(snapshot(&id, &slot.lock()))
    }

    /// Every actor of a kind, ordered by key.
    pub fn group(&self, kind: ActorKind) -> Vec<ActorSnapshot> {
        let mut out: Vec<ActorSnapshot> = self
            .slots()
            .into_iter()
            .filter(|(id, _)| id.kind == kind)
            .map(|(id, slot)| snapshot(&id, &slot.lock()))
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Number of actors of `kind` in `state`.
    pub fn count(&self, kind: ActorKind, state: ActorState) -> usize {
        self.slots()
            .into_iter()
            .filter(|(id, slot)| id.kind == kind && slot.lock().state == state)
            .count()
    }

    /// Actors per kind and state (what `/actors` counts).
    pub(crate) fn state_counts(&self) -> BTreeMap<ActorKind, BTreeMap<ActorState, u64>> {
        let mut out: BTreeMap<ActorKind, BTreeMap<ActorState, u64>> = BTreeMap::new();
        for (id, slot) in self.slots() {
            let state = slot.lock().state;
            *out.entry(id.kind).or_default().entry(state).or_insert(0) += 1;
        }
        out
    }

    /// Number of registered actors.
    pub fn len(&self) -> usize {
        self.actors.read().len()
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole supervision tree.
    pub fn tree(&self) -> HealthTree {
        self.tree_limited(usize::MAX)
    }

    /// The supervision tree with at most `max_children` children per actor (the rest are
    /// counted in `children_omitted`); counts always cover every actor.
    pub fn tree_limited(&self, max_children: usize) -> HealthTree {
        let mut snaps: Vec<ActorSnapshot> = self
            .slots()
            .into_iter()
            .map(|(id, slot)| snapshot(&id, &slot.lock()))
            .collect();
        snaps.sort_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
        let mut counts: BTreeMap<ActorKind, BTreeMap<ActorState, u64>> = BTreeMap::new();
        for s in &snaps {
            *counts
                .entry(s.kind)
                .or_default()
                .entry(s.state)
                .or_default() += 1;
        }
        let ids: HashSet<ActorId> = snaps
            .iter()
            .map(|s| ActorId::new(s.kind, s.key.clone()))
            .collect();
        let mut children: HashMap<ActorId, Vec<ActorSnapshot>> = HashMap::new();
        let mut roots = Vec::new();
        let total = snaps.len();
        for s in snaps {
            match &s.parent {
                Some(p) if ids.contains(p) && !(p.kind == s.kind && *p.key == *s.key) => {
                    children.entry(p.clone()).or_default().push(s)
                }
                _ => roots.push(s),
            }
        }
        let roots = roots
            .into_iter()
            .map(|s| build_node(s, &mut children, max_children))
            .collect();
        HealthTree {
            total,
            counts,
            roots,
        }
    }

    /// Removes stopped and failed actors that stopped longer than `older_than` ago.
    pub fn prune(&self, older_than: Duration) -> usize {
        let now = Instant::now();
        let mut map = self.actors.write();
        let before = map.len();
        map.retain(|_, slot| {
            let e = slot.lock();
            !(e.state.is_terminal()
                && e.stopped_at
                    .is_some_and(|t| now.duration_since(t) >= older_than))
        });
        before - map.len()
    }

    fn slots(&self) -> Vec<(ActorId, Slot)> {
        self.actors
            .read()
            .iter()
            .map(|(id, slot)| (id.clone(), slot.clone()))
            .collect()
    }
}

fn build_node(
    actor: ActorSnapshot,
    children: &mut HashMap<ActorId, Vec<ActorSnapshot>>,
    max_children: usize,
) -> TreeNode {
    let id = ActorId::new(actor.kind, actor.key.clone());
    // `remove` also makes a parent cycle terminate: each list is expanded once.
    let kids = children.remove(&id).unwrap_or_default();
    let omitted = kids.len().saturating_sub(max_children);
    let kids = kids
        .into_iter()
        .take(max_children)
        .map(|k| build_node(k, children, max_children))
        .collect();
    TreeNode {
        actor,
        children: kids,
        children_omitted: omitted,
    }
}

fn snapshot(id: &ActorId, e: &Entry) -> ActorSnapshot {
    ActorSnapshot {
        kind: id.kind,
        key: id.key.to_string(),
        parent: e.parent.clone(),
        state: e.state,
        started_at: e.started_at,
        restarts: e.restarts,
        last_error: e.last_error.clone(),
        messages_handled: e.messages_handled,
        backlog: e.backlog,
        last_message_at: e.last_message_at,
        detail: e.detail.clone(),
    }
}

/// An actor's handle on its own registry entry.
pub struct ActorHealth {
    registry: HealthRegistry,
    id: ActorId,
    slot: Slot,
}

impl fmt::Debug for ActorHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActorHealth").field("id", &self.id).finish()
    }
}

impl ActorHealth {
    /// The actor's id.
    pub fn id(&self) -> &ActorId {
        &self.id
    }

    /// Sets the state (`stopped`/`failed` start the retention clock).
    pub fn set_state(&self, state: ActorState) {
        let mut e = self.slot.lock();
        e.state = state;
        e.stopped_at = state.is_terminal().then(Instant::now);
    }

    /// A failure that will be retried after a backoff delay: state `restarting`, counted in
    /// `restarts`, error recorded.
    pub fn retrying(&self, error: &str) {
        let mut e = self.slot.lock();
        e.state = ActorState::Restarting;
        e.restarts += 1;
        e.last_error = Some(error.to_owned());
    }

    /// A failure the actor does not recover from.
    pub fn failed(&self, error: &str) {
        let mut e = self.slot.lock();
        e.state = ActorState::Failed;
        e.stopped_at = Some(Instant::now());
        e.last_error = Some(error.to_owned());
    }

    /// Records an error without changing the state.
    pub fn record_error(&self, error: &str) {
        self.slot.lock().last_error = Some(error.to_owned());
    }

    /// Counts one handled message.
    pub fn record_message(&self) {
        let mut e = self.slot.lock();
        e.messages_handled += 1;
        e.last_message_at = Some(Utc::now());
    }

    /// Sets the backlog.
    pub fn set_backlog(&self, backlog: u64) {
        self.slot.lock().backlog = backlog;
    }

    /// Replaces the free-form detail.
    pub fn set_detail(&self, detail: serde_json::Value) {
        self.slot.lock().detail = detail;
    }

    /// Current state.
    pub fn state(&self) -> ActorState {
        self.slot.lock().state
    }

    /// Removes the entry (unless another actor with the same id has registered since).
    pub(crate) fn deregister(self) {
        let mut map = self.registry.actors.write();
        if map
            .get(&self.id)
            .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
        {
            map.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREAD: ActorKind = ActorKind::new("conversation_thread");
    const CLIENT: ActorKind = ActorKind::new("agent_client");
    const KNOWN: [ActorKind; 3] = [ActorKind::SUPERVISOR, THREAD, CLIENT];

    #[test]
    fn kinds_round_trip() {
        for k in KNOWN {
            assert_eq!(ActorKind::find(k.as_str(), &KNOWN).unwrap(), k);
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
        assert!(ActorKind::find("nope", &KNOWN).is_err());
        assert_eq!("failed".parse::<ActorState>().unwrap(), ActorState::Failed);
    }

    #[test]
    fn supervisors_sort_first() {
        let mut kinds = vec![THREAD, CLIENT, ActorKind::SUPERVISOR];
        kinds.sort();
        assert_eq!(kinds, vec![ActorKind::SUPERVISOR, CLIENT, THREAD]);
    }

    #[test]
    fn tree_groups_children_and_counts() {
        let reg = HealthRegistry::new();
        let root = ActorId::new(ActorKind::SUPERVISOR, "root");
        let r = reg.register(root.clone(), None);
        r.set_state(ActorState::Running);
        let conv = ActorId::new(ActorKind::SUPERVISOR, "conversations");
        reg.register(conv.clone(), Some(root.clone()))
            .set_state(ActorState::Running);
        for i in 0..5 {
            let h = reg.register(
                ActorId::new(THREAD, format!("T/C/{i}.0")),
                Some(conv.clone()),
            );
            h.set_state(ActorState::Running);
            h.record_message();
        }
        let tree = reg.tree_limited(3);
        assert_eq!(tree.total, 7);
        assert_eq!(tree.counts[&THREAD][&ActorState::Running], 5);
        assert_eq!(tree.roots.len(), 1);
        let convs = &tree.roots[0].children[0];
        assert_eq!(&*convs.actor.key, "conversations");
        assert_eq!(convs.children.len(), 3);
        assert_eq!(convs.children_omitted, 2);
        let json = serde_json::to_value(&tree).unwrap();
        assert_eq!(json["roots"][0]["kind"], "supervisor");
        assert_eq!(json["counts"]["conversation_thread"]["running"], 5);
        assert_eq!(reg.group(THREAD).len(), 5);
    }

    #[test]
    fn deregister_and_prune() {
        let reg = HealthRegistry::new();
        let id = ActorId::new(CLIENT, "a");
        let old = reg.register(id.clone(), None);
        let new = reg.register(id.clone(), None);
        old.deregister();
        assert!(reg.get(CLIENT, "a").is_some(), "newer entry kept");
        new.retrying("boom");
        let s = reg.get(CLIENT, "a").unwrap();
        assert_eq!(s.restarts, 1);
        assert_eq!(s.last_error.as_deref(), Some("boom"));
        new.failed("gave up");
        assert_eq!(reg.prune(Duration::from_secs(3600)), 0);
        assert_eq!(reg.prune(Duration::ZERO), 1);
        assert!(reg.is_empty());
    }
}
