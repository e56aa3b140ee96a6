"""Erasing stored messages: what a consent tag's clock, a withdrawal or a retention period
says must go.

Rows go in the caller's transaction (the message, its receipts, the file row it shared if
no other message shares it); the caller deletes the returned files' blobs after the commit
(a blob without a row is unreachable; a row without its blob would be a broken download).
What was erased is counted, never described: no contents reach a log. Nothing here takes
the stream lock: erasing old rows never waits for, nor holds up, a commit of new ones.
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


async def drop_dependents(
    conn: Any, message_ids: list[uuid.UUID], file_ids: set[uuid.UUID]
) -> list[uuid.UUID]:
    """After deleting the messages `message_ids` (which shared `file_ids`): delete their
    receipts and the file rows no remaining message shares; returns those files."""
    if not message_ids:
        return []
    await conn.execute(
        "DELETE FROM message_receipts WHERE message_id = ANY($1::uuid[])", message_ids
    )
    if not file_ids:
        return []
    return [
        r["id"]
        for r in await conn.fetch(
            """DELETE FROM files f WHERE f.id = ANY($1::uuid[])
                 AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.file_id = f.id)
               RETURNING f.id""",
            sorted(file_ids),
        )
    ]


async def finish_erasure(conn: Any, rows: list[Any]) -> Erasure:
    """After `DELETE FROM messages ... RETURNING ERASED_COLUMNS`: the receipts of those
    messages, and the file rows no remaining message shares."""
    messages = [erased(r) for r in rows]
    shared = {m.file_id for m in messages if m.file_id is not None}
    return Erasure(messages, await drop_dependents(conn, [m.id for m in messages], shared))


@dataclass(frozen=True, slots=True)
class Purge:
    """What one batch of a retention period erased: how many messages, which files (delete
    their blobs after the commit), and where the next batch starts (`last_seq`)."""

    messages: int
    files: list[uuid.UUID]
    head: int  # rows the batch looked at: fewer erased than `head` means it stopped early
    last_seq: int  # the highest seq it looked at


async def _erase_older(
    conn: Any, conversation_id: uuid.UUID, cutoff: datetime, after_seq: int, limit: int
) -> Purge:
    # The head of the conversation after `after_seq`, in seq order (its unique index: no
    # index on sent_at is kept for this, so the hot insert path pays nothing). Messages are
    # stamped when sent and numbered when committed, so seq order is time order (to the
    # millisecond): the batch stops at the first message that is still within the period.
    rows = await conn.fetch(
        """WITH head AS (
               SELECT id, seq FROM messages WHERE conversation_id = $1 AND seq > $3
               ORDER BY seq LIMIT $4),
           due AS (
               SELECT m.id FROM messages m JOIN head h ON h.id = m.id
               WHERE m.sent_at < $2 FOR UPDATE OF m SKIP LOCKED),
           gone AS (
               DELETE FROM messages m USING due WHERE m.id = due.id RETURNING m.id, m.file_id)
           SELECT (SELECT count(*) FROM head) AS head, (SELECT max(seq) FROM head) AS last_seq,
                  gone.id, gone.file_id
           FROM (SELECT 1) one LEFT JOIN gone ON true""",
        conversation_id,
        cutoff,
        after_seq,
        limit,
    )
    ids = [r["id"] for r in rows if r["id"] is not None]
    files = await drop_dependents(conn, ids, {r["file_id"] for r in rows if r["file_id"]})
    last_seq = rows[0]["last_seq"]
    return Purge(len(ids), files, rows[0]["head"], after_seq if last_seq is None else last_seq)


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

    async def erase_older(
        self, conversation_id: uuid.UUID, cutoff: datetime, after_seq: int, limit: int
    ) -> Purge:
        """Of the conversation's next `limit` messages after `after_seq` (in seq order),
        erase those sent before `cutoff`; rows another process holds are skipped, not
        waited for. Go on from `last_seq` while a batch erased its whole `head`: past the
        first message still within the period, the later ones are too."""
        return await self._db.transaction(_erase_older, conversation_id, cutoff, after_seq, limit)

    async def erase_expired(self, now: datetime, limit: int) -> Erasure:
        """Erase up to `limit` messages whose tag's clock ran out by `now`, oldest first.
        Rows another process is erasing are skipped, not waited for."""
        return await self._db.transaction(_erase_expired, now, limit)
