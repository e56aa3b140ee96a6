-- What consent enforcement needs on stored messages, and live-location sessions.
--
-- `purpose`: the consent tag's purpose (NULL for untagged messages); a withdrawal finds
-- the sender's data under the grant by it. `erase_at`: when the sweeper erases the message
-- (its tag's retention in seconds, or the tag's expiry, whichever is first). `until_withdrawn`:
-- erased when the sender withdraws the grant. `file_id`: the file a `file` message shares, so
-- a download is checked against the scope of the message that shared it.

ALTER TABLE messages
    ADD COLUMN purpose          text,
    ADD COLUMN erase_at         timestamptz,
    ADD COLUMN until_withdrawn  boolean NOT NULL DEFAULT false,
    ADD COLUMN file_id          uuid;

CREATE INDEX messages_sender_purpose ON messages (sender_id, purpose) WHERE purpose IS NOT NULL;
CREATE INDEX messages_erase_at ON messages (erase_at) WHERE erase_at IS NOT NULL;
CREATE INDEX messages_file ON messages (file_id) WHERE file_id IS NOT NULL;

-- A live-location session: who shares with which conversation (or scope) until when. The
-- positions themselves are ephemeral frames, never stored.
CREATE TABLE live_sessions (
    id               uuid PRIMARY KEY,
    account_id       uuid NOT NULL REFERENCES accounts (id),
    device_id        uuid NOT NULL REFERENCES devices (id),
    conversation_id  uuid NOT NULL REFERENCES conversations (id),
    scope            uuid[],  -- NULL: every member
    started_at       timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    ended_at         timestamptz,
    end_reason       text CHECK (end_reason IN ('stopped', 'expired', 'withdrawn'))
);
CREATE INDEX live_sessions_open ON live_sessions (account_id) WHERE ended_at IS NULL;
