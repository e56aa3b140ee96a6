"""Retention settings: an organization's message retention and request deadline, and a
conversation's own message retention; and the conversations the sweeper must look at.

A conversation's setting, while it has one, replaces its organization's. A setting of None
keeps messages until they are deleted some other way.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.database import Database
from storage.errors import NotFoundError

KEEP = object()  # "leave this setting as it is"


@dataclass(frozen=True, slots=True)
class OrgRetention:
    message_retention_days: int | None  # None: kept until deleted
    request_deadline_days: int


@dataclass(frozen=True, slots=True)
class ConversationRetention:
    org_id: uuid.UUID
    org_days: int | None  # the organization's setting
    own: bool  # the conversation has a setting of its own
    own_days: int | None  # ... and it is this (None: kept until deleted)
    set_by: uuid.UUID | None
    set_at: datetime | None

    @property
    def days(self) -> int | None:
        """What applies: the conversation's own setting, else its organization's."""
        return self.own_days if self.own else self.org_days


@dataclass(frozen=True, slots=True)
class DueConversation:
    """A conversation with a retention period whose oldest message may be past it."""

    id: uuid.UUID
    days: int
    oldest: datetime


async def _org(conn: Any, org_id: uuid.UUID) -> OrgRetention:
    row = await conn.fetchrow(
        "SELECT message_retention_days, request_deadline_days FROM orgs WHERE id = $1", org_id
    )
    if row is None:
        raise NotFoundError("no such organization")
    return OrgRetention(row["message_retention_days"], row["request_deadline_days"])


async def _set_org(
    conn: Any, org_id: uuid.UUID, message_days: Any, deadline_days: Any
) -> OrgRetention:
    row = await conn.fetchrow(
        """UPDATE orgs SET
               message_retention_days = CASE WHEN $2 THEN message_retention_days ELSE $3 END,
               request_deadline_days = coalesce($4, request_deadline_days)
           WHERE id = $1 RETURNING message_retention_days, request_deadline_days""",
        org_id,
        message_days is KEEP,
        None if message_days is KEEP else message_days,
        None if deadline_days is KEEP else deadline_days,
    )
    if row is None:
        raise NotFoundError("no such organization")
    return OrgRetention(row["message_retention_days"], row["request_deadline_days"])


async def _conversation(conn: Any, conversation_id: uuid.UUID) -> ConversationRetention:
    row = await conn.fetchrow(
        """SELECT c.org_id, o.message_retention_days AS org_days,
                  r.conversation_id IS NOT NULL AS own, r.message_retention_days AS own_days,
                  r.set_by, r.set_at
           FROM conversations c JOIN orgs o ON o.id = c.org_id
           LEFT JOIN conversation_retention r ON r.conversation_id = c.id
           WHERE c.id = $1""",
        conversation_id,
    )
    if row is None:
        raise NotFoundError("no such conversation")
    return ConversationRetention(
        row["org_id"], row["org_days"], row["own"], row["own_days"], row["set_by"], row["set_at"]
    )


async def _set_conversation(
    conn: Any, conversation_id: uuid.UUID, days: int | None, by: uuid.UUID, at: datetime
) -> ConversationRetention:
    await conn.execute(
        """INSERT INTO conversation_retention
               (conversation_id, message_retention_days, set_by, set_at)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (conversation_id) DO UPDATE SET
               message_retention_days = EXCLUDED.message_retention_days,
               set_by = EXCLUDED.set_by, set_at = EXCLUDED.set_at""",
        conversation_id,
        days,
        by,
        at,
    )
    return await _conversation(conn, conversation_id)


async def _clear_conversation(conn: Any, conversation_id: uuid.UUID) -> ConversationRetention:
    await conn.execute(
        "DELETE FROM conversation_retention WHERE conversation_id = $1", conversation_id
    )
    return await _conversation(conn, conversation_id)


async def _due(conn: Any, after: uuid.UUID | None, limit: int) -> tuple[list[Any], int]:
    rows = await conn.fetch(
        """WITH page AS (
               SELECT c.id, CASE WHEN r.conversation_id IS NULL THEN o.message_retention_days
                                 ELSE r.message_retention_days END AS days
               FROM conversations c JOIN orgs o ON o.id = c.org_id
               LEFT JOIN conversation_retention r ON r.conversation_id = c.id
               WHERE ($1::uuid IS NULL OR c.id > $1)
                 AND (o.message_retention_days IS NOT NULL
                      OR r.message_retention_days IS NOT NULL)
               ORDER BY c.id LIMIT $2)
           SELECT page.id, page.days,
                  (SELECT m.sent_at FROM messages m WHERE m.conversation_id = page.id
                   ORDER BY m.seq LIMIT 1) AS oldest
           FROM page ORDER BY page.id""",
        after,
        limit,
    )
    return rows, len(rows)


class RetentionStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def org(self, org_id: uuid.UUID) -> OrgRetention:
        return await self._db.read(_org, org_id)

    async def set_org(
        self, org_id: uuid.UUID, *, message_days: Any = KEEP, deadline_days: Any = KEEP
    ) -> OrgRetention:
        """Change what is given (`KEEP` leaves a setting as it is; `message_days=None`
        keeps messages until deleted)."""
        return await self._db.read(_set_org, org_id, message_days, deadline_days)

    async def conversation(self, conversation_id: uuid.UUID) -> ConversationRetention:
        return await self._db.read(_conversation, conversation_id)

    async def set_conversation(
        self, conversation_id: uuid.UUID, days: int | None, by: uuid.UUID, at: datetime
    ) -> ConversationRetention:
        """Give the conversation a setting of its own (None: kept until deleted)."""
        return await self._db.transaction(_set_conversation, conversation_id, days, by, at)

    async def clear_conversation(self, conversation_id: uuid.UUID) -> ConversationRetention:
        """Back to the organization's setting."""
        return await self._db.transaction(_clear_conversation, conversation_id)

    async def due(
        self, after: uuid.UUID | None, limit: int
    ) -> tuple[list[DueConversation], uuid.UUID | None]:
        """One page (`limit`, by id after `after`) of the conversations that have a
        retention period, and of those the ones whose oldest message is older than that
        period might allow (the caller compares with its clock); and where the next page
        starts (None: this was the last)."""
        rows, scanned = await self._db.read(_due, after, limit)
        due = [
            DueConversation(r["id"], r["days"], r["oldest"])
            for r in rows
            if r["days"] is not None and r["oldest"] is not None
        ]
        return due, (rows[-1]["id"] if scanned == limit else None)
