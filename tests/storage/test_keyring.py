"""Data keys (storage/keyring.py) against a real PostgreSQL: one per account, the same in
every process, never one from a rolled-back transaction, destroyed for good; the cache is
bounded and never keeps a key read before a destruction; another master key is refused."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from storage.bridge import AsyncioBridge
from storage.database import Database
from storage.keyring import KeyDestroyedError, Keyring, MasterKeyError, _KeyCache

MASTER = os.urandom(32)


class Rollback(Exception):
    pass


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    bridge = AsyncioBridge()
    bridge.start()
    database = await Database.connect(bridge, database_url, pool_size=2)
    try:
        yield database
    finally:
        await database.close()
        bridge.stop()


async def test_one_key_per_account_the_same_in_every_process(db: Database) -> None:
    one, two = await Keyring.open(db, MASTER), await Keyring.open(db, MASTER)
    ann, bob = uuid.uuid4(), uuid.uuid4()
    key = await one.key_for_write(ann)
    assert await one.key_for_write(ann) == key
    assert await two.key_for_read(ann) == key  # another process unwraps the same key
    assert await two.key_for_write(ann) == key
    assert await two.key_for_read(bob) is None  # never made: nothing of bob's is sealed
    assert await two.key_for_write(bob) != key


async def test_a_key_made_in_a_rolled_back_transaction_is_never_used(db: Database) -> None:
    keyring = await Keyring.open(db, MASTER)
    ann = uuid.uuid4()
    made: list[bytes] = []

    async def make_then_fail(conn: Any) -> None:
        keys, _ = await keyring.for_write(conn, [ann])
        made.append(keys[ann])
        raise Rollback

    with pytest.raises(Rollback):
        await db.transaction(make_then_fail)
    assert await keyring.key_for_read(ann) is None
    key = await keyring.key_for_write(ann)
    assert key != made[0]
    assert await (await Keyring.open(db, MASTER)).key_for_read(ann) == key


async def test_a_destroyed_key_is_gone_for_good(db: Database) -> None:
    keyring = await Keyring.open(db, MASTER)
    ann, never = uuid.uuid4(), uuid.uuid4()
    await keyring.key_for_write(ann)
    assert await keyring.key_for_read(ann) is not None  # cached now
    now = datetime.now(UTC)
    assert await keyring.destroy(ann, now) is True
    assert await keyring.key_for_read(ann) is None  # this process forgot it at once
    assert await (await Keyring.open(db, MASTER)).key_for_read(ann) is None
    with pytest.raises(KeyDestroyedError):
        await keyring.key_for_write(ann)  # never a new key for a destroyed account
    assert await keyring.destroy(ann, now) is False
    # A tombstone for an account that never had a key keeps one from being made later.
    assert await keyring.destroy(never, now) is True
    keys, destroyed = await db.transaction(keyring.for_write, [never])
    assert keys == {} and destroyed == {never}


async def test_another_master_key_is_refused(db: Database) -> None:
    await Keyring.open(db, MASTER)
    with pytest.raises(MasterKeyError, match="does not match this database") as refused:
        await Keyring.open(db, os.urandom(32))
    assert refused.value.reason == "mismatch"


def test_the_cache_is_bounded_and_skips_keys_read_before_an_eviction() -> None:
    cache = _KeyCache(size=2, ttl_s=3600)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    _, _, generation = cache.lookup([a])
    cache.store({a: b"a" * 32, b: b"b" * 32}, generation)
    cache.lookup([a])  # a used last: b goes first
    cache.store({c: b"c" * 32}, generation)
    found, missing, _ = cache.lookup([a, b, c])
    assert set(found) == {a, c} and missing == [b]

    # A key read from the database while another was destroyed may be stale: not kept.
    _, _, before = cache.lookup([b])
    cache.evict(a)
    cache.store({b: b"b" * 32}, before)
    assert cache.lookup([b])[1] == [b]
