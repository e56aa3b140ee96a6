-- The tamper-evident audit log (storage/audit.py; the chain's encoding is in
-- storage/audit_chain.py): an append-only, hash-chained table, the chain's head (the one
-- row every append locks, so appends from any number of processes form one chain), and
-- checkpoints signed with the server identity key.
--
-- No foreign keys: an entry outlives the accounts, devices and orgs it names (it holds
-- their random ids only), and an append must never wait on a lock of theirs.

CREATE TABLE audit_log (
    seq            bigint PRIMARY KEY CHECK (seq > 0),
    at             timestamptz NOT NULL,
    actor_kind     text NOT NULL
                   CHECK (actor_kind IN ('account', 'system', 'operator', 'anonymous')),
    actor_account  uuid,
    actor_device   uuid,
    subject_id     uuid,          -- whose data the entry is about
    org_id         uuid,
    action         text NOT NULL CHECK (action ~ '^[a-z][a-z0-9_]{0,63}$'),
    detail         jsonb NOT NULL,  -- ids and counts only (storage.audit checks the keys)
    prev_hash      bytea NOT NULL CHECK (length(prev_hash) = 32),
    hash           bytea NOT NULL CHECK (length(hash) = 32)
);
CREATE INDEX audit_log_subject ON audit_log (subject_id, seq) WHERE subject_id IS NOT NULL;
CREATE INDEX audit_log_actor ON audit_log (actor_account, seq) WHERE actor_account IS NOT NULL;
CREATE INDEX audit_log_org ON audit_log (org_id, seq) WHERE org_id IS NOT NULL;

-- The chain's end: the last entry's seq and hash, and how far the retention sweeper may
-- prune (a checkpoint's seq, recorded in the chain by an audit_pruned entry first).
CREATE TABLE audit_head (
    one             boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq             bigint NOT NULL,
    hash            bytea NOT NULL CHECK (length(hash) = 32),
    pruned_through  bigint NOT NULL DEFAULT 0
);
INSERT INTO audit_head (seq, hash) VALUES (0, decode(repeat('00', 32), 'hex'));

CREATE TABLE audit_checkpoints (
    seq         bigint PRIMARY KEY CHECK (seq > 0),
    hash        bytea NOT NULL CHECK (length(hash) = 32),
    at          timestamptz NOT NULL,
    public_key  bytea NOT NULL,
    signature   bytea NOT NULL
);

-- An entry goes only at the head of the chain, right after the last one; the head moves
-- with it. (The appending transaction locked the head row first: storage.audit.append.)
CREATE FUNCTION audit_advance_head() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash
        WHERE seq = NEW.seq - 1 AND hash = NEW.prev_hash;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'audit entries are appended at the head of the chain only (seq %)',
            NEW.seq;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER audit_log_append AFTER INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_advance_head();

-- Entries and checkpoints are never changed.
CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never changed', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER audit_log_immutable BEFORE UPDATE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_checkpoints_immutable BEFORE UPDATE OR TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_head_kept BEFORE DELETE OR TRUNCATE ON audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

-- Deleted only by the retention sweeper's pruning (storage.audit.prune sets
-- obrol.audit_prune for its transaction): entries up to the head's pruned_through, and the
-- checkpoints before it (the one at pruned_through stays: verification starts there).
CREATE FUNCTION audit_refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    through bigint;
BEGIN
    SELECT pruned_through INTO through FROM audit_head;
    IF coalesce(current_setting('obrol.audit_prune', true), '') = 'on'
       AND (OLD.seq < through OR (TG_TABLE_NAME = 'audit_log' AND OLD.seq = through)) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% rows are deleted only by the retention sweeper, up to a checkpoint',
        TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER audit_log_pruned_only BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_delete();
CREATE TRIGGER audit_checkpoints_pruned_only BEFORE DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_delete();

-- The head only moves forward, and pruning only ever reaches a checkpoint.
CREATE FUNCTION audit_check_head() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq < OLD.seq OR NEW.pruned_through < OLD.pruned_through
       OR NEW.pruned_through > NEW.seq THEN
        RAISE EXCEPTION 'the audit chain head only moves forward';
    END IF;
    IF NEW.pruned_through <> OLD.pruned_through AND NOT EXISTS (
        SELECT 1 FROM audit_checkpoints WHERE seq = NEW.pruned_through) THEN
        RAISE EXCEPTION 'the audit log is pruned only up to a checkpoint';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER audit_head_forward BEFORE UPDATE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION audit_check_head();
