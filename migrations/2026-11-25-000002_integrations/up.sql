-- Connectors an organization installs and their encrypted credentials.

CREATE TABLE integrations (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id UUID NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    connector_type  TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    -- Provider-side id: Slack team id, GitHub installation id.
    external_id     TEXT,
    metadata        JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_by      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at    TIMESTAMPTZ,
    UNIQUE (organization_id, connector_type)
);
CREATE INDEX integrations_external_idx ON integrations (connector_type, external_id);

CREATE TABLE integration_credentials (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    integration_id  UUID NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    credential_type TEXT NOT NULL,
    -- AES-256-GCM: nonce (12 bytes) and ciphertext with tag; AAD binds integration id and type.
    nonce           BYTEA NOT NULL,
    ciphertext      BYTEA NOT NULL,
    key_id          TEXT NOT NULL,
    expires_at      TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (integration_id, credential_type)
);
CREATE INDEX integration_credentials_key_idx ON integration_credentials (key_id);

CREATE TABLE github_repositories (
    installation_id BIGINT NOT NULL,
    repository_id   BIGINT NOT NULL,
    full_name       TEXT NOT NULL,
    private         BOOLEAN NOT NULL DEFAULT false,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (installation_id, repository_id)
);

CREATE TABLE github_events (
    id              BIGSERIAL PRIMARY KEY,
    delivery_id     TEXT NOT NULL UNIQUE,
    installation_id BIGINT,
    event           TEXT NOT NULL,
    action          TEXT,
    repository      TEXT,
    actor           TEXT,
    git_ref         TEXT,
    number          BIGINT,
    title           TEXT,
    state           TEXT,
    conclusion      TEXT,
    summary         JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX github_events_installation_idx ON github_events (installation_id, id DESC);
