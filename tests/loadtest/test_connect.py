"""Connect failures of the client and the tester's devices: each one a counted, retried
`ConnectError`, never an exception that takes a worker down.

Real sockets on 127.0.0.1: a port nobody listens on, tiny servers answering junk, a socket
connected to itself, and a proxy in front of the real gateway that answers junk first.
"""

from __future__ import annotations

import contextlib
import random
import socket
import uuid
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
import trio.testing
from nacl.signing import SigningKey
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request

from loadtest import device as device_module
from loadtest.client import (
    ConnectError,
    DeviceIdentity,
    DeviceState,
    connect,
    connect_over,
)
from loadtest.device import CONNECT_ATTEMPTS, SimDevice, describe, is_permanent
from loadtest.observe import Observations
from protocol import RemoteProtocolError
from tests.harness import Harness

Handler = Callable[[trio.SocketStream], Awaitable[None]]


def some_identity() -> DeviceIdentity:
    key = SigningKey.generate()
    return DeviceIdentity(uuid.uuid4(), bytes(key) + bytes(key.verify_key), bytes(32))


def url_of(port: int) -> str:
    return f"ws://127.0.0.1:{port}/v1/ws"


async def serve(nursery: trio.Nursery, handler: Handler) -> int:
    """Run a TCP server on 127.0.0.1 that hands each connection to `handler`; its port."""
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


def answering(junk: bytes) -> Handler:
    """A server that reads the upgrade request, answers `junk` and closes."""

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            await stream.send_all(junk)

    return handler


async def echo(stream: trio.SocketStream) -> None:
    """What a socket connected to itself sees: its own request as the answer."""
    async with stream:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)


async def hang_up(stream: trio.SocketStream) -> None:
    """Read the request, then close without a word (a FIN: nothing is left unread)."""
    await stream.receive_some(65536)
    await stream.aclose()


async def reset(stream: trio.SocketStream) -> None:
    await stream.receive_some(65536)
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    await stream.aclose()  # with a zero linger: RST instead of FIN


def upgrading(then: bytes | None) -> Handler:
    """A server that accepts the WebSocket upgrade, then sends `then` as a binary message
    (instead of a ServerHello) or, for None, hangs up."""

    async def handler(stream: trio.SocketStream) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        async with stream:
            while not any(isinstance(e, Request) for e in ws.events()):
                ws.receive_data(await stream.receive_some(65536))
            await stream.send_all(ws.send(AcceptConnection()))
            if then is None:
                await stream.receive_some(65536)  # the ClientHello: read, so we close with FIN
                return
            await stream.send_all(ws.send(BytesMessage(data=then)))
            await stream.receive_some(65536)  # until the client gives up

    return handler


async def test_a_port_nobody_listens_on_is_a_connect_error() -> None:
    # A bound socket that does not listen holds the port: connecting to it is refused,
    # and no other socket can pick it as its own source port meanwhile.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        with pytest.raises(ConnectError) as info:
            await connect(url_of(holder.getsockname()[1]), some_identity())
    assert info.value.reason == "connection_refused"


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (answering(b"garbage\r\n\r\n"), "bad_upgrade"),
        (answering(bytes(range(256)) * 4), "bad_upgrade"),
        (
            answering(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
            "bad_upgrade",
        ),
        (answering(b"HTTP/1.1 200 OK\r\n"), "dropped_during_upgrade"),
        (echo, "bad_upgrade"),
        (hang_up, "dropped_during_upgrade"),
        (reset, "connection_reset"),
    ],
    ids=["junk", "binary", "bad-101", "half-answer", "echo", "hang-up", "reset"],
)
async def test_a_peer_that_is_no_websocket_server_is_a_connect_error(
    nursery: trio.Nursery, handler: Handler, reason: str
) -> None:
    port = await serve(nursery, handler)
    with trio.fail_after(10), pytest.raises(ConnectError) as info:
        await connect(url_of(port), some_identity())
    assert info.value.reason == reason


async def test_a_hang_up_after_the_upgrade_is_a_connect_error_and_junk_a_protocol_error(
    nursery: trio.Nursery,
) -> None:
    port = await serve(nursery, upgrading(None))
    with trio.fail_after(10), pytest.raises(ConnectError) as info:
        await connect(url_of(port), some_identity())
    assert info.value.reason == "dropped_during_handshake"
    # A WebSocket peer whose "ServerHello" is junk fails our handshake: counted by its code.
    port = await serve(nursery, upgrading(b"\xc1 not msgpack"))
    with trio.fail_after(10), pytest.raises(RemoteProtocolError) as failed:
        await connect(url_of(port), some_identity())
    assert describe(failed.value) == "malformed_frame" and not is_permanent(failed.value)


async def test_a_socket_connected_to_itself_is_detected_and_closed() -> None:
    # TCP simultaneous open: a socket bound to 127.0.0.1:P connecting to 127.0.0.1:P is
    # connected to itself - what a reconnect to a dead port in the ephemeral range can hit.
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    address = sock.getsockname()
    await sock.connect(address)
    assert sock.getpeername() == address
    stream = trio.SocketStream(sock)
    with pytest.raises(ConnectError) as info:
        await connect_over(stream, url_of(address[1]), some_identity())
    assert info.value.reason == "self_connect"
    assert sock.fileno() == -1  # closed


def sim_device(url: str, identity: DeviceIdentity) -> SimDevice:
    return SimDevice(0, DeviceState(identity), url, Observations("run", 0), random.Random(0))


async def test_a_device_counts_every_failed_connect_and_gives_up_without_raising(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    # Jump over the backoff sleeps once every task has waited a moment of real time.
    mock_clock.autojump_threshold = 0.05
    port = await serve(nursery, answering(b"GET /v1/ws HTTP/1.1\r\n\r\n"))
    device = sim_device(url_of(port), some_identity())
    await device.run()  # returns: it never raises out of its loop
    assert device.failed == "bad_upgrade"
    assert device.obs.counts.errors == {"connect:bad_upgrade": CONNECT_ATTEMPTS}
    assert device.obs.settled == 1 and not device.ever_connected


async def test_a_device_retries_through_junk_and_connects_when_the_gateway_answers(
    nursery: trio.Nursery, server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(device_module, "BACKOFF_FIRST_S", 0.01)
    host, gateway_port = server.gateway_url.removeprefix("ws://").split("/")[0].split(":")
    failures = iter([answering(b"junk\r\n\r\n"), echo, hang_up, reset])

    async def front(stream: trio.SocketStream) -> None:
        """Fails the first connections one way each, then relays to the real gateway."""
        failure = next(failures, None)
        if failure is not None:
            await failure(stream)
            return
        upstream = await trio.open_tcp_stream(host, int(gateway_port))
        async with stream, upstream, trio.open_nursery() as relay:

            async def pipe(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    while data := await source.receive_some(65536):
                        await sink.send_all(data)
                relay.cancel_scope.cancel()

            relay.start_soon(pipe, stream, upstream)
            relay.start_soon(pipe, upstream, stream)

    port = await serve(nursery, front)
    ann = await server.create_org()
    device = sim_device(url_of(port), ann.identity(server.server_key))
    async with trio.open_nursery() as inner:
        inner.start_soon(device.run)
        with trio.fail_after(30):
            while not device.connected:  # noqa: ASYNC110 (the device has no event for it)
                await trio.sleep(0.01)
        inner.cancel_scope.cancel()
    assert device.failed is None
    assert device.obs.counts.errors == {
        "connect:bad_upgrade": 2,
        "connect:dropped_during_upgrade": 1,
        "connect:connection_reset": 1,
    }
    assert device.obs.counts.connects == 1
