"""This process's place in the stream: every stored message (and every tombstone of an
erased one) reaches its live connections once, in position order, whichever process
committed it.

`last` is the highest position fanned out here. Three things move it, one at a time (the
lock): this process's own commits (the committer hands its batch over in memory), the bus
("the stream reached X" from another process: read (last, X] from the store), and a timer
that reads the highest committed position (the safety net for announcements lost with the
bus, or with a process killed between its commit and its announcement).

Gap-free because positions commit in order (storage/stream.py): when X is committed, every
smaller position is committed or never will be, so one read of (last, X] sees all of it.
A commit of ours that starts at position a settles everything below a: if `last` < a - 1,
another process (or a commit that failed) holds positions in between, and they are read
from the store before our own batch goes out.
"""

from __future__ import annotations

import logging
import time

import trio

from protocol import RemoteProtocolError
from server.gateway.erased import tombstone_frame
from server.gateway.hub import Hub
from server.gateway.session import stored_msg_frame
from server.metrics import BUS_LAG_SECONDS
from storage.errors import DatabaseUnavailableError
from storage.outages import OutageLog
from storage.stream_read import CommittedErasure, StreamReader

logger = logging.getLogger(__name__)

READ_PAGE = 1000


class StreamFeed:
    def __init__(self, reader: StreamReader, hub: Hub, *, page: int = READ_PAGE) -> None:
        self._reader = reader
        self._hub = hub
        self._page = page
        self.lock = hub.stream_order  # the writers of tombstones hold it too (erased.py)
        self.last = 0
        self.read_from_store = 0  # messages fanned out after reading them from the store
        self._reads = OutageLog(logger, "stream reads")

    async def start(self) -> None:
        """Begin at the highest committed position: what lies below is for catch-up.
        Raises DatabaseUnavailableError."""
        self.last = await self._reader.committed_pos()

    async def reached(self, pos: int | None = None) -> bool:
        """The stream reached `pos` (None: whatever is committed now): fan out what lies
        between `last` and it. False if the store could not be read (`last` then stays
        where the read stopped; the next call goes on from there)."""
        async with self.lock:
            return await self.fill(pos)

    async def fill(self, pos: int | None) -> bool:
        """`reached`, for a caller that holds the lock."""
        try:
            if pos is None:
                pos = await self._reader.committed_pos()
            while pos > self.last:
                rows, more = await self._reader.between(self.last, pos, self._page)
                for row in rows:
                    if isinstance(row, CommittedErasure):
                        stone = row.tombstone
                        self._hub.fan_out(row.audience, stone.pos, tombstone_frame(stone))
                        self.last = stone.pos
                        continue
                    message = row.message
                    try:
                        frame = stored_msg_frame(message)
                    except RemoteProtocolError:
                        logger.error("stored message %s is unreadable; skipped", message.id)
                    else:
                        # Committed when it was stored (another process's clock, this
                        # machine's or a synchronized one): for the delivery latency metric.
                        committed = message.sent_at.timestamp()
                        BUS_LAG_SECONDS.observe(max(time.time() - committed, 0.0))
                        self._hub.fan_out(row.audience, message.pos, frame, committed)
                    self.read_from_store += 1
                    self.last = message.pos
                if not more:
                    self.last = pos
        except DatabaseUnavailableError as exc:
            self._reads.failed(1, exc)
            return False
        self._reads.succeeded()
        return True

    async def poll(self, interval_s: float) -> None:
        """Catch up with whatever is committed every `interval_s`, until cancelled."""
        while True:
            await trio.sleep(interval_s)
            await self.reached(None)
