"""Reading the stream by position range: what other processes committed, with its audience.

A process that learns "the stream reached X" (the bus, or its own commit at X + 1) reads the
committed messages in (last, X] and fans them out to its own connections. The stream lock
makes this gap-free: when X is committed, every smaller position is committed or never will
be (storage/stream.py), so one read of the range sees all of it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from storage.database import Database
from storage.keyring import Keyring
from storage.messages import COLUMNS, StoredMessage, open_messages


@dataclass(frozen=True, slots=True)
class Committed:
    """A committed message and the accounts that may see it (the members at its position,
    within its consent scope, and the sender)."""

    message: StoredMessage
    audience: frozenset[uuid.UUID]


async def _committed_pos(conn: Any) -> int:
    """The highest committed position (0 before the first message). Positions allocated by
    transactions still running are not counted: the sequence's value would be."""
    return int(await conn.fetchval("SELECT coalesce(max(pos), 0) FROM messages"))


async def _range(
    conn: Any, keyring: Keyring, after: int, upto: int, limit: int
) -> tuple[list[Committed], bool]:
    rows = await conn.fetch(
        f"""SELECT {COLUMNS} FROM messages m
            WHERE m.pos > $1 AND m.pos <= $2 ORDER BY m.pos LIMIT $3""",
        after,
        upto,
        limit,
    )
    if not rows:
        return [], False
    windows: dict[uuid.UUID, list[tuple[uuid.UUID, int, int | None]]] = {}
    for row in await conn.fetch(
        """SELECT conversation_id, account_id, joined_pos, left_pos FROM conversation_members
           WHERE conversation_id = ANY($1::uuid[]) AND joined_pos < $3
             AND (left_pos IS NULL OR left_pos > $2)""",
        list({r["conversation_id"] for r in rows}),
        after,
        int(rows[-1]["pos"]),
    ):
        windows.setdefault(row["conversation_id"], []).append(
            (row["account_id"], row["joined_pos"], row["left_pos"])
        )
    committed = []
    for message in await open_messages(conn, keyring, rows):
        pos, scope = message.pos, message.scope
        audience = frozenset(
            account
            for account, joined, left in windows.get(message.conversation_id, ())
            if joined < pos
            and (left is None or pos <= left)
            and (scope is None or account in scope or account == message.sender_id)
        )
        committed.append(Committed(message, audience))
    return committed, len(rows) == limit


class StreamReader:
    """The stream as other processes wrote it: by position range, not by reader."""

    def __init__(self, db: Database, keyring: Keyring) -> None:
        self._db = db
        self._keyring = keyring

    async def committed_pos(self) -> int:
        """The highest committed position; everything at or below it is settled."""
        return await self._db.read(_committed_pos)

    async def between(self, after: int, upto: int, limit: int) -> tuple[list[Committed], bool]:
        """The committed messages with `after` < pos <= `upto`, in pos order, at most
        `limit`, and whether more may follow. Raises DatabaseUnavailableError.

        The same rule as catch-up (storage.visible) decides who sees each message, so a
        device gets live what it would get by syncing."""
        return await self._db.transaction(_range, self._keyring, after, upto, limit)
