-- The durable inbox: every inbound event is stored here, keyed by its source id, before it is
-- acknowledged. Processing state lives on the row so work resumes after a crash.

CREATE TABLE inbound_events (
    id           BIGSERIAL PRIMARY KEY,
    -- 'slack', 'github', 'clerk', ...
    source       TEXT NOT NULL,
    -- Slack event_id, X-GitHub-Delivery, svix-id.
    source_id    TEXT NOT NULL,
    -- Which keyed actor handles it (thread key, installation id, ...); order is kept per key.
    routing_key  TEXT NOT NULL,
    kind         TEXT NOT NULL,
    payload      JSONB NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- 'pending', 'processing', 'done', 'failed', 'ignored'
    status       TEXT NOT NULL DEFAULT 'pending',
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    processed_at TIMESTAMPTZ,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (source, source_id)
);
CREATE INDEX inbound_events_unfinished_idx ON inbound_events (id)
    WHERE status IN ('pending', 'processing');
CREATE INDEX inbound_events_failed_idx ON inbound_events (id) WHERE status = 'failed';

CREATE TABLE audit_log (
    id              BIGSERIAL PRIMARY KEY,
    organization_id UUID,
    actor           TEXT NOT NULL,
    action          TEXT NOT NULL,
    target          TEXT,
    details         JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_org_idx ON audit_log (organization_id, id DESC);
