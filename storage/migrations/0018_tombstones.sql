-- Tombstones (issue 12, part 2): "message X of conversation C was erased, why, and when",
-- for the devices that were offline at the time. A tombstone takes a stream position like
-- a message (under the stream lock), so catch-up ("pos > cursor") carries it in order.
--
-- It holds no sender and no body. Who receives it is decided as for the message it stands
-- for: the members whose membership window held `message_pos`, within `audience` (the
-- message's consent scope plus its sender; NULL: every member). It is kept for
-- `tombstones_retention_days` (server/retention.py); a device offline longer re-reads its
-- history (PROTOCOL.md 6.9).
CREATE TABLE tombstones (
    pos              bigint PRIMARY KEY,
    message_id       uuid NOT NULL,
    conversation_id  uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    message_pos      bigint NOT NULL,  -- the erased message's own position
    audience         uuid[],           -- who may have seen it; NULL: every member then
    reason           text NOT NULL CHECK (reason IN
                         ('deleted_by_sender', 'consent_withdrawn', 'retention',
                          'account_cancelled')),
    erased_at        timestamptz NOT NULL
);
CREATE INDEX tombstones_erased_at ON tombstones (erased_at);

