DROP TRIGGER messages_deleted_move_history ON messages;
DROP TRIGGER messages_updated_move_history ON messages;
DROP FUNCTION infragpt_history_changed();
ALTER TABLE conversations DROP COLUMN history_seq;
