-- Data exports (issue 12, part 2; the organization's, part 3): background jobs producing an
-- encrypted zip archive, and the single-use download links to it.
--
-- A job is claimed by a worker with a lease (`lease_until`, renewed as it goes); `attempt`
-- counts the claims and fences a worker whose lease was taken over: its updates name the
-- attempt it holds and find nothing once another claimed the job. The archive is
-- `<data_dir>/exports/<id>-<attempt>` on disk, sealed under a random per-archive key that
-- is stored here only wrapped by the requester's data key (`archive_key`): destroying that
-- key makes the archive unreadable too.
CREATE TABLE exports (
    id            uuid PRIMARY KEY,
    org_id        uuid NOT NULL REFERENCES orgs (id),
    account_id    uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,  -- who asked
    scope         text NOT NULL CHECK (scope IN ('account', 'org')),
    request_id    uuid REFERENCES rights_requests (id) ON DELETE SET NULL,
    status        text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'ready', 'failed', 'expired')),
    requested_at  timestamptz NOT NULL,
    attempt       integer NOT NULL DEFAULT 0,
    lease_until   timestamptz,
    items_done    bigint NOT NULL DEFAULT 0,
    items_total   bigint,
    bytes_done    bigint NOT NULL DEFAULT 0,
    bytes_total   bigint,
    archive_key   bytea,   -- the archive's key, sealed under the requester's data key
    archive_bytes bigint,  -- the zip's size (plaintext)
    ready_at      timestamptz,
    expires_at    timestamptz,  -- the download links work until then
    downloaded_at timestamptz,
    deleted_at    timestamptz,  -- the archive file was deleted
    error         text
);
CREATE INDEX exports_account ON exports (account_id, requested_at, id);
CREATE INDEX exports_org ON exports (org_id, scope, ready_at) WHERE ready_at IS NOT NULL;
CREATE INDEX exports_pending ON exports (requested_at) WHERE status IN ('queued', 'running');
CREATE INDEX exports_archived ON exports (expires_at)
    WHERE ready_at IS NOT NULL AND deleted_at IS NULL;

-- Download links: only the SHA-256 of each 256-bit token. Any link of an export works once
-- in all: the first download uses the archive up (`exports.downloaded_at`).
CREATE TABLE export_links (
    token_hash  bytea PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    export_id   uuid NOT NULL REFERENCES exports (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL
);
CREATE INDEX export_links_export ON export_links (export_id);

-- A person's messages, page by page, for the export (and for anything else that looks for
-- what one sender wrote).
CREATE INDEX IF NOT EXISTS messages_sender ON messages (sender_id, pos);
