"""Device cursors (`ack`ed positions), receipts and last-seen times, saved once a second.

The saver outlives any failure: what an outage kept from the database is written once it
is back.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sized
from datetime import datetime
from typing import TypeVar

import trio

from storage.devices import DeviceStore
from storage.errors import DatabaseUnavailableError
from storage.messages import MessageStore
from storage.outages import OutageLog
from storage.receipts import ReceiptRecord, ReceiptStore

logger = logging.getLogger(__name__)

S = TypeVar("S", bound=Sized)


class CursorSaver:
    """Keeps the highest acked position per device, and receipts, and writes them together."""

    def __init__(
        self,
        store: MessageStore,
        receipts: ReceiptStore,
        devices: DeviceStore,
        interval_s: float = 1.0,
    ) -> None:
        self._store = store
        self._devices = devices
        self._receipt_store = receipts
        self._interval_s = interval_s
        self._dirty: dict[uuid.UUID, int] = {}
        self._receipts: list[ReceiptRecord] = []
        self._seen: dict[uuid.UUID, datetime] = {}
        self._outage = OutageLog(logger, "saving cursors and receipts")

    def note_seen(self, device_id: uuid.UUID, when: datetime) -> None:
        """The device connected (or was active) at `when`: its `last_seen_at`."""
        self._seen[device_id] = when

    def note_receipt(self, receipt: ReceiptRecord) -> None:
        self._receipts.append(receipt)

    def note(self, device_id: uuid.UUID, pos: int) -> None:
        if pos > self._dirty.get(device_id, -1):
            self._dirty[device_id] = pos

    async def save(self) -> None:
        """Write what was noted since the last save, each kind in its own transaction.

        Never raises (but Cancelled). During an outage everything not written is kept for
        the next save. A kind that fails for another reason (a bug, or a row the database
        rejects) is logged with its traceback and dropped, so it cannot block later saves.
        """
        dirty, self._dirty = self._dirty, {}
        receipts, self._receipts = self._receipts, []
        seen, self._seen = self._seen, {}
        if not (dirty or receipts or seen):
            return
        try:
            await self._write("cursors", self._store.advance_cursors, dirty)
            dirty = {}
            await self._write("receipts", self._receipt_store.add, receipts)
            receipts = []
            await self._write("last-seen times", self._devices.mark_seen, seen)
            seen = {}
        except DatabaseUnavailableError as exc:
            self._outage.failed(len(dirty) + len(receipts) + len(seen), exc)
            self._keep(dirty, receipts, seen)
            return
        except BaseException:  # cancelled mid-write (shutting down): the final save retries
            self._keep(dirty, receipts, seen)
            raise
        self._outage.succeeded()

    def _keep(
        self,
        dirty: dict[uuid.UUID, int],
        receipts: list[ReceiptRecord],
        seen: dict[uuid.UUID, datetime],
    ) -> None:
        """Put back what was not written, for the next save."""
        for device_id, pos in dirty.items():
            self.note(device_id, pos)
        self._receipts = receipts + self._receipts
        self._seen = seen | self._seen

    @staticmethod
    async def _write(what: str, write: Callable[[S], Awaitable[None]], items: S) -> None:
        """`await write(items)` unless empty. Raises DatabaseUnavailableError; any other
        failure is logged (with traceback) and the items are given up."""
        if not items:
            return
        try:
            await write(items)
        except DatabaseUnavailableError:
            raise
        except Exception:
            logger.exception("%d %s could not be saved and are dropped", len(items), what)

    async def run(self) -> None:
        """Save every interval; on cancellation, save once more (shielded, bounded)."""
        try:
            while True:
                await trio.sleep(self._interval_s)
                await self.save()
        finally:
            with trio.move_on_after(5) as scope:
                scope.shield = True
                await self.save()
