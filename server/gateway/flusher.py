"""The one task per process that seals and writes every dirty connection, and how a flush is
split into batches the client accepts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import trio

from protocol import SERVER_TO_CLIENT_LIMITS

if TYPE_CHECKING:
    from server.gateway.connection import Connection


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
                conn.flush(now)  # contains its own failures: one connection never stops this
            await trio.lowlevel.checkpoint()


MAX_BATCH_BYTES = SERVER_TO_CLIENT_LIMITS.max_bytes
MAX_BATCH_FRAMES = SERVER_TO_CLIENT_LIMITS.max_values


def batches(frames: list[bytes]) -> Iterator[list[bytes]]:
    """Split frames into batches within the server -> client limits."""
    batch: list[bytes] = []
    size = 0
    for frame in frames:
        if batch and (size + len(frame) > MAX_BATCH_BYTES or len(batch) >= MAX_BATCH_FRAMES):
            yield batch
            batch, size = [], 0
        batch.append(frame)
        size += len(frame)
    if batch:
        yield batch
