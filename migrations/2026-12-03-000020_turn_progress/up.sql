-- Live progress of a turn (issue 13): the indicator the thread shows while the agent works,
-- either Slack's assistant status or a placeholder message that the answer's first message
-- replaces through chat.update. One row per turn that showed an indicator. The row is also
-- the lock that orders the indicator's updates against the answer: whoever changes the
-- indicator in Slack holds `locked_until`, and the answer takes the row over (sets
-- `answer_intent`) only when nobody holds it, so a late progress update can never overwrite
-- or follow the answer. ARCHITECTURE.md, "Progress while the agent works", has the protocol.
CREATE TABLE turn_progress (
    conversation_id UUID NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    -- The user message the turn answers.
    turn_ts         TEXT NOT NULL,
    -- The placeholder message (placeholder mode, or status mode where Slack refused the
    -- status); NULL while the status is shown instead, or before the placeholder is posted.
    placeholder_ts  TEXT,
    -- The latest text the agent reported and nobody has shown yet.
    pending_text    TEXT,
    -- What the indicator shows now, and since when (updates are at most one a second).
    shown_text      TEXT,
    shown_at        TIMESTAMPTZ,
    -- The holder of the indicator while it changes it in Slack.
    lock_id         UUID,
    locked_until    TIMESTAMPTZ,
    -- The reply intent whose first message ended the indicator (replaced the placeholder):
    -- set once; every later progress report for the turn is ignored.
    answer_intent   UUID,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, turn_ts)
);
-- Housekeeping deletes rows of old turns.
CREATE INDEX turn_progress_created_idx ON turn_progress (created_at);
