-- Minors and guardians: an optional birth date on a member, the account state of a minor
-- waiting for a guardian's consent, the guardian consents (append-only, with withdrawals
-- as rows of their own), and an organization's declaration that it serves children.

ALTER TABLE accounts
    ADD COLUMN birth_date date CHECK (birth_date >= DATE '1900-01-01');
ALTER TABLE accounts DROP CONSTRAINT accounts_status_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_status_check
    CHECK (status IN ('active', 'deactivated', 'pending_guardian'));
-- The accounts whose state depends on the date and the age settings.
CREATE INDEX accounts_birth_date ON accounts (org_id) WHERE birth_date IS NOT NULL;

ALTER TABLE orgs ADD COLUMN serves_children boolean NOT NULL DEFAULT false;

-- Never updated: a withdrawal is a row in guardian_consent_withdrawals.
CREATE TABLE guardian_consents (
    id             uuid PRIMARY KEY,
    account_id     uuid NOT NULL REFERENCES accounts (id),
    guardian_name  text NOT NULL,
    relation       text NOT NULL CHECK (relation IN ('parent', 'legal_guardian', 'other')),
    given_on       date NOT NULL,  -- when the guardian gave it
    evidence_ref   text NOT NULL,  -- where the proof is kept (a document id), never the proof
    recorded_at    timestamptz NOT NULL,
    recorded_by    uuid NOT NULL REFERENCES accounts (id)
);
CREATE INDEX guardian_consents_account ON guardian_consents (account_id, recorded_at);

CREATE TABLE guardian_consent_withdrawals (
    consent_id     uuid PRIMARY KEY REFERENCES guardian_consents (id),
    withdrawn_at   timestamptz NOT NULL,
    withdrawn_by   uuid NOT NULL REFERENCES accounts (id)
);
