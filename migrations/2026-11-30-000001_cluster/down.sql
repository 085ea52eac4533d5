DROP TABLE cluster_partitions;
DROP TABLE cluster_replicas;
DROP INDEX inbound_events_unfinished_key_idx;
ALTER TABLE inbound_events DROP COLUMN partition;
DROP FUNCTION infragpt_partition(text);
