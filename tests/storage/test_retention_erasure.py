"""Erasing by a retention period, in bounded batches: oldest first, exactly what is past the
cutoff, a tombstone for each erased message (so it waits for a commit in progress: the
stream lock), never waiting for rows another process is erasing; the other rules never wait
for the stream lock."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import trio

from storage.accounts import NewAccount
from storage.bridge import AsyncioBridge
from storage.conversations import ConversationStore
from storage.database import Database
from storage.devices import DeviceStore
from storage.erasure import ErasureStore
from storage.keyring import Keyring
from storage.live import LiveStore
from storage.logins import LoginRecordStore
from storage.messages import MessageStore, NewMessage
from storage.orgs import OrgStore
from storage.stream import STREAM_LOCK_KEY

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=30)


@dataclass
class World:
    url: str
    bridge: AsyncioBridge
    db: Database
    erasure: ErasureStore
    conversation: uuid.UUID
    account: uuid.UUID
    device: uuid.UUID


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    bridge = AsyncioBridge()
    bridge.start()
    db = await Database.connect(bridge, database_url, pool_size=4)
    try:
        keyring = await Keyring.open(db, os.urandom(32))
        org, ann = await OrgStore(db, keyring).create(
            "Acme", NewAccount("ann", "ann@x.example", "Ann", b"hash")
        )
        device = await DeviceStore(db).enroll(ann.id, "d", "linux", uuid.uuid4().bytes * 2)
        group = await ConversationStore(db).create_group(org.id, ann.id, "g", [])
        messages = MessageStore(db, keyring)
        for day in range(7):  # one message a day, seq 1..7
            sent = T0 + timedelta(days=day)
            new = NewMessage(group.id, ann.id, device.id, f"m{day}", "text", b"\x80", None, sent)
            await messages.append([new])
        yield World(database_url, bridge, db, ErasureStore(db), group.id, ann.id, device.id)
    finally:
        await db.close()
        bridge.stop()


async def left(world: World) -> list[str]:
    async def run(conn: Any) -> list[str]:
        rows = await conn.fetch(
            "SELECT client_id FROM messages WHERE conversation_id = $1 ORDER BY seq",
            world.conversation,
        )
        return [r["client_id"] for r in rows]

    return await world.db.read(run)


async def test_batches_erase_oldest_first_and_stop_at_the_cutoff(world: World) -> None:
    cutoff = T0 + timedelta(days=4, hours=12)  # m0..m4 are older
    first = await world.erasure.erase_older(world.conversation, cutoff, 0, 3, NOW)
    assert (first.messages, first.head, first.last_seq) == (3, 3, 3)
    assert await left(world) == ["m3", "m4", "m5", "m6"]
    second = await world.erasure.erase_older(world.conversation, cutoff, first.last_seq, 3, NOW)
    assert (second.messages, second.head) == (2, 3)  # m5 is within the period: done
    assert await left(world) == ["m5", "m6"]
    tombstones = await world.db.read(
        lambda conn: conn.fetch("SELECT * FROM tombstones ORDER BY pos")
    )
    assert [(t["reason"], t["erased_at"]) for t in tombstones] == [("retention", NOW)] * 5
    assert [t["message_pos"] for t in tombstones] == sorted(t["message_pos"] for t in tombstones)


class Held:
    """A transaction of another connection (on the bridge's loop) holding a lock."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.conn: Any = None
        self.tx: Any = None

    async def __aenter__(self) -> Any:
        async def open_() -> None:
            self.conn = await asyncpg.connect(self.world.url)
            self.tx = self.conn.transaction()
            await self.tx.start()

        await self.world.bridge.run(open_)
        return self

    async def execute(self, query: str, *args: Any) -> None:
        await self.world.bridge.run(self.conn.execute, query, *args)

    async def __aexit__(self, *_: object) -> None:
        async def close() -> None:
            await self.tx.rollback()
            await self.conn.close()

        await self.world.bridge.run(close)


async def test_the_rules_without_messages_never_wait_for_the_stream_lock(world: World) -> None:
    async with Held(world) as commit_in_progress:
        await commit_in_progress.execute("SELECT pg_advisory_xact_lock($1)", STREAM_LOCK_KEY)
        with trio.fail_after(10):
            await LoginRecordStore(world.db).delete_before(T0, 100)
            await LiveStore(world.db).delete_ended(T0, 100)


async def test_erasing_messages_waits_for_a_commit_in_progress(world: World) -> None:
    async def waiting_for_advisory_lock(conn: Any) -> bool:
        return bool(
            await conn.fetchval(
                """SELECT EXISTS (SELECT 1 FROM pg_locks
                   WHERE locktype = 'advisory' AND NOT granted)"""
            )
        )

    async def erase() -> None:
        cutoff = T0 + timedelta(days=2, hours=12)
        purge = await world.erasure.erase_older(world.conversation, cutoff, 0, 100, NOW)
        assert purge.messages == 3

    held = await Held(world).__aenter__()
    await held.execute("SELECT pg_advisory_xact_lock($1)", STREAM_LOCK_KEY)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(erase)
            # The erasure queues for the stream lock (tombstones take positions) ...
            while not await world.db.read(waiting_for_advisory_lock):  # noqa: ASYNC110
                await trio.sleep(0.01)
            assert await left(world) == [f"m{day}" for day in range(7)]
            await held.__aexit__()  # ... and goes on once the commit in progress ends
    assert await left(world) == ["m3", "m4", "m5", "m6"]


async def test_rows_another_process_is_erasing_are_skipped_not_waited_for(world: World) -> None:
    logins = LoginRecordStore(world.db)

    async def record(conn: Any, at: datetime) -> None:
        await conn.execute(
            """INSERT INTO login_records (at, login_name, ip, user_agent, outcome)
               VALUES ($1, 'ann', '10.0.0.1', 'ua', 'success')""",
            at,
        )

    for day in range(3):
        await world.db.transaction(record, T0 + timedelta(days=day))
    async with Held(world) as other:
        await other.execute(
            "SELECT 1 FROM messages WHERE conversation_id = $1 AND seq = 1 FOR UPDATE",
            world.conversation,
        )
        await other.execute(
            "SELECT 1 FROM login_records WHERE at = $1 FOR UPDATE", T0 + timedelta(days=1)
        )
        with trio.fail_after(10):
            purge = await world.erasure.erase_older(
                world.conversation, T0 + timedelta(days=10), 0, 100, NOW
            )
            deleted = await logins.delete_before(T0 + timedelta(days=10), 100)
        assert purge.messages == 6 and deleted == 2  # all but the held rows
    assert await left(world) == ["m0"]
