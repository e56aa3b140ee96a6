"""The push outbox on a real PostgreSQL: jobs written with messages, collapse, moot,
leases, outcomes, dead letters, badges from read receipts, registrations' lifecycle."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from storage.accounts import AccountStore, NewAccount
from storage.bridge import AsyncioBridge
from storage.conversations import ConversationStore
from storage.database import Database
from storage.deletion import DeletionStore
from storage.devices import DeviceStore
from storage.keyring import Keyring
from storage.messages import MessageStore, NewMessage, StoredMessage
from storage.orgs import OrgStore
from storage.push_outbox import ClaimedJob, PushOutbox, Settlement
from storage.push_registrations import NewRegistration, PushRegistrationStore
from storage.receipts import ReceiptRecord, ReceiptStore
from storage.tokens import TokenStore

LEASE_S = 30.0


@dataclass
class World:
    db: Database
    messages: MessageStore
    receipts: ReceiptStore
    outbox: PushOutbox
    registrations: PushRegistrationStore
    devices: DeviceStore
    group: uuid.UUID
    org_id: uuid.UUID
    people: dict[str, tuple[uuid.UUID, uuid.UUID]]  # name -> (account id, phone device id)
    laptops: dict[str, uuid.UUID]
    keyring: Keyring


def apns(token_byte: str) -> NewRegistration:
    return NewRegistration("apns", token_byte * 64, "production", "org.obrol.app", None, False)


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
        accounts = {"ann": ann.id}
        for name in ("bob", "cat"):
            accounts[name] = (await AccountStore(db, keyring).add(org.id, person(name))).id
        devices = DeviceStore(db)
        people, laptops = {}, {}
        for name, account_id in accounts.items():
            phone = await devices.enroll(account_id, "phone", "ios", uuid.uuid4().bytes * 2)
            laptop = await devices.enroll(account_id, "laptop", "linux", uuid.uuid4().bytes * 2)
            people[name] = (account_id, phone.id)
            laptops[name] = laptop.id
        group = await ConversationStore(db).create_group(
            org.id, accounts["ann"], "g", [accounts["bob"], accounts["cat"]]
        )
        registrations = PushRegistrationStore(db)
        # every phone registered; laptops not
        for index, name in enumerate(("ann", "bob", "cat")):
            await registrations.register(people[name][1], apns("abc"[index]))
        yield World(
            db,
            MessageStore(db, keyring, push_grace_s=0),
            ReceiptStore(db, push_grace_s=0),
            PushOutbox(db, keyring),
            registrations,
            devices,
            group.id,
            org.id,
            people,
            laptops,
            keyring,
        )
    finally:
        await db.close()
        bridge.stop()


async def send(
    world: World, who: str, text: str = "hi", scope: tuple[uuid.UUID, ...] | None = None
) -> StoredMessage:
    account, device = world.people[who]
    item = NewMessage(
        world.group,
        account,
        device,
        uuid.uuid4().hex,
        "text",
        b"\x81\xa4text" + bytes([0xA0 + len(text)]) + text.encode(),
        None if scope is None else b"\x80",
        datetime.now(UTC),
        scope,
    )
    result = (await world.messages.append([item])).results[0]
    assert result.message is not None
    return result.message


async def pending(world: World) -> dict[uuid.UUID, dict[str, Any]]:
    async def rows(conn: Any) -> list[Any]:
        rows: list[Any] = await conn.fetch("SELECT * FROM push_jobs")
        return rows

    return {r["device_id"]: dict(r) for r in await world.db.transaction(rows)}


def settlement(
    job: ClaimedJob,
    outcome: str,
    status: int | None,
    reason: str,
    retry_at: datetime | None = None,
    provider_timestamp: datetime | None = None,
) -> Settlement:
    """What the worker records for a claimed job's push."""
    return Settlement(
        job.device_id,
        job.pos,
        job.lease,
        job.token,
        job.kind,
        outcome,
        status,
        reason,
        retry_at,
        provider_timestamp,
    )


def accepted(job: ClaimedJob) -> Settlement:
    return settlement(job, "accepted", 200, "accepted")


async def test_a_message_queues_one_job_per_registered_recipient_device(world: World) -> None:
    message = await send(world, "ann")
    jobs = await pending(world)
    bob_phone, cat_phone = world.people["bob"][1], world.people["cat"][1]
    # not ann's own phone, not the unregistered laptops
    assert set(jobs) == {bob_phone, cat_phone}
    assert jobs[bob_phone]["message_id"] == message.id
    assert jobs[bob_phone]["pos"] == message.pos
    assert jobs[bob_phone]["kind"] == "alert"


async def test_a_burst_collapses_into_one_job_for_the_latest_message(world: World) -> None:
    await send(world, "ann", "one")
    await send(world, "ann", "two")
    last = await send(world, "ann", "three")
    job = (await pending(world))[world.people["bob"][1]]
    assert (job["message_id"], job["pos"], job["burst"]) == (last.id, last.pos, 3)


async def test_a_scoped_message_queues_only_for_the_scope(world: World) -> None:
    await send(world, "ann", scope=(world.people["cat"][0],))
    assert set(await pending(world)) == {world.people["cat"][1]}


async def test_a_device_whose_cursor_reached_the_message_makes_the_job_moot(
    world: World,
) -> None:
    message = await send(world, "ann")
    await world.messages.advance_cursor(world.people["bob"][1], message.pos)
    claim = await world.outbox.claim(100, LEASE_S)
    assert [j.device_id for j in claim.jobs] == [world.people["cat"][1]]
    assert claim.moot == 1
    assert world.people["bob"][1] not in await pending(world)


async def test_a_push_for_a_message_erased_since_is_moot(world: World) -> None:
    message = await send(world, "ann", "deleted before the push went out")
    ann, ann_phone = world.people["ann"]
    await DeletionStore(world.db).delete_message(
        world.org_id, ann, ann_phone, world.group, message.id, datetime.now(UTC)
    )
    claim = await world.outbox.claim(100, LEASE_S)
    assert claim.jobs == []  # no "New message" for what is gone
    assert claim.moot == 2
    assert await pending(world) == {}


async def test_a_claim_is_a_lease_and_concurrent_claims_never_share_a_job(world: World) -> None:
    await send(world, "ann")
    claims = []

    async def claim_one() -> None:
        claims.append(await world.outbox.claim(1, LEASE_S))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(claim_one)
    claimed = [j.device_id for c in claims for j in c.jobs]
    assert sorted(claimed) == sorted([world.people["bob"][1], world.people["cat"][1]])
    assert (await world.outbox.claim(100, LEASE_S)).jobs == []  # all leased


async def test_accepted_finishes_the_job_unless_a_newer_message_came_meanwhile(
    world: World,
) -> None:
    await send(world, "ann")
    jobs = {j.device_id: j for j in (await world.outbox.claim(100, LEASE_S)).jobs}
    bob, cat = world.people["bob"][1], world.people["cat"][1]
    newer = await send(world, "ann", "while in flight")
    await world.outbox.settle([accepted(jobs[bob]), accepted(jobs[cat])], max_attempts=3)
    left = await pending(world)
    # the newer message is a new burst of one, claimable again at once (grace 0)
    assert set(left) == {bob, cat}
    assert left[bob]["pos"] == newer.pos and left[bob]["burst"] == 1
    again = await world.outbox.claim(100, LEASE_S)
    assert {j.message_id for j in again.jobs} == {newer.id}
    await world.outbox.settle([accepted(j) for j in again.jobs], 3)
    assert await pending(world) == {}


async def test_retries_back_off_then_dead_letter_and_an_admin_redrives(world: World) -> None:
    await send(world, "ann", scope=(world.people["bob"][0],))
    bob = world.people["bob"][1]
    for attempt in range(3):
        claim = await world.outbox.claim(100, LEASE_S)
        assert [j.attempts for j in claim.jobs] == [attempt]
        retry_at = datetime.now(UTC) - timedelta(seconds=1)  # due again at once
        dead = await world.outbox.settle(
            [settlement(claim.jobs[0], "retry", 503, "Unavailable", retry_at)],
            max_attempts=3,
        )
    assert dead == [bob]
    assert await pending(world) == {}
    letters = await world.outbox.dead_letters(world.org_id)
    assert [(d.device_id, d.attempts, d.last_reason) for d in letters] == [(bob, 3, "Unavailable")]
    other_org, _ = await OrgStore(world.db, world.keyring).create(
        "Other", NewAccount("zed", "zed@y.example", "Zed", b"hash")
    )
    assert await world.outbox.dead_letters(other_org.id) == []
    assert await world.outbox.redrive(other_org.id, [letters[0].id]) == 0
    assert await world.outbox.redrive(world.org_id, [letters[0].id]) == 1
    claim = await world.outbox.claim(100, LEASE_S)
    assert [(j.device_id, j.attempts) for j in claim.jobs] == [(bob, 0)]


async def test_a_refused_push_is_dead_lettered_at_once(world: World) -> None:
    await send(world, "ann", scope=(world.people["bob"][0],))
    job = (await world.outbox.claim(100, LEASE_S)).jobs[0]
    settled = settlement(job, "dead_letter", 413, "PayloadTooLarge")
    await world.outbox.settle([settled], max_attempts=8)
    [letter] = await world.outbox.dead_letters(world.org_id)
    assert (letter.last_status, letter.last_reason, letter.attempts) == (413, "PayloadTooLarge", 1)


async def test_a_dead_token_is_disabled_and_later_messages_skip_it(world: World) -> None:
    await send(world, "ann", scope=(world.people["bob"][0],))
    bob = world.people["bob"][1]
    job = (await world.outbox.claim(100, LEASE_S)).jobs[0]
    gone = datetime.now(UTC)
    await world.outbox.settle([settlement(job, "disable", 410, "Unregistered", None, gone)], 8)
    registration = await world.registrations.get(bob)
    assert registration is not None and registration.disabled_reason == "Unregistered"
    assert registration.provider_timestamp == gone
    await send(world, "ann", scope=(world.people["bob"][0],))
    assert await pending(world) == {}
    results = await world.registrations.results(bob)
    assert [(r.outcome, r.status) for r in results] == [("disable", 410)]
    # the app registers again (a new token): pushes flow again
    await world.registrations.register(bob, apns("d"))
    await send(world, "ann", scope=(world.people["bob"][0],))
    assert set(await pending(world)) == {bob}


async def test_a_token_older_than_the_registration_is_not_disabled(world: World) -> None:
    """Apple: a 410 whose timestamp predates the app's latest registration is stale."""
    await send(world, "ann", scope=(world.people["bob"][0],))
    bob = world.people["bob"][1]
    job = (await world.outbox.claim(100, LEASE_S)).jobs[0]
    long_ago = datetime.now(UTC) - timedelta(days=1)
    await world.outbox.settle([settlement(job, "disable", 410, "Unregistered", None, long_ago)], 8)
    registration = await world.registrations.get(bob)
    assert registration is not None and registration.disabled_at is None


async def test_a_token_moves_between_devices_and_revoking_or_logging_out_unregisters(
    world: World,
) -> None:
    bob_phone, bob_laptop = world.people["bob"][1], world.laptops["bob"]
    await world.registrations.register(bob_laptop, apns("b"))  # bob's phone's token
    assert await world.registrations.get(bob_phone) is None
    assert await world.registrations.get(bob_laptop) is not None
    await send(world, "ann")
    assert bob_laptop in await pending(world)
    await world.devices.revoke(world.people["bob"][0], bob_laptop)
    assert await world.registrations.get(bob_laptop) is None
    assert bob_laptop not in await pending(world)  # its job went with it
    cat, cat_phone = world.people["cat"]
    await TokenStore(world.db).sign_out(world.org_id, cat, cat_phone, datetime.now(UTC))
    assert await world.registrations.get(cat_phone) is None


async def test_badge_counts_unread_and_a_read_elsewhere_lowers_it(world: World) -> None:
    bob, bob_phone, bob_laptop = (
        world.people["bob"][0],
        world.people["bob"][1],
        world.laptops["bob"],
    )
    first = await send(world, "ann", "one")
    await send(world, "cat", "two")
    await send(world, "bob", "my own")  # not counted for bob
    jobs = {j.device_id: j for j in (await world.outbox.claim(100, LEASE_S)).jobs}
    assert jobs[bob_phone].badge == 2
    await world.outbox.settle([accepted(j) for j in jobs.values()], 8)
    registration = await world.registrations.get(bob_phone)
    assert registration is not None and registration.last_outcome == "accepted"
    assert await world.registrations.results(bob_phone) == []  # only failures are kept
    # bob reads up to the first message on the laptop: the phone gets a badge update of 1
    await world.receipts.add(
        [ReceiptRecord(first.id, world.group, bob, bob_laptop, "read", datetime.now(UTC))]
    )
    jobs = {j.device_id: j for j in (await world.outbox.claim(100, LEASE_S)).jobs}
    assert jobs[bob_phone].kind == "badge" and jobs[bob_phone].badge == 1


async def test_an_alert_for_a_message_read_elsewhere_becomes_a_badge_update(
    world: World,
) -> None:
    bob, bob_laptop = world.people["bob"][0], world.laptops["bob"]
    message = await send(world, "ann")
    await world.receipts.add(
        [ReceiptRecord(message.id, world.group, bob, bob_laptop, "read", datetime.now(UTC))]
    )
    job = (await pending(world))[world.people["bob"][1]]
    assert job["kind"] == "badge"


async def test_muted_conversations_and_quiet_hours_reach_the_claim(world: World) -> None:
    bob = world.people["bob"][0]
    await world.registrations.mute(bob, world.group, None)
    await send(world, "ann")
    jobs = {j.device_id: j for j in (await world.outbox.claim(100, LEASE_S)).jobs}
    assert jobs[world.people["bob"][1]].muted
    assert not jobs[world.people["cat"][1]].muted


async def test_the_badge_stops_counting_at_99(world: World) -> None:
    account, device = world.people["ann"]
    items = [
        NewMessage(
            world.group,
            account,
            device,
            f"many-{i}",
            "text",
            b"\x81\xa4text\xa1x",
            None,
            datetime.now(UTC),
        )
        for i in range(120)
    ]
    await world.messages.append(items)
    jobs = {j.device_id: j for j in (await world.outbox.claim(100, LEASE_S)).jobs}
    assert jobs[world.people["bob"][1]].badge == 99
    assert jobs[world.people["bob"][1]].burst == 120


async def test_a_stale_410_for_a_renewed_token_dead_letters_the_push_only(world: World) -> None:
    await send(world, "ann", scope=(world.people["bob"][0],))
    job = (await world.outbox.claim(100, LEASE_S)).jobs[0]
    long_ago = datetime.now(UTC) - timedelta(days=1)
    await world.outbox.settle([settlement(job, "disable", 410, "Unregistered", None, long_ago)], 8)
    assert [d.last_status for d in await world.outbox.dead_letters(world.org_id)] == [410]
    assert await pending(world) == {}


async def test_a_dead_token_answer_spares_a_token_registered_meanwhile(world: World) -> None:
    bob = world.people["bob"][1]
    await send(world, "ann", scope=(world.people["bob"][0],))
    job = (await world.outbox.claim(100, LEASE_S)).jobs[0]
    await world.registrations.register(bob, apns("e"))  # the app got a new token
    await world.outbox.settle([settlement(job, "disable", 400, "BadDeviceToken")], 8)
    registration = await world.registrations.get(bob)
    assert registration is not None and registration.disabled_at is None
    again = (await world.outbox.claim(100, LEASE_S)).jobs
    assert [(j.device_id, j.token) for j in again] == [(bob, "e" * 64)]


async def test_a_refusal_superseded_by_a_newer_message_lets_that_one_go_out(
    world: World,
) -> None:
    await send(world, "ann", scope=(world.people["bob"][0],))
    job = (await world.outbox.claim(100, LEASE_S)).jobs[0]
    newer = await send(world, "ann", scope=(world.people["bob"][0],))
    await world.outbox.settle([settlement(job, "dead_letter", 400, "BadExpirationDate")], 8)
    assert await world.outbox.dead_letters(world.org_id) == []
    [again] = (await world.outbox.claim(100, LEASE_S)).jobs
    assert again.message_id == newer.id and again.attempts == 0


async def test_a_job_backing_off_keeps_its_due_time_when_messages_arrive(world: World) -> None:
    bob = world.people["bob"][1]
    await send(world, "ann", scope=(world.people["bob"][0],))
    job = (await world.outbox.claim(100, LEASE_S)).jobs[0]
    later = datetime.now(UTC) + timedelta(minutes=5)
    await world.outbox.settle([settlement(job, "retry", 429, "TooManyRequests", later)], 8)
    await send(world, "ann", scope=(world.people["bob"][0],))
    assert (await pending(world))[bob]["due_at"] == later
    assert (await world.outbox.claim(100, LEASE_S)).jobs == []


async def test_a_settlement_without_the_lease_changes_nothing(world: World) -> None:
    bob = world.people["bob"][1]
    await send(world, "ann", scope=(world.people["bob"][0],))
    job = (
        await world.outbox.claim(
            100,
            LEASE_S,
        )
    ).jobs[0]

    async def expire(conn: Any) -> None:  # the lease ran out; another worker claims it
        await conn.execute("UPDATE push_jobs SET claimed_until = now() - interval '1 s'")

    await world.db.transaction(expire)
    [other] = (await world.outbox.claim(100, LEASE_S)).jobs
    await world.outbox.settle([accepted(job)], 8)  # the first worker, late
    assert bob in await pending(world)  # still the second worker's
    await world.outbox.settle([accepted(other)], 8)
    assert await pending(world) == {}


async def test_a_read_elsewhere_does_not_move_a_waiting_alert_past_its_message(
    world: World,
) -> None:
    bob, bob_phone = world.people["bob"][0], world.people["bob"][1]
    bob_laptop = world.laptops["bob"]
    message = await send(world, "ann")
    cat = world.people["cat"][0]
    other, _ = await ConversationStore(world.db).open_direct(world.org_id, cat, bob)
    item = NewMessage(
        other.id, bob, bob_laptop, "own", "text", b"\x81\xa4text\xa1x", None, datetime.now(UTC)
    )
    own = (await world.messages.append([item])).results[0].message
    assert own is not None
    await world.receipts.add(  # a read on the laptop queues a badge update for the phone
        [ReceiptRecord(own.id, other.id, bob, bob_laptop, "read", datetime.now(UTC))]
    )
    job = (await pending(world))[bob_phone]
    assert (job["kind"], job["pos"]) == ("alert", message.pos)
    await world.messages.advance_cursor(bob_phone, message.pos)  # the phone has ann's message
    claim = await world.outbox.claim(100, LEASE_S)
    assert bob_phone not in {j.device_id for j in claim.jobs}  # moot, not a second alert


async def test_a_muted_conversation_does_not_take_a_waiting_alerts_place(world: World) -> None:
    bob, bob_phone = world.people["bob"][0], world.people["bob"][1]
    alert = await send(world, "ann")
    other, _ = await ConversationStore(world.db).open_direct(
        world.org_id, world.people["cat"][0], bob
    )
    await world.registrations.mute(bob, other.id, None)
    account, device = world.people["cat"]
    item = NewMessage(
        other.id, account, device, "m1", "text", b"\x81\xa4text\xa1x", None, datetime.now(UTC)
    )
    await world.messages.append([item])
    job = (await pending(world))[bob_phone]
    assert (job["kind"], job["message_id"], job["burst"]) == ("alert", alert.id, 2)


async def test_a_preview_opens_the_sealed_body_and_an_erased_senders_has_none(
    world: World,
) -> None:
    bob_phone = world.people["bob"][1]
    opted_in = NewRegistration("apns", "d" * 64, "production", "org.obrol.app", None, True)
    await world.registrations.register(bob_phone, opted_in)
    await send(world, "ann", "lunch?")
    jobs = {j.device_id: j for j in (await world.outbox.claim(100, LEASE_S)).jobs}
    assert jobs[bob_phone].preview_kind == "text"
    assert jobs[bob_phone].preview_body == b"\x81\xa4text\xa6lunch?"
    await world.outbox.settle([accepted(j) for j in jobs.values()], 3)

    await send(world, "ann", "later")
    assert await world.keyring.destroy(world.people["ann"][0], datetime.now(UTC))
    jobs = {j.device_id: j for j in (await world.outbox.claim(100, LEASE_S)).jobs}
    assert (jobs[bob_phone].preview_kind, jobs[bob_phone].preview_body) == (None, None)
