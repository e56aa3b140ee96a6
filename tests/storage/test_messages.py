"""Stored messages: group commit, idempotency, membership windows, catch-up, cursors."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import trio

from storage.accounts import AccountStore, NewAccount
from storage.bridge import AsyncioBridge
from storage.conversations import ConversationStore, MembershipError
from storage.database import Database
from storage.devices import DeviceStore
from storage.keyring import Keyring
from storage.messages import MessageStore, NewMessage, Outcome, StoredMessage
from storage.orgs import OrgStore


@dataclass
class World:
    db: Database
    conversations: ConversationStore
    messages: MessageStore
    org_id: uuid.UUID
    people: dict[str, tuple[uuid.UUID, uuid.UUID]]  # name -> (account id, device id)


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    bridge = AsyncioBridge()
    bridge.start()
    db = await Database.connect(bridge, database_url, pool_size=4)
    try:
        keyring = await Keyring.open(db, os.urandom(32))

        def person(name: str) -> NewAccount:
            return NewAccount(name, f"{name}@x.example", name.title(), b"hash")

        org, ann = await OrgStore(db, keyring).create("Acme", person("ann"))
        people = {"ann": ann.id}
        for name in ("bob", "cat"):
            people[name] = (await AccountStore(db, keyring).add(org.id, person(name))).id
        devices = DeviceStore(db)
        with_devices = {}
        for name, account_id in people.items():
            device = await devices.enroll(account_id, "d", "linux", uuid.uuid4().bytes * 2)
            with_devices[name] = (account_id, device.id)
        yield World(db, ConversationStore(db), MessageStore(db, keyring), org.id, with_devices)
    finally:
        await db.close()
        bridge.stop()


def text(world: World, who: str, conversation: uuid.UUID, cid: str) -> NewMessage:
    account, device = world.people[who]
    return NewMessage(
        conversation, account, device, cid, "text", b"\x81\xa4text\xa2hi", None, datetime.now(UTC)
    )


async def test_group_commit_assigns_seq_and_pos_in_order(world: World) -> None:
    ann, bob = world.people["ann"][0], world.people["bob"][0]
    group = await world.conversations.create_group(world.org_id, ann, "g", [bob])
    direct, created = await world.conversations.open_direct(world.org_id, ann, bob)
    assert created and set(direct.member_ids) == {ann, bob}
    assert (await world.conversations.open_direct(world.org_id, bob, ann))[0].id == direct.id
    batch = [
        text(world, "ann", group.id, "a1"),
        text(world, "bob", direct.id, "b1"),
        text(world, "bob", group.id, "b2"),
        text(world, "ann", group.id, "a1"),
    ]
    appended = await world.messages.append(batch)
    assert appended.members == {group.id: frozenset({ann, bob}), direct.id: frozenset({ann, bob})}
    results = appended.results
    assert [r.outcome for r in results] == [Outcome.STORED] * 3 + [Outcome.DUPLICATE]
    stored = [r.message for r in results]
    assert all(m is not None for m in stored)
    seqs = [(m.conversation_id, m.seq) for m in stored if m]
    assert seqs[:3] == [(group.id, 1), (direct.id, 1), (group.id, 2)]
    positions = [m.pos for m in stored[:3] if m]
    assert positions == sorted(positions) and len(set(positions)) == 3
    assert stored[3] == stored[0]  # the repeat answers with the original
    again = (await world.messages.append([text(world, "ann", group.id, "a1")])).results
    assert again[0].outcome is Outcome.DUPLICATE and again[0].message == stored[0]


async def test_sends_of_failed_commits_that_were_stored_are_recovered(world: World) -> None:
    # A commit whose answer was lost (the connection dropped around COMMIT) may have stored
    # its sends: the next commit looks them up, and returns those it finds, in pos order.
    ann, bob = world.people["ann"][0], world.people["bob"][0]
    group = await world.conversations.create_group(world.org_id, ann, "g", [bob])
    direct, _ = await world.conversations.open_direct(world.org_id, ann, bob)
    stored_after_all = [text(world, "bob", direct.id, "d1"), text(world, "ann", group.id, "g1")]
    first = await world.messages.append(stored_after_all)
    never_stored = text(world, "ann", group.id, "lost")
    unsure = [*reversed(stored_after_all), never_stored]
    appended = await world.messages.append([text(world, "cat", group.id, "c1")], unsure)
    assert appended.recovered == [r.message for r in first.results]
    assert [r.outcome for r in appended.results] == [Outcome.NOT_MEMBER]
    assert appended.members[direct.id] == frozenset({ann, bob})
    assert (await world.messages.append([], [])).recovered == []


async def test_non_members_are_refused_without_failing_the_batch(world: World) -> None:
    ann, bob = world.people["ann"][0], world.people["bob"][0]
    group = await world.conversations.create_group(world.org_id, ann, "g", [bob])
    results = (
        await world.messages.append(
            [text(world, "cat", group.id, "c1"), text(world, "ann", group.id, "a1")]
        )
    ).results
    assert [r.outcome for r in results] == [Outcome.NOT_MEMBER, Outcome.STORED]
    with pytest.raises(MembershipError):
        await world.conversations.create_group(world.org_id, ann, "x", [uuid.uuid4()])


async def test_catch_up_follows_membership_windows(world: World) -> None:
    ann, bob, cat = (world.people[n][0] for n in ("ann", "bob", "cat"))
    group = await world.conversations.create_group(world.org_id, ann, "g", [bob])
    await world.messages.append([text(world, "ann", group.id, "before-cat")])
    await world.conversations.add_members(group.id, world.org_id, [cat])
    await world.messages.append([text(world, "ann", group.id, "with-cat")])
    await world.conversations.remove_member(group.id, bob)
    await world.messages.append([text(world, "ann", group.id, "after-bob")])

    async def seen(account: uuid.UUID) -> list[str]:
        rows, _, _ = await world.messages.after(account, 0, 100)
        return [m.client_id for m in rows if isinstance(m, StoredMessage)]

    assert await seen(ann) == ["before-cat", "with-cat", "after-bob"]
    assert await seen(bob) == ["before-cat", "with-cat"]
    assert await seen(cat) == ["with-cat", "after-bob"]
    history = await world.messages.history(group.id, cat, None, 10)
    assert [m.client_id for m in history] == ["after-bob", "with-cat"]


async def test_catch_up_pages_without_gaps(world: World) -> None:
    ann, bob = world.people["ann"][0], world.people["bob"][0]
    group = await world.conversations.create_group(world.org_id, ann, "g", [bob])
    await world.messages.append([text(world, "ann", group.id, f"m{i}") for i in range(25)])
    got: list[str] = []
    pos, limited = 0, True
    while limited:
        rows, pos, limited = await world.messages.after(bob, pos, 10)
        got += [m.client_id for m in rows if isinstance(m, StoredMessage)]
    assert got == [f"m{i}" for i in range(25)]


async def test_concurrent_commits_never_expose_a_later_pos_first(world: World) -> None:
    ann, bob = world.people["ann"][0], world.people["bob"][0]
    group = await world.conversations.create_group(world.org_id, ann, "g", [bob])

    async def writer(w: int) -> None:
        for i in range(10):
            await world.messages.append([text(world, "ann", group.id, f"{w}-{i}")])

    async with trio.open_nursery() as nursery:
        for w in range(4):
            nursery.start_soon(writer, w)
    rows, _, _ = await world.messages.after(bob, 0, 100)
    assert [m.seq for m in rows if isinstance(m, StoredMessage)] == list(
        range(1, 41)
    )  # seq and pos agree: no reordering


async def test_cursor_only_moves_forward(world: World) -> None:
    device = world.people["bob"][1]
    assert await world.messages.cursor(device) == 0
    assert await world.messages.advance_cursor(device, 7) == 7
    assert await world.messages.advance_cursor(device, 3) == 7
    assert await world.messages.cursor(device) == 7


async def test_catch_up_from_past_the_end_continues_from_the_end(world: World) -> None:
    # A cursor past the stream's end (another server's, or made up) is moved back to the
    # end; otherwise every live message below it would be taken for one already sent.
    ann = world.people["ann"][0]
    group = await world.conversations.create_group(world.org_id, ann, "g", [])
    stored = (await world.messages.append([text(world, "ann", group.id, "a1")])).results
    first = stored[0].message
    assert first is not None
    assert await world.messages.after(ann, 2**53 - 1, 10) == ([], first.pos, False)
    rows, next_pos, _ = await world.messages.after(ann, 0, 10)
    assert [r.pos for r in rows] == [first.pos] and next_pos == first.pos


async def test_a_cursor_save_cancelled_mid_write_keeps_what_it_held(world: World) -> None:
    # At shutdown the saver's periodic save can be cancelled inside its write; what it had
    # taken must be there for the final save, not dropped.
    from server.gateway.cursors import CursorSaver
    from storage.devices import DeviceStore
    from storage.receipts import ReceiptStore

    device = world.people["ann"][1]
    saver = CursorSaver(world.messages, ReceiptStore(world.db), DeviceStore(world.db))
    saver.note(device, 5)
    with trio.CancelScope() as scope:
        scope.cancel()
        await saver.save()
    assert scope.cancelled_caught
    await saver.save()
    assert await world.messages.cursor(device) == 5
