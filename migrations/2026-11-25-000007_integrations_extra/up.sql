-- Single-use OAuth/installation state nonces (the DB NonceLedger): a state is accepted once.
CREATE TABLE oauth_nonces (
    nonce       TEXT PRIMARY KEY,
    expires_at  TIMESTAMPTZ NOT NULL,
    used_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX oauth_nonces_expires_idx ON oauth_nonces (expires_at);
