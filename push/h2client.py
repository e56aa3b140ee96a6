"""A lean HTTP/2 client on trio and h2, for FCM's `messages:send`.

Why not httpx (which FCM used before): a push is one small POST, and measured against the
stand-in httpx spent 1.1-2.0 ms of CPU on each, most of it in httpcore's connection pool
(it scans every queued request on each request) rather than in HTTP/2 or TLS. This client
keeps only what a push needs: h2 (the maintained HTTP/2 state machine httpcore also uses)
over `trio.SSLStream`, a few long-lived connections with many streams each, and one writer
per connection that sends whatever the requests queued in one `send_all` (frames of many
requests share a TLS record and a system call).

Each connection runs as a trio system task (a reader and a writer), so it lives across the
callers' requests and a caller's cancellation (a timeout) only resets its own stream. A
connection that fails, or that the server drains with GOAWAY, fails the requests it can no
longer answer with `H2ConnectionError`; the next request opens a new connection.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

logger = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 64 * 1024  # an FCM answer is a few hundred bytes
READ_SIZE = 65536


class H2ConnectionError(Exception):
    """The request got no answer: the connection could not be opened, was lost or drained,
    or the server reset the stream. `str()` says which (no secrets, no payload).
    `unprocessed`: the server certainly did not act on it (safe to send again at once)."""

    def __init__(self, reason: str, *, unprocessed: bool = False) -> None:
        super().__init__(reason)
        self.unprocessed = unprocessed


@dataclass(frozen=True, slots=True)
class H2Response:
    status: int
    headers: dict[str, str]
    body: bytes


class _Pending:
    """One request's stream until its answer is complete."""

    __slots__ = ("body", "done", "error", "headers", "size", "status", "unprocessed")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.error: str | None = None
        self.unprocessed = False

    def fail(self, reason: str, *, unprocessed: bool = False) -> None:
        if not self.done.is_set():
            self.error = reason
            self.unprocessed = unprocessed
            self.done.set()


class _Connection:
    """One HTTP/2 connection: requests share it, each on its own stream."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream], max_streams: int) -> None:
        self._stream = stream
        self._max_streams = max_streams
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self._h2 = h2.connection.H2Connection(config=config)
        self._h2.initiate_connection()
        self._h2.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self._slots = trio.CapacityLimiter(min(max_streams, 100))  # until the peer says
        self._pending: dict[int, _Pending] = {}
        self._wake = trio.Event()  # the writer has something to send
        self._window = trio.Event()  # the peer opened its flow-control window
        self._scope = trio.CancelScope()
        self._finished = trio.Event()
        self._goodbye = False  # GOAWAY queued: end once it is written
        self.closed_reason: str | None = None
        self.draining = False

    @property
    def usable(self) -> bool:
        return self.closed_reason is None and not self.draining

    @property
    def has_room(self) -> bool:
        return self._slots.available_tokens > 0

    @property
    def in_flight(self) -> int:
        return self._slots.borrowed_tokens

    def start(self) -> None:
        self._wake.set()  # the connection preface and our settings
        trio.lowlevel.spawn_system_task(self._run, name="push.h2client connection")

    async def request(self, headers: list[tuple[bytes, bytes]], body: bytes) -> H2Response:
        async with self._slots:
            if not self.usable:
                raise H2ConnectionError("connection_draining", unprocessed=True)
            try:
                stream_id = self._h2.get_next_available_stream_id()
            except h2.exceptions.NoAvailableStreamIDError:
                self.draining = True
                raise H2ConnectionError("connection_draining", unprocessed=True) from None
            pending = _Pending()
            self._pending[stream_id] = pending
            try:
                try:
                    self._h2.send_headers(stream_id, headers, end_stream=not body)
                    await self._send_body(stream_id, body)
                except h2.exceptions.ProtocolError:  # the connection closed under us
                    raise H2ConnectionError("connection_closed", unprocessed=True) from None
                self._wake.set()
                await pending.done.wait()
            finally:
                self._pending.pop(stream_id, None)
                if not pending.done.is_set():  # cancelled: tell the server we gave up
                    self._reset(stream_id)
        if pending.error is not None:
            raise H2ConnectionError(pending.error, unprocessed=pending.unprocessed)
        return H2Response(pending.status, pending.headers, b"".join(pending.body))

    async def aclose(self) -> None:
        """Say GOAWAY, close, and wait for the connection's task to end."""
        if self.closed_reason is None:
            self.closed_reason = "closed"
            self._h2.close_connection()
            self._goodbye = True
            self._wake.set()
        with trio.move_on_after(1):  # the writer says GOAWAY and ends the connection
            await self._finished.wait()
        self._scope.cancel()
        await self._finished.wait()

    async def _send_body(self, stream_id: int, body: bytes) -> None:
        """Queue `body` within the peer's flow-control windows, waiting for them to open."""
        view = memoryview(body)
        while view:
            room = min(self._h2.local_flow_control_window(stream_id), len(view))
            room = min(room, self._h2.max_outbound_frame_size)
            if room <= 0:
                self._wake.set()
                await self._window.wait()
                if self.closed_reason is not None:
                    raise H2ConnectionError(self.closed_reason)
                continue
            self._h2.send_data(stream_id, bytes(view[:room]), end_stream=room == len(view))
            view = view[room:]

    def _reset(self, stream_id: int) -> None:
        if self.closed_reason is None:
            try:
                self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            except h2.exceptions.ProtocolError:  # already closed at our end
                return
            self._wake.set()

    async def _run(self) -> None:
        reason = "connection_lost"
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop)
                    await self._read_loop()
                    nursery.cancel_scope.cancel()
                reason = "connection_closed"
        except Exception as exc:  # a system task must not raise: end it, and say why
            logger.debug("push HTTP/2 connection failed: %r", exc)
        finally:
            self._fail_all(self.closed_reason or reason)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self._stream)
            self._finished.set()

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            data = self._h2.data_to_send()
            if data:
                await self._stream.send_all(data)
            if self._goodbye:
                self._scope.cancel()

    async def _read_loop(self) -> None:
        while True:
            data = await self._stream.receive_some(READ_SIZE)
            if not data:
                return
            for event in self._h2.receive_data(data):
                self._on_event(event)
            self._wake.set()  # for the acks and window updates the events may have queued
            if self.draining and not self._pending:
                return

    def _on_event(self, event: h2.events.Event) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(self, event)

    def _on_response(self, event: h2.events.ResponseReceived) -> None:
        pending = self._pending.get(event.stream_id)
        if pending is not None:
            for name, value in event.headers:
                pending.headers[name.decode("latin-1")] = value.decode("latin-1")
            pending.status = int(pending.headers.pop(":status", "0"))

    def _on_data(self, event: h2.events.DataReceived) -> None:
        self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        pending = self._pending.get(event.stream_id)
        if pending is None or not event.data:
            return
        pending.size += len(event.data)
        if pending.size > MAX_RESPONSE_BYTES:
            pending.fail("response_too_large")
            self._reset(event.stream_id)
        else:
            pending.body.append(event.data)

    def _on_end(self, event: h2.events.StreamEnded) -> None:
        pending = self._pending.get(event.stream_id)
        if pending is not None:
            pending.done.set()

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        pending = self._pending.get(event.stream_id)
        if pending is not None:
            refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
            pending.fail(f"stream_reset_{int(event.error_code)}", unprocessed=refused)

    def _on_settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        peer = self._h2.remote_settings.max_concurrent_streams
        self._slots.total_tokens = max(1, min(self._max_streams, peer))
        self._on_window(event)

    def _on_window(self, event: h2.events.Event) -> None:
        self._window.set()
        self._window = trio.Event()

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self.draining = True
        last = event.last_stream_id or 0
        error = event.error_code not in (None, h2.errors.ErrorCodes.NO_ERROR)
        for stream_id, pending in self._pending.items():
            if stream_id > last:  # the server says it never acted on these
                pending.fail("connection_goaway", unprocessed=True)
            elif error:
                pending.fail("connection_goaway")

    _handlers: ClassVar[dict[type[h2.events.Event], Callable[[Any, Any], None]]] = {
        h2.events.ResponseReceived: _on_response,
        h2.events.DataReceived: _on_data,
        h2.events.StreamEnded: _on_end,
        h2.events.StreamReset: _on_reset,
        h2.events.RemoteSettingsChanged: _on_settings,
        h2.events.WindowUpdated: _on_window,
        h2.events.ConnectionTerminated: _on_goaway,
    }

    def _fail_all(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
        for pending in self._pending.values():
            pending.fail(reason)
        self._window.set()  # senders waiting on the window see the close


class H2Client:
    """Requests to one HTTPS origin over up to `max_connections` HTTP/2 connections of up
    to `streams_per_connection` concurrent streams; a new connection is opened only when the
    open ones are full."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        *,
        max_connections: int,
        streams_per_connection: int,
    ) -> None:
        self._host = host
        self._port = port
        self._authority = (host if port == 443 else f"{host}:{port}").encode("ascii")
        self._context = ssl_context
        self._max_connections = max_connections
        self._streams = streams_per_connection
        self._connections: list[_Connection] = []
        self._connecting = trio.Lock()
        self._closed = False

    async def post(self, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> H2Response:
        """POST `body` to `path`. Raises H2ConnectionError when no answer came."""
        request_headers = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", self._authority),
            (b":path", path.encode("ascii")),
            (b"content-length", str(len(body)).encode("ascii")),
            *headers,
        ]
        for attempt in (1, 2):
            connection = await self._connection()
            try:
                return await connection.request(request_headers, body)
            except H2ConnectionError as exc:  # drained under us: once more, on another
                if not exc.unprocessed or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        self._closed = True
        for connection in self._connections:
            await connection.aclose()
        self._connections.clear()

    async def _connection(self) -> _Connection:
        while True:
            chosen = self._choose()
            if chosen is not None:
                return chosen
            async with self._connecting:
                chosen = self._choose()
                if chosen is not None:
                    return chosen
                connection = await self._open()
                self._connections.append(connection)
                return connection

    def _choose(self) -> _Connection | None:
        """The least busy usable connection if it has room or no other may be opened."""
        if self._closed:
            raise H2ConnectionError("closed")
        # Draining ones stay listed (and count) until they end, so aclose ends them too.
        self._connections = [c for c in self._connections if c.closed_reason is None]
        usable = [c for c in self._connections if c.usable]
        if not usable:
            return None
        best = min(usable, key=lambda c: c.in_flight)
        if best.has_room or len(usable) >= self._max_connections:
            return best
        return None

    async def _open(self) -> _Connection:
        try:
            tcp = await trio.open_tcp_stream(self._host, self._port)
        except OSError as exc:
            raise H2ConnectionError(f"connect_failed: {type(exc).__name__}") from None
        stream = trio.SSLStream(
            tcp, self._context, server_hostname=self._host, https_compatible=True
        )
        try:
            await stream.do_handshake()
            if stream.selected_alpn_protocol() != "h2":
                raise H2ConnectionError("the server does not speak HTTP/2 (ALPN)")
        except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
            await trio.aclose_forcefully(stream)
            cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
            raise H2ConnectionError(f"tls_failed: {type(cause).__name__}") from None
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        connection = _Connection(stream, self._streams)
        connection.start()
        return connection
