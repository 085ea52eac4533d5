ALTER TABLE inbound_events DROP COLUMN raw_body;
