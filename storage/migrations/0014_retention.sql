-- Retention settings, data-rights requests and notices (issue 12, parts 3 and 4).
--
-- Every reference to an account here is ON DELETE SET NULL (or CASCADE for a plain list of
-- recipients): purging a cancelled account never has to come here first, and what stays
-- (that a request was answered in time, that a notice was sent) names nobody.

-- An organization's message retention in days (NULL: messages are kept until deleted) and
-- how many days it has to answer a data-rights request (the privacy policies promise 15).
ALTER TABLE orgs
    ADD COLUMN message_retention_days  integer
        CHECK (message_retention_days BETWEEN 1 AND 36500),
    ADD COLUMN request_deadline_days   integer NOT NULL DEFAULT 15
        CHECK (request_deadline_days BETWEEN 1 AND 90);

-- A conversation's own message retention, replacing its organization's while the row
-- exists (NULL days: kept until deleted).
CREATE TABLE conversation_retention (
    conversation_id         uuid PRIMARY KEY REFERENCES conversations (id),
    message_retention_days  integer CHECK (message_retention_days BETWEEN 1 AND 36500),
    set_by                  uuid REFERENCES accounts (id) ON DELETE SET NULL,
    set_at                  timestamptz NOT NULL
);

-- The sweeper deletes ended live-location sessions some days after their end.
CREATE INDEX live_sessions_ended ON live_sessions (ended_at) WHERE ended_at IS NOT NULL;

-- Data-rights requests, each with its legal deadline: the person's own (access, correction,
-- export, deletion, cancellation, other) and the organization's (org_export, org_deletion).
CREATE TABLE rights_requests (
    id          uuid PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES orgs (id),
    account_id  uuid REFERENCES accounts (id) ON DELETE SET NULL,  -- whose request
    kind        text NOT NULL CHECK (kind IN ('access', 'correction', 'export', 'deletion',
                    'cancellation', 'org_export', 'org_deletion', 'other')),
    details     text,  -- what the person asked, in their words
    opened_at   timestamptz NOT NULL,
    due_at      timestamptz NOT NULL,
    status      text NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'in_progress', 'done', 'refused')),
    note        text,  -- the answer (a refusal says why)
    handled_by  uuid REFERENCES accounts (id) ON DELETE SET NULL,
    updated_at  timestamptz NOT NULL,
    closed_at   timestamptz,
    CONSTRAINT rights_requests_closed_check
        CHECK ((status IN ('done', 'refused')) = (closed_at IS NOT NULL)),
    CONSTRAINT rights_requests_refusal_check CHECK (status <> 'refused' OR note IS NOT NULL)
);
CREATE INDEX rights_requests_org ON rights_requests (org_id, opened_at, id);
CREATE INDEX rights_requests_account ON rights_requests (account_id, opened_at, id);
CREATE INDEX rights_requests_pending ON rights_requests (org_id, due_at) WHERE closed_at IS NULL;
CREATE INDEX rights_requests_closed ON rights_requests (closed_at) WHERE closed_at IS NOT NULL;

-- Notices from an organization's admins to its members: the service is ending (on
-- `ends_at`), or a security incident. `everyone`: every member; else notice_recipients.
CREATE TABLE notices (
    id        uuid PRIMARY KEY,
    org_id    uuid NOT NULL REFERENCES orgs (id),
    kind      text NOT NULL CHECK (kind IN ('service_ending', 'security_incident')),
    title     text NOT NULL,
    body      text NOT NULL,
    sent_at   timestamptz NOT NULL,
    sent_by   uuid REFERENCES accounts (id) ON DELETE SET NULL,
    ends_at   timestamptz,
    everyone  boolean NOT NULL,
    CONSTRAINT notices_ends_at_check CHECK ((kind = 'service_ending') = (ends_at IS NOT NULL))
);
CREATE INDEX notices_org ON notices (org_id, sent_at, id);
CREATE INDEX notices_kept_until ON notices (greatest(sent_at, ends_at));

CREATE TABLE notice_recipients (
    notice_id   uuid NOT NULL REFERENCES notices (id) ON DELETE CASCADE,
    account_id  uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    PRIMARY KEY (notice_id, account_id)
);
CREATE INDEX notice_recipients_account ON notice_recipients (account_id, notice_id);
