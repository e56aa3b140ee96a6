-- The consent registry: each account's grant per purpose, with its full history, and the
-- purposes an organization switched off for everyone.

CREATE TABLE consent_grants (
    account_id      uuid NOT NULL REFERENCES accounts (id),
    purpose         text NOT NULL
        CHECK (purpose IN ('location_share', 'attendance', 'media_share', 'contacts_sync')),
    granted         boolean NOT NULL,
    changed_at      timestamptz NOT NULL,
    device_id       uuid REFERENCES devices (id),  -- where the person said so
    policy_version  text,                          -- the privacy policy then accepted
    PRIMARY KEY (account_id, purpose)
);

-- Append-only: every grant and withdrawal, never updated.
CREATE TABLE consent_history (
    id              bigserial PRIMARY KEY,
    account_id      uuid NOT NULL REFERENCES accounts (id),
    purpose         text NOT NULL,
    action          text NOT NULL CHECK (action IN ('granted', 'withdrawn')),
    at              timestamptz NOT NULL,
    device_id       uuid REFERENCES devices (id),  -- NULL: the organization switched it off
    policy_version  text,
    reason          text  -- why, when not the person's own choice ('org_switched_off')
);
CREATE INDEX consent_history_account ON consent_history (account_id, id);

CREATE TABLE org_purposes_off (
    org_id      uuid NOT NULL REFERENCES orgs (id),
    purpose     text NOT NULL,
    off_at      timestamptz NOT NULL,
    by_account  uuid NOT NULL REFERENCES accounts (id),
    PRIMARY KEY (org_id, purpose)
);
