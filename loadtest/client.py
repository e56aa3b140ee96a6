"""A trio client for the obrol gateway: connect, handshake, send, receive, ack, catch up.

The reference for app developers (read it beside PROTOCOL.md) and what the tests and the
load tester use. It lives here, not in `protocol/`, because `protocol/` is sans-IO; this is
the I/O glue around it.

    async with await connect(gateway_url, identity) as client:
        await client.sync(after=cursor)
        await client.send(Send(cid="c-1", conv=conv_id, body=TextBody(text="hi")))
        for frame in await client.receive():
            ...

`DeviceState` keeps what a real device keeps between connections: its cursor, the ids it
has seen (to drop duplicates) and its outbox (to resend with the same cids).

TLS: a `wss://host:port/v1/ws` URL runs a TLS handshake (`trio.SSLStream`) before the
WebSocket upgrade. The server's certificate and host name are verified by default against
the system's trust store; pass `ssl_context=client_ssl_context(ca_file)` to trust a CA of
your own (a private or development CA). A certificate that fails verification raises
`TlsVerificationError` (a `ConnectError` with reason `tls_verify_failed`) naming the host
and OpenSSL's reason; it is not worth retrying until someone fixes the certificate or the
trust. The secure channel's pinned server key is checked on top of TLS, exactly as over
plain `ws://`.

    context = client_ssl_context(Path("ca.pem"))
    async with await connect("wss://chat.example:8401/v1/ws", identity, ssl_context=context):
        ...
"""

from __future__ import annotations

import contextlib
import errno
import functools
import socket
import ssl
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
)
from wsproto.utilities import LocalProtocolError as WsprotoLocalError
from wsproto.utilities import ProtocolError as WsprotoError

from protocol import (
    ClientHandshake,
    Erased,
    Frame,
    Msg,
    ObrolError,
    SecureChannel,
    Send,
    Sent,
    ServerFrame,
    Sync,
    Synced,
    decode_server_batch,
    encode_batch,
)

RECV_BYTES = 65536


class ConnectionClosedError(ObrolError):
    """The server closed the connection; `code` and `reason` say why (PROTOCOL.md §7)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed by the server: {code} {reason}")
        self.code = code
        self.reason = reason


class ConnectError(ObrolError):
    """Connecting failed below the obrol protocol: nothing listened, the connection was
    refused, reset or dropped, the socket connected to itself, the TLS handshake failed, or
    the peer did not speak HTTP/WebSocket. Nothing was said by an obrol server, so it is
    worth retrying later - except `TlsVerificationError`. `reason` is a short code for
    counting (`connection_refused`, `self_connect`, `tls_handshake_failed`, `bad_upgrade`,
    ...); `__cause__` is the error underneath, if any."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"could not connect ({reason}){': ' + detail if detail else ''}")
        self.reason = reason


class TlsVerificationError(ConnectError):
    """The server's TLS certificate was refused: not issued by a trusted CA, expired, or not
    for the host name connected to. Retrying will not help until the certificate or the
    trust (`client_ssl_context(ca_file)`) changes. `host` is the name that was verified;
    `verify_message` is OpenSSL's reason (e.g. "unable to get local issuer certificate")."""

    def __init__(self, host: str, verify_message: str) -> None:
        super().__init__(
            "tls_verify_failed",
            f"the TLS certificate of {host} is not trusted "
            f"(certificate verify failed: {verify_message})",
        )
        self.host = host
        self.verify_message = verify_message


def client_ssl_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """A client TLS context that verifies the certificate and the host name: against the
    certificates in `ca_file` (PEM) if given, else against the system's trust store.

    Raises:
        OSError: `ca_file` cannot be read.
        ssl.SSLError: `ca_file` holds no PEM certificate.
    """
    context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    context.set_alpn_protocols(["http/1.1"])
    return context


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """What a device needs to connect: its id, its Ed25519 secret key (64 bytes) and the
    server key it pinned."""

    device_id: uuid.UUID
    secret_key: bytes
    server_key: bytes


class GatewayClient:
    """One connection. Not safe for several tasks sending at once."""

    def __init__(self, stream: trio.abc.Stream, ws: WSConnection) -> None:
        self._stream = stream
        self._ws = ws
        self._channel: SecureChannel | None = None
        self._messages: list[bytes] = []
        self._partial = bytearray()
        self._closed: tuple[int, str] | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        with trio.move_on_after(2) as scope:
            scope.shield = True
            # Already closed, by either side: nothing more to say.
            with contextlib.suppress(
                trio.BrokenResourceError, trio.ClosedResourceError, WsprotoLocalError
            ):
                await self._stream.send_all(self._ws.send(CloseConnection(code=1000)))
            await self._stream.aclose()

    # -- raw messages --------------------------------------------------------------------

    async def _fill(self) -> None:
        data = await self._stream.receive_some(RECV_BYTES)
        if not data:
            self._closed = (1006, "connection dropped")
            return
        self._ws.receive_data(bytes(data))  # bytes already: no copy
        await self._take(list(self._ws.events()))

    async def _take(self, events: Sequence[object]) -> None:
        for event in events:
            if isinstance(event, BytesMessage):
                self._partial += event.data
                if event.message_finished:
                    self._messages.append(bytes(self._partial))
                    self._partial.clear()
            elif isinstance(event, Ping):
                if self._ws.state is ConnectionState.OPEN:  # not once a close has begun
                    await self._stream.send_all(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self._closed = (event.code, event.reason or "")
            elif isinstance(event, RejectConnection):
                self._closed = (event.status_code, "upgrade refused")

    async def _next_message(self) -> bytes:
        """The next binary message; what arrived before a close is still delivered."""
        while not self._messages:
            if self._closed is not None:
                raise ConnectionClosedError(*self._closed)
            await self._fill()
        return self._messages.pop(0)

    async def _send_message(self, data: bytes) -> None:
        if self._closed is not None:
            raise ConnectionClosedError(*self._closed)
        if self._ws.state is not ConnectionState.OPEN:
            raise ConnectionClosedError(1006, "connection closing")
        await self._stream.send_all(self._ws.send(BytesMessage(data=data)))

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt a batch plaintext as the next message (for diagnostics and tests)."""
        assert self._channel is not None
        return self._channel.seal(plaintext, trio.current_time())

    async def send_message(self, data: bytes) -> None:
        """Send one binary WebSocket message exactly as given (for diagnostics and tests)."""
        await self._send_message(data)

    # -- frames --------------------------------------------------------------------------

    async def send(self, *frames: Frame) -> None:
        """Send frames as one encrypted batch."""
        await self._send_message(self.seal(encode_batch(frames)))

    async def receive(self) -> list[ServerFrame]:
        """The frames of the next batch from the server."""
        return decode_server_batch(await self.receive_plain())

    async def receive_plain(self) -> bytes:
        """The next batch from the server, decrypted but not decoded."""
        assert self._channel is not None
        return self._channel.open(await self._next_message())

    async def sync(self, after: int) -> None:
        await self.send(Sync(after=after))


def _os_reason(exc: OSError) -> str:
    """A short code for why a socket operation failed."""
    cause = exc.__cause__
    if exc.errno is None and isinstance(cause, BaseExceptionGroup):
        # trio.open_tcp_stream: "all attempts failed", with one error per address tried.
        first = cause.exceptions[0] if cause.exceptions else None
        if isinstance(first, OSError):
            exc = first
    if isinstance(exc, ConnectionRefusedError):
        return "connection_refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "connection_reset"
    if isinstance(exc, socket.gaierror):
        return "unknown_host"
    if isinstance(exc, TimeoutError) or exc.errno == errno.ETIMEDOUT:
        return "connect_timeout"
    return f"os_error_{exc.errno}" if exc.errno is not None else "os_error"


async def _open_stream(host: str, port: int, receive_buffer_bytes: int | None) -> trio.SocketStream:
    """A TCP connection to host:port. Raises OSError."""
    if receive_buffer_bytes is None:
        return await trio.open_tcp_stream(host, port)
    # A small receive buffer makes a slow (or stalled) device show up quickly at the server.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


@functools.cache
def _system_trust() -> ssl.SSLContext:
    """The default client context, made once (loading the trust store takes a while)."""
    return client_ssl_context()


def _tls_error(exc: BaseException, host: str, reason: str) -> ConnectError | None:
    """The ConnectError for a TLS failure (`exc` or the error a BrokenResourceError wraps),
    with `reason` unless the certificate was refused; None if it is no TLS failure."""
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return TlsVerificationError(host, cause.verify_message or cause.reason or str(cause))
    if isinstance(cause, ssl.SSLError):
        return ConnectError(reason, f"{host}: {cause}")
    return None


async def tls_handshake(
    stream: trio.SocketStream, host: str, ssl_context: ssl.SSLContext | None = None
) -> trio.SSLStream[trio.SocketStream]:
    """Run a TLS handshake as a client over `stream`, verifying the certificate for `host`.

    `ssl_context` defaults to the system's trust store. The stream is not closed on failure.

    Raises:
        TlsVerificationError: the certificate is not trusted or not for `host`.
        ConnectError: the handshake failed otherwise (`tls_handshake_failed`: the peer does
            not speak TLS, or no common version or cipher; or the connection broke).
    """
    tls = trio.SSLStream(
        stream,
        ssl_context or _system_trust(),
        server_hostname=host,
        https_compatible=True,
    )
    try:
        await tls.do_handshake()
    except trio.BrokenResourceError as exc:
        mapped = _tls_error(exc, host, "tls_handshake_failed")
        if mapped is None:
            cause = exc.__cause__
            mapped = ConnectError(
                _os_reason(cause) if isinstance(cause, OSError) else "dropped_during_tls"
            )
        raise mapped from exc
    return tls


def _check_not_connected_to_itself(stream: trio.SocketStream) -> None:
    """Raise ConnectError("self_connect") if the TCP connection is to itself.

    On loopback, a connect to a port nobody listens on that lies in the ephemeral range can
    pick that very port as its source port, and TCP's simultaneous open then connects the
    socket to itself: everything sent comes back (our own upgrade request as the "answer").
    """
    try:
        local, peer = stream.socket.getsockname(), stream.socket.getpeername()
    except OSError as exc:  # reset before we looked
        raise ConnectError(_os_reason(exc)) from exc
    if local == peer:
        raise ConnectError("self_connect", f"source and destination are both {local!r}")


def _host_port(url: str) -> tuple[str, int]:
    """The host and port of a ws:// or wss:// URL (port 80 / 443 when not given, as behind
    a proxy); raises ValueError for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or parts.hostname is None:
        raise ValueError(f"expected ws://host[:port]/path or wss://host[:port]/path, got {url!r}")
    return parts.hostname, parts.port or (443 if parts.scheme == "wss" else 80)


async def connect(
    url: str,
    identity: DeviceIdentity,
    *,
    receive_buffer_bytes: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> GatewayClient:
    """Open a WebSocket to `url` (ws:// or wss://host:port/v1/ws) and run the secure
    handshake. For wss://, TLS comes first, verified with `ssl_context` (default: the
    system's trust store; see `client_ssl_context`); it is ignored for ws://.

    Raises:
        ValueError: `url` is not a ws:// or wss://host:port/path URL.
        TlsVerificationError: wss:// and the server's certificate is not trusted or not
            for the URL's host.
        ConnectError: the connection could not be made or broke before the secure channel
            was up, the TLS handshake failed, or the peer did not speak WebSocket (see
            `connect_over`).
        ConnectionClosedError: the server refused with a close code or an HTTP status
            (unknown or revoked device, wrong path, ...).
        ProtocolError: the server could not be authenticated (from `protocol/`).
    """
    host, port = _host_port(url)
    try:
        stream = await _open_stream(host, port, receive_buffer_bytes)
    except OSError as exc:
        raise ConnectError(_os_reason(exc), str(exc)) from exc
    return await connect_over(stream, url, identity, ssl_context=ssl_context)


async def connect_over(
    stream: trio.SocketStream,
    url: str,
    identity: DeviceIdentity,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> GatewayClient:
    """Upgrade an open TCP `stream` to a WebSocket to `url` (after a TLS handshake for
    wss://) and run the secure handshake.

    The stream is closed if this raises. Every failure underneath the obrol protocol - the
    socket connected to itself, a reset, a failed TLS handshake, the peer closing before the
    channel is up, bytes that are not an HTTP/WebSocket upgrade answer - raises
    ConnectError (TlsVerificationError for a refused certificate); the other errors are
    those of `connect`.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    ws = WSConnection(ConnectionType.CLIENT)
    client = GatewayClient(stream, ws)
    try:
        _check_not_connected_to_itself(stream)
        if parts.scheme == "wss":
            client._stream = await tls_handshake(stream, host, ssl_context)
        await client._stream.send_all(ws.send(Request(host=parts.netloc, target=parts.path or "/")))
        while True:
            data = await client._stream.receive_some(RECV_BYTES)
            if not data:
                raise ConnectError("dropped_during_upgrade")
            ws.receive_data(bytes(data))
            events = list(ws.events())
            for event in events:
                if isinstance(event, RejectConnection):
                    raise ConnectionClosedError(event.status_code, "upgrade refused")
            accepted = [i for i, e in enumerate(events) if isinstance(e, AcceptConnection)]
            if accepted:
                await client._take(events[accepted[0] + 1 :])  # what followed the upgrade
                break
        handshake = ClientHandshake(
            server_public_key=identity.server_key,
            device_id=identity.device_id.bytes,
            device_secret_key=identity.secret_key,
        )
        await client._send_message(handshake.client_hello())
        auth, channel = handshake.receive_server_hello(await client._next_message())
        await client._send_message(auth)
        client._channel = channel
    except BaseException as exc:
        await client.aclose()
        if isinstance(exc, ConnectError):  # already said what failed (self_connect, TLS)
            raise
        mapped = _as_connect_error(exc, host)
        if mapped is None:
            raise
        raise mapped from exc
    return client


def _as_connect_error(exc: BaseException, host: str) -> ConnectError | None:
    """The ConnectError for a failure underneath the obrol protocol while connecting; None
    for anything else (a refusal by the server, our protocol's errors, cancellation)."""
    if isinstance(exc, WsprotoError):  # the peer's bytes are no WebSocket upgrade answer
        return ConnectError("bad_upgrade", str(exc))
    tls = _tls_error(exc, host, "tls_error")  # after the handshake
    if tls is not None:
        return tls
    if isinstance(exc, trio.BrokenResourceError):
        cause = exc.__cause__
        return ConnectError(_os_reason(cause) if isinstance(cause, OSError) else "connection_reset")
    if isinstance(exc, OSError):
        return ConnectError(_os_reason(exc), str(exc))
    if isinstance(exc, ConnectionClosedError) and exc.code == 1006:  # dropped, no close frame
        return ConnectError("dropped_during_handshake")
    return None


@dataclass
class DeviceState:
    """What a device keeps across connections: cursor, seen message ids, outbox."""

    identity: DeviceIdentity
    cursor: int = 0
    seen: set[bytes] = field(default_factory=set)
    messages: list[Msg] = field(default_factory=list)
    outbox: dict[str, Send] = field(default_factory=dict)
    duplicates: int = 0
    erased: set[bytes] = field(default_factory=set)  # ids of messages the server erased

    def accept(self, frame: ServerFrame) -> None:
        """Apply one frame: keep new messages (dropping duplicates by id), forget erased
        ones (`erased`: tombstones, which hold a position too), advance the cursor, clear
        acknowledged sends from the outbox."""
        if isinstance(frame, Msg):
            if self.note_message(frame.id, frame.pos):
                self.messages.append(frame)
        elif isinstance(frame, Erased):
            gone = set(frame.ids)
            self.erased |= gone
            self.messages = [m for m in self.messages if m.id not in gone]
            self.cursor = max(self.cursor, frame.pos)
        elif isinstance(frame, Sent):
            self.outbox.pop(frame.cid, None)
        elif isinstance(frame, Synced):
            self.cursor = max(self.cursor, frame.pos)

    def note_message(self, message_id: bytes, pos: int | None) -> bool:
        """Record a received message; False (and counted) if it was seen before."""
        if message_id in self.seen:
            self.duplicates += 1
            return False
        self.seen.add(message_id)
        if pos is not None:
            self.cursor = max(self.cursor, pos)
        return True

    async def reconnect(self, url: str, ssl_context: ssl.SSLContext | None = None) -> GatewayClient:
        """Connect (TLS verified with `ssl_context` for wss://), ask for everything after
        the cursor, and resend the outbox.

        Raises what `connect` raises, and trio.BrokenResourceError or ConnectionClosedError
        if the new connection breaks at once (it is closed then)."""
        client = await connect(url, self.identity, ssl_context=ssl_context)
        try:
            await client.sync(self.cursor)
            if self.outbox:
                await client.send(*self.outbox.values())
        except BaseException:
            await client.aclose()
            raise
        return client
