-- Conversations, members, messages, device cursors.
--
-- Every stored message has a per-conversation `seq` and a global stream position `pos`.
-- Writers take the stream lock (an advisory transaction lock) before allocating positions,
-- so positions become visible in increasing order: a device that has seen `pos` = N has
-- seen everything below N that it may see. Catch-up is "pos > cursor".

CREATE SEQUENCE stream_pos AS bigint;

CREATE TABLE conversations (
    id          uuid PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES orgs (id),
    kind        text NOT NULL CHECK (kind IN ('direct', 'group')),
    title       text,
    direct_key  text UNIQUE,  -- the two account ids, sorted: one direct chat per pair
    created_by  uuid NOT NULL REFERENCES accounts (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_seq    bigint NOT NULL DEFAULT 0
);
CREATE INDEX conversations_org ON conversations (org_id);

CREATE TABLE conversation_members (
    conversation_id  uuid NOT NULL REFERENCES conversations (id),
    account_id       uuid NOT NULL REFERENCES accounts (id),
    role             text NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'member')),
    joined_pos       bigint NOT NULL,  -- sees messages with pos > joined_pos ...
    left_pos         bigint,           -- ... and pos <= left_pos once they left
    joined_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, account_id)
);
CREATE INDEX conversation_members_account ON conversation_members (account_id, conversation_id);

CREATE TABLE messages (
    id                uuid PRIMARY KEY,
    conversation_id   uuid NOT NULL REFERENCES conversations (id),
    seq               bigint NOT NULL,
    pos               bigint NOT NULL,
    sender_id         uuid NOT NULL REFERENCES accounts (id),
    sender_device_id  uuid NOT NULL REFERENCES devices (id),
    client_id         text NOT NULL,
    kind              text NOT NULL CHECK (kind IN ('text', 'file', 'location', 'system')),
    body              bytea NOT NULL,  -- the msgpack-encoded body, as sent on the wire
    consent           bytea,           -- the msgpack-encoded consent tag, if any
    scope             uuid[],          -- who may see it; NULL: every member
    sent_at           timestamptz NOT NULL,
    CONSTRAINT messages_seq_unique UNIQUE (conversation_id, seq),
    CONSTRAINT messages_pos_unique UNIQUE (pos),
    -- client message ids make sends idempotent, per sending device
    CONSTRAINT messages_client_id_unique UNIQUE (sender_device_id, client_id)
);

CREATE TABLE device_cursors (
    device_id   uuid PRIMARY KEY REFERENCES devices (id),
    pos         bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
