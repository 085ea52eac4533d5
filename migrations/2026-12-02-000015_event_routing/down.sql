DROP TABLE event_rule_hits;
DROP TABLE event_messages;
DROP TABLE event_rules;
DROP TABLE event_sources;
