-- Slack workspaces, channels, and one conversation per Slack thread.

CREATE TABLE slack_workspaces (
    team_id         TEXT PRIMARY KEY,
    team_name       TEXT,
    bot_user_id     TEXT,
    bot_id          TEXT,
    app_id          TEXT,
    organization_id UUID REFERENCES organizations (id) ON DELETE SET NULL,
    -- 'config' (single-workspace bot token) or an integration_credentials id.
    token_ref       TEXT,
    status          TEXT NOT NULL DEFAULT 'active',
    status_reason   TEXT,
    installed_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE channels (
    team_id     TEXT NOT NULL,
    channel_id  TEXT NOT NULL,
    name        TEXT,
    monitored   BOOLEAN NOT NULL DEFAULT false,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (team_id, channel_id)
);

CREATE TABLE conversations (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    team_id         TEXT NOT NULL,
    channel_id      TEXT NOT NULL,
    thread_ts       TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_message_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (team_id, channel_id, thread_ts)
);

CREATE TABLE messages (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id UUID NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    -- Slack's own ts; unique per conversation so a redelivery stores nothing new.
    slack_ts        TEXT NOT NULL,
    -- 'user' or 'agent'
    sender_kind     TEXT NOT NULL,
    sender_id       TEXT NOT NULL,
    sender_name     TEXT,
    sender_email    TEXT,
    text            TEXT NOT NULL,
    deleted         BOOLEAN NOT NULL DEFAULT false,
    edited_at       TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (conversation_id, slack_ts)
);
CREATE INDEX messages_conversation_idx ON messages (conversation_id, created_at);
