-- What a stored message is, besides who sent it: 'message' (a user's text or the agent's
-- answer: the conversation proper, sent to the agent as history) or 'notice' (something the
-- service itself posted in the thread, such as "the assistant could not answer": shown to
-- people, never sent back to the agent, and never counted as the turn's answer).
-- Progress placeholders and approval prompts get kinds of their own when they exist.
ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'message'
    CONSTRAINT messages_kind_check CHECK (kind IN ('message', 'notice'));
