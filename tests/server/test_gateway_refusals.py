"""Bad input on the gateway: each is refused with its documented code, affects only that
connection, and stores nothing."""

from __future__ import annotations

import uuid
from pathlib import Path

import msgpack
import pytest
import trio
from nacl.signing import SigningKey

from loadtest.client import ConnectionClosedError, DeviceIdentity, GatewayClient, connect
from protocol import (
    CloseCode,
    Consent,
    Err,
    ErrorCode,
    LocationBody,
    Ping,
    Pong,
    ProtocolError,
    Receipt,
    ReceiptNotice,
    ReceiptStatus,
    Send,
    Sent,
    ServerFrame,
    Synced,
    TextBody,
    encode,
)
from tests.harness import Harness, Session, start_harness


async def frames_until(client: GatewayClient, want: type, limit_s: float = 10) -> list[ServerFrame]:
    frames: list[ServerFrame] = []
    with trio.fail_after(limit_s):
        while not any(isinstance(f, want) for f in frames):
            frames += await client.receive()
    return frames


async def closed_with(client: GatewayClient) -> ConnectionClosedError:
    """Wait for the server to close `client`; returns how it closed."""
    try:
        with trio.fail_after(10), pytest.raises(ConnectionClosedError) as info:
            while True:
                await client.receive()
    finally:
        await client.aclose()
    return info.value


async def refused(server: Harness, session: Session) -> ConnectionClosedError:
    """How the server refuses this device: after the device proved its key, with a FINAL
    `err` and a close (an unauthenticated peer learns nothing of the account)."""
    return await closed_with(await server.connect(session))


def for_one(cid: str, conv: uuid.UUID, who: Session) -> Send:
    """A location share scoped to one member."""
    return Send(
        cid=cid,
        conv=conv.bytes,
        body=LocationBody(lat=-6.2, lon=106.8, acc=10.0),
        consent=Consent(purpose="location_share", scope=(who.account_uuid.bytes,), retention=3600),
    )


async def history(server: Harness, session: Session, conv: uuid.UUID) -> list[str]:
    response = await server.client.get(
        f"/v1/conversations/{conv}/messages", headers=session.headers
    )
    return [m["client_id"] for m in response.json()["messages"]]


async def setup(server: Harness) -> tuple[Session, Session, uuid.UUID, GatewayClient]:
    """Ann and Bob in a group; Bob connected and synced (the bystander who must not notice)."""
    ann = await server.create_org()
    await server.grant(ann, "location_share")
    bob = await server.add_member(ann, "bob")
    conv = await server.group(ann, bob)
    bystander = await server.connect(bob)
    await bystander.sync(0)
    await frames_until(bystander, Synced)
    return ann, bob, conv, bystander


async def bystander_still_served(
    server: Harness, ann: Session, conv: uuid.UUID, bob: GatewayClient
) -> None:
    async with await server.connect(ann) as good:
        await good.sync(0)
        await good.send(Send(cid="after", conv=conv.bytes, body=TextBody(text="still here")))
        await frames_until(good, Sent)
    frames: list[ServerFrame] = []
    with trio.fail_after(10):
        while not any(getattr(f, "cid", None) == "after" for f in frames):
            frames += await bob.receive()
    await bob.aclose()


@pytest.mark.parametrize("attack", ["tamper", "replay", "truncate", "reorder", "garbage"])
async def test_broken_ciphertext_closes_only_that_connection(server: Harness, attack: str) -> None:
    ann, _, conv, bystander = await setup(server)
    client = await server.connect(ann)
    frame = encode(Send(cid="evil", conv=conv.bytes, body=TextBody(text="x")))
    first = client.seal(frame)
    second = client.seal(frame)
    if attack == "tamper":
        await client.send_message(first[:-1] + bytes([first[-1] ^ 1]))
    elif attack == "replay":
        await client.send_message(first)
        await client.send_message(first)
    elif attack == "truncate":
        await client.send_message(first[:10])
    elif attack == "reorder":
        await client.send_message(second)
    else:
        await client.send_message(b"\x00" * 40)
    closed = await closed_with(client)
    assert (closed.code, closed.reason) == (CloseCode.DECRYPT_FAILED, "decrypt_failed")
    if attack == "replay":
        # The first copy was valid: it was handed to the group commit before the replay was
        # seen, and is stored even though the connection is gone (its `sent` had nowhere to go).
        for _ in range(200):
            if await history(server, ann, conv) == ["evil"]:
                break
            await trio.sleep(0.05)
        else:
            raise AssertionError("the valid first copy was never stored")
    else:
        assert await history(server, ann, conv) == []
    await bystander_still_served(server, ann, conv, bystander)


async def test_unreadable_batch_and_oversized_messages_close(server: Harness) -> None:
    ann, _, conv, bystander = await setup(server)
    client = await server.connect(ann)
    await client.send_message(client.seal(b"\xc1\xc1"))  # 0xc1 is never valid msgpack
    closed = await closed_with(client)
    assert (closed.code, closed.reason) == (CloseCode.MALFORMED, "malformed_frame")
    client = await server.connect(ann)
    await client.send_message(b"\x00" * (200 * 1024))  # past any batch the server accepts
    closed = await closed_with(client)
    assert (closed.code, closed.reason) == (CloseCode.TOO_LARGE, "frame_too_large")
    assert await history(server, ann, conv) == []
    await bystander_still_served(server, ann, conv, bystander)


async def test_bad_frames_get_errors_and_the_rest_of_the_batch_is_served(server: Harness) -> None:
    ann, _, conv, bystander = await setup(server)
    outsider_conv = await server.group(await server.add_member(ann, "carl"), title="Other")
    client = await server.connect(ann)
    await client.sync(0)
    unknown = msgpack.packb({"t": "teleport", "cid": "t1"})
    no_consent = msgpack.packb(
        {
            "t": "send",
            "cid": "loc1",
            "conv": conv.bytes,
            "kind": "location",
            "body": {"lat": -6.2, "lon": 106.8, "acc": 5.0},
        }
    )
    not_mine = encode(Send(cid="nm1", conv=outsider_conv.bytes, body=TextBody(text="hi")))
    fine = encode(Send(cid="ok1", conv=conv.bytes, body=TextBody(text="hi")))
    await client.send_message(client.seal(unknown + no_consent + not_mine + fine))
    frames: list[ServerFrame] = []
    with trio.fail_after(10):
        while not (
            sum(isinstance(f, Err) for f in frames) >= 3
            and any(isinstance(f, Sent) for f in frames)
        ):
            frames += await client.receive()
    errors = {(f.code, f.ref) for f in frames if isinstance(f, Err)}
    assert ErrorCode.UNKNOWN_FRAME_TYPE in {code for code, _ in errors}
    assert (ErrorCode.CONSENT_REQUIRED, "loc1") in errors
    assert (ErrorCode.NOT_MEMBER, "nm1") in errors
    assert await history(server, ann, conv) == ["ok1"]
    await client.aclose()
    await bystander.aclose()


async def test_unknown_revoked_and_impostor_devices_are_refused(server: Harness) -> None:
    ann, _, conv, bystander = await setup(server)
    stranger_key = SigningKey.generate()
    stranger = DeviceIdentity(
        uuid.uuid4(), bytes(stranger_key) + bytes(stranger_key.verify_key), server.server_key
    )
    with pytest.raises(ConnectionClosedError) as info:
        await connect(server.gateway_url, stranger)
    assert (info.value.code, info.value.reason) == (CloseCode.UNKNOWN_DEVICE, "unknown_device")

    # The right device id with the wrong key: the handshake signature does not verify.
    impostor_key = SigningKey.generate()
    real = ann.identity(server.server_key)
    impostor = DeviceIdentity(
        real.device_id, bytes(impostor_key) + bytes(impostor_key.verify_key), server.server_key
    )
    with pytest.raises(ConnectionClosedError) as info:
        async with await connect(server.gateway_url, impostor) as client:
            await client.receive()
    assert (info.value.code, info.value.reason) == (CloseCode.HANDSHAKE_FAILED, "bad_signature")

    # A connected device that gets revoked is disconnected, and cannot come back.
    phone = await server.login("olivia@acme.example")
    live = await server.connect(phone)
    await server.client.delete(f"/v1/devices/{phone.device['id']}", headers=ann.headers)
    closed = await closed_with(live)
    assert (closed.code, closed.reason) == (CloseCode.DEVICE_REVOKED, "device_revoked")
    closed = await refused(server, phone)
    assert (closed.code, closed.reason) == (CloseCode.DEVICE_REVOKED, "device_revoked")
    await bystander_still_served(server, ann, conv, bystander)


async def test_a_pinned_key_mismatch_is_detected_by_the_client(server: Harness) -> None:
    ann = await server.create_org()
    wrong = ann.identity(bytes(SigningKey.generate().verify_key))
    with pytest.raises(ProtocolError) as info:
        await connect(server.gateway_url, wrong)
    assert info.value.code is ErrorCode.SERVER_KEY_MISMATCH


async def test_wrong_path_and_handshake_timeout(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with start_harness(nursery, database_url, tmp_path, handshake_timeout_s=0.5) as server:
        url = server.gateway_url.replace("/v1/ws", "/nope")
        ann = await server.create_org()
        with pytest.raises(ConnectionClosedError) as info:
            await connect(url, ann.identity(server.server_key))
        assert info.value.code == 404
        # A socket that never speaks is closed at the handshake deadline.
        host, port = server.gateway_url.removeprefix("ws://").split("/")[0].split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        with trio.fail_after(10):
            while await stream.receive_some(1024):
                pass
        await stream.aclose()


async def test_location_with_consent_and_ephemeral_retention_is_never_stored(
    server: Harness,
) -> None:
    ann, bob, conv, bystander = await setup(server)
    client = await server.connect(ann)
    await client.sync(0)
    share = Send(
        cid="live1",
        conv=conv.bytes,
        body=LocationBody(lat=-6.2, lon=106.816666, acc=12.5),
        consent=Consent(purpose="location_share", scope="conversation", retention="ephemeral"),
    )
    await client.send(share)
    sent = next(f for f in await frames_until(client, Sent) if isinstance(f, Sent))
    assert sent.pos is None and sent.seq is None
    frames: list[ServerFrame] = []
    with trio.fail_after(10):
        while not any(getattr(f, "cid", None) == "live1" for f in frames):
            frames += await bystander.receive()
    assert await history(server, ann, conv) == []
    later = await server.connect(bob)
    await later.sync(0)
    caught_up = await frames_until(later, Synced)
    assert not any(getattr(f, "cid", None) == "live1" for f in caught_up)
    await later.aclose()
    await client.aclose()
    await bystander.aclose()


async def test_consent_scope_limits_who_receives_live_and_in_catch_up(server: Harness) -> None:
    ann = await server.create_org()
    await server.grant(ann, "location_share")
    bob = await server.add_member(ann, "bob")
    carl = await server.add_member(ann, "carl")
    conv = await server.group(ann, bob, carl)
    carl_live = await server.connect(carl)
    await carl_live.sync(0)
    await frames_until(carl_live, Synced)
    sender = await server.connect(ann)
    await sender.sync(0)
    await sender.send(
        for_one("for-bob", conv, bob),
        Send(cid="for-all", conv=conv.bytes, body=TextBody(text="hello all")),
    )
    got: list[ServerFrame] = []
    with trio.fail_after(10):
        while not any(getattr(f, "cid", None) == "for-all" for f in got):
            got += await carl_live.receive()
    assert not any(getattr(f, "cid", None) == "for-bob" for f in got)
    await carl_live.aclose()
    await sender.aclose()
    for who, expected in ((bob, ["for-all", "for-bob"]), (carl, ["for-all"])):
        assert sorted(await history(server, who, conv)) == expected
        client = await server.connect(who)
        await client.sync(0)
        frames = await frames_until(client, Synced)
        assert sorted(getattr(f, "cid", "") for f in frames if hasattr(f, "seq")) == expected
        await client.aclose()


async def test_deactivating_a_member_closes_their_connections(server: Harness) -> None:
    ann = await server.create_org()
    bob = await server.add_member(ann, "bob")
    live = await server.connect(bob)
    response = await server.client.post(
        f"/v1/orgs/{ann.org_id}/members/{bob.id}/deactivate", headers=ann.headers
    )
    assert response.status_code == 200
    closed = await closed_with(live)
    assert (closed.code, closed.reason) == (
        CloseCode.ACCOUNT_DEACTIVATED,
        "account_deactivated",
    )
    closed = await refused(server, bob)
    assert (closed.code, closed.reason) == (CloseCode.ACCOUNT_DEACTIVATED, "account_deactivated")


async def test_a_receipt_for_a_message_you_cannot_see_is_refused(server: Harness) -> None:
    # An unknown id, another conversation's message, and a message scoped away from you:
    # each is refused (`unknown_message`) and nobody else hears of it.
    ann = await server.create_org()
    await server.grant(ann, "location_share")
    bob = await server.add_member(ann, "bob")
    carl = await server.add_member(ann, "carl")
    conv = await server.group(ann, bob, carl)
    other = await server.group(ann, title="Ann alone")
    async with await server.connect(ann) as sender:
        await sender.sync(0)
        await sender.send(
            for_one("for-bob", conv, bob),
            Send(cid="elsewhere", conv=other.bytes, body=TextBody(text="mine")),
        )
        frames = await frames_until(sender, Sent)
        while sum(isinstance(f, Sent) for f in frames) < 2:
            frames += await sender.receive()
    ids = {f.cid: f.id for f in frames if isinstance(f, Sent)}
    bob_live = await server.connect(bob)
    await bob_live.sync(2**53 - 1)
    await frames_until(bob_live, Synced)
    carl_client = await server.connect(carl)
    await carl_client.sync(2**53 - 1)
    await frames_until(carl_client, Synced)
    for message_id in (uuid.uuid4().bytes, ids["elsewhere"], ids["for-bob"]):
        await carl_client.send(Receipt(conv=conv.bytes, id=message_id, status=ReceiptStatus.READ))
        refused = [f for f in await frames_until(carl_client, Err) if isinstance(f, Err)]
        assert [(e.code, e.ref_type) for e in refused] == [(ErrorCode.UNKNOWN_MESSAGE, "receipt")]
    # Bob may see the scoped message: his receipt goes to Ann's devices, not to Carl's.
    ann_live = await server.connect(ann)
    await ann_live.sync(2**53 - 1)
    await frames_until(ann_live, Synced)
    await bob_live.send(Receipt(conv=conv.bytes, id=ids["for-bob"], status=ReceiptStatus.READ))
    notices = [
        f for f in await frames_until(ann_live, ReceiptNotice) if isinstance(f, ReceiptNotice)
    ]
    assert notices[0].id == ids["for-bob"]
    await carl_client.send(Ping())
    got = await frames_until(carl_client, Pong)
    assert not any(isinstance(f, ReceiptNotice) for f in got)
    for client in (bob_live, carl_client, ann_live):
        await client.aclose()


async def test_a_revocation_during_the_handshake_closes_it(server: Harness) -> None:
    # The device is known (ServerHello sent) but has not proved its key yet when it is
    # revoked: the connection is closed at once, not let in with an ended session.
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request

    from protocol import ClientHandshake

    ann = await server.create_org()
    phone = await server.login("olivia@acme.example")
    identity = phone.identity(server.server_key)
    host, port = server.gateway_url.removeprefix("ws://").split("/")[0].split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    ws = WSConnection(ConnectionType.CLIENT)
    events: list[object] = []

    async def next_event(kind: type) -> object:
        with trio.fail_after(10):
            while not any(isinstance(e, kind) for e in events):
                data = await stream.receive_some(65536)
                assert data, "dropped without a close frame"
                ws.receive_data(data)
                events.extend(ws.events())
        found = next(e for e in events if isinstance(e, kind))
        events.remove(found)
        return found

    await stream.send_all(ws.send(Request(host=f"{host}:{port}", target="/v1/ws")))
    await next_event(AcceptConnection)
    handshake = ClientHandshake(
        server_public_key=identity.server_key,
        device_id=identity.device_id.bytes,
        device_secret_key=identity.secret_key,
    )
    await stream.send_all(ws.send(BytesMessage(data=handshake.client_hello())))
    await next_event(BytesMessage)  # the ServerHello: the device is known, not yet proven
    await server.client.delete(f"/v1/devices/{phone.device['id']}", headers=ann.headers)
    closed = await next_event(CloseConnection)
    assert isinstance(closed, CloseConnection)
    assert (closed.code, closed.reason) == (CloseCode.DEVICE_REVOKED, "device_revoked")
    await stream.aclose()


async def test_a_flooding_connection_is_refused_then_closed(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with start_harness(
        nursery, database_url, tmp_path, gateway_frames_per_s=1.0, gateway_frame_burst=256
    ) as server:
        ann, _, conv, bystander = await setup(server)
        client = await server.connect(ann)
        await client.sync(0)
        await frames_until(client, Synced)
        sends = [Send(cid=f"f{i}", conv=conv.bytes, body=TextBody(text="x")) for i in range(200)]
        await client.send(*sends)  # within the burst: served
        sent = [f for f in await frames_until(client, Sent) if isinstance(f, Sent)]
        while len(sent) < 200:  # every one acknowledged before the flood
            sent += [f for f in await client.receive() if isinstance(f, Sent)]
        # Over the budget: the batch is refused, each send with its cid (retry later).
        await client.send(*sends[:100])
        errors = [f for f in await frames_until(client, Err) if isinstance(f, Err)]
        while len(errors) < 101:
            errors += [f for f in await client.receive() if isinstance(f, Err)]
        assert {e.code for e in errors} == {ErrorCode.RATE_LIMITED}
        assert {e.ref for e in errors} == {*(f"f{i}" for i in range(100)), None}
        # Going on regardless ends the connection, with the documented close.
        await client.send(*sends[:100])
        await client.send(*sends[:100])
        closed = await closed_with(client)
        assert (closed.code, closed.reason) == (CloseCode.RATE_LIMITED, "rate_limited")
        stored = await server.client.get(
            f"/v1/conversations/{conv}/messages?limit=200", headers=ann.headers
        )
        assert len(stored.json()["messages"]) == 200  # each stored once, none refused twice
        await bystander_still_served(server, ann, conv, bystander)
