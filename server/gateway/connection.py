"""One device connection: WebSocket framing, secure channel, and its outbound buffers.

Fan-out never waits on a connection. Delivering a frame appends its (shared, encoded once)
bytes to `pending` and marks the connection dirty; the process's one `Flusher` then seals
everything pending into one encrypted WebSocket message and tries a direct non-blocking
write. Only what the kernel refused is left in `out` for this connection's writer task,
which waits for the socket to become writable. A connection whose buffers pass
`max_outbound_bytes` is told to re-sync (the store is the truth) and, if that happens again
or it does not re-sync in time, closed.

Failure boundary (one of two; the other is `Gateway._handle`): every method that tasks other
than the connection's own call on it - `deliver`, `reply`, `catch_up`, `flush`, `close`,
`go_live`, `start_sync` - contains its own failures. Whatever goes wrong in them ends this
connection (`fail`: logged once with the connection id, counted, closed with FINAL
`internal` + 1011) and never reaches the caller: the flusher, the committer and the hub
serve every other connection on.

Closing is one-way: `close` seals the FINAL batch and queues the WebSocket close frame, and
from then on (state CLOSED) nothing is sealed or queued again, whatever any task does.
"""

from __future__ import annotations

import logging
import os
import uuid

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection

from protocol import (
    CloseCode,
    Err,
    ErrorCode,
    Resync,
    SecureChannel,
    encode,
)
from server.gateway.flusher import MAX_BATCH_BYTES, MAX_BATCH_FRAMES, Flusher, batches
from server.gateway.states import NEXT, GatewayStats, State, StateError
from server.gateway.tls import TlsEndpoint
from server.metrics import connection_moved, delivered

logger = logging.getLogger(__name__)

RESYNC_FRAME = encode(Resync())


class Connection:
    """A device's WebSocket connection to the gateway."""

    def __init__(
        self,
        sock: trio.socket.SocketType,
        flusher: Flusher,
        *,
        max_outbound_bytes: int,
        resync_timeout_s: float,
        stats: GatewayStats | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.sock = sock
        self._fd = sock.fileno()
        self.ws = WSConnection(ConnectionType.SERVER)
        self.state = State.HANDSHAKE
        connection_moved(None, State.HANDSHAKE)
        self.channel: SecureChannel | None = None
        self.account_id: uuid.UUID | None = None
        self.device_id: uuid.UUID | None = None
        self.org_id: uuid.UUID | None = None
        self.accepted_policy = 0
        """The newest privacy-policy version (id) its account accepted, as far as this
        process knows: the gate of `Hub.policy_blocked`."""
        self._flusher = flusher
        self._stats = stats if stats is not None else GatewayStats()
        self.max_outbound_bytes = max_outbound_bytes
        self._resync_timeout_s = resync_timeout_s
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._replies: list[bytes] = []  # the replies among `_pending`
        self._out = bytearray()
        self._writer_busy = False
        self._writer_wake = trio.Event()
        self._written = trio.Event()
        self._broken = False
        self._failed = False
        self.parked: list[tuple[int | None, bytes]] = []
        self._parked_bytes = 0
        # Live messages at or below this pos already came with the catch-up: a message
        # committed while the catch-up read the store can be fanned out after `go_live`.
        self._live_after = 0
        # When the oldest committed message waiting in `_pending` was committed (wall clock):
        # the next write observes commit-to-socket latency from it (server.metrics).
        self._oldest_commit: float | None = None
        self._sync = 0  # the number of the current catch-up (`start_sync`)
        self.resync_deadline: float | None = None
        self.closed = trio.Event()
        self.close_reason: str | None = None
        self.peer_closed = False
        self.tls: TlsEndpoint | None = None
        """TLS on this socket (`wss://`), or None (`ws://`)."""
        """True once the peer's WebSocket close frame arrived (and was answered)."""

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.state.value} device={self.device_id}>"

    @property
    def buffered_bytes(self) -> int:
        return self._pending_bytes + len(self._out)

    @property
    def is_closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def awaits_peer_close(self) -> bool:
        """We sent a WebSocket close frame and the peer has not answered it yet."""
        return self.ws.state is ConnectionState.LOCAL_CLOSING

    def _enter(self, state: State) -> bool:
        """Move to `state`; False (and nothing changes) once CLOSED. A move `NEXT` does not
        allow from any other state is a bug (`StateError`)."""
        current = self.state
        if current is State.CLOSED:
            return False
        if state not in NEXT[current]:
            raise StateError(f"{current.value} -> {state.value}")
        self._set_state(state)
        return True

    def _set_state(self, state: State) -> None:
        connection_moved(self.state, state)
        self.state = state

    # -- the secure session --------------------------------------------------------------

    def established(self, channel: SecureChannel) -> None:
        """The handshake finished: frames may flow, `sync` is awaited."""
        if self._enter(State.WAITING_SYNC):
            self.channel = channel

    # -- delivery ------------------------------------------------------------------------

    def reply(self, frame: bytes) -> None:
        """A reply to this device (sent, err, pong, synced, catch-up): never dropped on
        overflow, since nothing else would bring it back."""
        try:
            if self.state is State.CLOSED:
                return
            self._replies.append(frame)
            self._push(frame)
        except Exception as exc:
            self.fail(exc)

    def syncing(self, sync: int) -> bool:
        """Is the catch-up started as `sync` (what `start_sync` returned) still the current
        one? Not after an overflow, a close, or a newer `sync`."""
        return self.state is State.SYNCING and sync == self._sync

    def catch_up(self, sync: int, frame: bytes) -> None:
        """A stored message sent by the catch-up `sync`, which does its own flow control
        (`wait_written`), so it does not count towards overflow."""
        try:
            if not self.syncing(sync):
                return  # overflowed, closed or superseded meanwhile: nothing more of it
            self._pending.append(frame)
            self._pending_bytes += len(frame)
            self._flusher.mark(self)
        except Exception as exc:
            self.fail(exc)

    def _push(self, frame: bytes) -> None:
        self._pending.append(frame)
        self._pending_bytes += len(frame)
        if self.buffered_bytes > self.max_outbound_bytes:
            self._overflow()
            return
        self._flusher.mark(self)

    def deliver(self, pos: int | None, frame: bytes, committed_at: float | None = None) -> None:
        """A live frame (message, receipt, typing): sent, parked or dropped by state.
        `committed_at`: when a message frame's batch was committed (time.time()).

        Live frames may be dropped on overflow: stored ones come back with the catch-up."""
        try:
            state = self.state
            if state is State.LIVE:
                if pos is None or pos > self._live_after:
                    if committed_at is not None and self._oldest_commit is None:
                        self._oldest_commit = committed_at
                    self._push(frame)
            elif state is State.SYNCING:
                self.parked.append((pos, frame))
                self._parked_bytes += len(frame)
                if self._parked_bytes + self.buffered_bytes > self.max_outbound_bytes:
                    self._overflow()
            # WAITING_SYNC / RESYNC: stored messages come with the catch-up; the rest is
            # live-only. CLOSED: nothing more goes out.
        except Exception as exc:
            self.fail(exc)

    def start_sync(self) -> int | None:
        """A `sync` arrived: a catch-up starts. Returns its number, which the catch-up
        passes back (an older catch-up, whose task may still finish a step, is then
        ignored), or None once the connection is closed."""
        try:
            if not self._enter(State.SYNCING):
                return None
            self.resync_deadline = None
            self.parked = []
            self._parked_bytes = 0
            self._sync += 1
            return self._sync
        except Exception as exc:
            self.fail(exc)
            return None

    def go_live(self, sync: int, caught_up_to: int, synced_frame: bytes) -> None:
        """End the catch-up `sync` at `caught_up_to`: send `synced`, then what was parked
        after it.

        Does nothing unless that catch-up is still the current one: one that finishes
        after an overflow, a close or a newer `sync` must not revive or skip anything."""
        try:
            if not self.syncing(sync):
                return
            parked, self.parked, self._parked_bytes = self.parked, [], 0
            self._enter(State.LIVE)
            self._live_after = caught_up_to
            self.reply(synced_frame)
            for pos, frame in parked:
                if self.state is not State.LIVE:
                    break  # overflowed: `resync` is the last word until the next `sync`
                if pos is None or pos > caught_up_to:
                    self._push(frame)
        except Exception as exc:
            self.fail(exc)

    def sync_failed(self, sync: int, err: bytes) -> None:
        """The catch-up `sync` could not read the store: tell the device (`err`) and wait
        for its next `sync`."""
        try:
            if self.syncing(sync) and self._enter(State.WAITING_SYNC):
                self.parked = []
                self._parked_bytes = 0
                self.reply(err)
        except Exception as exc:
            self.fail(exc)

    def _overflow(self) -> None:
        if self.state is State.RESYNC:
            self._close(CloseCode.RESYNC_REQUIRED, ErrorCode.RESYNC_REQUIRED, "fell behind twice")
            return
        if not self._enter(State.RESYNC):
            return
        logger.info("connection %s overflowed: told to re-sync", self.id)
        # Live traffic goes (the store has it); replies stay, then `resync`.
        self._oldest_commit = None
        self._pending = [*self._replies, RESYNC_FRAME]
        self._pending_bytes = sum(map(len, self._pending))
        self.parked = []
        self._parked_bytes = 0
        self.resync_deadline = trio.current_time() + self._resync_timeout_s
        self._flusher.mark(self)

    # -- writing -------------------------------------------------------------------------

    def send_plain(self, data: bytes) -> None:
        """A handshake message: one binary WebSocket message, not encrypted."""
        self.send_raw(self.ws.send(BytesMessage(data=data)))

    def send_raw(self, data: bytes) -> None:
        """Bytes wsproto produced (upgrade response, pong, close reply), written as they are."""
        self._queue(data)
        self._write_now()

    def flush(self, now: float) -> None:
        """Seal what is pending into encrypted WebSocket messages and write what fits."""
        try:
            if not self._pending or self.channel is None or self.state is State.CLOSED:
                return
            self._seal_pending(now)
            self._write_now()
            if self._oldest_commit is not None:
                delivered(self._oldest_commit)
                self._oldest_commit = None
        except Exception as exc:
            self.fail(exc)

    def _seal_pending(self, now: float, final_frame: bytes | None = None) -> None:
        """Seal every pending frame, in batches within the client's limits; with
        `final_frame`, it ends the last batch, which is sealed FINAL."""
        channel = self.channel
        assert channel is not None
        frames, size = self._pending, self._pending_bytes
        self._pending, self._pending_bytes = [], 0
        self._replies.clear()
        if final_frame is None and size <= MAX_BATCH_BYTES and len(frames) <= MAX_BATCH_FRAMES:
            # The hot path (a flush): one batch, no splitting.
            self._queue(self.ws.send(BytesMessage(data=channel.seal(b"".join(frames), now))))
            return
        if final_frame is not None:
            frames.append(final_frame)
        split = list(batches(frames))
        for i, batch in enumerate(split):
            final = final_frame is not None and i == len(split) - 1
            sealed = channel.seal(b"".join(batch), now, final=final)
            self._queue(self.ws.send(BytesMessage(data=sealed)))

    def _queue(self, data: bytes) -> None:
        """Queue WebSocket bytes for the socket (through TLS when it is on)."""
        tls = self.tls
        if tls is None:
            self._out += data
        else:
            tls.send(data)
            self._out += tls.outgoing()

    # -- TLS -----------------------------------------------------------------------------

    def tls_handshake(self, data: bytes) -> bool:
        """Advance the TLS handshake with `data` from the socket; True once done. Raises
        ssl.SSLError for a peer that cannot or will not speak acceptable TLS."""
        assert self.tls is not None
        try:
            return self.tls.handshake(data)
        finally:
            self._flush_tls()  # a refusal too: the peer gets OpenSSL's alert

    def tls_receive(self, data: bytes) -> bytes:
        """What the socket gave, decrypted (empty if it held no application data). Raises
        ssl.SSLError for a broken or forged record."""
        assert self.tls is not None
        try:
            return self.tls.receive(data)
        finally:
            self._flush_tls()

    def _flush_tls(self) -> None:
        assert self.tls is not None
        pending = self.tls.outgoing()  # handshake messages, session tickets, alerts
        if pending:
            self._out += pending
            self._write_now()

    def _write_now(self) -> None:
        if self._writer_busy or not self._out:
            return
        if self._write_some():
            return
        self._writer_busy = True
        self._writer_wake.set()

    def _write_some(self) -> bool:
        """Write what the kernel takes without blocking; True once `out` is empty."""
        try:
            written = os.write(self._fd, self._out)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            logger.info("connection %s: write failed: %s", self.id, exc)
            self._out.clear()
            self._pending.clear()
            self._replies.clear()
            self._broken = True
            self._set_state(State.CLOSED)
            self.closed.set()
            self._written.set()
            return True
        del self._out[:written]
        if not self._out:
            self._written.set()
            return True
        return False

    async def writer(self) -> None:
        """Drain what the direct writes left behind, waiting for writability."""
        while True:
            await self._writer_wake.wait()
            self._writer_wake = trio.Event()
            await self.drain()
            self._writer_busy = False

    async def drain(self) -> None:
        """Write everything already sealed, waiting for writability (the writer task, and
        the close path once the writer is gone)."""
        while self._out and not self._broken:
            await trio.lowlevel.wait_writable(self.sock)
            self._write_some()

    async def wait_written(self, below: int = 0) -> None:
        """Wait until at most `below` bytes are still buffered (the writer task writes),
        or the connection is closed.

        Catch-up uses it for flow control.
        """
        while self.buffered_bytes > below and not self.is_closed:
            if self._pending and self.channel is not None:
                self.flush(trio.current_time())
            if self.buffered_bytes <= below or self.is_closed:
                return
            self._written = trio.Event()
            await self._written.wait()

    # -- closing -------------------------------------------------------------------------

    def close(self, code: CloseCode, error: ErrorCode, message: str) -> None:
        """End the session: a FINAL batch with an `err` (if the channel is up), then the
        WebSocket close with `code` and the error code as reason. Idempotent; never raises."""
        try:
            self._close(code, error, message)
        except Exception as exc:
            self.fail(exc)

    def close_normally(self) -> None:
        """The peer ended the session with its FINAL batch: send what is pending (no FINAL
        of ours: the peer chose to end, it needs no proof) and close with 1000."""
        try:
            self._close(CloseCode.NORMAL, None, "")
        except Exception as exc:
            self.fail(exc)

    def _close(self, code: CloseCode, error: ErrorCode | None, message: str) -> None:
        if self.state is State.CLOSED:
            return
        self.close_reason = error.value if error is not None else "closed by the device"
        if self.channel is not None and not self.channel.closed_for_sending:
            now = trio.current_time()
            if error is None:
                if self._pending:
                    self._seal_pending(now)
            else:
                self._seal_pending(now, encode(Err(code=error, message=message)))
        self._pending, self._pending_bytes = [], 0
        self._replies.clear()
        self._set_state(State.CLOSED)
        self.closed.set()
        if self.ws.state is ConnectionState.OPEN:
            reason = error.value if error is not None else ""
            self._queue(self.ws.send(CloseConnection(code=int(code), reason=reason)))
        self._write_now()

    def answer_peer_close(self, event: CloseConnection) -> None:
        """The peer's WebSocket close frame: answer it at once; the session is over."""
        self.peer_closed = True
        if self.ws.state is ConnectionState.REMOTE_CLOSING:
            self._queue(self.ws.send(event.response()))
        self.lost()
        self._write_now()

    def lost(self) -> None:
        """The peer is gone (or spoke so badly nothing more can be said): closed, without
        FINAL or close frame."""
        self._pending, self._pending_bytes = [], 0
        self._replies.clear()
        self.parked = []
        self._set_state(State.CLOSED)
        self.closed.set()

    def fail(self, exc: BaseException) -> None:
        """The failure boundary: an unexpected error in work for this connection, in any
        task. Logged once (with the connection id) and counted; the connection is closed
        with FINAL `internal` + 1011 where that can still be said. Never raises."""
        if self._failed:
            return
        self._failed = True
        self._stats.connection_failures += 1
        logger.error(
            "connection %s: internal error, closing it (failures so far: %d)",
            self.id,
            self._stats.connection_failures,
            exc_info=exc,
        )
        try:
            self._close(CloseCode.INTERNAL_ERROR, ErrorCode.INTERNAL, "internal error")
        except Exception:  # the close itself failed: cut the connection
            self._out.clear()
            self._broken = True
            self.lost()
        self.close_reason = ErrorCode.INTERNAL.value
