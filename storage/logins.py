"""Login records: every attempt, successful or not (kept 3 months by the retention sweeper).

Password checks are rate limited here, atomically: `reserve` counts the failures in the
window and, if under the limits, records the attempt as `pending` (which counts as a failure
until `settle` gives it its outcome), all while holding transaction-level advisory locks on
the login name and the client address. So however many attempts arrive at once, in however
many server processes sharing the database, no more than the limit are ever checked.
Refused attempts are recorded as `rate_limited` and never count: steady probing cannot keep
an account locked past the window.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.audit import ANONYMOUS, AuditEvent, append
from storage.database import Database

PENDING = "pending"
RATE_LIMITED = "rate_limited"
# Outcomes that are not failed guesses; every other outcome (pending included) counts.
NOT_COUNTED = ("success", RATE_LIMITED, "password_changed")

# Advisory lock namespaces (the first key of pg_advisory_xact_lock(int, int)).
_NAME_LOCK = 0x0B_4C_4E  # per lower(login name)
_IP_LOCK = 0x0B_4C_49  # per client address


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    at: datetime
    login_name: str
    ip: str
    user_agent: str
    outcome: str
    account_id: uuid.UUID | None = None
    device_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class AttemptLimits:
    """At most `per_name` failures for one login name and `per_ip` from one address since
    `since`."""

    since: datetime
    per_name: int
    per_ip: int


async def record_login(conn: Any, attempt: LoginAttempt) -> int:
    """Append one login record (on an open transaction); returns its id."""
    record_id: int = await conn.fetchval(
        """INSERT INTO login_records (at, login_name, account_id, device_id, ip, user_agent,
               outcome) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id""",
        attempt.at,
        attempt.login_name,
        attempt.account_id,
        attempt.device_id,
        attempt.ip,
        attempt.user_agent,
        attempt.outcome,
    )
    return record_id


async def settle_login(
    conn: Any,
    record_id: int,
    outcome: str,
    account_id: uuid.UUID | None = None,
    device_id: uuid.UUID | None = None,
) -> None:
    """Give a reserved (pending) record its outcome (on an open transaction)."""
    await conn.execute(
        """UPDATE login_records SET outcome = $2, account_id = coalesce($3, account_id),
               device_id = coalesce($4, device_id) WHERE id = $1""",
        record_id,
        outcome,
        account_id,
        device_id,
    )


async def _settle_failed(
    conn: Any,
    record_id: int,
    outcome: str,
    account_id: uuid.UUID | None,
    device_id: uuid.UUID | None,
) -> None:
    await settle_login(conn, record_id, outcome, account_id, device_id)
    if account_id is None:
        return  # no account's data: the login record alone keeps the attempt
    row = await conn.fetchrow(
        """SELECT r.at, a.org_id FROM login_records r, accounts a
           WHERE r.id = $1 AND a.id = $2""",
        record_id,
        account_id,
    )
    if row is None:
        return
    failed = AuditEvent(
        "login_failed",
        ANONYMOUS,
        account_id,
        row["org_id"],
        {"reason": outcome, "login_record_id": record_id},
    )
    await append(conn, [failed], row["at"])


async def _reserve(conn: Any, attempt: LoginAttempt, limits: AttemptLimits) -> int | None:
    # Name first, then address, always: two attempts never wait on each other crosswise.
    # The locks are separate statements before the count: under READ COMMITTED a statement
    # sees what was committed when it started, so the count must start after the wait.
    await conn.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext(lower($2)))", _NAME_LOCK, attempt.login_name
    )
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _IP_LOCK, attempt.ip)
    row = await conn.fetchrow(
        """SELECT
             (SELECT count(*) FROM login_records WHERE lower(login_name) = lower($1)
                AND at >= $3 AND outcome <> ALL($4::text[])) AS by_name,
             (SELECT count(*) FROM login_records WHERE ip = $2
                AND at >= $3 AND outcome <> ALL($4::text[])) AS by_ip""",
        attempt.login_name,
        attempt.ip,
        limits.since,
        list(NOT_COUNTED),
    )
    if row["by_name"] >= limits.per_name or row["by_ip"] >= limits.per_ip:
        await record_login(conn, _with_outcome(attempt, RATE_LIMITED))
        return None
    return await record_login(conn, _with_outcome(attempt, PENDING))


def _with_outcome(attempt: LoginAttempt, outcome: str) -> LoginAttempt:
    return LoginAttempt(
        attempt.at,
        attempt.login_name,
        attempt.ip,
        attempt.user_agent,
        outcome,
        attempt.account_id,
        attempt.device_id,
    )


async def _for_account(conn: Any, account_id: uuid.UUID, limit: int) -> list[LoginAttempt]:
    rows = await conn.fetch(
        """SELECT at, login_name, ip, user_agent, outcome, account_id, device_id
           FROM login_records WHERE account_id = $1 ORDER BY at DESC, id DESC LIMIT $2""",
        account_id,
        limit,
    )
    return [LoginAttempt(**dict(r)) for r in rows]


async def _delete_before(conn: Any, cutoff: datetime, limit: int) -> int:
    deleted: int = await conn.fetchval(
        """WITH gone AS (
               DELETE FROM login_records WHERE id IN (
                   SELECT id FROM login_records WHERE at < $1
                   ORDER BY at LIMIT $2 FOR UPDATE SKIP LOCKED)
               RETURNING 1)
           SELECT count(*) FROM gone""",
        cutoff,
        limit,
    )
    return deleted


class LoginRecordStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def reserve(self, attempt: LoginAttempt, limits: AttemptLimits) -> int | None:
        """Admit one password check, atomically with every concurrent one.

        Under the limits: records `attempt` as pending and returns the record's id (give it
        its outcome with `settle`). Over them: records it as rate_limited and returns None.
        """
        return await self._db.transaction(_reserve, attempt, limits)

    async def settle(
        self,
        record_id: int,
        outcome: str,
        account_id: uuid.UUID | None = None,
        device_id: uuid.UUID | None = None,
    ) -> None:
        """The outcome of a reserved attempt that failed. One on an existing account
        (`account_id`) is recorded in the audit log too: the reason and the login record's
        id, never the name tried, the address or the user agent."""
        await self._db.transaction(_settle_failed, record_id, outcome, account_id, device_id)

    async def for_account(self, account_id: uuid.UUID, limit: int = 100) -> list[LoginAttempt]:
        """The account's most recent login records, newest first."""
        return await self._db.transaction(_for_account, account_id, limit)

    async def delete_before(self, cutoff: datetime, limit: int) -> int:
        """Delete up to `limit` records made before `cutoff`, oldest first (rows another
        process is deleting are skipped); returns how many went."""
        return await self._db.read(_delete_before, cutoff, limit)
