-- A message is looked up by its conversation and ts through the unique
-- (conversation_id, slack_ts) index. The turn's first statement's generic plan, made while
-- `messages` was small, did those lookups (is the message stored, which event stored it)
-- through `messages_conversation_idx` instead, the two costing the same then, and so read
-- every message of the thread at every turn (BENCHMARKS.md, "History in memory"). The
-- history read is the one reader that needs this index's order, and it reads live messages
-- only: as a partial index of live messages, no lookup that does not ask for live messages
-- can choose it. Building it locks `messages` against writes while it scans the table.
DROP INDEX messages_conversation_idx;
CREATE INDEX messages_conversation_idx ON messages (conversation_id, created_at)
    WHERE NOT deleted;
