"""The gateway listener: accept, WebSocket upgrade, secure handshake, read loop.

One task per connection reads (a short loop feeding wsproto, then our protocol objects)
and one writer task drains what direct writes left behind. Every wait has a deadline from
the settings; errors end only their own connection.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

import trio
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError as WsprotoRemoteError

from protocol import (
    CLIENT_TO_SERVER_LIMITS,
    GATEWAY_PATH,
    ClientFrame,
    CloseCode,
    Err,
    ErrorCode,
    RemoteProtocolError,
    SecureChannel,
    Send,
    ServerHandshake,
    decode_client_batch_lenient,
    encode,
)
from server.gateway.admission import Admission, QueueTimeout
from server.gateway.budget import DEFAULT_FRAME_LIMITS, FrameBudget, FrameLimits
from server.gateway.committer import err_frame
from server.gateway.connection import Connection
from server.gateway.flusher import Flusher
from server.gateway.session import GatewayContext, Session
from server.gateway.states import State
from server.gateway.tls import TlsEndpoint
from server.handlers.access import gateway_refusal
from server.metrics import HANDSHAKE_SECONDS, HANDSHAKES
from storage.devices import Credentials
from storage.errors import DatabaseUnavailableError, NotFoundError

logger = logging.getLogger(__name__)

RECV_BYTES = 65536
# A client message is one secretstream message: the batch plus 17 bytes of overhead.
MAX_CLIENT_MESSAGE_BYTES = CLIENT_TO_SERVER_LIMITS.max_bytes + 17
HANDSHAKE_MESSAGE_BYTES = 512
# How often connections told to re-sync are checked for having missed their deadline.
RESYNC_CHECK_INTERVAL_S = 1.0


class _Closed(Exception):
    """The connection ended (by us or the peer); unwinds the read loop."""


@dataclass
class GatewaySettings:
    handshake_timeout_s: float
    idle_timeout_s: float
    max_outbound_bytes: int
    resync_timeout_s: float
    close_grace_s: float = 2.0
    frame_limits: FrameLimits = DEFAULT_FRAME_LIMITS
    tls: ssl.SSLContext | None = None
    """Serve `wss://` with this context (server/tls.py), or plain `ws://` without."""


class Gateway:
    def __init__(self, gw: GatewayContext, settings: GatewaySettings) -> None:
        self.gw = gw
        self.settings = settings
        self.flusher = Flusher()
        self.stats = gw.hub.stats
        identity = gw.services.identity
        self._identity_secret = bytes(identity) + bytes(identity.verify_key)
        # Admission and the device-key cache come straight from the server's settings.
        server = gw.services.settings
        self.admission = Admission(
            server.gateway_handshake_slots, server.gateway_handshake_queue_timeout_s, self.stats
        )
        self._step_timeout_s = server.gateway_handshake_step_timeout_s
        self.device_keys = gw.hub.device_keys
        self.device_keys.max_entries = server.gateway_device_cache_size

    async def serve(
        self,
        host: str,
        port: int,
        *,
        fd: int | None = None,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on host:port (0 picks a free port, reported through task_status), or on
        the listening socket `fd` (inherited from the supervisor: server/workers.py)."""
        if fd is None:
            listeners = await trio.open_tcp_listeners(port, host=host)
        else:
            inherited = trio.socket.from_stdlib_socket(socket.socket(fileno=fd))
            listeners = [trio.SocketListener(inherited)]
        bound = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.flusher.run)
            nursery.start_soon(self._expire_resyncs)
            for listener in listeners:
                nursery.start_soon(trio.serve_listeners, self._handle, [listener])
            task_status.started(bound)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = Connection(
            stream.socket,
            self.flusher,
            max_outbound_bytes=self.settings.max_outbound_bytes,
            resync_timeout_s=self.settings.resync_timeout_s,
            stats=self.stats,
        )
        try:
            # The failure boundary of a connection's tasks (the other half is in
            # Connection: what shared tasks do to it). Whatever the reader, the writer, the
            # catch-up, a frame handler or the close path raises ends this connection alone
            # (`fail`: logged once, counted, FINAL `internal` + 1011 where still possible)
            # and never reaches the gateway's nursery; only trio.Cancelled (the server
            # stopping) passes through.
            for step in (self._serve, self._finish):
                try:
                    await step(conn)
                except* Exception as group:
                    conn.fail(group)
        finally:
            self.gw.hub.detach(conn)
            conn.lost()
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await stream.aclose()
            logger.info(
                "connection %s closed (device %s, %s)", conn.id, conn.device_id, conn.close_reason
            )

    async def _serve(self, conn: Connection) -> None:
        """The connection's own tasks, until it is closed (by any of them, or by others)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.writer)
            nursery.start_soon(self._read, conn, nursery)
            await conn.closed.wait()
            nursery.cancel_scope.cancel()

    async def _read(self, conn: Connection, nursery: trio.Nursery) -> None:
        """The connection's reader: handshake, then frames, until the connection closes.
        (An exception other than `_Closed` goes on to the failure boundary, which closes
        with `internal`.)"""
        with contextlib.suppress(_Closed):
            await self._run(conn, nursery)
        if conn.state is not State.CLOSED:
            conn.lost()

    async def _finish(self, conn: Connection) -> None:
        """The last step of every connection: write what the close queued (FINAL batch,
        close frame) and, if we closed first, wait for the peer's close frame - reading
        (and dropping) whatever it still sends meanwhile, so a client busy writing is never
        blocked and the socket is never cut with unread data in it (a TCP reset would
        destroy the FINAL batch). Bounded by the close grace."""
        if conn.peer_closed and not conn.buffered_bytes:
            return
        with trio.move_on_after(self.settings.close_grace_s):
            async with trio.open_nursery() as nursery:
                if conn.awaits_peer_close:
                    nursery.start_soon(self._linger, conn, nursery.cancel_scope)
                await conn.drain()
                if not conn.awaits_peer_close:
                    nursery.cancel_scope.cancel()

    async def _linger(self, conn: Connection, done: trio.CancelScope) -> None:
        """Read until the peer answers our close frame or goes away; data is dropped."""
        try:
            while True:
                data = await conn.sock.recv(RECV_BYTES)
                if not data:
                    break
                if conn.tls is not None:
                    data = conn.tls_receive(data)
                    if not data:
                        continue
                conn.ws.receive_data(data)
                if any(isinstance(event, CloseConnection) for event in conn.ws.events()):
                    break
        except (OSError, ssl.SSLError, WsprotoRemoteError):
            pass
        done.cancel()

    async def _expire_resyncs(self) -> None:
        """Close connections told to re-sync that did not in time: one task for all of
        them, so an idle connection costs no wake-ups."""
        while True:
            await trio.sleep(RESYNC_CHECK_INTERVAL_S)
            self.gw.hub.close_overdue_resyncs(trio.current_time())

    async def _run(self, conn: Connection, nursery: trio.Nursery) -> None:
        started = time.perf_counter()
        outcome = "closed"  # refused, malformed, too slow a step, peer gone, database down
        try:
            async with self.admission.slot(conn):
                # The deadline runs from admission: waiting in the queue is not the
                # client's fault.
                started = time.perf_counter()
                with trio.move_on_after(self.settings.handshake_timeout_s) as deadline:
                    handshake = await self._handshake(conn)
                if deadline.cancelled_caught:
                    outcome = "timeout"
                    self._too_slow(conn)
                device, channel = handshake
                conn.established(channel)
                # Refused only now that the device proved its key (a FINAL `err`, then the
                # close): whoever knows a device id learns nothing of its account this way.
                refusal = gateway_refusal(device)  # revoked, deactivated, signed out, ...
                if refusal is not None:
                    conn.close(*refusal)
                    raise _Closed
                outcome = "ok"
                HANDSHAKE_SECONDS.observe(time.perf_counter() - started)
        except QueueTimeout:
            outcome = "busy"
            await self._refuse_busy(conn)
        finally:
            HANDSHAKES.labels(outcome).inc()
        self.gw.cursors.note_seen(device.device_id, self.gw.services.clock())
        logger.info("connection %s: device %s established", conn.id, conn.device_id)
        session = Session(conn, self.gw, nursery)
        budget = FrameBudget(self.settings.frame_limits, trio.current_time())
        while True:
            data = await self._next_message(conn, self.settings.idle_timeout_s)
            try:
                plaintext = channel.open(data)
                frames = decode_client_batch_lenient(plaintext)
            except RemoteProtocolError as error:
                self._refuse(conn, error)
            if not budget.take(len(frames), trio.current_time()):
                self._rate_limit(conn, frames, budget)
                continue
            for frame in frames:
                if isinstance(frame, RemoteProtocolError):
                    conn.reply(encode(Err.from_error(frame)))
                else:
                    await session.handle(frame)
                if conn.state is State.CLOSED:
                    raise _Closed
            if channel.peer_finished:
                # The device ended the session (its FINAL batch): answer and close.
                conn.close_normally()
                raise _Closed

    @contextlib.contextmanager
    def _step(self, conn: Connection) -> Iterator[None]:
        """One step of the handshake that waits for the client, under the step deadline:
        a client that stalls while holding a handshake slot loses it (closed 4006)."""
        with trio.move_on_after(self._step_timeout_s) as step:
            yield
        if step.cancelled_caught:
            self._too_slow(conn)

    def _too_slow(self, conn: Connection) -> NoReturn:
        conn.close(CloseCode.HANDSHAKE_TIMEOUT, ErrorCode.HANDSHAKE_TIMEOUT, "too slow")
        raise _Closed

    async def _refuse_busy(self, conn: Connection) -> None:
        """No handshake slot came free in time: upgrade (so the client can read why) and
        close `busy` (1013); the client retries with backoff (PROTOCOL.md §7)."""
        logger.info("connection %s: no handshake slot in time, closing busy", conn.id)
        with self._step(conn):
            if self.settings.tls is not None:
                await self._tls_handshake(conn, self.settings.tls)
            await self._upgrade(conn)
        conn.close(CloseCode.TRY_AGAIN_LATER, ErrorCode.BUSY, "busy: retry later")
        raise _Closed

    async def _handshake(self, conn: Connection) -> tuple[Credentials, SecureChannel]:
        """TLS if on, upgrade to WebSocket, run the secure handshake; returns who is connected.
        Each wait for the client is bounded by the step deadline (`_step`).

        The connection joins the hub as soon as the device is known, before it proves its
        key: a revocation, deactivation or password change while the handshake runs then
        closes it like any live one (the hub delivers nothing to it until it is synced)."""
        with self._step(conn):
            if self.settings.tls is not None:
                await self._tls_handshake(conn, self.settings.tls)
            await self._upgrade(conn)
        hs = ServerHandshake(identity_secret_key=self._identity_secret)
        with self._step(conn):
            hello = await self._next_message(conn, None, HANDSHAKE_MESSAGE_BYTES)
        try:
            hs.receive_client_hello(hello)
        except RemoteProtocolError as error:
            self._refuse(conn, error)
        device = await self._credentials(conn, uuid.UUID(bytes=hs.device_id))
        conn.account_id, conn.org_id, conn.device_id = (
            device.account_id,
            device.org_id,
            device.device_id,
        )
        hub = self.gw.hub
        hub.attach(conn)
        hub.note_policy(conn, device.material_policy, device.accepted_policy)
        conn.send_plain(hs.server_hello())
        with self._step(conn):
            auth = await self._next_message(conn, None, HANDSHAKE_MESSAGE_BYTES)
        try:
            channel = hs.receive_client_auth(auth, device.public_key)
        except RemoteProtocolError as error:
            self._refuse(conn, error)
        return device, channel

    async def _credentials(self, conn: Connection, device_id: uuid.UUID) -> Credentials:
        """The device's key and standing: from the cache (no database round trip) for a
        known device that may connect, else from the database (and cached if it may
        connect). Closes the connection for an unknown device or an unavailable database.

        Nothing may wait between this and `hub.attach`: an invalidation (revocation,
        deactivation, ...) that lands while the database is read makes the read count for
        nothing (it may predate the change) and it is read again, so what the handshake
        goes on with is never older than the last invalidation this process saw."""
        cache = self.device_keys
        cached = cache.get(device_id)
        if cached is not None:
            return cached
        while True:
            generation = cache.generation
            try:
                device = await self.gw.services.devices.credentials(device_id)
            except NotFoundError:
                conn.close(
                    CloseCode.UNKNOWN_DEVICE, ErrorCode.UNKNOWN_DEVICE, "device not enrolled"
                )
                raise _Closed from None
            except DatabaseUnavailableError:
                conn.close(CloseCode.TRY_AGAIN_LATER, ErrorCode.UNAVAILABLE, "try again later")
                raise _Closed from None
            if cache.store(device, generation):
                return device

    async def _upgrade(self, conn: Connection) -> None:
        while True:
            for event in conn.ws.events():
                if isinstance(event, Request):
                    if event.target.split("?", 1)[0] != GATEWAY_PATH:
                        conn.send_raw(conn.ws.send(RejectConnection(status_code=404)))
                        raise _Closed
                    conn.send_raw(conn.ws.send(AcceptConnection()))
                    return
            await self._receive(conn, None)

    async def _receive(self, conn: Connection, timeout_s: float | None) -> None:
        """Feed the next bytes from the socket into wsproto."""
        with trio.move_on_after(timeout_s if timeout_s is not None else float("inf")) as idle:
            try:
                data = await conn.sock.recv(RECV_BYTES)
            except OSError:
                data = b""
        if idle.cancelled_caught:
            conn.close(CloseCode.IDLE_TIMEOUT, ErrorCode.IDLE_TIMEOUT, "idle too long")
            raise _Closed
        if not data:
            conn.lost()
            raise _Closed
        if conn.tls is not None:
            data = self._decrypt(conn, data)
            if not data:
                return  # TLS records without application data (yet)
        try:
            conn.ws.receive_data(data)
        except WsprotoRemoteError:
            conn.lost()
            raise _Closed from None

    def _decrypt(self, conn: Connection, data: bytes) -> bytes:
        """The application bytes in what the socket gave (TLS); a broken record ends the
        connection (no close frame can be trusted to arrive)."""
        try:
            return conn.tls_receive(data)
        except ssl.SSLError as exc:
            logger.info("connection %s: TLS error: %s", conn.id, exc.reason or exc)
            conn.lost()
            raise _Closed from None

    async def _tls_handshake(self, conn: Connection, context: ssl.SSLContext) -> None:
        """The TLS handshake, before the WebSocket upgrade and under the same deadline. A
        client that cannot or will not speak acceptable TLS (an old version, garbage, plain
        HTTP) is cut off with a log line."""
        conn.tls = TlsEndpoint(context)
        data = b""
        while True:
            try:
                if conn.tls_handshake(data):
                    # The upgrade request may have come in the same read as the handshake's end.
                    early = conn.tls_receive(b"")
                    if early:
                        try:
                            conn.ws.receive_data(early)
                        except WsprotoRemoteError:
                            conn.lost()
                            raise _Closed from None
                    return
            except ssl.SSLError as exc:
                logger.info("connection %s: TLS handshake failed: %s", conn.id, exc.reason or exc)
                conn.lost()
                raise _Closed from None
            await conn.wait_written()
            try:
                data = await conn.sock.recv(RECV_BYTES)
            except OSError:
                data = b""
            if not data:
                conn.lost()
                raise _Closed

    async def _next_message(
        self, conn: Connection, timeout_s: float | None, limit: int = MAX_CLIENT_MESSAGE_BYTES
    ) -> bytes:
        """The next complete binary WebSocket message (pings answered on the way)."""
        buffer = bytearray()
        while True:
            for event in conn.ws.events():
                if isinstance(event, BytesMessage):
                    buffer += event.data
                    if len(buffer) > limit:
                        conn.close(
                            CloseCode.TOO_LARGE,
                            ErrorCode.FRAME_TOO_LARGE,
                            f"a message over {limit} bytes",
                        )
                        raise _Closed
                    if event.message_finished:
                        return bytes(buffer)
                elif isinstance(event, TextMessage):
                    conn.close(
                        CloseCode.UNSUPPORTED_DATA, ErrorCode.MALFORMED_FRAME, "text message"
                    )
                    raise _Closed
                elif isinstance(event, Ping):
                    conn.send_raw(conn.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    conn.answer_peer_close(event)
                    raise _Closed
            await self._receive(conn, timeout_s)

    def _rate_limit(
        self, conn: Connection, frames: list[ClientFrame | RemoteProtocolError], budget: FrameBudget
    ) -> None:
        """Refuse a batch over the connection's frame budget (PROTOCOL.md §8)."""
        if budget.exhausted:
            logger.info("connection %s: closed for flooding", conn.id)
            conn.close(CloseCode.RATE_LIMITED, ErrorCode.RATE_LIMITED, "too many frames")
            raise _Closed
        text = "too many frames; retry later"
        for frame in frames:
            if isinstance(frame, Send):
                conn.reply(
                    err_frame(
                        ErrorCode.RATE_LIMITED, text + " with the same cid", frame.cid, "send"
                    )
                )
        conn.reply(err_frame(ErrorCode.RATE_LIMITED, text, None, None))

    def _refuse(self, conn: Connection, error: RemoteProtocolError) -> NoReturn:
        logger.info("connection %s refused: %s", conn.id, error)
        conn.close(CloseCode(error.close_code), error.code, error.message[:120])
        raise _Closed
