-- The push bridge: registrations, the outbox, dead letters, results, badges, quiet hours.

-- One push token per device, one device per token (per provider).
CREATE TABLE push_registrations (
    device_id           uuid PRIMARY KEY REFERENCES devices (id),
    provider            text NOT NULL CHECK (provider IN ('apns', 'fcm')),
    token               text NOT NULL,
    environment         text CHECK (environment IN ('sandbox', 'production')),
    topic               text,   -- APNs bundle id
    project             text,   -- FCM project id
    preview             boolean NOT NULL DEFAULT false,  -- opted in to sender + text previews
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    disabled_at         timestamptz,  -- the provider said the token is dead
    disabled_reason     text,
    provider_timestamp  timestamptz,  -- APNs: since when the token is no longer valid
    last_result_at      timestamptz,  -- the provider's latest answer for this device
    last_outcome        text,
    last_status         integer,
    last_reason         text,
    CONSTRAINT push_registrations_token_unique UNIQUE (provider, token)
);

-- The outbox: at most one pending push per device. A burst to one device updates the row
-- (the latest message, the earliest due time) instead of adding rows: one push per burst.
-- `pos` is the stream position the push stands for: a device whose cursor reached it has
-- the message already, and the job is moot.
CREATE TABLE push_jobs (
    device_id        uuid PRIMARY KEY REFERENCES push_registrations (device_id) ON DELETE CASCADE,
    account_id       uuid NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('alert', 'badge')),
    conversation_id  uuid,
    message_id       uuid,
    msg_seq          bigint,
    pos              bigint NOT NULL,
    burst            integer NOT NULL DEFAULT 1,  -- messages this push stands for
    queued_at        timestamptz NOT NULL,        -- the first of them was committed
    due_at           timestamptz NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    claimed_until    timestamptz,                 -- a worker's lease
    last_status      integer,
    last_reason      text
);
CREATE INDEX push_jobs_due ON push_jobs (due_at);
CREATE INDEX push_jobs_account ON push_jobs (account_id);

-- Jobs a provider refused for good, or that ran out of attempts: an admin lists and
-- re-drives them.
CREATE TABLE push_dead_letters (
    id               bigserial PRIMARY KEY,
    device_id        uuid NOT NULL REFERENCES push_registrations (device_id) ON DELETE CASCADE,
    account_id       uuid NOT NULL,
    kind             text NOT NULL,
    conversation_id  uuid,
    message_id       uuid,
    msg_seq          bigint,
    pos              bigint NOT NULL,
    burst            integer NOT NULL,
    queued_at        timestamptz NOT NULL,
    attempts         integer NOT NULL,
    last_status      integer,
    last_reason      text NOT NULL,
    dead_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX push_dead_letters_account ON push_dead_letters (account_id, id);

-- Provider answers other than acceptance (retries, refusals, dead tokens), per device, for
-- whoever looks into a device's pushes; pruned after a day. Acceptances only update the
-- registration's last_* columns: a row per push sent would grow without bound.
CREATE TABLE push_results (
    id         bigserial PRIMARY KEY,
    device_id  uuid NOT NULL REFERENCES push_registrations (device_id) ON DELETE CASCADE,
    at         timestamptz NOT NULL DEFAULT now(),
    kind       text NOT NULL,
    outcome    text NOT NULL,
    status     integer,
    reason     text NOT NULL
);
CREATE INDEX push_results_device ON push_results (device_id, id);
CREATE INDEX push_results_at ON push_results (at);

-- How far each account has read each conversation (from read receipts, any device): the
-- badge counts what lies above it.
CREATE TABLE read_marks (
    account_id       uuid NOT NULL REFERENCES accounts (id),
    conversation_id  uuid NOT NULL REFERENCES conversations (id),
    read_seq         bigint NOT NULL,
    PRIMARY KEY (account_id, conversation_id)
);

-- Do-not-disturb hours (minutes after local midnight, in the account's time zone; the
-- window may wrap midnight) and muted conversations: both turn alerts into badge updates.
CREATE TABLE push_settings (
    account_id      uuid PRIMARY KEY REFERENCES accounts (id),
    dnd_start_min   integer CHECK (dnd_start_min BETWEEN 0 AND 1439),
    dnd_end_min     integer CHECK (dnd_end_min BETWEEN 0 AND 1439),
    time_zone       text NOT NULL DEFAULT 'UTC',
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((dnd_start_min IS NULL) = (dnd_end_min IS NULL))
);

CREATE TABLE conversation_mutes (
    account_id       uuid NOT NULL REFERENCES accounts (id),
    conversation_id  uuid NOT NULL REFERENCES conversations (id),
    until            timestamptz,  -- NULL: until unmuted
    PRIMARY KEY (account_id, conversation_id)
);
