"""Erasing stored messages: what a consent tag's clock or a withdrawal says must go.

Rows go in the caller's transaction (the message, its receipts, the file row it shared if
no other message shares it); the caller deletes the returned files' blobs after the commit
(a blob without a row is unreachable; a row without its blob would be a broken download).
What was erased is counted, never described: no contents reach a log.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.database import Database

ERASED_COLUMNS = "id, conversation_id, sender_id, purpose, scope, file_id"


@dataclass(frozen=True, slots=True)
class ErasedMessage:
    id: uuid.UUID
    conversation_id: uuid.UUID
    sender_id: uuid.UUID
    purpose: str | None
    scope: tuple[uuid.UUID, ...] | None
    file_id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class Erasure:
    messages: list[ErasedMessage]
    files: list[uuid.UUID]  # file rows deleted: delete their blobs after the commit


def erased(row: Any) -> ErasedMessage:
    scope = row["scope"]
    return ErasedMessage(
        row["id"],
        row["conversation_id"],
        row["sender_id"],
        row["purpose"],
        None if scope is None else tuple(scope),
        row["file_id"],
    )


async def finish_erasure(conn: Any, rows: list[Any]) -> Erasure:
    """After `DELETE FROM messages ... RETURNING ERASED_COLUMNS`: the receipts of those
    messages, and the file rows no remaining message shares."""
    messages = [erased(r) for r in rows]
    if not messages:
        return Erasure([], [])
    await conn.execute(
        "DELETE FROM message_receipts WHERE message_id = ANY($1::uuid[])", [m.id for m in messages]
    )
    shared = list({m.file_id for m in messages if m.file_id is not None})
    files = [
        r["id"]
        for r in await conn.fetch(
            """DELETE FROM files f WHERE f.id = ANY($1::uuid[])
                 AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.file_id = f.id)
               RETURNING f.id""",
            shared,
        )
    ]
    return Erasure(messages, files)


async def _erase_expired(conn: Any, now: datetime, limit: int) -> Erasure:
    rows = await conn.fetch(
        f"""DELETE FROM messages WHERE id IN (
                SELECT id FROM messages WHERE erase_at <= $1
                ORDER BY erase_at LIMIT $2 FOR UPDATE SKIP LOCKED)
            RETURNING {ERASED_COLUMNS}""",
        now,
        limit,
    )
    return await finish_erasure(conn, rows)


class ErasureStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def erase_expired(self, now: datetime, limit: int) -> Erasure:
        """Erase up to `limit` messages whose tag's clock ran out by `now`, oldest first.
        Rows another process is erasing are skipped, not waited for."""
        return await self._db.transaction(_erase_expired, now, limit)
