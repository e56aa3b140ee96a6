"""TLS on a gateway connection, sans-IO: `ssl.SSLObject` over two memory buffers.

Bytes read from the socket go in (`receive`), the application bytes (WebSocket frames)
come out; bytes to send go in (`send`), and `outgoing` returns what to write to the socket.
This is what `trio.SSLStream` does inside, driven by hand so that the gateway keeps its
design: fan-out appends to buffers and the one flusher writes every connection with a
direct non-blocking write - an `SSLStream` would need an awaited `send_all` per write.

Raises `ssl.SSLError` (and its subclasses) for anything the peer gets wrong; the caller
ends that connection.
"""

from __future__ import annotations

import ssl

READ_CHUNK = 65536


class TlsEndpoint:
    """The server's end of one TLS connection."""

    __slots__ = ("_incoming", "_object", "_outgoing", "handshake_done")

    def __init__(self, context: ssl.SSLContext) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._object = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.handshake_done = False

    def handshake(self, data: bytes) -> bool:
        """Feed `data` (may be empty) and advance the handshake; True once it is done.
        Raises ssl.SSLError if the peer's side is unacceptable (an old version, garbage,
        plain HTTP)."""
        if data:
            self._incoming.write(data)
        try:
            self._object.do_handshake()
        except ssl.SSLWantReadError:
            return False
        self.handshake_done = True
        return True

    def receive(self, data: bytes) -> bytes:
        """Feed what the socket gave (b"": nothing new - e.g. to collect application bytes
        that arrived together with the end of the handshake); return the application bytes
        available (possibly none)."""
        if data:
            self._incoming.write(data)
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._object.read(READ_CHUNK)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def send(self, data: bytes) -> None:
        """Encrypt application bytes; fetch them with `outgoing`."""
        self._object.write(data)

    def outgoing(self) -> bytes:
        """The bytes to write to the socket now."""
        return self._outgoing.read()

    @property
    def alpn(self) -> str | None:
        return self._object.selected_alpn_protocol()

    @property
    def version(self) -> str | None:
        return self._object.version()
