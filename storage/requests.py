"""Data-rights requests as tracked items, each with its legal deadline.

A request is opened by the person (or, for the organization's own kinds, by an admin or the
feature doing the work), is due `request_deadline_days` after it was opened (its
organization's setting, 15 by default: what the privacy policies promise), and moves from
`open` to `in_progress` and ends `done` or `refused` (with a note saying why). A closed
request never changes again.

The API for the features that do the work (export, account cancellation, an organization's
export or deletion): call these inside your own transaction, so that the request and the
work commit together -

    request = await open_request(conn, org_id, account_id, "export", at)
    ...
    await set_status(conn, request.id, "in_progress", at)   # when the work starts
    await set_status(conn, request.id, "done", at, note="the archive is ready")
    await set_status(conn, request.id, "refused", at, note="why")  # a note is required

or the same through `RequestStore` (each call its own transaction). `open_request` takes
the deadline from the organization; `set_status` raises RequestError("closed") for a
closed request and NotFoundError for an unknown one. When an account is purged, call
`forget_person(conn, account_id)` first: its requests stay (that they were answered in
time is a record the organization keeps) but no longer name the person or hold their
words; the foreign keys would otherwise set the account to NULL and keep the words.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from storage.database import Database
from storage.errors import NotFoundError, StorageError

KINDS = (
    "access",
    "correction",
    "export",
    "deletion",
    "cancellation",
    "org_export",
    "org_deletion",
    "other",
)
ORG_KINDS = frozenset({"org_export", "org_deletion"})  # the organization's, not a person's
STATUSES = ("open", "in_progress", "done", "refused")
CLOSED = frozenset({"done", "refused"})

COLUMNS = """id, org_id, account_id, kind, details, opened_at, due_at, status, note,
    handled_by, updated_at, closed_at"""


class RequestError(StorageError):
    """A status change the rules refuse; `reason` "closed": the request is done or refused
    already and never changes again."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RightsRequest:
    id: uuid.UUID
    org_id: uuid.UUID
    account_id: uuid.UUID | None  # None: the person's account was purged since
    kind: str
    details: str | None
    opened_at: datetime
    due_at: datetime
    status: str
    note: str | None
    handled_by: uuid.UUID | None
    updated_at: datetime
    closed_at: datetime | None

    def overdue(self, now: datetime) -> bool:
        """Still not answered past its deadline."""
        return self.closed_at is None and now > self.due_at

    @property
    def answered_late(self) -> bool:
        return self.closed_at is not None and self.closed_at > self.due_at


def _request(row: Any) -> RightsRequest:
    return RightsRequest(**dict(row))


async def open_request(
    conn: Any,
    org_id: uuid.UUID,
    account_id: uuid.UUID | None,
    kind: str,
    at: datetime,
    details: str | None = None,
) -> RightsRequest:
    """Open a request (in the caller's transaction), due its organization's deadline after
    `at`. NotFoundError for an unknown organization."""
    if kind not in KINDS:
        raise ValueError(f"unknown request kind {kind!r}")
    days = await conn.fetchval("SELECT request_deadline_days FROM orgs WHERE id = $1", org_id)
    if days is None:
        raise NotFoundError("no such organization")
    row = await conn.fetchrow(
        f"""INSERT INTO rights_requests
                (id, org_id, account_id, kind, details, opened_at, due_at, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $6) RETURNING {COLUMNS}""",
        uuid.uuid4(),
        org_id,
        account_id,
        kind,
        details,
        at,
        at + timedelta(days=days),
    )
    return _request(row)


async def set_status(
    conn: Any,
    request_id: uuid.UUID,
    status: str,
    at: datetime,
    note: str | None = None,
    by: uuid.UUID | None = None,
    org_id: uuid.UUID | None = None,
) -> RightsRequest:
    """Move a request on (in the caller's transaction): to `in_progress`, or closed as
    `done` or `refused` (a refusal needs a `note`). A `note` given replaces the one held.
    With `org_id`, only a request of that organization is found. Raises NotFoundError,
    RequestError("closed"), ValueError (an unknown status, a refusal without a note)."""
    if status not in STATUSES or status == "open":
        raise ValueError(f"a request can be moved to in_progress, done or refused, not {status!r}")
    if status == "refused" and not note:
        raise ValueError("a refusal needs a note saying why")
    current = await conn.fetchrow(
        "SELECT org_id, status FROM rights_requests WHERE id = $1 FOR UPDATE", request_id
    )
    if current is None or (org_id is not None and current["org_id"] != org_id):
        raise NotFoundError("no such request")
    if current["status"] in CLOSED:
        raise RequestError(f"the request is {current['status']} already: it is closed", "closed")
    row = await conn.fetchrow(
        f"""UPDATE rights_requests SET status = $2::text, note = coalesce($3, note),
                handled_by = coalesce($4, handled_by), updated_at = $5::timestamptz,
                closed_at = CASE WHEN $2::text IN ('done', 'refused') THEN $5::timestamptz END
            WHERE id = $1 RETURNING {COLUMNS}""",
        request_id,
        status,
        note,
        by,
        at,
    )
    return _request(row)


async def forget_person(conn: Any, account_id: uuid.UUID) -> int:
    """Before an account is purged: its requests keep their kind, dates and status, lose
    the person and their words. Returns how many requests were touched."""
    touched: int = await conn.fetchval(
        """WITH done AS (
               UPDATE rights_requests SET account_id = NULL, details = NULL, note = NULL
               WHERE account_id = $1 RETURNING 1)
           SELECT count(*) FROM done""",
        account_id,
    )
    return touched


async def _mine(
    conn: Any, account_id: uuid.UUID, before: uuid.UUID | None, limit: int
) -> list[Any]:
    rows: list[Any] = await conn.fetch(
        f"""SELECT {COLUMNS} FROM rights_requests
            WHERE account_id = $1 AND ($2::uuid IS NULL OR (opened_at, id) < (
                SELECT opened_at, id FROM rights_requests WHERE id = $2 AND account_id = $1))
            ORDER BY opened_at DESC, id DESC LIMIT $3""",
        account_id,
        before,
        limit,
    )
    return rows


async def _for_org(
    conn: Any,
    org_id: uuid.UUID,
    status: str | None,
    overdue_at: datetime | None,
    before: uuid.UUID | None,
    limit: int,
) -> list[Any]:
    rows: list[Any] = await conn.fetch(
        f"""SELECT {COLUMNS} FROM rights_requests
            WHERE org_id = $1 AND ($2::text IS NULL OR status = $2)
              AND ($3::timestamptz IS NULL OR (closed_at IS NULL AND due_at < $3))
              AND ($4::uuid IS NULL OR (opened_at, id) < (
                  SELECT opened_at, id FROM rights_requests WHERE id = $4 AND org_id = $1))
            ORDER BY opened_at DESC, id DESC LIMIT $5""",
        org_id,
        status,
        overdue_at,
        before,
        limit,
    )
    return rows


async def _delete_closed_before(conn: Any, cutoff: datetime, limit: int) -> int:
    deleted: int = await conn.fetchval(
        """WITH gone AS (
               DELETE FROM rights_requests WHERE id IN (
                   SELECT id FROM rights_requests WHERE closed_at < $1
                   ORDER BY closed_at LIMIT $2 FOR UPDATE SKIP LOCKED)
               RETURNING 1)
           SELECT count(*) FROM gone""",
        cutoff,
        limit,
    )
    return deleted


class RequestStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def open(
        self,
        org_id: uuid.UUID,
        account_id: uuid.UUID | None,
        kind: str,
        at: datetime,
        details: str | None = None,
    ) -> RightsRequest:
        """`open_request` in a transaction of its own."""
        return await self._db.transaction(open_request, org_id, account_id, kind, at, details)

    async def set_status(
        self,
        request_id: uuid.UUID,
        status: str,
        at: datetime,
        note: str | None = None,
        by: uuid.UUID | None = None,
        org_id: uuid.UUID | None = None,
    ) -> RightsRequest:
        """`set_status` in a transaction of its own."""
        return await self._db.transaction(set_status, request_id, status, at, note, by, org_id)

    async def mine(
        self, account_id: uuid.UUID, before: uuid.UUID | None, limit: int
    ) -> list[RightsRequest]:
        """The account's requests, newest first, after the page ending at `before`."""
        return [_request(r) for r in await self._db.read(_mine, account_id, before, limit)]

    async def for_org(
        self,
        org_id: uuid.UUID,
        *,
        status: str | None = None,
        overdue_at: datetime | None = None,
        before: uuid.UUID | None = None,
        limit: int = 50,
    ) -> list[RightsRequest]:
        """The organization's requests, newest first: with `status`, only those; with
        `overdue_at`, only those still unanswered past their deadline at that time."""
        rows = await self._db.read(_for_org, org_id, status, overdue_at, before, limit)
        return [_request(r) for r in rows]

    async def delete_closed_before(self, cutoff: datetime, limit: int) -> int:
        """Delete up to `limit` requests closed before `cutoff` (safe with several
        processes); returns how many went."""
        return await self._db.read(_delete_closed_before, cutoff, limit)
