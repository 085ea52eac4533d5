-- A process keeps the latest history of the threads it served, so that a turn of a known
-- thread reads none of the messages it has already read (issue 12; ARCHITECTURE.md,
-- "History in memory"). `history_seq` tells it whether what it holds is still the thread's
-- history: every change to a conversation's messages moves it forward.
--
-- The statements that insert messages already update their conversation (its last message's
-- time) and move the number in that same update, at no cost of its own: the turn's first
-- statement, the posted parts, and a message stored on its own. Any other change to a stored
-- message (an edit, a deletion) moves it here, once per statement and conversation: those
-- are rare, and no insert pays for it.
ALTER TABLE conversations ADD COLUMN history_seq bigint NOT NULL DEFAULT 0;

CREATE FUNCTION infragpt_history_changed() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    UPDATE conversations c SET history_seq = c.history_seq + 1
        WHERE c.id IN (SELECT DISTINCT conversation_id FROM changed);
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_updated_move_history AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION infragpt_history_changed();
CREATE TRIGGER messages_deleted_move_history AFTER DELETE ON messages
    REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION infragpt_history_changed();
