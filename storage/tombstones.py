"""Tombstones: the durable record that a stored message was erased, for the devices that
were offline when it happened (PROTOCOL.md 6.9).

A tombstone names the message, its conversation, the reason and the time; never its sender
or body. It takes a stream position, like a message, so catch-up ("pos > cursor") carries
it in order to every device that may have received the message: the members whose
membership window held the message's position, within its consent scope (plus its sender).

Writing one needs the stream lock, and every erasure that writes tombstones must take it
**first**, before the row locks the erasure itself takes (a message's receipts are written,
and a file is shared, under the stream lock: taking it last could deadlock with them).
`write_tombstones` is the one writer, for every erasure (a sender's deletion, a consent
withdrawal, the sweeper's clocks, an account's cancellation): call it in the erasure's
transaction with the messages erased (`ErasedMessage`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.database import Database
from storage.stream import allocate_positions, lock_stream

REASONS = ("deleted_by_sender", "consent_withdrawn", "retention", "account_cancelled")
IDS_PER_GROUP = 1000  # the protocol's longest `ids` array

# A member (`cm`) receives a tombstone (`t`) if they could have received its message: the
# same rule as storage.visible.VISIBLE, on the message's position and audience.
TOMBSTONE_VISIBLE = """t.message_pos > cm.joined_pos
    AND (cm.left_pos IS NULL OR t.message_pos <= cm.left_pos)
    AND (t.audience IS NULL OR cm.account_id = ANY(t.audience))"""

# The tombstone columns in the shape of storage.messages.COLUMNS, for catch-up's one
# statement: `id` is the erased message's, `sent_at` the time of the erasure, `reason` set.
CATCH_UP_COLUMNS = """t.message_id AS id, t.conversation_id, NULL::bigint AS seq, t.pos,
    NULL::uuid AS sender_id, NULL::uuid AS sender_device_id, NULL::text AS client_id,
    NULL::text AS kind, NULL::bytea AS body, NULL::bytea AS consent, NULL::uuid[] AS scope,
    t.erased_at AS sent_at, t.reason"""


@dataclass(frozen=True, slots=True)
class ErasedMessage:
    """A message an erasure deleted: what its tombstone and its recipients need."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    pos: int
    sender_id: uuid.UUID
    purpose: str | None
    scope: tuple[uuid.UUID, ...] | None
    file_id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class Tombstone:
    """One erased message, as catch-up delivers it."""

    pos: int
    message_id: uuid.UUID
    conversation_id: uuid.UUID
    reason: str
    erased_at: datetime


@dataclass(frozen=True, slots=True)
class ErasedGroup:
    """Tombstones written together for one conversation and one set of recipients, at
    consecutive positions ending at `pos`: one `erased` frame to fan out after the commit."""

    conversation_id: uuid.UUID
    ids: list[uuid.UUID]
    pos: int  # the last tombstone's position
    reason: str
    at: datetime
    accounts: frozenset[uuid.UUID]  # who receives it (the same rule as catch-up)


def tombstone(row: Any) -> Tombstone:
    """A Tombstone from a catch-up row (CATCH_UP_COLUMNS)."""
    return Tombstone(row["pos"], row["id"], row["conversation_id"], row["reason"], row["sent_at"])


def _audience(message: ErasedMessage) -> tuple[uuid.UUID, ...] | None:
    if message.scope is None:
        return None
    return tuple(sorted({*message.scope, message.sender_id}))


async def write_tombstones(
    conn: Any, messages: Sequence[ErasedMessage], reason: str, at: datetime
) -> list[ErasedGroup]:
    """Write a tombstone for each erased message, in the caller's transaction (which took
    the stream lock before erasing: see the module docstring; taken here again, harmless,
    in case it did not). Returns the groups to fan out, in position order, once the
    transaction has committed."""
    if reason not in REASONS:
        raise ValueError(f"unknown erasure reason {reason!r}")
    if not messages:
        return []
    await lock_stream(conn)
    # Ordered so that each conversation's tombstones with the same audience lie at
    # consecutive positions: each group is one frame, and frames go out in position order.
    ordered = sorted(
        messages,
        key=lambda m: (m.conversation_id, m.scope is not None, _audience(m) or (), m.pos),
    )
    positions = await allocate_positions(conn, len(ordered))
    await conn.copy_records_to_table(
        "tombstones",
        records=[
            (pos, m.id, m.conversation_id, m.pos, _list(_audience(m)), reason, at)
            for m, pos in zip(ordered, positions, strict=True)
        ],
        columns=[
            "pos",
            "message_id",
            "conversation_id",
            "message_pos",
            "audience",
            "reason",
            "erased_at",
        ],
    )
    members: dict[uuid.UUID, list[tuple[uuid.UUID, int, int | None]]] = {}
    for row in await conn.fetch(
        """SELECT conversation_id, account_id, joined_pos, left_pos FROM conversation_members
           WHERE conversation_id = ANY($1::uuid[])""",
        list({m.conversation_id for m in ordered}),
    ):
        members.setdefault(row["conversation_id"], []).append(
            (row["account_id"], row["joined_pos"], row["left_pos"])
        )
    groups: list[ErasedGroup] = []
    for message, pos in zip(ordered, positions, strict=True):
        audience = _audience(message)
        accounts = frozenset(
            account
            for account, joined, left in members.get(message.conversation_id, ())
            if joined < message.pos
            and (left is None or message.pos <= left)
            and (audience is None or account in audience)
        )
        last = groups[-1] if groups else None
        if (
            last is not None
            and last.conversation_id == message.conversation_id
            and last.accounts == accounts
            and len(last.ids) < IDS_PER_GROUP
        ):
            groups[-1] = ErasedGroup(
                last.conversation_id, [*last.ids, message.id], pos, reason, at, accounts
            )
        else:
            groups.append(
                ErasedGroup(message.conversation_id, [message.id], pos, reason, at, accounts)
            )
    return groups


def _list(audience: tuple[uuid.UUID, ...] | None) -> list[uuid.UUID] | None:
    return None if audience is None else list(audience)


async def forget_account(conn: Any, account_id: uuid.UUID) -> None:
    """Remove a purged account from every tombstone's audience (it has no device left to
    tell, and no row may name it)."""
    await conn.execute(
        """UPDATE tombstones SET audience = array_remove(audience, $1)
           WHERE audience @> ARRAY[$1::uuid]""",
        account_id,
    )


async def _purge_before(conn: Any, cutoff: datetime, limit: int) -> int:
    status = await conn.execute(
        """DELETE FROM tombstones WHERE pos IN (
               SELECT pos FROM tombstones WHERE erased_at < $1
               ORDER BY erased_at LIMIT $2 FOR UPDATE SKIP LOCKED)""",
        cutoff,
        limit,
    )
    return int(status.split()[-1])


class TombstoneStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def purge_before(self, cutoff: datetime, limit: int) -> int:
        """Delete up to `limit` tombstones written before `cutoff` (the oldest first);
        returns how many. Devices offline longer than that re-read their history."""
        return await self._db.transaction(_purge_before, cutoff, limit)
