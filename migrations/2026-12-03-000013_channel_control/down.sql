DROP TABLE IF EXISTS slash_questions;
ALTER TABLE channels DROP COLUMN IF EXISTS watch_stopped;
