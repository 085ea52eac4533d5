-- Webhook bodies (GitHub pushes and pull requests are 5-30 KB) are compressed when they are
-- stored. With PostgreSQL's default, pglz, compressing them took a sixth of the database's
-- CPU while webhooks arrived (BENCHMARKS.md, "GitHub event rows grouped, inbox payloads in
-- lz4"); lz4 does the same job several times faster. Only values written from now on use it,
-- and no table is rewritten. A server built without lz4, or older than PostgreSQL 14 (no
-- per-column compression), keeps its default: the schema is the same either way.
DO $$
BEGIN
    EXECUTE 'ALTER TABLE inbound_events
        ALTER COLUMN payload SET COMPRESSION lz4,
        ALTER COLUMN raw_body SET COMPRESSION lz4';
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    RAISE NOTICE 'inbound_events keeps the default compression: %', SQLERRM;
END
$$;
