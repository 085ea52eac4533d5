DO $$
BEGIN
    EXECUTE 'ALTER TABLE inbound_events
        ALTER COLUMN payload SET COMPRESSION default,
        ALTER COLUMN raw_body SET COMPRESSION default';
EXCEPTION WHEN syntax_error THEN
    RAISE NOTICE 'no per-column compression here: nothing to revert';
END
$$;
