"""The connection's delivery and close state machine, on a real socket pair (no gateway
around it)."""

from __future__ import annotations

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request

from protocol import CloseCode, Err, ErrorCode, Pong, SecureChannel, decode_server_batch, encode
from server.gateway.connection import RESYNC_FRAME, Connection
from server.gateway.flusher import Flusher
from server.gateway.states import NEXT, GatewayStats, State
from tests.protocol.helpers import established

PONG = encode(Pong())


def make_connection(flusher: Flusher | None = None) -> tuple[Connection, trio.socket.SocketType]:
    ours, theirs = trio.socket.socketpair()
    conn = Connection(ours, flusher or Flusher(), max_outbound_bytes=1 << 20, resync_timeout_s=5.0)
    conn.state = State.WAITING_SYNC  # as after a handshake, without a channel to seal with
    return conn, theirs


class Peer:
    """The device's end of a connection whose WebSocket and secure channel are up."""

    def __init__(self, sock: trio.socket.SocketType, channel: SecureChannel) -> None:
        self.sock = sock
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.channel = channel
        self.batches: list[tuple[list[object], bool]] = []  # (frames, FINAL?)
        self.close: CloseConnection | None = None
        self._partial = bytearray()

    async def read_until_close(self) -> None:
        with trio.fail_after(10):
            while self.close is None:
                data = await self.sock.recv(1 << 20)
                assert data, "dropped without a close frame"
                self.ws.receive_data(data)
                self._take()

    async def read_batches(self, count: int) -> None:
        with trio.fail_after(10):
            while len(self.batches) < count:
                self.ws.receive_data(await self.sock.recv(1 << 20))
                self._take()

    def _take(self) -> None:
        for event in self.ws.events():
            if isinstance(event, BytesMessage):
                self._partial += event.data
                if not event.message_finished:
                    continue
                frames: list[object] = list(
                    decode_server_batch(self.channel.open(bytes(self._partial)))
                )
                self._partial.clear()
                self.batches.append((frames, self.channel.peer_finished))
            elif isinstance(event, CloseConnection):
                self.close = event


def make_established(
    flusher: Flusher | None = None, stats: GatewayStats | None = None
) -> tuple[Connection, Peer]:
    """A connection after the WebSocket upgrade and the secure handshake."""
    ours, theirs = trio.socket.socketpair()
    conn = Connection(
        ours,
        flusher or Flusher(),
        max_outbound_bytes=4 << 20,
        resync_timeout_s=5.0,
        stats=stats,
    )
    pair = established()
    peer = Peer(theirs, pair.client)
    conn.ws.receive_data(peer.ws.send(Request(host="gateway", target="/v1/ws")))
    assert any(isinstance(e, Request) for e in conn.ws.events())
    peer.ws.receive_data(conn.ws.send(AcceptConnection()))
    assert any(isinstance(e, AcceptConnection) for e in peer.ws.events())
    conn.established(pair.server)
    return conn, peer


async def test_live_fan_out_of_a_message_the_catch_up_already_sent_is_dropped() -> None:
    # A message committed while the catch-up read the store comes twice: in the catch-up,
    # and from the committer's fan-out after `go_live`. Only the catch-up copy goes out.
    conn, peer = make_connection()
    with conn.sock, peer:
        sync = conn.start_sync()
        assert sync is not None
        conn.deliver(7, b"parked-old")  # parked during catch-up, at or below the end
        conn.deliver(12, b"parked-new")
        conn.catch_up(sync, b"stored-7")
        conn.go_live(sync, 10, b"synced")
        assert conn.state is State.LIVE

        conn.deliver(9, b"late-fan-out-of-9")
        conn.deliver(10, b"late-fan-out-of-10")
        conn.deliver(11, b"live-11")
        conn.deliver(None, b"typing")

        assert conn._pending == [b"stored-7", b"synced", b"parked-new", b"live-11", b"typing"]


async def test_a_new_sync_starts_from_its_own_catch_up_end() -> None:
    conn, peer = make_connection()
    with conn.sock, peer:
        first = conn.start_sync()
        assert first is not None
        conn.go_live(first, 10, b"synced-10")
        second = conn.start_sync()
        assert second is not None
        conn.go_live(second, 4, b"synced-4")  # the client synced again from an older cursor
        conn.deliver(5, b"live-5")
        assert conn._pending == [b"synced-10", b"synced-4", b"live-5"]


async def test_a_catch_up_ending_after_the_close_does_not_revive_the_connection() -> None:
    # Issue 14: catch-up went live after a refusal had sealed FINAL; the flusher then
    # sealed `synced` after the FINAL and the error ended the process.
    conn, peer = make_established()
    with conn.sock, peer.sock:
        sync = conn.start_sync()
        assert sync is not None
        conn.close(CloseCode.TOO_LARGE, ErrorCode.FRAME_TOO_LARGE, "too big")
        conn.catch_up(sync, PONG)
        conn.go_live(sync, 42, PONG)
        conn.reply(PONG)
        conn.deliver(None, PONG)
        assert conn.start_sync() is None
        conn.flush(trio.current_time())
        assert conn.state is State.CLOSED
        await peer.read_until_close()
        assert len(peer.batches) == 1
        frames, final = peer.batches[0]
        assert final
        assert [type(f) for f in frames] == [Err]
        assert peer.close is not None and peer.close.code == CloseCode.TOO_LARGE


async def test_the_flusher_survives_a_connection_that_fails() -> None:
    class Exploding:
        closed_for_sending = False

        def seal(self, plaintext: bytes, now: float | None = None, *, final: bool = False) -> bytes:
            raise RuntimeError("a bug in sealing")

    flusher = Flusher()
    stats = GatewayStats()
    bad, bad_peer = make_established(flusher, stats)
    good, good_peer = make_established(flusher, stats)
    bad.channel = Exploding()  # type: ignore[assignment]
    with bad.sock, bad_peer.sock, good.sock, good_peer.sock:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flusher.run)
            bad.go_live(bad.start_sync() or 0, 0, PONG)
            good.go_live(good.start_sync() or 0, 0, PONG)
            await good_peer.read_batches(1)
            # The flusher is still there for the good connection.
            good.reply(PONG)
            await good_peer.read_batches(2)
            nursery.cancel_scope.cancel()
    assert bad.state is State.CLOSED and bad.close_reason == "internal"
    assert good.state is State.LIVE
    assert stats.connection_failures == 1


async def test_a_close_with_more_pending_than_one_batch_splits_it() -> None:
    conn, peer = make_established()
    with conn.sock, peer.sock:
        sync = conn.start_sync()
        assert sync is not None
        for _ in range(20_000):  # more frames than two server batches hold
            conn.catch_up(sync, PONG)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.read_until_close)
            conn.close(CloseCode.GOING_AWAY, ErrorCode.SHUTTING_DOWN, "bye")
            await conn.drain()
    assert len(peer.batches) >= 3
    assert [final for _, final in peer.batches] == [False] * (len(peer.batches) - 1) + [True]
    assert isinstance(peer.batches[-1][0][-1], Err)


@pytest.mark.parametrize("peer_first", [True, False])
async def test_close_frames(peer_first: bool) -> None:
    conn, peer = make_established()
    with conn.sock, peer.sock:
        if peer_first:
            conn.ws.receive_data(peer.ws.send(CloseConnection(code=1000)))
            (event,) = conn.ws.events()
            assert isinstance(event, CloseConnection)
            conn.answer_peer_close(event)
            assert conn.peer_closed and not conn.awaits_peer_close
        else:
            conn.close(CloseCode.IDLE_TIMEOUT, ErrorCode.IDLE_TIMEOUT, "idle")
            assert conn.awaits_peer_close
        assert conn.state is State.CLOSED and conn.closed.is_set()
        await peer.read_until_close()


async def test_replies_overflowing_before_the_first_sync_ask_for_a_resync() -> None:
    conn, peer = make_connection()
    with conn.sock, peer:
        conn.max_outbound_bytes = 64 * 1024
        while conn.state is State.WAITING_SYNC:
            conn.reply(b"x" * 1024)
        assert conn.state is State.RESYNC  # not a state error closing with `internal`
        conn.reply(b"x" * 1024)  # the replies kept are over the limit on their own
        assert conn.close_reason == "resync_required"


def test_every_state_change_the_connection_makes_is_in_the_table() -> None:
    assert set(NEXT) == set(State)
    assert NEXT[State.CLOSED] == frozenset()
    assert all(State.CLOSED in targets for s, targets in NEXT.items() if s is not State.CLOSED)


async def test_an_older_catch_up_that_finishes_late_goes_nowhere() -> None:
    # A second `sync` cancels the first catch-up's task, but a store read that already
    # finished still returns: what it read must not reach the device, nor its `synced`
    # end the second catch-up early (skipping what lies between the two cursors).
    conn, peer = make_connection()
    with conn.sock, peer:
        old = conn.start_sync()
        new = conn.start_sync()
        assert old is not None and new is not None and old != new
        conn.catch_up(old, b"old-row")
        conn.go_live(old, 50, b"old-synced")
        conn.sync_failed(old, b"old-err")
        assert conn.state is State.SYNCING and conn._pending == []
        conn.catch_up(new, b"new-row")
        conn.go_live(new, 20, b"new-synced")
        assert conn.state in {State.LIVE}
        assert conn._pending == [b"new-row", b"new-synced"]


async def test_an_overflow_while_going_live_stops_there() -> None:
    conn, peer = make_connection()
    with conn.sock, peer:
        conn.max_outbound_bytes = 64 * 1024
        sync = conn.start_sync()
        assert sync is not None
        for pos in range(1, 64):
            conn.deliver(pos, b"p" * 1024)
        conn.deliver(64, b"p" * 1020)
        conn.deliver(None, b"tiny")  # parked: exactly at the limit, not over it
        conn.go_live(sync, 0, b"s" * 100)
        # `synced` plus the parked frames overflow on the way out: the device is told to
        # resync, and nothing live follows the `resync`.
        assert conn.state in {State.RESYNC}
        assert conn._pending[-1] == RESYNC_FRAME
