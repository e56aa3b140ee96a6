"""Notices from an organization's admins to its members: the service is ending, or a
security incident happened. Stored, so that members who were away read them later, with a
push job for every registered device of every recipient in the same transaction
(storage/push_notices.py); the live delivery is the handler's (server/handlers/notices.py)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.database import Database
from storage.errors import NotFoundError
from storage.push_notices import enqueue_for_notice

KINDS = ("service_ending", "security_incident")
COLUMNS = "n.id, n.org_id, n.kind, n.title, n.body, n.sent_at, n.sent_by, n.ends_at, n.everyone"


@dataclass(frozen=True, slots=True)
class Notice:
    id: uuid.UUID
    org_id: uuid.UUID
    kind: str
    title: str
    body: str
    sent_at: datetime
    sent_by: uuid.UUID | None
    ends_at: datetime | None  # service_ending: the last day of service
    everyone: bool  # every member of the organization; else the listed accounts


@dataclass(frozen=True, slots=True)
class NewNotice:
    kind: str
    title: str
    body: str
    ends_at: datetime | None
    recipients: tuple[uuid.UUID, ...] | None  # None: every member


def _notice(row: Any) -> Notice:
    return Notice(**{k: row[k] for k in Notice.__slots__})


async def _send(
    conn: Any, org_id: uuid.UUID, new: NewNotice, by: uuid.UUID, at: datetime
) -> tuple[Notice, list[uuid.UUID], int]:
    row = await conn.fetchrow(
        """INSERT INTO notices AS n (id, org_id, kind, title, body, sent_at, sent_by, ends_at,
               everyone) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           RETURNING """
        + COLUMNS,
        uuid.uuid4(),
        org_id,
        new.kind,
        new.title,
        new.body,
        at,
        by,
        new.ends_at,
        new.recipients is None,
    )
    if new.recipients is None:
        return _notice(row), [], await enqueue_for_notice(conn, row["id"], org_id, None)
    wanted = sorted(set(new.recipients))
    listed = await conn.fetch(
        """INSERT INTO notice_recipients (notice_id, account_id)
           SELECT $1, a.id FROM accounts a WHERE a.org_id = $2 AND a.id = ANY($3::uuid[])
           RETURNING account_id""",
        row["id"],
        org_id,
        wanted,
    )
    if len(listed) != len(wanted):
        raise NotFoundError("an account listed is not a member of this organization")
    accounts = [r["account_id"] for r in listed]
    return _notice(row), accounts, await enqueue_for_notice(conn, row["id"], org_id, accounts)


async def _mine(
    conn: Any, org_id: uuid.UUID, account_id: uuid.UUID, before: uuid.UUID | None, limit: int
) -> list[Any]:
    rows: list[Any] = await conn.fetch(
        f"""SELECT {COLUMNS} FROM notices n
            WHERE n.org_id = $1 AND (n.everyone OR EXISTS (
                SELECT 1 FROM notice_recipients r WHERE r.notice_id = n.id AND r.account_id = $2))
              AND ($3::uuid IS NULL OR (n.sent_at, n.id) < (
                  SELECT sent_at, id FROM notices WHERE id = $3 AND org_id = $1))
            ORDER BY n.sent_at DESC, n.id DESC LIMIT $4""",
        org_id,
        account_id,
        before,
        limit,
    )
    return rows


async def _for_org(conn: Any, org_id: uuid.UUID, before: uuid.UUID | None, limit: int) -> Any:
    return await conn.fetch(
        f"""SELECT {COLUMNS},
                   CASE WHEN n.everyone THEN NULL ELSE (
                       SELECT array_agg(r.account_id ORDER BY r.account_id)
                       FROM notice_recipients r WHERE r.notice_id = n.id) END AS recipients
            FROM notices n
            WHERE n.org_id = $1 AND ($2::uuid IS NULL OR (n.sent_at, n.id) < (
                SELECT sent_at, id FROM notices WHERE id = $2 AND org_id = $1))
            ORDER BY n.sent_at DESC, n.id DESC LIMIT $3""",
        org_id,
        before,
        limit,
    )


async def _delete_before(conn: Any, cutoff: datetime, limit: int) -> int:
    deleted: int = await conn.fetchval(
        """WITH gone AS (
               DELETE FROM notices WHERE id IN (
                   SELECT id FROM notices WHERE greatest(sent_at, ends_at) < $1
                   ORDER BY greatest(sent_at, ends_at) LIMIT $2 FOR UPDATE SKIP LOCKED)
               RETURNING 1)
           SELECT count(*) FROM gone""",
        cutoff,
        limit,
    )
    return deleted


class NoticeStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def send(
        self, org_id: uuid.UUID, new: NewNotice, by: uuid.UUID, at: datetime
    ) -> tuple[Notice, list[uuid.UUID], int]:
        """Store a notice, its recipients and a push job for each of their registered
        devices; returns it, the listed accounts (empty for everyone) and how many pushes
        were queued. NotFoundError (nothing stored) if a listed account is not a member."""
        return await self._db.transaction(_send, org_id, new, by, at)

    async def mine(
        self, org_id: uuid.UUID, account_id: uuid.UUID, before: uuid.UUID | None, limit: int
    ) -> list[Notice]:
        """The notices meant for the account, newest first."""
        rows = await self._db.read(_mine, org_id, account_id, before, limit)
        return [_notice(r) for r in rows]

    async def for_org(
        self, org_id: uuid.UUID, before: uuid.UUID | None, limit: int
    ) -> list[tuple[Notice, list[uuid.UUID] | None]]:
        """Every notice the organization sent, newest first, with its listed recipients
        (None: everyone)."""
        rows = await self._db.read(_for_org, org_id, before, limit)
        return [
            (_notice(r), None if r["recipients"] is None else list(r["recipients"])) for r in rows
        ]

    async def delete_before(self, cutoff: datetime, limit: int) -> int:
        """Delete up to `limit` notices sent (or, for a service ending, whose end date came)
        before `cutoff`; returns how many went."""
        return await self._db.read(_delete_before, cutoff, limit)
