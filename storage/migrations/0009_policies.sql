-- Privacy-policy versions per organization, immutable once published, and every account's
-- acceptances (append-only: the history issue 12 exports).

CREATE TABLE policy_versions (
    id            bigserial PRIMARY KEY,  -- publication order: the newest is the current one
    org_id        uuid NOT NULL REFERENCES orgs (id),
    version       text NOT NULL CHECK (version ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$'),
    language      text NOT NULL,
    material      boolean NOT NULL,       -- accepting it is required before going on
    body          text NOT NULL,
    published_at  timestamptz NOT NULL,
    published_by  uuid NOT NULL REFERENCES accounts (id),
    CONSTRAINT policy_versions_org_version UNIQUE (org_id, version)
);
CREATE INDEX policy_versions_org ON policy_versions (org_id, id);

-- Append-only: one row per account and version accepted, never updated.
CREATE TABLE policy_acceptances (
    id           bigserial PRIMARY KEY,
    account_id   uuid NOT NULL REFERENCES accounts (id),
    policy_id    bigint NOT NULL REFERENCES policy_versions (id),
    accepted_at  timestamptz NOT NULL,
    device_id    uuid NOT NULL REFERENCES devices (id),  -- where the person accepted it
    UNIQUE (account_id, policy_id)
);

-- A published version and an acceptance are facts: nothing may change them afterwards.
CREATE FUNCTION refuse_policy_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never changed', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER policy_versions_immutable BEFORE UPDATE ON policy_versions
    FOR EACH ROW EXECUTE FUNCTION refuse_policy_update();
CREATE TRIGGER policy_acceptances_immutable BEFORE UPDATE ON policy_acceptances
    FOR EACH ROW EXECUTE FUNCTION refuse_policy_update();
