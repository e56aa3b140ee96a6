-- Notices as pushes, and receipts that cannot outlive their message (issue 12, part 3).

-- Push jobs for notices (storage/push_notices.py): one per device and notice, written in
-- the notice's transaction. Apart from push_jobs on purpose: a message job is one row per
-- device that a burst merges into and a device's cursor makes moot; a notice has no stream
-- position, so nothing makes it moot, and no message may merge it away.
CREATE TABLE push_notice_jobs (
    device_id      uuid NOT NULL REFERENCES push_registrations (device_id) ON DELETE CASCADE,
    notice_id      uuid NOT NULL REFERENCES notices (id) ON DELETE CASCADE,
    account_id     uuid NOT NULL,
    queued_at      timestamptz NOT NULL,
    due_at         timestamptz NOT NULL,
    attempts       integer NOT NULL DEFAULT 0,
    claimed_until  timestamptz,  -- a worker's lease
    last_status    integer,
    last_reason    text,
    PRIMARY KEY (device_id, notice_id)
);
CREATE INDEX push_notice_jobs_due ON push_notice_jobs (due_at);
CREATE INDEX push_notice_jobs_notice ON push_notice_jobs (notice_id);

-- A dead-lettered notice push names its notice (kind 'notice'); re-driven, it goes back to
-- push_notice_jobs. It goes with the notice when the retention sweeper deletes that.
ALTER TABLE push_dead_letters
    ADD COLUMN notice_id uuid REFERENCES notices (id) ON DELETE CASCADE;
CREATE INDEX push_dead_letters_notice ON push_dead_letters (notice_id)
    WHERE notice_id IS NOT NULL;

-- A receipt names a message; until now nothing but the erasing code kept them together,
-- and a receipt committed while its message was being erased outlived it. The database
-- keeps them together from here on (the primary key's leading column indexes the cascade).
DELETE FROM message_receipts r
    WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = r.message_id);
ALTER TABLE message_receipts
    ADD CONSTRAINT message_receipts_message_fk
    FOREIGN KEY (message_id) REFERENCES messages (id) ON DELETE CASCADE;
