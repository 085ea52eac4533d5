-- Retention deletes finished events (done, ignored) by age in small batches; this index lets
-- each batch find its oldest rows without scanning the payloads of the whole table. Dead
-- letters (failed) and unfinished events are never deleted, so they are not in it.
CREATE INDEX inbound_events_retention_idx ON inbound_events (processed_at)
    WHERE status IN ('done', 'ignored');
