"""The audit log's store: the chain's encoding as documented, one chain from concurrent
appends in several processes, a database that refuses edits and deletions, pruning up to a
checkpoint, and a verifier that names the broken link. Real PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import trio
from nacl.signing import SigningKey, VerifyKey

from storage.audit import (
    ANONYMOUS,
    SYSTEM,
    AuditEvent,
    AuditStore,
    CheckpointRule,
    account_actor,
)
from storage.audit_chain import (
    GENESIS,
    AuditEntry,
    Checkpoint,
    format_time,
    verify_entries,
)
from storage.bridge import AsyncioBridge
from storage.database import Database

T0 = datetime(2026, 1, 5, 9, 0, 0, 123456, tzinfo=UTC)
KEY = SigningKey(bytes(range(32)))
PUBLIC = bytes(KEY.verify_key)
ALICE = uuid.UUID("00000000-0000-4000-8000-00000000a11c")
PHONE = uuid.UUID("00000000-0000-4000-8000-0000000000f0")
ORG = uuid.UUID("00000000-0000-4000-8000-000000000076")


def sign(message: bytes) -> bytes:
    return bytes(KEY.sign(message).signature)


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[list[AuditStore]]:
    """Two stores on two pools with their own bridges: two server processes."""
    bridges = [AsyncioBridge(), AsyncioBridge()]
    dbs = []
    try:
        for bridge in bridges:
            bridge.start()
            dbs.append(await Database.connect(bridge, database_url, pool_size=8))
        yield [AuditStore(db) for db in dbs]
    finally:
        for db in dbs:
            await db.close()
        for bridge in bridges:
            bridge.stop()


def granted(n: int = 0) -> AuditEvent:
    purpose = ("location_share", "attendance", "media_share", "contacts_sync")[n % 4]
    return AuditEvent(
        "consent_granted", account_actor(ALICE, PHONE), ALICE, ORG, {"purpose": purpose}
    )


async def chain(store: AuditStore) -> list[AuditEntry]:
    head = await store.head()
    return await store.page(0, head.seq, 100_000)


async def sql(database_url: str, statement: str, *args: Any) -> Any:
    """One statement on a connection of its own (what a script with DB access does), on
    an asyncio loop in a thread (asyncpg's own)."""

    async def run() -> Any:
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetch(statement, *args)
        finally:
            await conn.close()

    return await trio.to_thread.run_sync(asyncio.run, run())


async def test_the_hash_and_signature_are_what_the_docstring_says(
    stores: list[AuditStore],
) -> None:
    store = stores[0]
    first = await store.record(granted(), T0)
    second = await store.record(
        AuditEvent("login_failed", ANONYMOUS, ALICE, ORG, {"reason": "bad_password"}),
        T0 + timedelta(seconds=1),
    )
    # Recomputed by hand, from the documented encoding only.
    payload = json.dumps(
        [
            "obrol-audit-v1",
            1,
            "2026-01-05T09:00:00.123456Z",
            "account",
            str(ALICE),
            str(PHONE),
            str(ALICE),
            str(ORG),
            "consent_granted",
            {"purpose": "location_share"},
        ],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()
    assert first.prev_hash == bytes(32)
    assert first.hash == hashlib.sha256(bytes(32) + payload).digest()
    assert second.seq == 2 and second.prev_hash == first.hash
    assert second.actor_kind == "anonymous" and second.actor_account is None
    assert await chain(store) == [first, second]  # stored exactly as hashed

    made = await store.checkpoint(sign, PUBLIC, CheckpointRule(1, 60), T0 + timedelta(hours=1))
    assert made is not None and (made.seq, made.hash) == (2, second.hash)
    message = json.dumps(
        ["obrol-audit-checkpoint-v1", 2, second.hash.hex(), format_time(made.at)],
        separators=(",", ":"),
    ).encode()
    VerifyKey(PUBLIC).verify(message, made.signature)  # raises if it does not verify
    assert await store.checkpoints() == [made]
    report = verify_entries(await chain(store), await store.checkpoints(), PUBLIC)
    assert report.ok and (report.entries, report.checkpoints, report.unsigned_tail) == (2, 1, 0)


async def test_concurrent_appends_from_two_processes_form_one_chain(
    stores: list[AuditStore],
) -> None:
    async def one(i: int) -> None:
        if i % 3 == 0:  # several entries in one transaction stay together
            await stores[i % 2].record_many([granted(i), granted(i + 1)], T0)
        else:
            await stores[i % 2].record(granted(i), T0)

    async with trio.open_nursery() as nursery:
        for i in range(120):
            nursery.start_soon(one, i)
    entries = await chain(stores[0])
    assert [e.seq for e in entries] == list(range(1, 161))
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    head = await stores[1].head()
    assert (head.seq, head.hash, head.first_seq) == (160, entries[-1].hash, 1)
    assert verify_entries(entries, [], PUBLIC, head=(head.seq, head.hash)).ok


async def test_the_database_refuses_edits_deletions_and_appends_elsewhere(
    stores: list[AuditStore], database_url: str
) -> None:
    store = stores[0]
    for i in range(3):
        await store.record(granted(i), T0)
    await store.checkpoint(sign, PUBLIC, CheckpointRule(1, 60, force=True), T0)
    refused = [
        "UPDATE audit_log SET detail = '{}' WHERE seq = 2",
        "DELETE FROM audit_log WHERE seq = 1",
        "TRUNCATE audit_log",
        "UPDATE audit_checkpoints SET signature = '\\x00' WHERE seq = 3",
        "DELETE FROM audit_checkpoints",
        "DELETE FROM audit_head",
        "UPDATE audit_head SET seq = 1",  # the head only moves forward
        "UPDATE audit_head SET pruned_through = 2",  # only up to a checkpoint, by pruning
        # An entry goes only right after the last one, chained to it.
        f"""INSERT INTO audit_log VALUES (5, now(), 'system', NULL, NULL, NULL, NULL,
            'deletion', '{{}}', '\\x{"00" * 32}', '\\x{"00" * 32}')""",
        f"""INSERT INTO audit_log VALUES (4, now(), 'system', NULL, NULL, NULL, NULL,
            'deletion', '{{}}', '\\x{"00" * 32}', '\\x{"00" * 32}')""",
    ]
    for statement in refused:
        with pytest.raises(asyncpg.PostgresError):
            await sql(database_url, statement)
    entries = await chain(store)
    assert [e.seq for e in entries] == [1, 2, 3]
    assert verify_entries(entries, await store.checkpoints(), PUBLIC).ok


async def test_pruning_deletes_a_prefix_up_to_a_checkpoint_and_verification_holds(
    stores: list[AuditStore],
) -> None:
    store = stores[0]
    for i in range(7):
        await store.record(granted(i), T0)
    early = await store.checkpoint(sign, PUBLIC, CheckpointRule(1, 60), T0)
    await store.record(granted(), T0 + timedelta(days=1))
    late = await store.checkpoint(sign, PUBLIC, CheckpointRule(1, 60), T0 + timedelta(days=2))
    assert early is not None and late is not None and (early.seq, late.seq) == (7, 8)
    for i in range(4):
        await store.record(granted(i), T0 + timedelta(days=3))

    # Nothing is old enough yet: nothing goes.
    now = T0 + timedelta(days=100)
    assert await store.prune(now - timedelta(days=365), now, batch=3) == 0
    assert [e.seq for e in await chain(store)] == list(range(1, 13))

    # A year on: everything through the newest checkpoint made before the cutoff goes, in
    # batches, and an audit_pruned entry says so.
    now = T0 + timedelta(days=366, hours=12)
    assert await store.prune(now - timedelta(days=365), now, batch=3) == 7
    entries = await chain(store)
    assert [e.seq for e in entries] == list(range(8, 14))
    pruned = entries[-1]
    assert (pruned.action, pruned.actor_kind) == ("audit_pruned", "system")
    assert pruned.detail == {
        "through_seq": 7,
        "checkpoint_at": format_time(T0),
        "entries": 7,
    }
    assert [c.seq for c in await store.checkpoints()] == [7, 8]  # the one at 7 stays
    head = await store.head()
    assert (head.pruned_through, head.first_seq) == (7, 8)
    report = verify_entries(entries, await store.checkpoints(), PUBLIC, head=(head.seq, head.hash))
    assert report.ok, report.describe()
    assert (report.start, report.first_seq, report.entries) == ("checkpoint 7", 8, 6)
    assert await store.prune(now - timedelta(days=365), now, batch=3) == 0  # done already

    # Without the audit_pruned entry, the same gap is a deletion.
    unrecorded = verify_entries(entries[:-1], await store.checkpoints(), PUBLIC)
    assert unrecorded.broken is not None
    assert (unrecorded.broken.seq, unrecorded.broken.kind) == (7, "deleted")


async def test_a_pruning_cut_short_is_finished_by_the_next(stores: list[AuditStore]) -> None:
    store = stores[0]
    for i in range(10):
        await store.record(granted(i), T0)
    await store.checkpoint(sign, PUBLIC, CheckpointRule(1, 60), T0)
    now = T0 + timedelta(days=400)

    class Stop(Exception):
        pass

    # A crash after the first batch: what is left is still a valid (pruned) chain.
    real_transaction = store._db.transaction
    batches = 0

    async def crash_after_one_batch(fn: Any, *args: Any) -> Any:
        nonlocal batches
        if fn.__name__ == "_prune_batch":
            batches += 1
            if batches > 1:
                raise Stop
        return await real_transaction(fn, *args)

    store._db.transaction = crash_after_one_batch  # type: ignore[method-assign]
    with pytest.raises(Stop):
        await store.prune(now - timedelta(days=183), now, batch=4)
    store._db.transaction = real_transaction  # type: ignore[method-assign]
    entries = await chain(store)
    assert entries[0].seq == 5
    assert verify_entries(entries, await store.checkpoints(), PUBLIC).ok
    assert await store.prune(now - timedelta(days=183), now, batch=4) == 6
    entries = await chain(store)
    assert [e.seq for e in entries] == [11]
    assert verify_entries(entries, await store.checkpoints(), PUBLIC).ok


async def test_the_verifier_names_the_broken_link(stores: list[AuditStore]) -> None:
    store = stores[0]
    for i in range(10):
        await store.record(granted(i), T0 + timedelta(seconds=i))
    await store.checkpoint(sign, PUBLIC, CheckpointRule(1, 60), T0)
    entries, checkpoints = await chain(store), await store.checkpoints()
    assert verify_entries(entries, checkpoints, PUBLIC).ok

    def broken(changed: list[AuditEntry], cps: list[Checkpoint] = checkpoints) -> tuple[int, str]:
        report = verify_entries(changed, cps, PUBLIC)
        assert report.broken is not None
        return report.broken.seq, report.broken.kind

    edited = list(entries)
    edited[4] = dataclasses.replace(entries[4], detail={"purpose": "attendance_x"})
    assert broken(edited) == (5, "edited")
    assert broken(entries[:3] + entries[4:]) == (4, "deleted")
    swapped = list(entries)
    swapped[5] = dataclasses.replace(entries[6], seq=6)
    swapped[6] = dataclasses.replace(entries[5], seq=7)
    assert broken(swapped) == (6, "reordered")
    # An entry changed and re-hashed: the next one still records the old hash.
    rehashed = dataclasses.replace(entries[2], actor_kind="system", actor_account=None)
    rehashed = dataclasses.replace(rehashed, hash=rehashed.computed_hash())
    assert broken([*entries[:2], rehashed, *entries[3:]]) == (3, "edited")
    # The whole chain rewritten from there on: only the signed checkpoint tells.
    rewritten, prev = [], entries[1].hash
    for original in [rehashed, *entries[3:]]:
        relinked = dataclasses.replace(original, prev_hash=prev)
        relinked = dataclasses.replace(relinked, hash=relinked.computed_hash())
        rewritten.append(relinked)
        prev = relinked.hash
    assert verify_entries(entries[:2] + rewritten, [], PUBLIC).ok  # unsigned: undetectable
    assert broken(entries[:2] + rewritten) == (10, "edited")
    # ... unless the checkpoint is forged too, which its signature tells.
    forged = dataclasses.replace(checkpoints[0], hash=prev)
    assert broken(entries[:2] + rewritten, [forged]) == (10, "forged_checkpoint")
    other = SigningKey.generate()
    resigned = dataclasses.replace(
        forged,
        public_key=bytes(other.verify_key),
        signature=bytes(other.sign(forged.message()).signature),
    )
    assert broken(entries[:2] + rewritten, [resigned]) == (10, "forged_checkpoint")
    # The tail after a checkpoint deleted; the first entry's link edited.
    assert broken(entries[:8]) == (9, "deleted")
    relinked_first = dataclasses.replace(entries[0], prev_hash=b"\x01" * 32)
    assert broken([relinked_first, *entries[1:]]) == (1, "edited")
    assert entries[0].prev_hash == GENESIS


async def test_a_pruning_before_six_months_is_flagged(stores: list[AuditStore]) -> None:
    store = stores[0]
    for i in range(3):
        await store.record(granted(i), T0)
    await store.checkpoint(sign, PUBLIC, CheckpointRule(1, 60), T0)
    now = T0 + timedelta(days=30)  # a sweeper misconfigured around the settings' check
    await store.prune(now - timedelta(days=1), now, batch=10)
    report = verify_entries(await chain(store), await store.checkpoints(), PUBLIC)
    assert report.broken is not None
    assert (report.broken.seq, report.broken.kind) == (4, "pruned_too_early")


def test_events_hold_ids_and_counts_only() -> None:
    actor = account_actor(ALICE)
    for detail in (
        {"reason": "alice@example.com"},  # an email address
        {"reason": "Alice Smith"},  # a name
        {"count": 1.5},  # a float (a coordinate)
        {"reason": "x" * 65},  # text
        {"ip": "10.0.0.1"},  # a key nobody allowed
        {"fields": [["nested"]]},
    ):
        with pytest.raises(ValueError):
            AuditEvent("login_failed", actor, ALICE, ORG, detail)
    with pytest.raises(ValueError):
        AuditEvent("read_everything", actor)
    with pytest.raises(ValueError):
        dataclasses.replace(SYSTEM, account_id=ALICE)
    event = AuditEvent("member_corrected", actor, ALICE, ORG, {"fields": ["phone", "position"]})
    assert event.detail == {"fields": ["phone", "position"]}


async def test_checkpoints_fall_due_by_count_or_by_age(stores: list[AuditStore]) -> None:
    store = stores[0]
    rule = CheckpointRule(every=3, interval_s=60)
    assert await store.checkpoint(sign, PUBLIC, rule, T0) is None  # nothing to sign
    await store.record(granted(), T0)
    await store.record(granted(1), T0 + timedelta(seconds=10))
    assert await store.checkpoint(sign, PUBLIC, rule, T0 + timedelta(seconds=59)) is None
    by_age = await store.checkpoint(sign, PUBLIC, rule, T0 + timedelta(seconds=60))
    assert by_age is not None and by_age.seq == 2  # the oldest unsigned entry is 60 s old
    for i in range(3):
        await store.record(granted(i), T0 + timedelta(seconds=61))
    by_count = await store.checkpoint(sign, PUBLIC, rule, T0 + timedelta(seconds=62))
    assert by_count is not None and by_count.seq == 5  # three unsigned entries
    assert await store.checkpoint(sign, PUBLIC, rule, T0 + timedelta(hours=1)) is None
    # Two processes signing at once make one checkpoint per head.
    await store.record(granted(), T0 + timedelta(seconds=70))
    forced = CheckpointRule(every=3, interval_s=60, force=True)
    made = []

    async def one(other: AuditStore) -> None:
        made.append(await other.checkpoint(sign, PUBLIC, forced, T0 + timedelta(seconds=71)))

    async with trio.open_nursery() as nursery:
        for other in stores * 3:
            nursery.start_soon(one, other)
    assert [c.seq for c in made if c is not None] == [6]
    assert [c.seq for c in await store.checkpoints()] == [2, 5, 6]
