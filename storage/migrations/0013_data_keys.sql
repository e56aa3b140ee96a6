-- Encryption at rest (storage/keyring.py, storage/sealing.py): the master keys' check values,
-- one wrapped data key per account, and the sealed columns.
--
-- A sealed value starts with the version byte 0x01 (storage/sealing.py); values written
-- before this migration are plaintext and are sealed by the server in bounded batches
-- (storage/legacy.py), recorded in `legacy_sealing` so that a restart resumes.

-- One row per master key version: never the key, only a MAC of a constant under it, so a
-- server started with another key can tell at once. A rotation retires the old version.
CREATE TABLE master_keys (
    version      integer PRIMARY KEY CHECK (version >= 1),
    check_value  bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    retired_at   timestamptz
);

-- One data key per account, wrapped by the master key `master_version`. Destroying it
-- (crypto-shredding) clears `wrapped` and keeps the row as a tombstone, so that no new key
-- is ever made for the account. No foreign key to accounts: the tombstone may outlive the
-- account's row, which the purge deletes.
CREATE TABLE data_keys (
    account_id      uuid PRIMARY KEY,
    wrapped         bytea,
    master_version  integer REFERENCES master_keys (version),
    created_at      timestamptz NOT NULL DEFAULT now(),
    destroyed_at    timestamptz,
    CONSTRAINT data_keys_tombstone_check CHECK (
        (wrapped IS NULL) = (destroyed_at IS NOT NULL)
        AND (wrapped IS NULL) = (master_version IS NULL))
);
-- What a rotation has left to re-wrap.
CREATE INDEX data_keys_master_version ON data_keys (master_version) WHERE wrapped IS NOT NULL;

-- The personal fields and file names become sealed bytes (until sealed: their UTF-8 text;
-- a birth date as YYYY-MM-DD). The age rule reads birth dates in Python now
-- (storage/minors.py); their range is checked where they are given (check_date in
-- server/handlers/minors.py), as it was already.
ALTER TABLE accounts DROP CONSTRAINT accounts_birth_date_check;
ALTER TABLE accounts
    ALTER COLUMN phone TYPE bytea USING convert_to(phone, 'UTF8'),
    ALTER COLUMN birth_date TYPE bytea
        USING convert_to(to_char(birth_date, 'YYYY-MM-DD'), 'UTF8');
ALTER TABLE files ALTER COLUMN name TYPE bytea USING convert_to(name, 'UTF8');

-- How far the sealing of values written before this migration got, per table (a keyset
-- position: messages by pos, accounts and files by id); done once `done_at` is set. Tables
-- with no rows yet have nothing to seal.
CREATE TABLE legacy_sealing (
    what     text PRIMARY KEY CHECK (what IN ('messages', 'accounts', 'files')),
    after    text,
    done_at  timestamptz
);
INSERT INTO legacy_sealing (what, done_at)
SELECT w, CASE WHEN n = 0 THEN now() END
FROM (VALUES ('messages', (SELECT count(*) FROM (SELECT 1 FROM messages LIMIT 1) m)),
             ('accounts', (SELECT count(*) FROM (SELECT 1 FROM accounts LIMIT 1) a)),
             ('files', (SELECT count(*) FROM (SELECT 1 FROM files LIMIT 1) f))) AS t(w, n);
