-- Events that reach people (issue 15): an organization's webhook sources (Alertmanager,
-- PagerDuty), its routing rules, the Slack message of each event thing (one per thing and
-- channel: the unique key is what keeps two replicas from posting twice), and the storm
-- windows of the rules.

CREATE TABLE event_sources (
    id                UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id   UUID NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    -- 'alertmanager' | 'pagerduty'
    kind              TEXT NOT NULL,
    name              TEXT NOT NULL,
    -- 'bearer' (Alertmanager http_config) | 'hmac' (X-InfraGPT-Signature; PagerDuty's own)
    auth              TEXT NOT NULL,
    -- The secret, AES-256-GCM under the vault's keys (AAD: the source id and 'event_source_secret').
    secret_nonce      BYTEA NOT NULL,
    secret_ciphertext BYTEA NOT NULL,
    secret_key_id     TEXT NOT NULL,
    created_by        TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at        TIMESTAMPTZ
);
CREATE INDEX event_sources_org_idx ON event_sources (organization_id, created_at);

CREATE TABLE event_rules (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  UUID NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    -- 'github' | 'alertmanager' | 'pagerduty' (also in spec; here for the lookup)
    source_kind      TEXT NOT NULL,
    enabled          BOOLEAN NOT NULL DEFAULT true,
    -- The rule as the API reads it (RuleSpec).
    spec             JSONB NOT NULL,
    created_by       TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX event_rules_org_idx ON event_rules (organization_id, source_kind);

CREATE TABLE event_messages (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  UUID NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    team_id          TEXT NOT NULL,
    channel_id       TEXT NOT NULL,
    -- The workflow run, alert group, incident... ('digest:{rule}:{window}' for a digest).
    thing_key        TEXT NOT NULL,
    slack_ts         TEXT,
    -- What the message should show: {text, blocks, event} (event: the OpsEvent it shows,
    -- absent for a digest).
    rendered         JSONB NOT NULL,
    version          BIGINT NOT NULL,
    shown_version    BIGINT NOT NULL DEFAULT -1,
    shown_at         TIMESTAMPTZ,
    -- The claim: only its holder posts or updates (claims is the fencing token).
    claims           INTEGER NOT NULL DEFAULT 0,
    claimed_by       TEXT,
    claimed_until    TIMESTAMPTZ,
    -- A post was sent and its ts not recorded yet: look in the channel first.
    posting          BOOLEAN NOT NULL DEFAULT false,
    -- A triage turn to queue once posted (TriageRequest); cleared once queued.
    triage           JSONB,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (team_id, channel_id, thing_key)
);
CREATE INDEX event_messages_lagging_idx ON event_messages (created_at)
    WHERE slack_ts IS NOT NULL AND shown_version < version;

-- One row per thing reaching a rule in a one-minute window: its place decides between a
-- message and the digest, and stays the same when its event is retried.
CREATE TABLE event_rule_hits (
    id           BIGSERIAL PRIMARY KEY,
    rule_id      UUID NOT NULL,
    window_start TIMESTAMPTZ NOT NULL,
    thing_key    TEXT NOT NULL,
    title        TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (rule_id, window_start, thing_key)
);
