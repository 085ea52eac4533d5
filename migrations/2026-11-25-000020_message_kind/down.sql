-- Without the column a notice would read as an agent answer (and go back to the agent as
-- history), so notices go with it.
DELETE FROM messages WHERE kind = 'notice';
ALTER TABLE messages DROP COLUMN kind;
