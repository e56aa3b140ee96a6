"""Erasing stored messages: what a consent tag's clock, a withdrawal, a retention period or
the sender's own deletion says must go.

Rows go in the caller's transaction (the message, its receipts, the file row it shared if
no other message shares it), with a tombstone for each message (storage.tombstones) so that
devices offline now learn of it at their next catch-up; the caller deletes the returned
files' blobs after the commit (a blob without a row is unreachable; a row without its blob
would be a broken download) and fans the tombstones out (`Erasure.erased`). What was erased
is counted, never described: no contents reach a log.

Tombstones take stream positions, so every erasure takes the stream lock, first (see
storage.tombstones): a batch holds up commits of new messages while it runs, which is why
the sweeper's batches stay small (`sweep_batch`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.database import Database
from storage.stream import lock_stream
from storage.tombstones import ErasedGroup, ErasedMessage, write_tombstones

ERASED_COLUMNS = "id, conversation_id, pos, sender_id, purpose, scope, file_id"


@dataclass(frozen=True, slots=True)
class Erasure:
    messages: list[ErasedMessage]
    files: list[uuid.UUID]  # file rows deleted: delete their blobs after the commit
    erased: list[ErasedGroup]  # the tombstones written: fan them out after the commit


def erased(row: Any) -> ErasedMessage:
    scope = row["scope"]
    return ErasedMessage(
        row["id"],
        row["conversation_id"],
        row["pos"],
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


async def finish_erasure(conn: Any, rows: list[Any], reason: str, at: datetime) -> Erasure:
    """After `DELETE FROM messages ... RETURNING ERASED_COLUMNS` (the stream lock taken
    before it): the receipts of those messages, the file rows no remaining message shares,
    and a tombstone for each message, with `reason` (storage.tombstones.REASONS) at `at`."""
    messages = [erased(r) for r in rows]
    shared = {m.file_id for m in messages if m.file_id is not None}
    files = await drop_dependents(conn, [m.id for m in messages], shared)
    return Erasure(messages, files, await write_tombstones(conn, messages, reason, at))


@dataclass(frozen=True, slots=True)
class Purge:
    """What one batch of a retention period erased: how many messages, which files (delete
    their blobs after the commit), and where the next batch starts (`last_seq`)."""

    messages: int
    files: list[uuid.UUID]
    head: int  # rows the batch looked at: fewer erased than `head` means it stopped early
    last_seq: int  # the highest seq it looked at
    erased: list[ErasedGroup]  # the tombstones written: fan them out after the commit


async def _erase_older(
    conn: Any,
    conversation_id: uuid.UUID,
    cutoff: datetime,
    after_seq: int,
    limit: int,
    now: datetime,
) -> Purge:
    await lock_stream(conn)
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
               DELETE FROM messages m USING due WHERE m.id = due.id
               RETURNING m.id, m.conversation_id, m.pos, m.sender_id, m.purpose, m.scope,
                         m.file_id)
           SELECT (SELECT count(*) FROM head) AS head, (SELECT max(seq) FROM head) AS last_seq,
                  gone.*
           FROM (SELECT 1) one LEFT JOIN gone ON true""",
        conversation_id,
        cutoff,
        after_seq,
        limit,
    )
    erasure = await finish_erasure(conn, [r for r in rows if r["id"] is not None], "retention", now)
    last_seq = rows[0]["last_seq"]
    return Purge(
        len(erasure.messages),
        erasure.files,
        rows[0]["head"],
        after_seq if last_seq is None else last_seq,
        erasure.erased,
    )


async def _erase_expired(conn: Any, now: datetime, limit: int) -> Erasure:
    await lock_stream(conn)
    rows = await conn.fetch(
        f"""DELETE FROM messages WHERE id IN (
                SELECT id FROM messages WHERE erase_at <= $1
                ORDER BY erase_at LIMIT $2 FOR UPDATE SKIP LOCKED)
            RETURNING {ERASED_COLUMNS}""",
        now,
        limit,
    )
    return await finish_erasure(conn, rows, "retention", now)


class ErasureStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def erase_older(
        self,
        conversation_id: uuid.UUID,
        cutoff: datetime,
        after_seq: int,
        limit: int,
        now: datetime,
    ) -> Purge:
        """Of the conversation's next `limit` messages after `after_seq` (in seq order),
        erase those sent before `cutoff` (tombstones dated `now`); rows another process
        holds are skipped, not waited for. Go on from `last_seq` while a batch erased its
        whole `head`: past the first message still within the period, the later ones are."""
        return await self._db.transaction(
            _erase_older, conversation_id, cutoff, after_seq, limit, now
        )

    async def erase_expired(self, now: datetime, limit: int) -> Erasure:
        """Erase up to `limit` messages whose tag's clock ran out by `now`, oldest first.
        Rows another process is erasing are skipped, not waited for."""
        return await self._db.transaction(_erase_expired, now, limit)
