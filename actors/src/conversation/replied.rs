//! What this process's SendReplies did, by the turn they answered, so the turn's worker in
//! the same process knows the agent's answer is posted without reading the store again.
//!
//! Only a shortcut: a SendReply that reached another replica, or whose record was lost with
//! a crash, is not here, and the worker then reads the turn's state from the store as it
//! always did.
//!
//! It also keeps the conversations whose SendReply this process refused for a moment (the
//! store or Slack unavailable): an agent that gives up on such a refusal answers
//! `success: false`, and that turn is tried again rather than answered with a notice.

use std::sync::Mutex;

use super::recent::RecentMap;
use crate::ids::{ConversationId, MessageTs};

/// How many turns are remembered. An entry is taken as soon as its turn's agent call
/// returns; the bound only matters for replies whose turn is worked on elsewhere.
const REMEMBERED: usize = 4096;

type TurnKey = (ConversationId, MessageTs);

/// The SendReplies of one turn handled here.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    running: u32,
    posted: u32,
    failed: bool,
}

/// The SendReplies this process handled lately (see the module docs).
#[derive(Debug)]
pub struct RepliesHere {
    turns: Mutex<RecentMap<TurnKey, Tally>>,
    /// Conversations with a SendReply refused for a moment since their worker last looked
    /// ([`RepliesHere::refused`]).
    refused: Mutex<RecentMap<ConversationId, ()>>,
}

impl Default for RepliesHere {
    fn default() -> Self {
        Self {
            turns: Mutex::new(RecentMap::new(REMEMBERED)),
            refused: Mutex::new(RecentMap::new(REMEMBERED)),
        }
    }
}

impl RepliesHere {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    fn turns(&self) -> std::sync::MutexGuard<'_, RecentMap<TurnKey, Tally>> {
        lock(&self.turns)
    }

    /// A SendReply for the turn starts; the returned guard says how it ended (a guard
    /// dropped without [`ReplyTally::posted`] counts as failed).
    pub fn begin(&self, conversation: ConversationId, turn: &MessageTs) -> ReplyTally<'_> {
        let key = (conversation, turn.clone());
        self.turns()
            .get_or_insert_with(key.clone(), Tally::default)
            .running += 1;
        ReplyTally {
            here: self,
            key: Some(key),
            posted: false,
        }
    }

    fn end(&self, key: &TurnKey, posted: bool) {
        if let Some(t) = self.turns().get_mut(key) {
            t.running = t.running.saturating_sub(1);
            if posted {
                t.posted += 1;
            } else {
                t.failed = true;
            }
        }
    }

    /// A SendReply to `conversation` was refused for a reason that passes (the store or
    /// Slack unavailable, another process posting the same reply).
    pub fn refused(&self, conversation: ConversationId) {
        lock(&self.refused).get_or_insert_with(conversation, || ());
    }

    /// True when a SendReply to `conversation` was refused for a moment since the last call
    /// (the conversation's worker asks once per agent answer, so an old refusal does not
    /// linger). Forgets it.
    pub fn take_refused(&self, conversation: ConversationId) -> bool {
        lock(&self.refused).remove(&conversation).is_some()
    }

    /// True when a SendReply for the turn has begun here (under way, posted or failed):
    /// the agent is answering it. Forgets nothing.
    pub fn replying(&self, conversation: ConversationId, turn: &MessageTs) -> bool {
        self.turns().get(&(conversation, turn.clone())).is_some()
    }

    /// True when SendReplies handled here posted the turn's answer (at least one did, none
    /// failed, none is still under way). Forgets the turn either way.
    pub fn take_answered(&self, conversation: ConversationId, turn: &MessageTs) -> bool {
        self.turns()
            .remove(&(conversation, turn.clone()))
            .is_some_and(|t| t.posted > 0 && t.running == 0 && !t.failed)
    }
}

/// A panic while holding one of the maps leaves a plain map: still usable.
fn lock<T>(map: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    map.lock().unwrap_or_else(|e| e.into_inner())
}

/// One SendReply under way ([`RepliesHere::begin`]).
#[derive(Debug)]
pub struct ReplyTally<'a> {
    here: &'a RepliesHere,
    key: Option<TurnKey>,
    posted: bool,
}

impl ReplyTally<'_> {
    /// The reply is in the thread and recorded (posted now, or found posted).
    pub fn posted(mut self) {
        self.posted = true;
    }
}

impl Drop for ReplyTally<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.here.end(&key, self.posted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(s: &str) -> MessageTs {
        MessageTs::parse(s).expect("ts")
    }

    #[test]
    fn a_turn_is_answered_when_its_replies_all_posted() {
        let here = RepliesHere::new();
        let c = ConversationId::new_random();
        let t = turn("1700000000.000100");
        assert!(!here.take_answered(c, &t), "nothing handled here");
        here.begin(c, &t).posted();
        here.begin(c, &t).posted();
        assert!(here.take_answered(c, &t));
        assert!(!here.take_answered(c, &t), "taken once");
    }

    #[test]
    fn a_reply_under_way_or_failed_leaves_the_turn_to_the_store() {
        let here = RepliesHere::new();
        let c = ConversationId::new_random();
        let t = turn("1700000000.000100");
        here.begin(c, &t).posted();
        let running = here.begin(c, &t);
        assert!(!here.take_answered(c, &t), "one is still under way");
        drop(running);

        here.begin(c, &t).posted();
        drop(here.begin(c, &t));
        assert!(!here.take_answered(c, &t), "one failed");
    }

    #[test]
    fn a_refusal_is_taken_once() {
        let here = RepliesHere::new();
        let c = ConversationId::new_random();
        assert!(!here.take_refused(c), "nothing refused");
        here.refused(c);
        here.refused(c);
        assert!(
            !here.take_refused(ConversationId::new_random()),
            "another one"
        );
        assert!(here.take_refused(c));
        assert!(!here.take_refused(c), "taken once");
    }

    #[test]
    fn old_turns_are_forgotten_past_the_bound() {
        let here = RepliesHere::new();
        let c = ConversationId::new_random();
        let first = turn("1700000000.000001");
        here.begin(c, &first).posted();
        for i in 0..REMEMBERED {
            here.begin(c, &turn(&format!("1700000001.{i:06}"))).posted();
        }
        assert!(!here.take_answered(c, &first), "evicted");
        assert!(here.take_answered(c, &turn("1700000001.000010")));
        assert!(here.turns().len() <= REMEMBERED);
    }
}
