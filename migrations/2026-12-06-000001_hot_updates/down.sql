ALTER TABLE reply_intents RESET (fillfactor);
ALTER TABLE conversations RESET (fillfactor);
CREATE INDEX reply_intents_unfinished_idx ON reply_intents (conversation_id, turn_ts)
    WHERE posted_at IS NULL;
DROP INDEX conversations_created_idx;
CREATE INDEX conversations_last_message_idx ON conversations (last_message_at);
