"""Delivered / read receipts per device, written in batches."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.database import Database
from storage.push_outbox import enqueue_badge_updates


@dataclass(frozen=True, slots=True)
class ReceiptRecord:
    message_id: uuid.UUID
    conversation_id: uuid.UUID
    account_id: uuid.UUID
    device_id: uuid.UUID
    status: str
    at: datetime


async def _add(conn: Any, receipts: list[ReceiptRecord], push_grace_s: float) -> None:
    # Only receipts for messages of the conversation named are kept (no forged pairs).
    await conn.execute(
        """INSERT INTO message_receipts
               (message_id, conversation_id, account_id, device_id, status, at)
           SELECT r.message_id, r.conversation_id, r.account_id, r.device_id, r.status, r.at
           FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],
                       $6::timestamptz[])
                AS r(message_id, conversation_id, account_id, device_id, status, at)
           JOIN messages m ON m.id = r.message_id AND m.conversation_id = r.conversation_id
           -- a message being erased meanwhile is skipped, not a foreign-key failure of
           -- the whole batch (its receipts go with it: ON DELETE CASCADE); locked in id
           -- order
           ORDER BY m.id FOR KEY SHARE OF m
           ON CONFLICT (message_id, device_id, status) DO NOTHING""",
        [r.message_id for r in receipts],
        [r.conversation_id for r in receipts],
        [r.account_id for r in receipts],
        [r.device_id for r in receipts],
        [r.status for r in receipts],
        [r.at for r in receipts],
    )
    reads = [r for r in receipts if r.status == "read"]
    if reads:
        await _advance_read_marks(conn, reads, push_grace_s)


async def _advance_read_marks(conn: Any, reads: list[ReceiptRecord], push_grace_s: float) -> None:
    """A read message marks its conversation read up to it, for the account (any device):
    the badge counts what lies above. Where a mark moved, the account's other devices get
    a badge update through the push outbox."""
    rows = await conn.fetch(
        """INSERT INTO read_marks AS rm (account_id, conversation_id, read_seq)
           SELECT r.account_id, m.conversation_id, max(m.seq)
           FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS r(message_id, conversation_id,
                                                                 account_id)
           JOIN messages m ON m.id = r.message_id AND m.conversation_id = r.conversation_id
           GROUP BY r.account_id, m.conversation_id
           ORDER BY r.account_id, m.conversation_id
           ON CONFLICT (account_id, conversation_id) DO UPDATE SET read_seq = EXCLUDED.read_seq
           WHERE rm.read_seq < EXCLUDED.read_seq
           RETURNING account_id, conversation_id, read_seq""",
        [r.message_id for r in reads],
        [r.conversation_id for r in reads],
        [r.account_id for r in reads],
    )
    reader = {(r.account_id, r.conversation_id): r.device_id for r in reads}
    advanced = [
        (
            row["account_id"],
            row["conversation_id"],
            int(row["read_seq"]),
            reader[row["account_id"], row["conversation_id"]],
        )
        for row in rows
    ]
    await enqueue_badge_updates(conn, advanced, push_grace_s)


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
    def __init__(self, db: Database, push_grace_s: float = 2.0) -> None:
        self._db = db
        self._push_grace_s = push_grace_s

    async def add(self, receipts: list[ReceiptRecord]) -> None:
        """Store receipts (duplicates and receipts for unknown messages are ignored); read
        receipts move the account's read marks and queue badge updates for its other
        devices, in the same transaction."""
        if receipts:
            await self._db.transaction(_add, receipts, self._push_grace_s)

    async def for_messages(
        self, conversation_id: uuid.UUID, message_ids: list[uuid.UUID]
    ) -> list[ReceiptRecord]:
        return await self._db.transaction(_for_messages, conversation_id, message_ids)
