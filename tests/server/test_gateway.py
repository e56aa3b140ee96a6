"""The hub over real sockets: fan-out to every device, catch-up, idempotency, restarts."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import trio

from loadtest.client import DeviceState, GatewayClient, connect
from protocol import (
    Msg,
    Receipt,
    ReceiptNotice,
    ReceiptStatus,
    Resync,
    Send,
    Sent,
    ServerFrame,
    Synced,
    TextBody,
    Typing,
    TypingNotice,
)
from tests.harness import Harness, start_harness


async def until(
    client: GatewayClient, state: DeviceState, done: Callable[[DeviceState], bool]
) -> list[ServerFrame]:
    """Receive and apply frames until `done(state)` holds (bounded by a deadline)."""
    frames: list[ServerFrame] = []
    with trio.fail_after(20):
        while not done(state):
            batch = await client.receive()
            for frame in batch:
                state.accept(frame)
            frames += batch
    return frames


def text(conv: uuid.UUID, cid: str, words: str = "hello") -> Send:
    return Send(cid=cid, conv=conv.bytes, body=TextBody(text=words))


async def test_every_device_of_every_member_gets_every_message(server: Harness) -> None:
    ann = await server.create_org()
    bob = await server.add_member(ann, "bob")
    ann2 = await server.login("olivia@acme.example")
    bob2 = await server.login("bob@members.example")
    conv = await server.group(ann, bob)
    devices = [(s, server.device(s)) for s in (ann, ann2, bob, bob2)]
    clients = [await server.connect(s) for s, _ in devices]
    for client, (_, state) in zip(clients, devices, strict=True):
        await client.sync(0)
        frames = await until(client, state, lambda st: True)
        while not any(isinstance(f, Synced) for f in frames):
            frames = await client.receive()
    # Each of the four devices sends five messages.
    for i, client in enumerate(clients):
        await client.send(*(text(conv, f"d{i}-m{j}") for j in range(5)))
    for client, (_, state) in zip(clients, devices, strict=True):
        await until(client, state, lambda st: len(st.messages) == 20)
        assert sorted(m.cid or "" for m in state.messages) == sorted(
            f"d{i}-m{j}" for i in range(4) for j in range(5)
        )
        positions = [m.pos or 0 for m in state.messages]
        assert positions == sorted(positions)  # pos order on every connection
        assert state.duplicates == 0
    for client in clients:
        await client.aclose()


async def test_offline_device_catches_up_exactly_what_it_missed(server: Harness) -> None:
    ann = await server.create_org()
    bob = await server.add_member(ann, "bob")
    conv = await server.group(ann, bob)
    bob_state = server.device(bob)
    first = await bob_state.reconnect(server.gateway_url)
    assert any(isinstance(f, Synced) for f in await first.receive())
    await first.aclose()  # bob goes offline

    sender_state = server.device(ann)
    sender = await sender_state.reconnect(server.gateway_url)
    for batch in range(10):
        await sender.send(*(text(conv, f"m{batch * 20 + i:03}") for i in range(20)))
    acks: list[Sent] = []
    with trio.fail_after(20):
        while len(acks) < 200:
            acks += [f for f in await sender.receive() if isinstance(f, Sent)]
    await sender.aclose()

    back = await bob_state.reconnect(server.gateway_url)
    frames = await until(back, bob_state, lambda st: len(st.messages) >= 200)
    await back.aclose()
    assert [m.cid for m in bob_state.messages] == [f"m{i:03}" for i in range(200)]
    assert [m.seq for m in bob_state.messages] == list(range(1, 201))
    synced = [f for f in frames if isinstance(f, Synced)]
    assert synced and synced[0].pos == max(a.pos or 0 for a in acks)
    assert bob_state.duplicates == 0


async def test_resending_a_cid_is_idempotent(server: Harness) -> None:
    ann = await server.create_org()
    conv = await server.group(ann)
    state = server.device(ann)
    client = await state.reconnect(server.gateway_url)
    await client.send(text(conv, "same"), text(conv, "same"))
    sents: list[Sent] = []
    with trio.fail_after(10):
        while len(sents) < 2:
            sents += [f for f in await client.receive() if isinstance(f, Sent)]
    await client.send(text(conv, "same"))
    with trio.fail_after(10):
        while len(sents) < 3:
            sents += [f for f in await client.receive() if isinstance(f, Sent)]
    await client.aclose()
    assert len({(s.id, s.seq, s.pos) for s in sents}) == 1
    history = await server.client.get(f"/v1/conversations/{conv}/messages", headers=ann.headers)
    assert [m["client_id"] for m in history.json()["messages"]] == ["same"]


async def test_nothing_acked_is_lost_when_the_server_is_killed(
    database_url: str, tmp_path: Path
) -> None:
    acked: set[bytes] = set()
    # First server: send until some acks arrived, then kill it mid-stream (no graceful stop).
    with trio.CancelScope() as kill:
        async with (
            trio.open_nursery() as nursery,
            start_harness(nursery, database_url, tmp_path) as server,
        ):
            ann = await server.create_org()
            conv = await server.group(ann)
            state = server.device(ann)
            async with await state.reconnect(server.gateway_url) as client:
                for i in range(300):
                    await client.send(text(conv, f"k{i:03}"))
                    with trio.move_on_after(0.005):
                        for frame in await client.receive():
                            if isinstance(frame, Sent):
                                acked.add(frame.id)
                    if len(acked) >= 50:
                        kill.cancel()
                        await trio.sleep_forever()
    assert len(acked) >= 50

    async with (
        trio.open_nursery() as nursery,
        start_harness(nursery, database_url, tmp_path) as server,
    ):
        again = await server.login("olivia@acme.example")
        state = server.device(again)
        async with await state.reconnect(server.gateway_url) as client:
            frames: list[ServerFrame] = []
            with trio.fail_after(20):
                while not any(isinstance(f, Synced) for f in frames):
                    for frame in await client.receive():
                        state.accept(frame)
                        frames.append(frame)
    stored = {m.id for m in state.messages if isinstance(m, Msg)}
    assert acked <= stored


async def test_a_stalled_device_is_told_to_resync_and_loses_nothing(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with start_harness(
        nursery, database_url, tmp_path, max_outbound_bytes=256 * 1024
    ) as server:
        ann = await server.create_org()
        bob = await server.add_member(ann, "bob")
        conv = await server.group(ann, bob)
        bob_state = server.device(bob)
        stalled = await connect(
            server.gateway_url, bob.identity(server.server_key), receive_buffer_bytes=4096
        )
        await stalled.sync(0)
        words = "x" * 4000
        acks: list[Sent] = []
        async with await server.connect(ann) as sender:
            await sender.sync(0)

            async def read_acks() -> None:
                while len(acks) < 400:
                    acks.extend(f for f in await sender.receive() if isinstance(f, Sent))

            # The sender reads everything promptly; it is never held up by the stalled device.
            with trio.fail_after(30):
                async with trio.open_nursery() as readers:
                    readers.start_soon(read_acks)
                    for batch in range(40):
                        await sender.send(
                            *(text(conv, f"s{batch * 10 + i:03}", words) for i in range(10))
                        )
        # Bob wakes up: he reads what was in flight, sees `resync`, syncs from his cursor.
        told = False
        with trio.fail_after(30):
            while len(bob_state.messages) < 400:
                for frame in await stalled.receive():
                    bob_state.accept(frame)
                    if isinstance(frame, Resync) and not told:
                        told = True
                        await stalled.sync(bob_state.cursor)
        await stalled.aclose()
        assert told
        assert [m.cid for m in bob_state.messages] == [f"s{i:03}" for i in range(400)]


async def test_receipts_are_fanned_out_and_stored_and_typing_is_live_only(
    server: Harness,
) -> None:
    ann = await server.create_org()
    bob = await server.add_member(ann, "bob")
    conv = await server.group(ann, bob)
    ann_state, bob_state = server.device(ann), server.device(bob)
    ann_client = await ann_state.reconnect(server.gateway_url)
    bob_client = await bob_state.reconnect(server.gateway_url)
    for client, state in ((ann_client, ann_state), (bob_client, bob_state)):
        frames = await until(client, state, lambda st: True)
        while not any(isinstance(f, Synced) for f in frames):
            frames = await client.receive()
    await ann_client.send(text(conv, "r1"))
    await until(bob_client, bob_state, lambda st: len(st.messages) == 1)
    message = bob_state.messages[0]
    await bob_client.send(
        Typing(conv=conv.bytes, on=True),
        Receipt(conv=conv.bytes, id=message.id, status=ReceiptStatus.READ),
    )
    seen: list[ServerFrame] = []
    with trio.fail_after(10):
        while not any(isinstance(f, ReceiptNotice) for f in seen):
            seen += await ann_client.receive()
    typing = [f for f in seen if isinstance(f, TypingNotice)]
    receipt = next(f for f in seen if isinstance(f, ReceiptNotice))
    assert typing and typing[0].who == bob.account_uuid.bytes and typing[0].on
    assert (receipt.id, receipt.status, receipt.who) == (
        message.id,
        ReceiptStatus.READ,
        bob.account_uuid.bytes,
    )
    with trio.fail_after(10):  # the receipt saver writes once a second
        while True:
            history = await server.client.get(
                f"/v1/conversations/{conv}/messages", headers=ann.headers
            )
            receipts = history.json()["messages"][0]["receipts"]
            if receipts:
                break
            await trio.sleep(0.1)
    assert [(r["account_id"], r["status"]) for r in receipts] == [(bob.id, "read")]
    await ann_client.aclose()
    await bob_client.aclose()
