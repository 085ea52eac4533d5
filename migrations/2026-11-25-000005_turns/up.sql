-- Turn tracking: which inbound event stored a user message (so the app_mention/message twins
-- of one human message make one turn, while a retry of the same event resumes it), which user
-- message an agent message answers, and the user message the current turn answers (SendReply
-- idempotency).
ALTER TABLE messages ADD COLUMN source_event_id BIGINT;
ALTER TABLE messages ADD COLUMN in_reply_to TEXT;
ALTER TABLE conversations ADD COLUMN current_turn_ts TEXT;
CREATE INDEX messages_reply_idx ON messages (conversation_id, in_reply_to) WHERE in_reply_to IS NOT NULL;
