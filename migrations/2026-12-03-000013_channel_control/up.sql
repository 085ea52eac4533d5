-- Channel control (issue 13): `/infragpt stop` turns watching off for good (a later mention
-- does not turn it back on; only `/infragpt watch` does), and the question each
-- `/infragpt <question>` posts in its channel, recorded so that it is posted once.

ALTER TABLE channels ADD COLUMN watch_stopped BOOLEAN NOT NULL DEFAULT false;

CREATE TABLE slash_questions (
    -- The command's trigger_id: unique per invocation.
    trigger_id    TEXT PRIMARY KEY,
    team_id       TEXT NOT NULL,
    channel_id    TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    question      TEXT NOT NULL,
    -- Set right before chat.postMessage, cleared when Slack refused before anything
    -- happened: while set and posted_ts is not, the message may be in the channel.
    posting_since TIMESTAMPTZ,
    posted_ts     TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX slash_questions_created_idx ON slash_questions (created_at);

-- `/infragpt status` counts a workspace's conversations of the day with
-- conversations_team_created_idx (migration 2026-12-01-000016).
