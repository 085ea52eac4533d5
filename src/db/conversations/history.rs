//! The history of the threads this process served, kept in memory so that a turn of a known
//! thread reads none of the messages it has read before (issue 12; ARCHITECTURE.md,
//! "History in memory"). The database stays the truth: what is kept counts only while the
//! conversation's `history_seq` says nothing else changed its messages.
//!
//! Each statement that changes a conversation's messages moves `history_seq` forward by
//! exactly one and returns the new number: the turn's first statement ([`super::BEGIN_TURN`],
//! whether or not it stores the message) and a batch of posted parts (once per conversation,
//! however many of its messages the batch stores). What this process knows at `n` plus what
//! such a statement stored is therefore the history at `n + 1`; any other number means that
//! somebody else changed the thread (another replica, an edit, a deletion), and the entry
//! is dropped for a read of the thread.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use infragpt_actors::conversation::StoredMessage;
use infragpt_actors::ids::ThreadKey;

/// What a message is counted as besides its text: ids, ts, sender, the entry's share of
/// the maps.
const MESSAGE_OVERHEAD: usize = 160;

/// Threads' histories within a byte budget; the least recently served go first. A budget of
/// 0 keeps nothing.
#[derive(Debug, Default)]
pub(crate) struct HistoryCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The latest messages a history holds besides the thread's first.
    limit: usize,
    budget: usize,
    entries: HashMap<uuid::Uuid, Entry>,
    /// The conversation of each kept thread: a turn knows the thread before the statement
    /// tells it the conversation.
    threads: HashMap<ThreadKey, uuid::Uuid>,
    /// Conversations in the order they were last filled or advanced, with that stamp: an
    /// entry's older places do not evict it.
    order: VecDeque<(uuid::Uuid, u64)>,
    bytes: usize,
    next: u64,
}

#[derive(Debug)]
struct Entry {
    key: ThreadKey,
    seq: i64,
    messages: Vec<StoredMessage>,
    bytes: usize,
    stamp: u64,
}

impl HistoryCache {
    /// Histories of `limit` latest messages (and the first), `budget` bytes in all.
    #[cfg(test)]
    pub(crate) fn new(limit: u32, budget: usize) -> Self {
        let cache = Self::default();
        cache.configure(limit, budget);
        cache
    }

    /// Histories of `limit` latest messages from now on, forgetting everything kept.
    pub(crate) fn set_limit(&self, limit: u32) {
        let budget = self.lock().budget;
        self.configure(limit, budget);
    }

    /// Sets what [`Self::new`] takes, forgetting everything kept.
    pub(crate) fn configure(&self, limit: u32, budget: usize) {
        let mut inner = self.lock();
        *inner = Inner {
            limit: usize::try_from(limit).unwrap_or(usize::MAX).max(1),
            budget,
            ..Inner::default()
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding it leaves maps that are still maps; the seq checks keep
        // every answer right.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a history of `key` is kept (it may turn out stale): its turn need not read
    /// the thread together with its first statement.
    pub(crate) fn knows(&self, key: &ThreadKey) -> bool {
        self.lock().threads.contains_key(key)
    }

    /// The thread's history after a statement that moved conversation `id` to `seq` and
    /// stored `stored` (nothing when the message was there already), when this process knew
    /// the history just before it; `None` otherwise, the entry dropped when it is older than
    /// the statement. `stored` is only iterated when it is kept.
    pub(crate) fn advance(
        &self,
        id: uuid::Uuid,
        seq: i64,
        stored: impl IntoIterator<Item = StoredMessage>,
    ) -> Option<Vec<StoredMessage>> {
        self.advance_with(id, seq, stored, <[StoredMessage]>::to_vec)
    }

    /// As [`Self::advance`] for a writer that only keeps the history current (the posted
    /// parts): true when it was kept, and nothing is copied out.
    pub(crate) fn extend(
        &self,
        id: uuid::Uuid,
        seq: i64,
        stored: impl IntoIterator<Item = StoredMessage>,
    ) -> bool {
        self.advance_with(id, seq, stored, |_| ()).is_some()
    }

    fn advance_with<R>(
        &self,
        id: uuid::Uuid,
        seq: i64,
        stored: impl IntoIterator<Item = StoredMessage>,
        read: impl FnOnce(&[StoredMessage]) -> R,
    ) -> Option<R> {
        let mut inner = self.lock();
        let limit = inner.limit;
        let entry = inner.entries.get_mut(&id)?;
        if entry.seq.checked_add(1) != Some(seq) {
            // Behind: somebody else wrote, so the thread must be read. Ahead: a read already
            // saw this statement's rows, and stays.
            let behind = entry.seq < seq;
            if behind {
                inner.remove(id);
            }
            return None;
        }
        let before = entry.bytes;
        entry.seq = seq;
        merge(&mut entry.messages, stored, limit);
        entry.bytes = weight(&entry.messages);
        let history = read(&entry.messages);
        let after = entry.bytes;
        inner.next += 1;
        let stamp = inner.next;
        if let Some(entry) = inner.entries.get_mut(&id) {
            entry.stamp = stamp;
        }
        inner.order.push_back((id, stamp));
        inner.bytes = inner.bytes - before + after;
        inner.evict();
        Some(history)
    }

    /// Keeps `messages` as the history of `key` (conversation `id`) at `seq`: what one
    /// statement read, or what a thread's first statement stored into an empty thread.
    pub(crate) fn fill(
        &self,
        key: &ThreadKey,
        id: uuid::Uuid,
        seq: i64,
        messages: &[StoredMessage],
    ) {
        let mut inner = self.lock();
        let mut messages = messages.to_vec();
        trim(&mut messages, inner.limit);
        let bytes = weight(&messages);
        if bytes > inner.budget {
            inner.remove(id);
            return;
        }
        if inner.entries.get(&id).is_some_and(|e| e.seq > seq) {
            // A later statement's history is kept already.
            return;
        }
        inner.remove(id);
        if let Some(other) = inner.threads.insert(key.clone(), id)
            && other != id
        {
            // The thread's conversation was deleted and started again.
            inner.remove(other);
        }
        inner.next += 1;
        let stamp = inner.next;
        inner.order.push_back((id, stamp));
        inner.bytes += bytes;
        inner.entries.insert(
            id,
            Entry {
                key: key.clone(),
                seq,
                messages,
                bytes,
                stamp,
            },
        );
        inner.evict();
    }

    /// Forgets conversation `id` (a statement moved it in a way this process does not
    /// follow).
    pub(crate) fn forget(&self, id: uuid::Uuid) {
        self.lock().remove(id);
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

impl Inner {
    fn remove(&mut self, id: uuid::Uuid) {
        if let Some(entry) = self.entries.remove(&id) {
            self.bytes -= entry.bytes;
            if self.threads.get(&entry.key) == Some(&id) {
                self.threads.remove(&entry.key);
            }
        }
    }

    fn evict(&mut self) {
        while self.bytes > self.budget {
            let Some((id, stamp)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&id).is_some_and(|e| e.stamp == stamp) {
                self.remove(id);
            }
        }
        // Places of refilled or removed entries pile up behind live ones; drop them once
        // they outnumber the entries.
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order
                .retain(|(id, stamp)| entries.get(id).is_some_and(|e| e.stamp == *stamp));
        }
    }
}

/// The order of a thread's history ([`super::THREAD_HISTORY`]): by creation, then by ts.
fn order(a: &StoredMessage, b: &StoredMessage) -> std::cmp::Ordering {
    a.created_at
        .cmp(&b.created_at)
        .then_with(|| a.slack_ts.as_str().cmp(b.slack_ts.as_str()))
}

/// Adds `stored` to `messages` in the history's order, each message once, then keeps the
/// first and the latest `limit` as a read of the thread would. A message the history did not
/// hold is older than all it holds but the first, or new: the first and the latest of the
/// union are the thread's.
fn merge(
    messages: &mut Vec<StoredMessage>,
    stored: impl IntoIterator<Item = StoredMessage>,
    limit: usize,
) {
    for message in stored {
        if !messages.iter().any(|m| m.id == message.id) {
            messages.push(message);
        }
    }
    trim(messages, limit);
}

fn trim(messages: &mut Vec<StoredMessage>, limit: usize) {
    messages.sort_by(order);
    if messages.len() > limit + 1 {
        messages.drain(1..messages.len() - limit);
    }
}

fn weight(messages: &[StoredMessage]) -> usize {
    messages
        .iter()
        .map(|m| m.text.len() + MESSAGE_OVERHEAD)
        .sum::<usize>()
        + MESSAGE_OVERHEAD
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use infragpt_actors::conversation::{MessageKind, Sender};
    use infragpt_actors::ids::{ChannelId, MessageTs, TeamId};

    use super::*;

    fn key(thread: &str) -> ThreadKey {
        ThreadKey::new(
            TeamId::parse("T1").unwrap(),
            ChannelId::parse("C1").unwrap(),
            MessageTs::parse(thread).unwrap(),
        )
    }

    fn message(n: i64, text: &str) -> StoredMessage {
        StoredMessage {
            id: uuid::Uuid::from_u128(n as u128),
            slack_ts: MessageTs::parse(format!("1700000000.{n:06}")).unwrap(),
            sender: Sender::Agent,
            text: text.to_owned(),
            created_at: Utc.timestamp_opt(1_700_000_000 + n, 0).unwrap(),
            in_reply_to: None,
            kind: MessageKind::Message,
        }
    }

    fn ids(messages: &[StoredMessage]) -> Vec<u128> {
        messages.iter().map(|m| m.id.as_u128()).collect()
    }

    #[test]
    fn a_statement_right_after_the_kept_one_extends_the_history() {
        let cache = HistoryCache::new(100, 1 << 20);
        let conv = uuid::Uuid::from_u128(7);
        cache.fill(&key("1.0"), conv, 0, &[message(1, "a")]);
        assert!(cache.knows(&key("1.0")));
        let history = cache.advance(conv, 1, vec![message(2, "b")]).unwrap();
        assert_eq!(ids(&history), [1, 2]);
        // A statement that stored nothing (a redelivery) still moved the number by one.
        let history = cache.advance(conv, 2, vec![]).unwrap();
        assert_eq!(ids(&history), [1, 2]);
    }

    #[test]
    fn a_writer_that_only_extends_keeps_the_history_current() {
        let cache = HistoryCache::new(100, 1 << 20);
        let conv = uuid::Uuid::from_u128(7);
        cache.fill(&key("1.0"), conv, 0, &[message(1, "a")]);
        assert!(cache.extend(conv, 1, vec![message(2, "b")]));
        assert!(cache.extend(conv, 2, vec![message(3, "c")]));
        assert_eq!(ids(&cache.advance(conv, 3, vec![]).unwrap()), [1, 2, 3]);
        // Out of step (another writer moved the number): dropped, as `advance` drops it.
        assert!(!cache.extend(conv, 5, vec![message(4, "d")]));
        assert_eq!(cache.advance(conv, 6, vec![]), None);
    }

    #[test]
    fn a_change_by_anybody_else_drops_the_history() {
        let cache = HistoryCache::new(100, 1 << 20);
        let conv = uuid::Uuid::from_u128(7);
        cache.fill(&key("1.0"), conv, 3, &[message(1, "a")]);
        assert_eq!(cache.advance(conv, 5, vec![message(2, "b")]), None);
        assert!(!cache.knows(&key("1.0")), "dropped, so the next turn reads");
        assert_eq!(cache.advance(conv, 6, vec![]), None);
    }

    #[test]
    fn a_late_answer_from_before_a_read_leaves_the_read_alone() {
        let cache = HistoryCache::new(100, 1 << 20);
        let conv = uuid::Uuid::from_u128(7);
        cache.fill(&key("1.0"), conv, 4, &[message(1, "a"), message(2, "b")]);
        // The batch that moved it to 3 reports after a read at 4.
        assert_eq!(cache.advance(conv, 3, vec![message(2, "b")]), None);
        assert!(cache.knows(&key("1.0")));
        // And an older read does not replace a newer one.
        cache.fill(&key("1.0"), conv, 2, &[message(1, "a")]);
        assert_eq!(ids(&cache.advance(conv, 5, vec![]).unwrap()), [1, 2]);
    }

    #[test]
    fn the_history_keeps_the_first_message_and_the_latest_in_order() {
        let cache = HistoryCache::new(3, 1 << 20);
        let conv = uuid::Uuid::from_u128(7);
        cache.fill(&key("1.0"), conv, 0, &[message(1, "a"), message(3, "c")]);
        let history = cache
            .advance(
                conv,
                1,
                vec![message(5, "e"), message(4, "d"), message(3, "c")],
            )
            .unwrap();
        assert_eq!(ids(&history), [1, 3, 4, 5]);
        let history = cache.advance(conv, 2, vec![message(6, "f")]).unwrap();
        assert_eq!(ids(&history), [1, 4, 5, 6]);
        // A read longer than the limit is cut the same way.
        let many: Vec<_> = (10..20).map(|n| message(n, "x")).collect();
        cache.fill(&key("1.0"), conv, 9, &many);
        assert_eq!(
            ids(&cache.advance(conv, 10, vec![]).unwrap()),
            [10, 17, 18, 19]
        );
    }

    #[test]
    fn the_budget_evicts_the_least_recently_served_threads() {
        let one = weight(&[message(1, "a")]);
        let cache = HistoryCache::new(100, 2 * one);
        let (a, b, c) = (
            uuid::Uuid::from_u128(1),
            uuid::Uuid::from_u128(2),
            uuid::Uuid::from_u128(3),
        );
        cache.fill(&key("1.0"), a, 0, &[message(1, "a")]);
        cache.fill(&key("2.0"), b, 0, &[message(2, "a")]);
        cache.fill(&key("1.0"), a, 1, &[message(1, "a")]);
        cache.fill(&key("3.0"), c, 0, &[message(3, "a")]);
        assert!(cache.knows(&key("1.0")), "refilled, so newer than 2.0");
        assert!(!cache.knows(&key("2.0")));
        assert!(cache.knows(&key("3.0")));
        assert_eq!(cache.bytes(), 2 * one);
        // A turn served from memory counts as recent too.
        assert!(cache.advance(a, 2, vec![]).is_some());
        cache.fill(&key("2.0"), b, 0, &[message(2, "a")]);
        assert!(cache.knows(&key("1.0")), "served after 3.0 was filled");
        assert!(!cache.knows(&key("3.0")));
        assert!(cache.knows(&key("2.0")));
        // A history larger than the whole budget is not kept.
        cache.fill(
            &key("4.0"),
            uuid::Uuid::from_u128(4),
            0,
            &[message(4, &"x".repeat(4 * one))],
        );
        assert!(!cache.knows(&key("4.0")));
    }

    #[test]
    fn a_thread_started_again_forgets_its_old_conversation() {
        let cache = HistoryCache::new(100, 1 << 20);
        let (old, new) = (uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
        cache.fill(&key("1.0"), old, 4, &[message(1, "a")]);
        cache.fill(&key("1.0"), new, 0, &[message(2, "b")]);
        assert_eq!(cache.advance(old, 5, vec![]), None);
        assert_eq!(ids(&cache.advance(new, 1, vec![]).unwrap()), [2]);
        cache.forget(new);
        assert!(!cache.knows(&key("1.0")));
        assert_eq!(cache.bytes(), 0);
    }
}
