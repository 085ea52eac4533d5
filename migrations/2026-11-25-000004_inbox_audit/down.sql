DROP TABLE audit_log;
DROP TABLE inbound_events;
