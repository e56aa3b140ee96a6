"""The connection's delivery state machine, on a real socket pair (no gateway around it)."""

from __future__ import annotations

import trio

from server.gateway.connection import Connection, Flusher, State


def make_connection() -> tuple[Connection, trio.socket.SocketType]:
    ours, theirs = trio.socket.socketpair()
    conn = Connection(ours, Flusher(), max_outbound_bytes=1 << 20, resync_timeout_s=5.0)
    return conn, theirs


async def test_live_fan_out_of_a_message_the_catch_up_already_sent_is_dropped() -> None:
    # A message committed while the catch-up read the store comes twice: in the catch-up,
    # and from the committer's fan-out after `go_live`. Only the catch-up copy goes out.
    conn, peer = make_connection()
    with conn.sock, peer:
        conn.start_sync()
        conn.deliver(7, b"parked-old")  # parked during catch-up, at or below the end
        conn.deliver(12, b"parked-new")
        conn.catch_up(b"stored-7")
        conn.go_live(10, b"synced")
        assert conn.state is State.LIVE

        conn.deliver(9, b"late-fan-out-of-9")
        conn.deliver(10, b"late-fan-out-of-10")
        conn.deliver(11, b"live-11")
        conn.deliver(None, b"typing")

        assert conn._pending == [b"stored-7", b"synced", b"parked-new", b"live-11", b"typing"]


async def test_a_new_sync_starts_from_its_own_catch_up_end() -> None:
    conn, peer = make_connection()
    with conn.sock, peer:
        conn.start_sync()
        conn.go_live(10, b"synced-10")
        conn.start_sync()
        conn.go_live(4, b"synced-4")  # the client synced again from an older cursor
        conn.deliver(5, b"live-5")
        assert conn._pending == [b"synced-10", b"synced-4", b"live-5"]
