"""The pipe between the coordinator and a worker process: length-prefixed msgpack maps.

Each message is `u32be(len) || msgpack(map)`; every map has a string `t` naming its type.
One task sends and one task receives on each side.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import trio

from protocol.errors import ObrolError

HEADER = struct.Struct(">I")
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
READ_BYTES = 1 << 16


class LinkClosedError(ObrolError):
    """The other side of the link went away (it exited or closed its end)."""


class Link:
    """Messages over a pair of byte streams."""

    def __init__(self, send: trio.abc.SendStream, receive: trio.abc.ReceiveStream) -> None:
        self._send = send
        self._receive = receive
        self._buffer = bytearray()
        self._lock = trio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        """Send one message; raises LinkClosedError if the other side is gone."""
        data = msgpack.packb(message, use_bin_type=True)
        async with self._lock:
            try:
                await self._send.send_all(HEADER.pack(len(data)) + data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise LinkClosedError("the other side of the link is gone") from exc

    async def receive(self) -> dict[str, Any]:
        """The next message; raises LinkClosedError at the end of the stream."""
        while True:
            if len(self._buffer) >= HEADER.size:
                (size,) = HEADER.unpack_from(self._buffer)
                if size > MAX_MESSAGE_BYTES:
                    raise LinkClosedError(f"link message of {size} bytes is too large")
                end = HEADER.size + size
                if len(self._buffer) >= end:
                    data = bytes(self._buffer[HEADER.size : end])
                    del self._buffer[:end]
                    message: dict[str, Any] = msgpack.unpackb(data, raw=False, strict_map_key=False)
                    return message
            try:
                chunk = await self._receive.receive_some(READ_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise LinkClosedError("the other side of the link is gone") from exc
            if not chunk:
                raise LinkClosedError("the other side of the link closed it")
            self._buffer += chunk

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._send.aclose()
            await self._receive.aclose()
