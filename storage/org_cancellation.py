"""Deleting an organization: its owner ends it, after taking its data out.

`cancel_org(conn, ...)`, in the caller's transaction (server/handlers/org_cancellation.py
commits it, then disconnects every device and forgets the keys):

- refused unless the organization's data was exported lately (`exported_since`: the
  policies promise "data migration before an organization cancels"), or the owner said in
  so many words that they do not want it;
- every member's account cancelled at once, exactly as one person's (storage/cancellation.py:
  devices and tokens revoked, data keys destroyed, "deleted user"), the last owner included;
- the organization marked `cancelled_at`, an `org_deletion` request opened (in progress
  until the purge), an audit `deletion` entry (`what: org`, how many accounts).

The purge (`purge_batch`, the sweeper's `cancelled_orgs` rule) starts once every account of
the organization is gone (the `cancelled_accounts` rule purges them one by one): then the
organization's own rows, in bounded batches of `limit` rows (conversations and what hangs
on them, sites, attendance, policy versions, purposes switched off, notices, requests,
departments, leaves first), and finally the organization row. Files whose rows it deletes
come back to be deleted from disk after the commit. Nothing here is logged but counts.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from storage.audit import SYSTEM, AuditActor, AuditEvent, append
from storage.cancellation import Cancelled, cancel
from storage.database import Database
from storage.errors import NotFoundError, StorageError
from storage.exports import org_export_ready_since
from storage.keyring import Keyring
from storage.requests import open_request, set_status


class OrgCancellationError(StorageError):
    """`reason`: "cancelled" (done already) or "export_first" (no recent export)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class OrgCancelled:
    org_id: uuid.UUID
    accounts: list[Cancelled]  # cancelled now: disconnect their devices, forget their keys
    request_id: uuid.UUID


async def cancel_org(
    conn: Any,
    keyring: Keyring,
    org_id: uuid.UUID,
    by: AuditActor,
    now: datetime,
    purge_delay: timedelta,
    exported_since: datetime | None,
) -> OrgCancelled:
    """Cancel the organization and every account in it (see the module doc).
    `exported_since`: an export of the organization's data must have been ready at or after
    it (None: the owner declined the export). Raises NotFoundError, OrgCancellationError."""
    row = await conn.fetchrow("SELECT cancelled_at FROM orgs WHERE id = $1 FOR UPDATE", org_id)
    if row is None:
        raise NotFoundError("no such organization")
    if row["cancelled_at"] is not None:
        raise OrgCancellationError("this organization is being deleted already", "cancelled")
    if exported_since is not None and not await org_export_ready_since(
        conn, org_id, exported_since
    ):
        raise OrgCancellationError(
            "export the organization's data first (POST /v1/orgs/{org}/exports, then download "
            'it), or say you do not want it: {"export": "declined"}',
            "export_first",
        )
    ids = [
        r["id"]
        for r in await conn.fetch(
            """SELECT id FROM accounts WHERE org_id = $1 AND status <> 'cancelled'
               ORDER BY id FOR UPDATE""",
            org_id,
        )
    ]
    accounts = [
        await cancel(conn, keyring, org_id, a, by, now, purge_delay, keep_an_owner=False)
        for a in ids
    ]
    await conn.execute("UPDATE orgs SET cancelled_at = $2 WHERE id = $1", org_id, now)
    request = await open_request(conn, org_id, None, "org_deletion", now)
    await set_status(conn, request.id, "in_progress", now)
    event = AuditEvent("deletion", by, None, org_id, {"what": "org", "count": len(accounts)})
    await append(conn, [event], now)
    return OrgCancelled(org_id, accounts, request.id)


# The organization's rows, in an order the foreign keys allow; :org the organization,
# :limit how many rows at most. Every account of the organization is gone by now.
_IN_ORG_CONVERSATIONS = "conversation_id IN (SELECT id FROM conversations WHERE org_id = :org)"
STEPS: tuple[tuple[str, str], ...] = (
    (
        "messages",
        f"""DELETE FROM messages WHERE id IN (
               SELECT id FROM messages WHERE {_IN_ORG_CONVERSATIONS}
               LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    (
        "live_sessions",
        f"""DELETE FROM live_sessions WHERE id IN (
               SELECT id FROM live_sessions WHERE {_IN_ORG_CONVERSATIONS} LIMIT :limit)""",
    ),
    (
        "conversation_retention",
        f"""DELETE FROM conversation_retention WHERE conversation_id IN (
               SELECT conversation_id FROM conversation_retention
               WHERE {_IN_ORG_CONVERSATIONS} LIMIT :limit)""",
    ),
    (
        "conversations",  # their tombstones go with them (ON DELETE CASCADE)
        """DELETE FROM conversations WHERE id IN (
               SELECT id FROM conversations WHERE org_id = :org LIMIT :limit)""",
    ),
    (
        "attendance_records",
        """DELETE FROM attendance_records WHERE id IN (
               SELECT id FROM attendance_records WHERE org_id = :org LIMIT :limit)""",
    ),
    (
        "attendance_sites",
        """DELETE FROM attendance_sites WHERE id IN (
               SELECT id FROM attendance_sites WHERE org_id = :org LIMIT :limit)""",
    ),
    (
        "policy_versions",
        """DELETE FROM policy_versions WHERE id IN (
               SELECT id FROM policy_versions WHERE org_id = :org LIMIT :limit)""",
    ),
    ("org_purposes_off", "DELETE FROM org_purposes_off WHERE org_id = :org"),
    (
        "notices",  # their recipients and push jobs go with them (ON DELETE CASCADE)
        """DELETE FROM notices WHERE id IN (
               SELECT id FROM notices WHERE org_id = :org LIMIT :limit)""",
    ),
    (
        "rights_requests",
        """DELETE FROM rights_requests WHERE id IN (
               SELECT id FROM rights_requests WHERE org_id = :org LIMIT :limit)""",
    ),
    (
        "departments",  # leaves first: a department's parent is one of them
        """DELETE FROM departments d WHERE d.id IN (
               SELECT id FROM departments p WHERE p.org_id = :org AND NOT EXISTS (
                   SELECT 1 FROM departments c WHERE c.org_id = p.org_id AND c.parent_id = p.id)
               LIMIT :limit)""",
    ),
)


@dataclass
class OrgPurgeBatch:
    rows: int = 0
    files: list[uuid.UUID] = field(default_factory=list)  # delete their blobs after the commit
    finished: bool = False  # the organization is gone


def _bind(statement: str, org_id: uuid.UUID, limit: int) -> list[Any]:
    args: list[Any] = [statement.replace(":org", "$1::uuid")]
    if ":limit" in statement:
        args[0] = args[0].replace(":limit", "$2::int")
        return [*args, org_id, limit]
    return [*args, org_id]


async def _due(conn: Any) -> uuid.UUID | None:
    """A cancelled organization none of whose accounts is left, not held by another
    process."""
    value = await conn.fetchval(
        """SELECT id FROM orgs o WHERE cancelled_at IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.org_id = o.id)
           ORDER BY cancelled_at LIMIT 1 FOR UPDATE SKIP LOCKED"""
    )
    return value  # type: ignore[no-any-return]


async def _purge_batch(conn: Any, limit: int, now: datetime) -> OrgPurgeBatch | None:
    org_id = await _due(conn)
    if org_id is None:
        return None
    done = OrgPurgeBatch()
    rows = await conn.fetch(
        """DELETE FROM files WHERE id IN (
               SELECT id FROM files WHERE org_id = $1 LIMIT $2 FOR UPDATE SKIP LOCKED)
           RETURNING id""",
        org_id,
        limit,
    )
    done.files = [r["id"] for r in rows]
    budget = limit - len(rows)
    for _name, statement in STEPS:
        if budget <= 0:
            return done
        status: str = await conn.execute(*_bind(statement, org_id, budget))
        touched = int(status.rsplit(" ", 1)[1])
        budget -= touched
        done.rows += touched
    if done.rows or done.files:
        return done
    event = AuditEvent("deletion", SYSTEM, None, org_id, {"what": "org_purged", "count": 0})
    await append(conn, [event], now)
    await conn.execute("DELETE FROM orgs WHERE id = $1", org_id)
    done.finished = True
    return done


class OrgCancellationStore:
    def __init__(self, db: Database, keyring: Keyring) -> None:
        self._db = db
        self._keyring = keyring

    async def cancel(
        self,
        org_id: uuid.UUID,
        by: AuditActor,
        now: datetime,
        purge_delay: timedelta,
        exported_since: datetime | None,
    ) -> OrgCancelled:
        """`cancel_org` in a transaction of its own; the keyring cache forgets every key
        it destroyed (committed or not)."""
        accounts = await self._db.read(_account_ids, org_id)
        try:
            return await self._db.transaction(
                cancel_org, self._keyring, org_id, by, now, purge_delay, exported_since
            )
        finally:
            for account_id in accounts:
                self._keyring.forget(account_id)

    async def purge_batch(self, limit: int, now: datetime) -> OrgPurgeBatch | None:
        """One batch of a cancelled organization's purge (None: none is due)."""
        return await self._db.transaction(_purge_batch, limit, now)


async def _account_ids(conn: Any, org_id: uuid.UUID) -> list[uuid.UUID]:
    return [r["id"] for r in await conn.fetch("SELECT id FROM accounts WHERE org_id = $1", org_id)]
