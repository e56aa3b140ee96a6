"""One device connection: WebSocket framing, secure channel, and its outbound buffers.

Fan-out never waits on a connection. Delivering a frame appends its (shared, encoded once)
bytes to `pending` and marks the connection dirty; the process's one `Flusher` then seals
everything pending into one encrypted WebSocket message and tries a direct non-blocking
write. Only what the kernel refused is left in `out` for this connection's writer task,
which waits for the socket to become writable. A connection whose buffers pass
`max_outbound_bytes` is told to re-sync (the store is the truth) and, if that happens again
or it does not re-sync in time, closed.
"""

from __future__ import annotations

import enum
import logging
import os
import uuid
from collections.abc import Iterator

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import BytesMessage, CloseConnection
from wsproto.utilities import LocalProtocolError as WsprotoLocalError

from protocol import (
    SERVER_TO_CLIENT_LIMITS,
    CloseCode,
    Err,
    ErrorCode,
    Resync,
    SecureChannel,
    encode,
)

logger = logging.getLogger(__name__)

RESYNC_FRAME = encode(Resync())


class State(enum.Enum):
    HANDSHAKE = "handshake"
    WAITING_SYNC = "waiting_sync"  # established; nothing but sent/err/pong before `sync`
    SYNCING = "syncing"  # catch-up running; live frames are parked
    LIVE = "live"
    RESYNC = "resync"  # overflowed; live delivery stopped until the next `sync`
    CLOSED = "closed"


class Flusher:
    """The one task per process that seals and writes every dirty connection."""

    def __init__(self) -> None:
        self._dirty: dict[Connection, None] = {}
        self._wake = trio.Event()

    def mark(self, conn: Connection) -> None:
        self._dirty[conn] = None
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            dirty, self._dirty = self._dirty, {}
            now = trio.current_time()
            for conn in dirty:
                conn.flush(now)
            await trio.lowlevel.checkpoint()


def _batches(frames: list[bytes]) -> Iterator[list[bytes]]:
    """Split frames into batches within the server -> client limits."""
    limit_bytes, limit_frames = (
        SERVER_TO_CLIENT_LIMITS.max_bytes,
        SERVER_TO_CLIENT_LIMITS.max_values,
    )
    batch: list[bytes] = []
    size = 0
    for frame in frames:
        if batch and (size + len(frame) > limit_bytes or len(batch) >= limit_frames):
            yield batch
            batch, size = [], 0
        batch.append(frame)
        size += len(frame)
    if batch:
        yield batch


class Connection:
    """A device's WebSocket connection to the gateway."""

    def __init__(
        self,
        sock: trio.socket.SocketType,
        flusher: Flusher,
        *,
        max_outbound_bytes: int,
        resync_timeout_s: float,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.sock = sock
        self._fd = sock.fileno()
        self.ws = WSConnection(ConnectionType.SERVER)
        self.state = State.HANDSHAKE
        self.channel: SecureChannel | None = None
        self.account_id: uuid.UUID | None = None
        self.device_id: uuid.UUID | None = None
        self.org_id: uuid.UUID | None = None
        self._flusher = flusher
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
        self.parked: list[tuple[int | None, bytes]] = []
        self._parked_bytes = 0
        # Live messages at or below this pos already came with the catch-up: a message
        # committed while the catch-up read the store can be fanned out after `go_live`.
        self._live_after = 0
        self.resync_deadline: float | None = None
        self.closed = trio.Event()
        self.close_reason: str | None = None

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.state.value} device={self.device_id}>"

    @property
    def buffered_bytes(self) -> int:
        return self._pending_bytes + len(self._out)

    # -- delivery ------------------------------------------------------------------------

    def reply(self, frame: bytes) -> None:
        """A reply to this device (sent, err, pong, synced, catch-up): never dropped on
        overflow, since nothing else would bring it back."""
        if self.state is State.CLOSED:
            return
        self._replies.append(frame)
        self._push(frame)

    def catch_up(self, frame: bytes) -> None:
        """A stored message sent by catch-up, which does its own flow control
        (`wait_written`), so it does not count towards overflow."""
        self._pending.append(frame)
        self._pending_bytes += len(frame)
        self._flusher.mark(self)

    def _push(self, frame: bytes) -> None:
        self._pending.append(frame)
        self._pending_bytes += len(frame)
        if self.buffered_bytes > self.max_outbound_bytes:
            self._overflow()
            return
        self._flusher.mark(self)

    def deliver(self, pos: int | None, frame: bytes) -> None:
        """A live frame (message, receipt, typing): sent, parked or dropped by state.

        Live frames may be dropped on overflow: stored ones come back with the catch-up."""
        state = self.state
        if state is State.LIVE:
            if pos is None or pos > self._live_after:
                self._push(frame)
        elif state is State.SYNCING:
            self.parked.append((pos, frame))
            self._parked_bytes += len(frame)
            if self._parked_bytes + self.buffered_bytes > self.max_outbound_bytes:
                self._overflow()
        # WAITING_SYNC / RESYNC: stored messages come with the catch-up; the rest is live-only.

    def start_sync(self) -> None:
        self.state = State.SYNCING
        self.resync_deadline = None
        self.parked = []
        self._parked_bytes = 0

    def go_live(self, caught_up_to: int, synced_frame: bytes) -> None:
        """End catch-up at `caught_up_to`: send `synced`, then what was parked after it."""
        parked, self.parked, self._parked_bytes = self.parked, [], 0
        self.state = State.LIVE
        self._live_after = caught_up_to
        self.reply(synced_frame)
        for pos, frame in parked:
            if pos is None or pos > caught_up_to:
                self._push(frame)

    def _overflow(self) -> None:
        if self.state is State.RESYNC:
            self.close(CloseCode.RESYNC_REQUIRED, ErrorCode.RESYNC_REQUIRED, "fell behind twice")
            return
        logger.info("connection %s overflowed: told to re-sync", self.id)
        # Live traffic goes (the store has it); replies stay, then `resync`.
        self._pending = [*self._replies, RESYNC_FRAME]
        self._pending_bytes = sum(map(len, self._pending))
        self.parked = []
        self._parked_bytes = 0
        self.state = State.RESYNC
        self.resync_deadline = trio.current_time() + self._resync_timeout_s
        self._flusher.mark(self)

    # -- writing -------------------------------------------------------------------------

    def send_plain(self, data: bytes) -> None:
        """A handshake message: one binary WebSocket message, not encrypted."""
        self.send_raw(self.ws.send(BytesMessage(data=data)))

    def send_raw(self, data: bytes) -> None:
        """Bytes wsproto produced (upgrade response, pong, close reply), written as they are."""
        self._out += data
        self._write_now()

    def flush(self, now: float) -> None:
        """Seal what is pending into encrypted WebSocket messages and write what fits."""
        if not self._pending or self.channel is None or self.state is State.CLOSED:
            return
        frames, self._pending, self._pending_bytes = self._pending, [], 0
        self._replies.clear()
        for batch in _batches(frames):
            sealed = self.channel.seal(b"".join(batch), now)
            self._out += self.ws.send(BytesMessage(data=sealed))
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
            self.state = State.CLOSED
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
            while self._out:
                await trio.lowlevel.wait_writable(self.sock)
                self._write_some()
            self._writer_busy = False

    async def wait_written(self, below: int = 0) -> None:
        """Wait until at most `below` bytes are still buffered (the writer task writes).

        Catch-up uses it for flow control, closing to let the last bytes go out.
        """
        while self.buffered_bytes > below and not self._broken:
            if self._pending and self.channel is not None:
                self.flush(trio.current_time())
            if self.buffered_bytes <= below or self._broken:
                return
            self._written = trio.Event()
            await self._written.wait()

    # -- closing -------------------------------------------------------------------------

    def close(self, code: CloseCode, error: ErrorCode, message: str) -> None:
        """End the session: a FINAL batch with an `err` (if the channel is up), then the
        WebSocket close with `code` and the error code as reason."""
        if self.state is State.CLOSED:
            return
        self.close_reason = error.value
        if self.channel is not None and not self.channel.closed_for_sending:
            frames = [*self._pending, encode(Err(code=error, message=message))]
            self._pending, self._pending_bytes = [], 0
            self._replies.clear()
            sealed = self.channel.seal(b"".join(frames), trio.current_time(), final=True)
            self._out += self.ws.send(BytesMessage(data=sealed))
        try:
            self._out += self.ws.send(CloseConnection(code=int(code), reason=error.value))
        except WsprotoLocalError:  # no close frame before the upgrade or after the peer's close
            logger.debug("connection %s: no WebSocket close frame in this state", self.id)
        self.state = State.CLOSED
        self._write_now()
        self.closed.set()
