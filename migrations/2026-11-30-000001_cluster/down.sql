DROP TABLE cluster_partitions;
DROP TABLE cluster_replicas;
ALTER TABLE inbound_events DROP COLUMN partition;
DROP FUNCTION infragpt_partition(text);
