"""HTTP/2 over TLS, just enough for the stand-ins: one task per connection, one per request.

The server offers ALPN "h2" but serves a client that negotiates no ALPN and sends the
HTTP/2 preface straight away (aioapns 4.0 does). Anything else gets a clean close: an
HTTP/1.x request a one-line 505 answer, random bytes nothing. A connection's trouble (bad
TLS, protocol errors, a peer that vanishes) is logged and ends that connection only.

Flow control is honoured both ways: received data is acknowledged as it arrives, so a
client sending big bodies never stalls; a response body waits until the client's window
takes it whole (one DATA frame: aioapns parses each frame as one JSON document).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio

logger = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_KEPT_BODY_BYTES = 1 << 20  # a request body past this is counted, not kept
MAX_CONCURRENT_STREAMS = 1000
HANDSHAKE_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 1.0
# What a peer that vanished, stalled or was closed under us looks like.
_PEER_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError)
_HTTP1_REQUEST = re.compile(rb"[A-Z]{3,10} ")
_HTTP1_REFUSAL = (
    b"HTTP/1.1 505 HTTP Version Not Supported\r\n"
    b"content-type: text/plain\r\ncontent-length: 35\r\nconnection: close\r\n\r\n"
    b"This server speaks only HTTP/2.\r\n\r\n"
)


@dataclass(frozen=True)
class Request:
    """One complete HTTP/2 request (its stream ended)."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]  # in arrival order, names lower-case, pseudo included
    body: bytes  # the first MAX_KEPT_BODY_BYTES
    raw_size: int  # every body byte received
    connection_id: int
    peer: str  # the client's IP address

    def header(self, name: str) -> str | None:
        """The first value of header `name` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_count(self, name: str) -> int:
        return sum(1 for key, _ in self.headers if key == name)


@dataclass(frozen=True)
class Response:
    """What to answer; `drop=True` closes the whole TCP connection instead."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    drop: bool = False


Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class _Incoming:
    headers: tuple[tuple[str, str], ...]
    body: bytearray
    raw_size: int = 0


def _text(value: bytes | str) -> str:
    return value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")


class _Connection:
    """One client's HTTP/2 connection; `run` returns when it is over, and never raises
    for anything the peer did."""

    def __init__(
        self,
        stream: trio.SSLStream[trio.SocketStream],
        handler: Handler,
        connection_id: int,
        peer: str,
        idle_timeout_s: float,
    ) -> None:
        self._stream = stream
        self._handler = handler
        self._id = connection_id
        self._peer = peer
        self._idle_timeout_s = idle_timeout_s
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self._h2 = h2.connection.H2Connection(config=config)
        self._h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
            },
        )
        self._incoming: dict[int, _Incoming] = {}
        self._answering = 0
        self._send_lock = trio.Lock()
        self._window_changed = trio.Event()
        self._dropped = False
        self._scope = trio.CancelScope()

    async def run(self) -> None:
        try:
            with self._scope:
                await self._run()
        finally:
            await self._close()

    async def _run(self) -> None:
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                await self._stream.do_handshake()
                first = await self._read_preface()
        except _PEER_GONE as exc:
            logger.info("conn %d: ended before HTTP/2 (%s)", self._id, type(exc).__name__)
            return
        if first is None:
            return
        self._h2.initiate_connection()
        async with trio.open_nursery() as nursery:
            # Caught here, inside the nursery: out of it, it would come wrapped in a group.
            try:
                await self._serve(nursery, first)
            except _PEER_GONE as exc:
                logger.info("conn %d: ended (%s)", self._id, type(exc).__name__)
            nursery.cancel_scope.cancel()

    async def _read_preface(self) -> bytes | None:
        """Bytes read up to and past the HTTP/2 preface; None (after a courteous answer to
        an HTTP/1.x client) if the client speaks something else."""
        buffer = b""
        while len(buffer) < len(PREFACE):
            chunk = await self._stream.receive_some()
            if not chunk:
                return None
            buffer += chunk
            if not PREFACE.startswith(buffer[: len(PREFACE)]):
                break
        if buffer.startswith(PREFACE):
            return buffer
        alpn = self._stream.selected_alpn_protocol()
        if _HTTP1_REQUEST.match(buffer):
            logger.info("conn %d: HTTP/1.x request refused (ALPN %s)", self._id, alpn)
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                await self._stream.send_all(_HTTP1_REFUSAL)
        else:
            logger.info("conn %d: not HTTP/2 (ALPN %s); closing", self._id, alpn)
        return None

    async def _serve(self, nursery: trio.Nursery, pending: bytes) -> None:
        """Read frames and start a task per complete request until the peer leaves."""
        data: bytes | bytearray = pending
        while True:
            if data:
                try:
                    events = self._h2.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    logger.info("conn %d: protocol error from peer: %s", self._id, exc)
                    await self._flush()  # the GOAWAY h2 queued
                    return
                if not self._handle_events(events, nursery):
                    await self._flush()
                    return
                await self._flush()
            with trio.move_on_after(self._idle_timeout_s) as scope:
                data = await self._stream.receive_some()
            if scope.cancelled_caught:
                if self._incoming or self._answering:
                    continue  # not idle: a request is still coming in or being answered
                logger.info("conn %d: idle; sending GOAWAY", self._id)
                self._h2.close_connection(additional_data=b'{"reason":"IdleTimeout"}')
                await self._flush()
                return
            if not data:
                logger.debug("conn %d: peer closed", self._id)
                return

    def _handle_events(self, events: list[h2.events.Event], nursery: trio.Nursery) -> bool:
        """Act on h2 events; False once the peer has ended the connection."""
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                assert event.stream_id is not None
                headers = tuple(
                    (
                        bytes(k).decode("ascii", "replace").lower(),
                        bytes(v).decode("utf-8", "replace"),
                    )
                    for k, v in event.headers or ()
                )
                self._incoming[event.stream_id] = _Incoming(headers, bytearray())
            elif isinstance(event, h2.events.DataReceived):
                assert event.stream_id is not None and event.data is not None
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                incoming = self._incoming.get(event.stream_id)
                if incoming is not None:
                    incoming.raw_size += len(event.data)
                    room = MAX_KEPT_BODY_BYTES - len(incoming.body)
                    incoming.body += event.data[: max(room, 0)]
            elif isinstance(event, h2.events.StreamEnded):
                assert event.stream_id is not None
                incoming = self._incoming.pop(event.stream_id, None)
                if incoming is not None:
                    self._answering += 1
                    nursery.start_soon(self._answer, event.stream_id, self._request(incoming))
            elif isinstance(event, h2.events.StreamReset):
                assert event.stream_id is not None
                self._incoming.pop(event.stream_id, None)
            elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                self._window_changed.set()
                self._window_changed = trio.Event()
            elif isinstance(event, h2.events.ConnectionTerminated):
                logger.debug("conn %d: GOAWAY from peer (%s)", self._id, event.error_code)
                return False
        return True

    def _request(self, incoming: _Incoming) -> Request:
        pseudo = dict(incoming.headers)
        return Request(
            method=pseudo.get(":method", ""),
            path=pseudo.get(":path", ""),
            headers=incoming.headers,
            body=bytes(incoming.body),
            raw_size=incoming.raw_size,
            connection_id=self._id,
            peer=self._peer,
        )

    async def _answer(self, stream_id: int, request: Request) -> None:
        """Answer one request; never raises (a dead connection is cancelled, not raised)."""
        try:
            try:
                response = await self._handler(request)
            except Exception:
                logger.exception("conn %d: handler failed on %s", self._id, request.method)
                response = Response(500, (("content-type", "application/json"),), b"{}")
            if response.drop:
                logger.info("conn %d: dropped instead of answering (fault)", self._id)
                self._dropped = True
                self._scope.cancel()
                return
            await self._respond(stream_id, response)
        except _PEER_GONE as exc:
            logger.info("conn %d: could not answer (%s)", self._id, type(exc).__name__)
            self._scope.cancel()
        finally:
            self._answering -= 1

    async def _respond(self, stream_id: int, response: Response) -> None:
        headers = [(":status", str(response.status)), *response.headers]
        if response.body:
            headers.append(("content-length", str(len(response.body))))
        try:
            self._h2.send_headers(stream_id, headers, end_stream=not response.body)
            await self._flush()
            body = response.body
            while body:
                window = self._h2.local_flow_control_window(stream_id)
                frame = self._h2.max_outbound_frame_size
                want = min(len(body), frame)
                if window < want:
                    await self._window_changed.wait()
                    continue
                self._h2.send_data(stream_id, body[:want], end_stream=want == len(body))
                body = body[want:]
                await self._flush()
        except h2.exceptions.ProtocolError:  # StreamClosedError mostly: the client reset it
            logger.debug("conn %d: stream %d gone before its answer", self._id, stream_id)

    async def _flush(self) -> None:
        async with self._send_lock:
            data = self._h2.data_to_send()
            if data:
                with trio.fail_after(SEND_TIMEOUT_S):
                    await self._stream.send_all(data)

    async def _close(self) -> None:
        if self._dropped:
            await trio.aclose_forcefully(self._stream)
            return
        deadline = trio.current_time() + CLOSE_TIMEOUT_S
        with (
            trio.CancelScope(shield=True, deadline=deadline),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await self._stream.aclose()
        await trio.aclose_forcefully(self._stream)


async def serve_h2(
    listeners: list[trio.SocketListener],
    ssl_context: ssl.SSLContext,
    handler: Handler,
    *,
    idle_timeout_s: float = 3600.0,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve HTTP/2 over TLS on `listeners` until cancelled, calling `handler` per request.

    A connection's failure, whatever it is, is logged and closes that connection only.
    """
    counter = itertools.count(1)

    async def on_connection(tcp: trio.SocketStream) -> None:
        connection_id = next(counter)
        try:
            peer = str(tcp.socket.getpeername()[0])
        except OSError:
            await trio.aclose_forcefully(tcp)
            return
        logger.debug("conn %d: from %s", connection_id, peer)
        stream = trio.SSLStream(tcp, ssl_context, server_side=True, https_compatible=True)
        connection = _Connection(stream, handler, connection_id, peer, idle_timeout_s)
        try:
            await connection.run()
        except Exception:
            logger.exception("conn %d: failed; closed", connection_id)
            await trio.aclose_forcefully(tcp)

    await trio.serve_listeners(on_connection, listeners, task_status=task_status)
