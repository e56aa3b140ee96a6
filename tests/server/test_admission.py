"""Handshakes that survive a storm: FIFO admission with deadlines, and the device-key cache
staying exact under revocation, deactivation and sign-out (PROTOCOL.md §3.5, "Admission")."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request

from loadtest.client import ConnectionClosedError, DeviceIdentity, GatewayClient, connect
from protocol import GATEWAY_PATH, CloseCode
from tests.harness import Harness, Session, start_harness


class Staller:
    """A client that opens a connection, gets its WebSocket upgrade (so it holds a
    handshake slot) and then says nothing."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws

    async def close_code(self) -> int:
        """Wait for the server's close frame; its code."""
        with trio.fail_after(30):
            while True:
                data = await self.stream.receive_some(65536)
                assert data, "the server cut the connection without a close frame"
                self.ws.receive_data(data)
                for event in self.ws.events():
                    if isinstance(event, CloseConnection):
                        return event.code


@asynccontextmanager
async def staller(server: Harness) -> AsyncIterator[Staller]:
    host, port = server.gateway_url.removeprefix("ws://").split("/")[0].rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host=f"{host}:{port}", target=GATEWAY_PATH)))
    with trio.fail_after(30):
        while not any(isinstance(e, AcceptConnection) for e in ws.events()):
            data = await stream.receive_some(65536)
            assert data, "closed before the upgrade"
            ws.receive_data(data)
    try:
        yield Staller(stream, ws)
    finally:
        await stream.aclose()


async def wait_for_waiting(server: Harness, count: int) -> None:
    """Until `count` connections wait for a handshake slot (bounded by a deadline)."""
    with trio.fail_after(30):
        while server.services.hub.stats.handshakes_waiting < count:  # noqa: ASYNC110 (a counter)
            await trio.sleep(0.01)


async def test_a_stalled_handshake_loses_its_slot_and_the_next_client_completes(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with start_harness(
        nursery,
        database_url,
        tmp_path,
        gateway_handshake_slots=1,
        gateway_handshake_step_timeout_s=0.5,
        gateway_handshake_queue_timeout_s=60,
    ) as server:
        ann = await server.create_org()
        async with staller(server) as stalled:
            # The one slot is the staller's; the next client waits, then goes through.
            client = await server.synced(ann)
            assert await stalled.close_code() == CloseCode.HANDSHAKE_TIMEOUT
            await client.aclose()


async def test_waiting_clients_are_admitted_in_arrival_order(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with start_harness(
        nursery,
        database_url,
        tmp_path,
        gateway_handshake_slots=1,
        gateway_handshake_step_timeout_s=1,
        gateway_handshake_queue_timeout_s=60,
    ) as server:
        ann = await server.create_org()
        people = [ann] + [await server.add_member(ann, name) for name in ("bob", "cat", "dan")]
        finished: list[str] = []
        clients: list[GatewayClient] = []

        async def connect(who: Session) -> None:
            clients.append(await server.connect(who))
            finished.append(who.id)

        async with staller(server) as stalled:
            async with trio.open_nursery() as connecting:
                for number, who in enumerate(people, 1):
                    connecting.start_soon(connect, who)
                    await wait_for_waiting(server, number)  # it is in the queue: next one
            assert await stalled.close_code() == CloseCode.HANDSHAKE_TIMEOUT
        assert finished == [who.id for who in people]
        for client in clients:
            await client.aclose()


async def test_a_client_that_waits_past_the_queue_deadline_is_told_busy(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with start_harness(
        nursery,
        database_url,
        tmp_path,
        gateway_handshake_slots=1,
        gateway_handshake_step_timeout_s=60,
        gateway_handshake_queue_timeout_s=0.2,
    ) as server:
        ann = await server.create_org()
        async with staller(server):
            with pytest.raises(ConnectionClosedError) as info:
                await server.connect(ann)
            assert (info.value.code, info.value.reason) == (CloseCode.TRY_AGAIN_LATER, "busy")
            assert server.services.hub.stats.handshakes_refused_busy == 1
        # Once the slot is free, the same device connects.
        client = await server.synced(ann)
        await client.aclose()


async def cached(server: Harness, session: Session) -> None:
    """Connect `session` once so its key is in the cache, and disconnect."""
    client = await server.synced(session)
    await client.aclose()
    assert uuid.UUID(session.device["id"]) in server.services.hub.device_keys
    hits = server.services.hub.device_keys.hits
    client = await server.synced(session)  # this handshake read no database
    await client.aclose()
    assert server.services.hub.device_keys.hits == hits + 1


async def refused_with(server: Harness, session: Session) -> tuple[int, str]:
    with pytest.raises(ConnectionClosedError) as info:
        async with await server.connect(session) as client:
            with trio.fail_after(10):
                while True:
                    await client.receive()
    return info.value.code, info.value.reason


async def test_a_revoked_device_is_refused_although_its_key_was_cached(server: Harness) -> None:
    ann = await server.create_org()
    phone = await server.login("olivia@acme.example")
    await cached(server, phone)
    response = await server.client.delete(f"/v1/devices/{phone.device['id']}", headers=ann.headers)
    assert response.status_code == 200, response.text
    assert uuid.UUID(phone.device["id"]) not in server.services.hub.device_keys
    assert await refused_with(server, phone) == (CloseCode.DEVICE_REVOKED, "device_revoked")
    # Refusals are not cached: the device is read from the database again each time.
    assert await refused_with(server, phone) == (CloseCode.DEVICE_REVOKED, "device_revoked")
    assert uuid.UUID(phone.device["id"]) not in server.services.hub.device_keys


async def test_a_deactivated_account_is_refused_although_its_key_was_cached(
    server: Harness,
) -> None:
    ann = await server.create_org()
    bob = await server.add_member(ann, "bob")
    await cached(server, bob)
    response = await server.client.post(
        f"/v1/orgs/{ann.org_id}/members/{bob.id}/deactivate", headers=ann.headers
    )
    assert response.status_code == 200, response.text
    assert await refused_with(server, bob) == (
        CloseCode.ACCOUNT_DEACTIVATED,
        "account_deactivated",
    )


async def test_a_signed_out_device_is_refused_although_its_key_was_cached(
    server: Harness,
) -> None:
    ann = await server.create_org()
    await cached(server, ann)
    response = await server.client.post("/v1/logout", headers=ann.headers)
    assert response.status_code == 204, response.text
    assert await refused_with(server, ann) == (CloseCode.SIGNED_OUT, "signed_out")
    # Logging in again on the same device lets it back on (read afresh, not cached refused).
    again = await server.login("olivia@acme.example", key=ann.key)
    client = await server.synced(again)
    await client.aclose()


async def test_an_unknown_device_is_never_cached(server: Harness) -> None:
    ann = await server.create_org()
    known = ann.identity(server.server_key)
    stranger = DeviceIdentity(uuid.uuid4(), known.secret_key, known.server_key)
    for _ in range(2):
        with pytest.raises(ConnectionClosedError) as info:
            await connect(server.gateway_url, stranger)
        assert info.value.code == CloseCode.UNKNOWN_DEVICE
    assert stranger.device_id not in server.services.hub.device_keys
