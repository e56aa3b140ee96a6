"""Device cursors (`ack`ed positions), receipts and last-seen times, saved once a second."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

import trio

from storage.devices import DeviceStore
from storage.errors import DatabaseUnavailableError
from storage.messages import MessageStore
from storage.receipts import ReceiptRecord, ReceiptStore

logger = logging.getLogger(__name__)


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

    def note_seen(self, device_id: uuid.UUID, when: datetime) -> None:
        """The device connected (or was active) at `when`: its `last_seen_at`."""
        self._seen[device_id] = when

    def note_receipt(self, receipt: ReceiptRecord) -> None:
        self._receipts.append(receipt)

    def note(self, device_id: uuid.UUID, pos: int) -> None:
        if pos > self._dirty.get(device_id, -1):
            self._dirty[device_id] = pos

    async def save(self) -> None:
        dirty, self._dirty = self._dirty, {}
        receipts, self._receipts = self._receipts, []
        seen, self._seen = self._seen, {}
        try:
            if dirty:
                await self._store.advance_cursors(dirty)
            await self._receipt_store.add(receipts)
            if seen:
                await self._devices.mark_seen(seen)
        except DatabaseUnavailableError as exc:
            logger.warning("cursors and receipts not saved (will retry): %s", exc)
            for device_id, pos in dirty.items():
                self.note(device_id, pos)
            self._receipts = receipts + self._receipts
            self._seen = seen | self._seen

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
