"""Reading the stream by position range: what other processes committed, with its audience:
stored messages and the tombstones of erased ones (storage/tombstones.py), which take stream
positions too.

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
from storage.tombstones import Tombstone


@dataclass(frozen=True, slots=True)
class Committed:
    """A committed message and the accounts that may see it (the members at its position,
    within its consent scope, and the sender)."""

    message: StoredMessage
    audience: frozenset[uuid.UUID]


@dataclass(frozen=True, slots=True)
class CommittedErasure:
    """A committed tombstone and the accounts that receive it (storage.tombstones's rule:
    who could have received the erased message)."""

    tombstone: Tombstone
    audience: frozenset[uuid.UUID]


async def _committed_pos(conn: Any) -> int:
    """The highest committed position (0 before the first message). Positions allocated by
    transactions still running are not counted: the sequence's value would be."""
    return int(
        await conn.fetchval(
            """SELECT greatest((SELECT coalesce(max(pos), 0) FROM messages),
                               (SELECT coalesce(max(pos), 0) FROM tombstones))"""
        )
    )


async def _tombstones(conn: Any, after: int, upto: int, limit: int) -> list[CommittedErasure]:
    rows = await conn.fetch(
        """SELECT pos, message_id, conversation_id, message_pos, audience, reason, erased_at
           FROM tombstones WHERE pos > $1 AND pos <= $2 ORDER BY pos LIMIT $3""",
        after,
        upto,
        limit,
    )
    if not rows:
        return []
    members: dict[uuid.UUID, list[tuple[uuid.UUID, int, int | None]]] = {}
    for row in await conn.fetch(
        """SELECT conversation_id, account_id, joined_pos, left_pos FROM conversation_members
           WHERE conversation_id = ANY($1::uuid[])""",
        list({r["conversation_id"] for r in rows}),
    ):
        members.setdefault(row["conversation_id"], []).append(
            (row["account_id"], row["joined_pos"], row["left_pos"])
        )
    erased = []
    for r in rows:
        at, audience = r["message_pos"], r["audience"]
        accounts = frozenset(
            account
            for account, joined, left in members.get(r["conversation_id"], ())
            if joined < at
            and (left is None or at <= left)
            and (audience is None or account in audience)
        )
        stone = Tombstone(
            r["pos"], r["message_id"], r["conversation_id"], r["reason"], r["erased_at"]
        )
        erased.append(CommittedErasure(stone, accounts))
    return erased


async def _stream(
    conn: Any, keyring: Keyring, after: int, upto: int, limit: int
) -> tuple[list[Committed | CommittedErasure], bool]:
    """Messages and tombstones in (after, upto], in pos order, and whether more may follow:
    each read takes at most `limit`, and where one stopped short of `upto` the other is cut
    there too, so nothing is skipped."""
    messages, more = await _range(conn, keyring, after, upto, limit)
    edge = messages[-1].message.pos if more else upto
    erasures = await _tombstones(conn, after, edge, limit)
    if len(erasures) == limit:
        edge = erasures[-1].tombstone.pos
        messages = [m for m in messages if m.message.pos <= edge]
        more = True
    items: list[Committed | CommittedErasure] = [*messages, *erasures]
    items.sort(key=lambda i: i.message.pos if isinstance(i, Committed) else i.tombstone.pos)
    return items, more


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

    async def between(
        self, after: int, upto: int, limit: int
    ) -> tuple[list[Committed | CommittedErasure], bool]:
        """The committed messages and tombstones with `after` < pos <= `upto`, in pos
        order, at most `limit` of each, and whether more may follow. Raises
        DatabaseUnavailableError.

        The same rules as catch-up (storage.visible, storage.tombstones) decide who sees
        each, so a device gets live what it would get by syncing.

        Several statements, no transaction (`Database.read`): everything at or below `upto`
        is settled (positions commit in order; membership windows and tombstones at those
        positions are written under the stream lock before it moves on), so statements
        reading with newer snapshots read the same rows."""
        return await self._db.read(_stream, self._keyring, after, upto, limit)
