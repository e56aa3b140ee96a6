"""Delivered / read receipts per device, written in batches."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.database import Database


@dataclass(frozen=True, slots=True)
class ReceiptRecord:
    message_id: uuid.UUID
    conversation_id: uuid.UUID
    account_id: uuid.UUID
    device_id: uuid.UUID
    status: str
    at: datetime


async def _add(conn: Any, receipts: list[ReceiptRecord]) -> None:
    # Only receipts for messages of the conversation named are kept (no forged pairs).
    await conn.execute(
        """INSERT INTO message_receipts
               (message_id, conversation_id, account_id, device_id, status, at)
           SELECT r.message_id, r.conversation_id, r.account_id, r.device_id, r.status, r.at
           FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],
                       $6::timestamptz[])
                AS r(message_id, conversation_id, account_id, device_id, status, at)
           JOIN messages m ON m.id = r.message_id AND m.conversation_id = r.conversation_id
           ON CONFLICT (message_id, device_id, status) DO NOTHING""",
        [r.message_id for r in receipts],
        [r.conversation_id for r in receipts],
        [r.account_id for r in receipts],
        [r.device_id for r in receipts],
        [r.status for r in receipts],
        [r.at for r in receipts],
    )


async def _for_messages(
    conn: Any, conversation_id: uuid.UUID, message_ids: list[uuid.UUID]
) -> list[ReceiptRecord]:
    rows = await conn.fetch(
        """SELECT message_id, conversation_id, account_id, device_id, status, at
           FROM message_receipts WHERE conversation_id = $1 AND message_id = ANY($2::uuid[])
           ORDER BY at, device_id""",
        conversation_id,
        message_ids,
    )
    return [ReceiptRecord(**dict(r)) for r in rows]


class ReceiptStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, receipts: list[ReceiptRecord]) -> None:
        """Store receipts (duplicates and receipts for unknown messages are ignored)."""
        if receipts:
            await self._db.transaction(_add, receipts)

    async def for_messages(
        self, conversation_id: uuid.UUID, message_ids: list[uuid.UUID]
    ) -> list[ReceiptRecord]:
        return await self._db.transaction(_for_messages, conversation_id, message_ids)
