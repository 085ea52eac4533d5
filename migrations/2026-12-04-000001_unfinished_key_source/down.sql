DROP INDEX inbound_events_unfinished_key_idx;
CREATE INDEX inbound_events_unfinished_key_idx ON inbound_events (routing_key, id)
    WHERE status IN ('pending', 'processing');
