-- Catch-up (storage/messages.py `_after`) reads, for each conversation the account is in,
-- what lies above the device's cursor: by conversation and position, so rows in
-- conversations the device is not in (a purge's tombstones, a bulk import, other teams'
-- traffic) are never stepped over.
CREATE INDEX messages_conversation_pos ON messages (conversation_id, pos);
CREATE INDEX tombstones_conversation_pos ON tombstones (conversation_id, pos);
