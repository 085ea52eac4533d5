-- Approvals (issue 14): the agent asks before it acts. One row per request, unique per
-- conversation and the agent's idempotency key for the action. The Block Kit message is
-- posted once through a claim on the row (post_claims is the fencing token, post_started
-- says a post may have reached Slack unrecorded: the next claim reads the thread first).
-- Decisions and expiry are conditional updates of `status` (WHERE status = 'pending'), each
-- with its audit entry in the same transaction. ARCHITECTURE.md, "Approvals (issue 14)".
CREATE TABLE approvals (
    id                 UUID PRIMARY KEY,
    conversation_id    UUID NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    team_id            TEXT NOT NULL,
    channel_id         TEXT NOT NULL,
    thread_ts          TEXT NOT NULL,
    action_key         TEXT NOT NULL,
    summary            TEXT NOT NULL,
    details            TEXT NOT NULL DEFAULT '',
    risk               TEXT NOT NULL CONSTRAINT approvals_risk_check
                           CHECK (risk IN ('low', 'medium', 'high', 'critical')),
    -- Slack user ids the agent named; empty: the turn's author (and organization admins).
    approvers          TEXT[] NOT NULL DEFAULT '{}',
    -- The Slack user whose message started the turn that asked, when known.
    requested_by       TEXT,
    -- The turn that asked (its user message ts), when known.
    turn_ts            TEXT,
    status             TEXT NOT NULL DEFAULT 'pending' CONSTRAINT approvals_status_check
                           CHECK (status IN ('pending', 'approved', 'denied', 'expired')),
    expires_at         TIMESTAMPTZ NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The Block Kit message, once posted and recorded.
    message_ts         TEXT,
    post_claims        INTEGER NOT NULL DEFAULT 0,
    post_claimed_until TIMESTAMPTZ,
    post_started       BOOLEAN NOT NULL DEFAULT false,
    decided_by         TEXT,
    decided_at         TIMESTAMPTZ,
    reason             TEXT,
    -- The inbound event (click or modal submission) that decided it: its retry resumes.
    decided_event      BIGINT,
    CONSTRAINT approvals_action_key UNIQUE (conversation_id, action_key)
);
CREATE INDEX approvals_pending_idx ON approvals (expires_at) WHERE status = 'pending';
CREATE INDEX approvals_team_idx ON approvals (team_id, created_at DESC);
-- A refused click is audited once per inbound event: the check looks the approval's
-- refusals up by target (audit_log has no index on target otherwise).
CREATE INDEX audit_log_approval_refused_idx ON audit_log (target)
    WHERE action = 'approval.refused';
