-- Several replicas on one database (ARCHITECTURE.md, "Replicas").

-- The partition of a routing key: FNV-1a (32 bit) of its UTF-8 bytes modulo 64, the same as
-- `Partition::of` in the runtime (a test keeps the two equal). The service computes it for
-- new rows; this function fills the rows stored before partitions existed.
CREATE FUNCTION infragpt_partition(key text) RETURNS smallint
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    h bigint := 2166136261;
    b bytea := convert_to(key, 'UTF8');
BEGIN
    FOR i IN 0 .. length(b) - 1 LOOP
        h := ((h # get_byte(b, i)::bigint) * 16777619) % 4294967296;
    END LOOP;
    RETURN (h % 64)::smallint;
END
$$;

ALTER TABLE inbound_events ADD COLUMN partition smallint;
UPDATE inbound_events SET partition = infragpt_partition(routing_key);
ALTER TABLE inbound_events ALTER COLUMN partition SET NOT NULL;
-- A claim checks that no older event of the same key is unfinished (per-key order across
-- replicas is decided by the inbox): this keeps that check an index lookup.
CREATE INDEX inbound_events_unfinished_key_idx ON inbound_events (routing_key, id)
    WHERE status IN ('pending', 'processing');

-- One row per replica process: its heartbeat says it is alive.
CREATE TABLE cluster_replicas (
    replica_id   text PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    version      text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    -- 'active', 'draining' (handing its partitions over) or 'stopped'
    status       text NOT NULL DEFAULT 'active'
);

-- One row per partition: who holds it, until when (the database's clock), and the fencing
-- epoch, which grows at every change of owner.
CREATE TABLE cluster_partitions (
    partition   smallint PRIMARY KEY,
    owner       text,
    epoch       bigint NOT NULL DEFAULT 0,
    lease_until timestamptz,
    acquired_at timestamptz
);
INSERT INTO cluster_partitions (partition) SELECT generate_series(0, 63);
