"""The close path of a gateway connection (issue 14's reproductions).

Every close the server starts sends a FINAL batch with the `err` saying why, then a WebSocket
close frame; nothing is sealed after the FINAL; a client's close frame is answered at once;
and no connection's trouble reaches the process (a failure in the in-process harness would
fail these tests through the test's nursery).
"""

from __future__ import annotations

import msgpack
import pytest
import trio
from wsproto.events import BytesMessage, CloseConnection

from loadtest.client import ConnectionClosedError, GatewayClient
from protocol import CloseCode, Err, ErrorCode, Ping, Pong, Sync, Typing, encode, encode_batch
from server.gateway.session import Session
from storage.messages import MessageStore
from tests.harness import Harness
from tests.server.test_gateway_refusals import bystander_still_served, setup

# An over-limit string in a frame: the whole batch is refused and the connection closed.
REFUSED_TYPING = msgpack.packb({"t": "typing", "conv": b"\x00" * 16, "on": "x" * 65_537})
SYNC_AT_THE_END = encode(Sync(after=2**53 - 1))


async def send_together(client: GatewayClient, *plaintexts: bytes) -> None:
    """Seal each plaintext as its own WebSocket message and write them in one go, so the
    server finds the second already buffered while it handles the first."""
    data = b"".join(client._ws.send(BytesMessage(data=client.seal(p))) for p in plaintexts)
    await client._stream.send_all(data)


async def final_then_close(client: GatewayClient) -> tuple[list[object], ConnectionClosedError]:
    """Read to the end: the frames of the FINAL batch and how the server closed."""
    assert client._channel is not None
    final: list[object] = []
    try:
        with trio.fail_after(10):
            while True:
                frames = await client.receive()
                if client._channel.peer_finished:
                    final = list(frames)
    except ConnectionClosedError as closed:
        return final, closed
    finally:
        await client.aclose()


async def test_sync_racing_a_refusal_never_seals_after_the_final(server: Harness) -> None:
    # Was: the catch-up went live after the refusal had sealed FINAL, the flusher sealed
    # `synced` after it and the error ended the process.
    ann, _, conv, bystander = await setup(server)
    for _ in range(40):
        client = await server.connect(ann)
        await send_together(client, SYNC_AT_THE_END, REFUSED_TYPING)
        final, closed = await final_then_close(client)
        assert (closed.code, closed.reason) == (CloseCode.TOO_LARGE, "frame_too_large")
        errors = [f for f in final if isinstance(f, Err)]
        assert [e.code for e in errors] == [ErrorCode.FRAME_TOO_LARGE]
    await bystander_still_served(server, ann, conv, bystander)


async def test_a_refusal_followed_by_more_data_still_sends_final_and_close(
    server: Harness,
) -> None:
    # Was: after a refusal the server stopped reading, so a client still writing blocked and
    # could not read; after the close grace the socket was cut with unread data in it (a TCP
    # reset) and neither the FINAL batch nor the close frame arrived (1006 at the client).
    ann, _, conv, bystander = await setup(server)
    for _ in range(3):
        client = await server.connect(ann)
        more = b"".join(client._ws.send(m) for m in (BytesMessage(data=b"\x00" * 120_000),) * 60)
        with trio.fail_after(10):
            await send_together(client, REFUSED_TYPING)
            await client._stream.send_all(more)
        final, closed = await final_then_close(client)
        assert closed.code == CloseCode.TOO_LARGE
        assert [f.code for f in final if isinstance(f, Err)] == [ErrorCode.FRAME_TOO_LARGE]
    await bystander_still_served(server, ann, conv, bystander)


def nested_t(depth: int) -> bytes:
    """A frame whose `t` is `depth` maps nested ({"t": {"k": {"k": ... "x"}}}), packed by
    hand: msgpack's own packer refuses depths past ~500."""
    return b"\x81\xa1t" + b"\x81\xa1k" * depth + b"\xa1x"


async def test_deep_nesting_is_malformed_not_internal(server: Harness) -> None:
    ann, _, conv, bystander = await setup(server)
    for depth in (3, 500, 1_000, 40_000):
        client = await server.connect(ann)
        await client.send_message(client.seal(nested_t(depth)))
        final, closed = await final_then_close(client)
        assert (closed.code, closed.reason) == (CloseCode.MALFORMED, "malformed_frame"), depth
        assert [f.code for f in final if isinstance(f, Err)] == [ErrorCode.MALFORMED_FRAME]
    await bystander_still_served(server, ann, conv, bystander)


async def test_a_client_final_is_answered_and_its_close_frame_at_once(
    nursery: trio.Nursery, database_url: str, tmp_path: object
) -> None:
    # Was: the server kept the socket open after the client's FINAL and close frame until
    # its close grace ran out (2 s). With a grace of a minute, a prompt answer is the only
    # way this test ends within its 10 s bound.
    from pathlib import Path

    from tests.harness import start_harness

    assert isinstance(tmp_path, Path)
    async with start_harness(nursery, database_url, tmp_path, close_grace_s=60.0) as server:
        ann = await server.create_org()
        client = await server.connect(ann)
        assert client._channel is not None
        final = client._channel.seal(encode_batch([Ping()]), final=True)
        await client._stream.send_all(client._ws.send(BytesMessage(data=final)))
        got: list[object] = []
        with trio.fail_after(10):
            try:
                while True:
                    got += await client.receive()
            except ConnectionClosedError as closed:
                assert closed.code == CloseCode.NORMAL
        assert any(isinstance(f, Pong) for f in got)
        # The server closed first; our close frame answers it, and the socket ends.
        await client._stream.send_all(client._ws.send(CloseConnection(code=1000)))
        with trio.fail_after(10):
            while await client._stream.receive_some(1024):
                pass
        await client._stream.aclose()


async def test_any_error_in_a_connection_task_ends_that_connection_alone(
    server: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A bug in a frame handler (the reader's task) and in the catch-up (a task of its own):
    # each connection gets FINAL `internal` + 1011, the error is logged once with the
    # connection id, and everyone else is served on.
    ann, _, conv, bystander = await setup(server)

    async def broken_typing(self: Session, frame: object) -> None:
        raise RuntimeError("a bug in a handler")

    async def broken_after(*args: object) -> object:
        raise RuntimeError("a bug in the catch-up")

    monkeypatch.setattr(Session, "_typing", broken_typing)
    monkeypatch.setattr(MessageStore, "after", broken_after)
    for trigger in (Typing(conv=conv.bytes, on=True), Sync(after=0)):
        client = await server.connect(ann)
        await client.send(trigger)
        final, closed = await final_then_close(client)
        assert (closed.code, closed.reason) == (CloseCode.INTERNAL_ERROR, "internal")
        assert [f.code for f in final if isinstance(f, Err)] == [ErrorCode.INTERNAL]
    monkeypatch.undo()
    failures = [r for r in caplog.records if "internal error, closing it" in r.getMessage()]
    assert len(failures) == 2
    await bystander_still_served(server, ann, conv, bystander)
