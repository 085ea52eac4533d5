-- Exactly-once posting (issue 11): every answer or notice the service posts into a Slack
-- thread is first recorded here as an intent, keyed by the conversation, the turn it answers
-- and a digest of its text, so the same text for the same turn is posted once whichever
-- process posts it (the worker, or SendReply on any replica). Only the holder of an unexpired
-- claim posts; every message it posts carries the intent's id and part number in Slack's
-- message metadata, and is stored in `messages` in the same transaction that advances
-- `parts_done`. ARCHITECTURE.md, "Exactly-once posting", has the protocol.
CREATE TABLE reply_intents (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id UUID NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    -- The user message it answers; '' when the conversation had no current turn.
    turn_ts         TEXT NOT NULL,
    -- SHA-256 (hex) of the text as given (before mrkdwn conversion and splitting).
    digest          TEXT NOT NULL,
    kind            TEXT NOT NULL CONSTRAINT reply_intents_kind_check CHECK (kind IN ('message', 'notice')),
    -- How it is posted (the messages' texts, or a preview and a file), as the first claim
    -- planned it: any later claim posts exactly that.
    posting         JSONB NOT NULL,
    -- Messages in `posting` (a file follows them when `posting->>'kind'` is 'file').
    parts           INTEGER NOT NULL CONSTRAINT reply_intents_parts_check CHECK (parts > 0),
    -- Messages posted and recorded, from the first.
    parts_done      INTEGER NOT NULL DEFAULT 0,
    -- Set while a claim posts that part; left set when it stopped without knowing whether
    -- the post reached the thread: the next claim looks in the thread first.
    posting_part    INTEGER,
    -- The long answer's uploaded file, recorded before it is shared; and whether it is.
    file_id         TEXT,
    file_done       BOOLEAN NOT NULL DEFAULT false,
    -- Claims so far: the fencing token (a write names its claim; a superseded one is refused).
    claims          INTEGER NOT NULL DEFAULT 0,
    claimed_by      TEXT,
    claimed_until   TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Set once every message (and the file) is posted and recorded; NULL while pending.
    posted_at       TIMESTAMPTZ,
    CONSTRAINT reply_intents_key UNIQUE (conversation_id, turn_ts, digest)
);
-- A retried turn finishes what an earlier attempt started.
CREATE INDEX reply_intents_unfinished_idx ON reply_intents (conversation_id, turn_ts)
    WHERE posted_at IS NULL;
