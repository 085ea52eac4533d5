//! A map that remembers only its most recent keys: what a handler keeps in memory to skip a
//! statement, bounded so it cannot grow with traffic.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// At most `cap` keys; inserting past that forgets the oldest inserted key.
#[derive(Debug)]
pub(crate) struct RecentMap<K, V> {
    cap: usize,
    /// Each value with its insertion number.
    entries: HashMap<K, (u64, V)>,
    /// Keys in insertion order, with their insertion number: a key removed and inserted
    /// again has a newer number, so its older place in the queue cannot evict it.
    order: VecDeque<(K, u64)>,
    next: u64,
}

impl<K: Eq + Hash + Clone, V> RecentMap<K, V> {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            entries: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
        }
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(_, v)| v)
    }

    /// The key's value, inserted with `make` when absent.
    pub(crate) fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        if !self.entries.contains_key(&key) {
            while self.order.len() >= self.cap {
                let Some((old, seq)) = self.order.pop_front() else {
                    break;
                };
                if self.entries.get(&old).is_some_and(|(s, _)| *s == seq) {
                    self.entries.remove(&old);
                }
            }
            self.next += 1;
            self.order.push_back((key.clone(), self.next));
        }
        let seq = self.next;
        &mut self.entries.entry(key).or_insert_with(|| (seq, make())).1
    }

    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|(_, v)| v)
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.remove(key).map(|(_, v)| v)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_key_is_forgotten_first_and_a_reinserted_one_counts_as_new() {
        let mut m = RecentMap::new(2);
        *m.get_or_insert_with("a", || 0) += 1;
        m.get_or_insert_with("b", || 2);
        assert_eq!(m.remove(&"a"), Some(1));
        m.get_or_insert_with("a", || 3);
        m.get_or_insert_with("c", || 4);
        assert_eq!(m.get(&"b"), None, "the oldest went");
        assert_eq!(m.get(&"a"), Some(&3), "its old place did not evict it");
        assert_eq!(m.get(&"c"), Some(&4));
        assert!(m.len() <= 2);
    }
}
