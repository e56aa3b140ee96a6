-- Account cancellation (issue 12): the `cancelled` status, the purge's work list, and the
-- references to an account that name who did something for the organization (who created a
-- conversation or a site, published a policy, switched a purpose off, recorded a guardian's
-- consent) made nullable, so that purging a person leaves the organization's things in
-- place and naming nobody (storage/purge.py sets them to NULL; the audit log keeps the id).

ALTER TABLE accounts DROP CONSTRAINT accounts_status_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_status_check
    CHECK (status IN ('active', 'deactivated', 'pending_guardian', 'cancelled'));

-- One row per cancelled account until the sweeper has purged it (storage/purge.py deletes
-- the row with the account's). `email` is the work email the account had: the account row
-- shows a placeholder from the cancellation on, and the purge needs the address to find
-- login records made under it (attempts with no account, too). The row is deleted with
-- the account, so the address is held no longer than the account's other rows.
CREATE TABLE cancellations (
    account_id    uuid PRIMARY KEY REFERENCES accounts (id),
    org_id        uuid NOT NULL REFERENCES orgs (id),
    email         text NOT NULL,
    request_id    uuid,  -- the `cancellation` rights request, closed when the purge is done
    cancelled_at  timestamptz NOT NULL,
    purge_after   timestamptz NOT NULL  -- the sweeper starts the purge then
);
CREATE INDEX cancellations_due ON cancellations (purge_after);
CREATE INDEX cancellations_email ON cancellations (lower(email));

ALTER TABLE conversations ALTER COLUMN created_by DROP NOT NULL;
ALTER TABLE org_purposes_off ALTER COLUMN by_account DROP NOT NULL;
ALTER TABLE policy_versions ALTER COLUMN published_by DROP NOT NULL;
ALTER TABLE attendance_sites ALTER COLUMN created_by DROP NOT NULL;
ALTER TABLE guardian_consents ALTER COLUMN recorded_by DROP NOT NULL;
ALTER TABLE guardian_consent_withdrawals ALTER COLUMN withdrawn_by DROP NOT NULL;

-- A published version stays as it was, except that its publisher may be forgotten (the
-- purge of a cancelled account); acceptances are never changed.
CREATE OR REPLACE FUNCTION refuse_policy_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'policy_versions' AND NEW.published_by IS NULL
       AND (NEW.id, NEW.org_id, NEW.version, NEW.language, NEW.material, NEW.body,
            NEW.published_at)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.org_id, OLD.version, OLD.language, OLD.material, OLD.body,
            OLD.published_at) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '% rows are never changed', TG_TABLE_NAME;
END;
$$;

-- What the purge erased so far (counts only), kept across its batches.
ALTER TABLE cancellations
    ADD COLUMN purged_rows   bigint NOT NULL DEFAULT 0,
    ADD COLUMN purged_files  bigint NOT NULL DEFAULT 0;

-- The purge finds a person's rows by these; without them each of its batches would read
-- the whole table. (Receipts: one more index entry per receipt written.)
CREATE INDEX message_receipts_device ON message_receipts (device_id);
CREATE INDEX auth_tokens_account ON auth_tokens (account_id);
CREATE INDEX login_records_account ON login_records (account_id) WHERE account_id IS NOT NULL;
