-- Delivered / read receipts, per device. Typing notices are never stored.

CREATE TABLE message_receipts (
    message_id       uuid NOT NULL,
    conversation_id  uuid NOT NULL REFERENCES conversations (id),
    account_id       uuid NOT NULL REFERENCES accounts (id),
    device_id        uuid NOT NULL REFERENCES devices (id),
    status           text NOT NULL CHECK (status IN ('delivered', 'read')),
    at               timestamptz NOT NULL,
    PRIMARY KEY (message_id, device_id, status)
);
CREATE INDEX message_receipts_conversation ON message_receipts (conversation_id, message_id);
