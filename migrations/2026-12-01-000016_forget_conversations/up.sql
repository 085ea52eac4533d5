-- Deleting a conversation (DELETE /conversations/{id}) blanks the stored payloads of its Slack
-- events, found by routing key: the thread's key, and the keys of its messages' own ts (edits
-- and deletes of a reply are routed by the reply's ts). Without this index each deletion
-- would scan the whole inbox. Only Slack events are ever looked up this way.
CREATE INDEX inbound_events_slack_key_idx ON inbound_events (routing_key)
    WHERE source = 'slack';

-- GET /conversations pages an organization's conversations (its workspaces') newest first.
CREATE INDEX conversations_team_created_idx ON conversations (team_id, created_at DESC, id DESC);

-- Conversation retention deletes the conversations whose last message is oldest first.
CREATE INDEX conversations_last_message_idx ON conversations (last_message_at);
