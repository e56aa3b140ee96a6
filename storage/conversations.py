"""Conversations (1:1 and groups inside one organization) and their membership.

Membership is kept as a window of stream positions: a member sees messages with
`joined_pos < pos` and, once they left, `pos <= left_pos`. Changes take the stream lock so
the window edges line up with message positions exactly.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.database import Database
from storage.errors import NotFoundError
from storage.stream import current_pos, lock_stream


class MembershipError(NotFoundError):
    """Someone named is not an active member of the organization."""


@dataclass(frozen=True, slots=True)
class Conversation:
    id: uuid.UUID
    org_id: uuid.UUID
    kind: str
    title: str | None
    created_by: uuid.UUID | None  # None: the creator's account was purged since
    created_at: datetime
    last_seq: int
    member_ids: tuple[uuid.UUID, ...]


async def _load(conn: Any, conversation_id: uuid.UUID) -> Conversation:
    row = await conn.fetchrow(
        """SELECT c.id, c.org_id, c.kind, c.title, c.created_by, c.created_at, c.last_seq,
                  coalesce(array_agg(m.account_id ORDER BY m.joined_at, m.account_id)
                           FILTER (WHERE m.account_id IS NOT NULL), '{}') AS member_ids
           FROM conversations c
           LEFT JOIN conversation_members m
             ON m.conversation_id = c.id AND m.left_pos IS NULL
           WHERE c.id = $1 GROUP BY c.id""",
        conversation_id,
    )
    if row is None:
        raise NotFoundError("no such conversation")
    return Conversation(
        row["id"],
        row["org_id"],
        row["kind"],
        row["title"],
        row["created_by"],
        row["created_at"],
        row["last_seq"],
        tuple(row["member_ids"]),
    )


async def _check_org_members(conn: Any, org_id: uuid.UUID, ids: list[uuid.UUID]) -> None:
    found = await conn.fetchval(
        """SELECT count(*) FROM accounts
           WHERE org_id = $1 AND status = 'active' AND id = ANY($2::uuid[])""",
        org_id,
        ids,
    )
    if found != len(set(ids)):
        raise MembershipError("every member must be an active member of your organization")


async def _add(conn: Any, conversation_id: uuid.UUID, ids: list[uuid.UUID], pos: int) -> None:
    await conn.executemany(
        """INSERT INTO conversation_members (conversation_id, account_id, joined_pos)
           VALUES ($1, $2, $3)
           ON CONFLICT (conversation_id, account_id) DO UPDATE
             SET joined_pos = EXCLUDED.joined_pos, left_pos = NULL, joined_at = now()
             WHERE conversation_members.left_pos IS NOT NULL""",
        [(conversation_id, account_id, pos) for account_id in ids],
    )
    # What was said before joining is not unread for the newcomer (push badges): the mark
    # starts at the conversation's current end, so a badge never scans older history.
    await conn.execute(
        """INSERT INTO read_marks (account_id, conversation_id, read_seq)
           SELECT a.id, c.id, c.last_seq FROM conversations c, unnest($2::uuid[]) AS a(id)
           WHERE c.id = $1
           ON CONFLICT (account_id, conversation_id) DO UPDATE
             SET read_seq = greatest(read_marks.read_seq, EXCLUDED.read_seq)""",
        conversation_id,
        ids,
    )


async def _create_group(
    conn: Any, org_id: uuid.UUID, creator: uuid.UUID, title: str, members: list[uuid.UUID]
) -> Conversation:
    everyone = list(dict.fromkeys([creator, *members]))
    await _check_org_members(conn, org_id, everyone)
    await lock_stream(conn)
    conversation_id = uuid.uuid4()
    await conn.execute(
        """INSERT INTO conversations (id, org_id, kind, title, created_by)
           VALUES ($1, $2, 'group', $3, $4)""",
        conversation_id,
        org_id,
        title,
        creator,
    )
    await _add(conn, conversation_id, everyone, await current_pos(conn))
    await conn.execute(
        """UPDATE conversation_members SET role = 'owner'
           WHERE conversation_id = $1 AND account_id = $2""",
        conversation_id,
        creator,
    )
    return await _load(conn, conversation_id)


async def _open_direct(
    conn: Any, org_id: uuid.UUID, creator: uuid.UUID, other: uuid.UUID
) -> tuple[Conversation, bool]:
    await _check_org_members(conn, org_id, [creator, other])
    key = ":".join(sorted([str(creator), str(other)]))
    await lock_stream(conn)  # also serialises two first opens of the same pair
    existing = await conn.fetchval("SELECT id FROM conversations WHERE direct_key = $1", key)
    if existing is not None:
        return await _load(conn, existing), False
    conversation_id = uuid.uuid4()
    await conn.execute(
        """INSERT INTO conversations (id, org_id, kind, direct_key, created_by)
           VALUES ($1, $2, 'direct', $3, $4)""",
        conversation_id,
        org_id,
        key,
        creator,
    )
    await _add(conn, conversation_id, [creator, other], await current_pos(conn))
    return await _load(conn, conversation_id), True


async def _add_members(
    conn: Any, conversation_id: uuid.UUID, org_id: uuid.UUID, ids: list[uuid.UUID]
) -> Conversation:
    await _check_org_members(conn, org_id, ids)
    await lock_stream(conn)
    await _add(conn, conversation_id, ids, await current_pos(conn))
    return await _load(conn, conversation_id)


async def _remove_member(
    conn: Any, conversation_id: uuid.UUID, account_id: uuid.UUID
) -> Conversation:
    await lock_stream(conn)
    done = await conn.execute(
        """UPDATE conversation_members SET left_pos = $3
           WHERE conversation_id = $1 AND account_id = $2 AND left_pos IS NULL""",
        conversation_id,
        account_id,
        await current_pos(conn),
    )
    if done == "UPDATE 0":
        raise NotFoundError("not a member of this conversation")
    return await _load(conn, conversation_id)


async def _for_account(conn: Any, account_id: uuid.UUID) -> list[Conversation]:
    ids = await conn.fetch(
        """SELECT conversation_id FROM conversation_members
           WHERE account_id = $1 AND left_pos IS NULL ORDER BY joined_at DESC""",
        account_id,
    )
    return [await _load(conn, r["conversation_id"]) for r in ids]


async def _member_devices(
    conn: Any, conversation_id: uuid.UUID
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    rows = await conn.fetch(
        """SELECT d.account_id, d.id FROM conversation_members m
           JOIN devices d ON d.account_id = m.account_id AND d.revoked_at IS NULL
           WHERE m.conversation_id = $1 AND m.left_pos IS NULL""",
        conversation_id,
    )
    return [(r["account_id"], r["id"]) for r in rows]


class ConversationStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_group(
        self, org_id: uuid.UUID, creator: uuid.UUID, title: str, members: list[uuid.UUID]
    ) -> Conversation:
        """A group with `creator` as owner. MembershipError for someone outside the org."""
        return await self._db.transaction(_create_group, org_id, creator, title, members)

    async def open_direct(
        self, org_id: uuid.UUID, creator: uuid.UUID, other: uuid.UUID
    ) -> tuple[Conversation, bool]:
        """The one direct conversation of the pair; True if it was created now."""
        return await self._db.transaction(_open_direct, org_id, creator, other)

    async def get(self, conversation_id: uuid.UUID) -> Conversation:
        return await self._db.transaction(_load, conversation_id)

    async def add_members(
        self, conversation_id: uuid.UUID, org_id: uuid.UUID, ids: list[uuid.UUID]
    ) -> Conversation:
        return await self._db.transaction(_add_members, conversation_id, org_id, ids)

    async def remove_member(
        self, conversation_id: uuid.UUID, account_id: uuid.UUID
    ) -> Conversation:
        return await self._db.transaction(_remove_member, conversation_id, account_id)

    async def for_account(self, account_id: uuid.UUID) -> list[Conversation]:
        """The conversations `account_id` is an active member of, newest membership first."""
        return await self._db.transaction(_for_account, account_id)

    async def member_devices(self, conversation_id: uuid.UUID) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """(account id, device id) of every live device of every active member."""
        return await self._db.transaction(_member_devices, conversation_id)
