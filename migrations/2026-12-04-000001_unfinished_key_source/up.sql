-- The check that no older event of the same source and routing key is unfinished (the claim,
-- the claim at record, a refusal's reason) probes this index. With the source among its
-- columns the index answers the whole check, so the planner does not AND it with a bitmap of
-- (source, source_id) — every event of the source. A generic plan made while the table was
-- small did exactly that, and its cost grew with the inbox until the next analyze.
DROP INDEX inbound_events_unfinished_key_idx;
CREATE INDEX inbound_events_unfinished_key_idx ON inbound_events (routing_key, source, id)
    WHERE status IN ('pending', 'processing');
