DROP INDEX messages_reply_idx;
ALTER TABLE conversations DROP COLUMN current_turn_ts;
ALTER TABLE messages DROP COLUMN in_reply_to;
ALTER TABLE messages DROP COLUMN source_event_id;
