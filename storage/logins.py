"""Login records: every attempt, successful or not (kept 3 months by the retention sweeper)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.database import Database


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    at: datetime
    login_name: str
    ip: str
    user_agent: str
    outcome: str
    account_id: uuid.UUID | None = None
    device_id: uuid.UUID | None = None


async def record_login(conn: Any, attempt: LoginAttempt) -> None:
    """Append one login record (on an open transaction)."""
    await conn.execute(
        """INSERT INTO login_records (at, login_name, account_id, device_id, ip, user_agent,
               outcome) VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        attempt.at,
        attempt.login_name,
        attempt.account_id,
        attempt.device_id,
        attempt.ip,
        attempt.user_agent,
        attempt.outcome,
    )


async def _failures_since(conn: Any, login_name: str, ip: str, since: datetime) -> tuple[int, int]:
    row = await conn.fetchrow(
        """SELECT
             (SELECT count(*) FROM login_records WHERE lower(login_name) = lower($1)
                AND at >= $3 AND outcome <> 'success') AS by_name,
             (SELECT count(*) FROM login_records WHERE ip = $2
                AND at >= $3 AND outcome <> 'success') AS by_ip""",
        login_name,
        ip,
        since,
    )
    return int(row["by_name"]), int(row["by_ip"])


async def _for_account(conn: Any, account_id: uuid.UUID, limit: int) -> list[LoginAttempt]:
    rows = await conn.fetch(
        """SELECT at, login_name, ip, user_agent, outcome, account_id, device_id
           FROM login_records WHERE account_id = $1 ORDER BY at DESC, id DESC LIMIT $2""",
        account_id,
        limit,
    )
    return [LoginAttempt(**dict(r)) for r in rows]


class LoginRecordStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, attempt: LoginAttempt) -> None:
        await self._db.transaction(record_login, attempt)

    async def failures_since(self, login_name: str, ip: str, since: datetime) -> tuple[int, int]:
        """Failed attempts since `since`: (for this login name, from this ip)."""
        return await self._db.transaction(_failures_since, login_name, ip, since)

    async def for_account(self, account_id: uuid.UUID, limit: int = 100) -> list[LoginAttempt]:
        """The account's most recent login records, newest first."""
        return await self._db.transaction(_for_account, account_id, limit)
