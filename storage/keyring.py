"""Data keys: one per account, wrapped by the server's master key, destroyed to erase.

What is sealed (`storage.sealing`): message bodies, file blobs, file names and digests, and
the personal fields phone and birth date, each under the data key of the account it belongs
to (a message's sender, a file's uploader, the account itself). Not sealed: a message's
consent tag, which holds only a purpose, account ids, a retention and an expiry - the same
facts the plain columns `purpose`, `scope` and `erase_at` must keep for SQL (visibility,
withdrawal, the sweeper) - so sealing it would hide nothing; nor what logins and the
directory search by (emails, names).

Why one key per account, not per conversation: erasing a person must make exactly their
content unreadable. With per-account keys, destroying one key turns that person's messages
into unreadable ones in everyone's history, their files and personal fields with them,
while what everybody else wrote in the same conversations stays readable. A conversation
key would erase everyone's messages in that conversation, or none of the person's (the key
must stay for the others). A 1:1 chat is no exception: each side's messages are theirs.

Keys are 32 random bytes. In the database a key is only ever stored wrapped: sealed under
the master key (XChaCha20-Poly1305, the account id and the master key's version as
associated data), with that version recorded per row. The master key itself is never in the
database: it is a 32-byte file in the data folder, or the configured `master_key_file`
(`server.keys`). The `master_keys` table holds, per version, a check value (a keyed BLAKE2b
of a constant under the key), so a server started with another key stops with a clear error
instead of failing row by row.

Destroying a key (`Keyring.destroy`, what account cancellation calls) deletes the wrapped
key and keeps a tombstone row (`destroyed_at`), so no new key is ever made for the account;
from then on the account's sealed values read as erased (message bodies as an `erased`
marker, personal fields as null, blobs refused). Until the master key is rotated, older
copies of the wrapped key may survive outside the live row: in backups, in PostgreSQL's
dead row versions and WAL. They open only with the master key of their time, so rotating
the master key (`obrol keys rotate`, which deletes the old key file) finishes the shredding
everywhere, backups included; do it on a schedule shorter than the erasure promise (e.g.
weekly for "destroyed within 7 days"). See README, "Encryption at rest".

Unwrapped keys are cached in memory (`_KeyCache`: least recently used out first, each entry
kept at most `ttl_s`), so the hot paths need no query for keys they met recently. A
destruction evicts the key from this process's cache at once, and `forget` tells the other
processes (`on_forget`: the bus, server/bus/), which evict it when the event arrives; one
that missed it stops using it when its entry expires (at most `ttl_s`).

Every method taking `conn` runs inside a caller's transaction or read, on the bridge's loop,
and adds at most one statement for the keys not in the cache (plus, when writing, one
insert for accounts that have no key yet). Keys made in a transaction are cached only once
they are read back after its commit: a rolled-back key must never be used again.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from storage.database import Database
from storage.errors import StorageError
from storage.sealing import KEY_BYTES, UnreadableError, open_sealed, seal

# Advisory lock keys (arbitrary constants). A serving process holds KEYRING_LOCK shared for
# its lifetime; a rotation takes it exclusively, so the two never overlap. REGISTER_LOCK
# serialises registering master keys.
KEYRING_LOCK = 0x0B_01_5C_4B_52
REGISTER_LOCK = 0x0B_01_5C_4B_53

CHECK_CONSTANT = b"obrol master key check v1"


class MasterKeyError(StorageError):
    """The master key cannot be used with this database; the message says why and what to
    do. `reason`: "mismatch", "retired", "rotation_unfinished", "missing"."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class KeyDestroyedError(StorageError):
    """The account's data key was destroyed: nothing new can be sealed for it."""


class KeyringError(StorageError):
    """A wrapped data key could not be unwrapped (damaged, or wrapped by a master key this
    process does not hold)."""


@dataclass(frozen=True, slots=True)
class MasterKey:
    version: int
    key: bytes = field(repr=False)


def check_value(key: bytes) -> bytes:
    """What the database keeps to recognise a master key: a MAC of a constant under it."""
    return hashlib.blake2b(CHECK_CONSTANT, key=key, digest_size=32).digest()


def _wrap_ad(account_id: uuid.UUID, version: int) -> bytes:
    return b"data_keys:" + account_id.bytes + version.to_bytes(4, "big")


def wrap(master: MasterKey, account_id: uuid.UUID, data_key: bytes) -> bytes:
    return seal(master.key, data_key, _wrap_ad(account_id, master.version))


def unwrap(master: MasterKey, account_id: uuid.UUID, wrapped: bytes) -> bytes:
    """KeyringError if it does not open."""
    try:
        return open_sealed(master.key, wrapped, _wrap_ad(account_id, master.version))
    except UnreadableError:
        raise KeyringError(f"the data key of account {account_id} does not unwrap") from None


class _KeyCache:
    """Unwrapped keys (None: destroyed) by account, LRU-bounded, each kept at most `ttl_s`.

    Used from the bridge's loop and from trio (`forget`), hence the lock. `generation` moves
    on every eviction: keys read from the database before an eviction are not stored."""

    def __init__(self, size: int, ttl_s: float) -> None:
        self._size = size
        self._ttl_s = ttl_s
        self._items: OrderedDict[uuid.UUID, tuple[bytes | None, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.generation = 0

    def lookup(
        self, owners: Iterable[uuid.UUID]
    ) -> tuple[dict[uuid.UUID, bytes | None], list[uuid.UUID], int]:
        """(cached keys, owners not cached, the generation to store the others with)."""
        now = time.monotonic()
        found: dict[uuid.UUID, bytes | None] = {}
        missing = []
        with self._lock:
            for owner in owners:
                item = self._items.get(owner)
                if item is None or item[1] <= now:
                    missing.append(owner)
                else:
                    self._items.move_to_end(owner)
                    found[owner] = item[0]
            return found, missing, self.generation

    def store(self, keys: dict[uuid.UUID, bytes | None], generation: int) -> None:
        if not keys:
            return
        expires = time.monotonic() + self._ttl_s
        with self._lock:
            if generation != self.generation:
                return  # a key was destroyed meanwhile: these may be stale
            for owner, key in keys.items():
                self._items[owner] = (key, expires)
                self._items.move_to_end(owner)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def evict(self, owner: uuid.UUID) -> None:
        with self._lock:
            self._items.pop(owner, None)
            self.generation += 1

    def __len__(self) -> int:
        return len(self._items)


_SELECT_KEYS = """SELECT account_id, wrapped, master_version FROM data_keys
                  WHERE account_id = ANY($1::uuid[])"""


class Keyring:
    """The data keys of this process: unwrapped with the master key, cached, destroyed."""

    def __init__(
        self, db: Database, master: MasterKey, *, cache_size: int = 50_000, ttl_s: float = 60.0
    ) -> None:
        self._db = db
        self.master = master
        self._cache = _KeyCache(cache_size, ttl_s)
        self.on_forget: Callable[[uuid.UUID], None] | None = None
        """Called by `forget` with the account: tells the other processes (the bus)."""

    @classmethod
    async def open(
        cls, db: Database, key: bytes, *, cache_size: int = 50_000, ttl_s: float = 60.0
    ) -> Keyring:
        """The keyring of `key`, checked against the database (registered as version 1 in a
        database that has no master key yet). MasterKeyError if the database was sealed
        under another key, the key was retired, or a rotation is unfinished."""
        if len(key) != KEY_BYTES:
            raise MasterKeyError(f"a master key is {KEY_BYTES} bytes", "mismatch")
        version = await db.transaction(_register, check_value(key))
        return cls(db, MasterKey(version, key), cache_size=cache_size, ttl_s=ttl_s)

    # -- inside a caller's transaction or read (on the bridge's loop) ---------------------

    async def for_read(
        self, conn: Any, owners: Iterable[uuid.UUID]
    ) -> dict[uuid.UUID, bytes | None]:
        """The data key of each owner; None for a destroyed one. Owners that never had a
        key are left out (nothing of theirs is sealed)."""
        found, missing, generation = self._cache.lookup(set(owners))
        if missing:
            loaded = self._unwrap_rows(await conn.fetch(_SELECT_KEYS, missing))
            self._cache.store(loaded, generation)
            found.update(loaded)
        return found

    async def for_write(
        self, conn: Any, owners: Iterable[uuid.UUID]
    ) -> tuple[dict[uuid.UUID, bytes], set[uuid.UUID]]:
        """(the data key of each owner, made now for those without one; the owners whose
        key was destroyed, for whom nothing may be sealed)."""
        wanted = set(owners)
        known = await self.for_read(conn, wanted)
        keys = {owner: key for owner, key in known.items() if key is not None}
        destroyed = {owner for owner, key in known.items() if key is None}
        absent = [owner for owner in wanted if owner not in known]
        if absent:
            made = {owner: os.urandom(KEY_BYTES) for owner in absent}
            rows = await conn.fetch(
                """INSERT INTO data_keys (account_id, wrapped, master_version)
                   SELECT a, w, $3 FROM unnest($1::uuid[], $2::bytea[]) AS n(a, w)
                   ON CONFLICT (account_id) DO NOTHING RETURNING account_id""",
                absent,
                [wrap(self.master, owner, made[owner]) for owner in absent],
                self.master.version,
            )
            created = {r["account_id"] for r in rows}
            keys.update({owner: made[owner] for owner in created})
            raced = [owner for owner in absent if owner not in created]
            if raced:  # made (or destroyed) by a transaction that committed meanwhile
                for owner, key in self._unwrap_rows(await conn.fetch(_SELECT_KEYS, raced)).items():
                    if key is None:
                        destroyed.add(owner)
                    else:
                        keys[owner] = key
        return keys, destroyed

    async def destroy_in(self, conn: Any, account_id: uuid.UUID, now: datetime) -> bool:
        """Destroy the account's key in the caller's transaction (a tombstone if it had
        none); False if it was destroyed already. Call `forget` after the commit."""
        self._cache.evict(account_id)
        row = await conn.fetchrow(
            """INSERT INTO data_keys (account_id, wrapped, master_version, destroyed_at)
               VALUES ($1, NULL, NULL, $2)
               ON CONFLICT (account_id) DO UPDATE
                 SET wrapped = NULL, master_version = NULL, destroyed_at = EXCLUDED.destroyed_at
                 WHERE data_keys.destroyed_at IS NULL
               RETURNING account_id""",
            account_id,
            now,
        )
        return row is not None

    def _unwrap_rows(self, rows: list[Any]) -> dict[uuid.UUID, bytes | None]:
        keys: dict[uuid.UUID, bytes | None] = {}
        for row in rows:
            owner = row["account_id"]
            if row["wrapped"] is None:
                keys[owner] = None
            elif row["master_version"] != self.master.version:
                raise KeyringError(
                    f"the data key of account {owner} is wrapped by master key version "
                    f"{row['master_version']}, not {self.master.version}: restart the server"
                )
            else:
                keys[owner] = unwrap(self.master, owner, bytes(row["wrapped"]))
        return keys

    # -- from trio --------------------------------------------------------------------------

    async def key_for_write(self, account_id: uuid.UUID) -> bytes:
        """The account's data key (made now if it has none), committed. KeyDestroyedError
        if it was destroyed."""
        keys, destroyed = await self._db.transaction(self.for_write, [account_id])
        if account_id in destroyed:
            raise KeyDestroyedError("this account's data was erased")
        return keys[account_id]

    async def key_for_read(self, account_id: uuid.UUID) -> bytes | None:
        """The account's data key; None if it was destroyed or never made."""
        keys = await self._db.read(self.for_read, [account_id])
        return keys.get(account_id)

    async def destroy(self, account_id: uuid.UUID, now: datetime) -> bool:
        """Crypto-shred the account: its data key is deleted (a tombstone stays) and evicted
        from this process's cache. Everything sealed under it is unreadable from the commit
        on. Returns False if it had been destroyed before (nothing changes)."""
        try:
            return await self._db.transaction(self.destroy_in, account_id, now)
        finally:
            self.forget(account_id)

    def forget(self, account_id: uuid.UUID, *, shared: bool = True) -> None:
        """Drop the account's key from this process's cache (after a destruction commits),
        and (`shared`) from the other processes' through `on_forget`."""
        self._cache.evict(account_id)
        if shared and self.on_forget is not None:
            self.on_forget(account_id)

    @property
    def cached(self) -> int:
        return len(self._cache)

    async def claim(self) -> HeldClaim:
        """Hold KEYRING_LOCK shared while serving: `obrol keys rotate` refuses to run
        meanwhile. MasterKeyError("rotation_unfinished") if a rotation is running now."""
        held = await self._db.hold_lock(KEYRING_LOCK, shared=True)
        if held is None:
            raise MasterKeyError(
                "a master-key rotation is running on this database: wait for "
                "`obrol keys rotate` to finish, then start the server",
                "rotation_unfinished",
            )
        return HeldClaim(held)


@dataclass
class HeldClaim:
    _held: Any

    async def release(self) -> None:
        await self._held.release()


async def _register(conn: Any, check: bytes) -> int:
    """The version of the master key whose check value is `check` (version 1 when the
    database has none yet); MasterKeyError otherwise."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", REGISTER_LOCK)
    rows = await conn.fetch(
        "SELECT version, check_value, retired_at FROM master_keys ORDER BY version"
    )
    if not rows:
        await conn.execute("INSERT INTO master_keys (version, check_value) VALUES (1, $1)", check)
        return 1
    current = max((r for r in rows if r["retired_at"] is None), key=lambda r: r["version"])
    match = next((r for r in rows if bytes(r["check_value"]) == check), None)
    if match is None:
        raise MasterKeyError(
            "the master key does not match this database, whose data keys are wrapped by "
            f"another master key (version {current['version']}): restore the right key file, "
            "or point master_key_file at it",
            "mismatch",
        )
    if match["retired_at"] is not None:
        raise MasterKeyError(
            f"the master key is version {match['version']}, retired by a rotation on "
            f"{match['retired_at']:%Y-%m-%d}; the current one is version {current['version']}"
            ": use its key file (run `obrol keys rotate` if a rotation was interrupted)",
            "retired",
        )
    if current["version"] != match["version"]:
        raise MasterKeyError(
            f"a master-key rotation from version {match['version']} to "
            f"{current['version']} is unfinished: run `obrol keys rotate` to finish it",
            "rotation_unfinished",
        )
    return int(match["version"])


async def master_versions(conn: Any) -> list[tuple[int, bytes, datetime | None]]:
    """Every master key version the database knows: (version, check value, retired_at)."""
    rows = await conn.fetch(
        "SELECT version, check_value, retired_at FROM master_keys ORDER BY version"
    )
    return [(r["version"], bytes(r["check_value"]), r["retired_at"]) for r in rows]
