-- A turn updates its conversation (the last message's time, the current turn) and its reply
-- intent (posted). An update that changes no indexed column can be HOT: the new row version
-- stays on its page and no index gets a new entry. Both tables had an index on a column
-- those updates change, so every such update wrote a new entry into each of their indexes
-- (BENCHMARKS.md, "HOT updates of conversations and reply intents").
--
-- Conversation retention selects by creation time instead: a conversation whose last
-- message is older than the cut-off was created before it too, so the old filter is kept
-- and this index finds the candidates oldest first.
DROP INDEX conversations_last_message_idx;
CREATE INDEX conversations_created_idx ON conversations (created_at);
-- Unfinished intents are always looked up by conversation (and turn), a prefix of
-- `reply_intents_key`; a turn has one or two intents.
DROP INDEX reply_intents_unfinished_idx;
-- Room on each page for the updated versions (new pages only; existing ones keep theirs).
ALTER TABLE conversations SET (fillfactor = 90);
ALTER TABLE reply_intents SET (fillfactor = 90);
