"""Live-location sessions: who shares their position with which conversation, until when.

Only the session is stored (never a position): so that an update can be refused after the
session's end, and so that a withdrawal knows who saw what.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.database import Database

LOCATION_PURPOSE = "location_share"


@dataclass(frozen=True, slots=True)
class LiveSession:
    id: uuid.UUID
    account_id: uuid.UUID
    device_id: uuid.UUID
    conversation_id: uuid.UUID
    scope: tuple[uuid.UUID, ...] | None  # None: every member
    started_at: datetime
    expires_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None  # stopped, expired, withdrawn


@dataclass(frozen=True, slots=True)
class LiveCheck:
    """A session as an update finds it: open or not, and the sharer's grant now."""

    session: LiveSession
    granted: bool


def session(row: Any) -> LiveSession:
    scope = row["scope"]
    return LiveSession(
        row["id"],
        row["account_id"],
        row["device_id"],
        row["conversation_id"],
        None if scope is None else tuple(scope),
        row["started_at"],
        row["expires_at"],
        row["ended_at"],
        row["end_reason"],
    )


async def _start(conn: Any, s: LiveSession) -> None:
    await conn.execute(
        """INSERT INTO live_sessions
               (id, account_id, device_id, conversation_id, scope, started_at, expires_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        s.id,
        s.account_id,
        s.device_id,
        s.conversation_id,
        None if s.scope is None else list(s.scope),
        s.started_at,
        s.expires_at,
    )


async def _check(conn: Any, session_id: uuid.UUID, account_id: uuid.UUID) -> Any:
    return await conn.fetchrow(
        """SELECT s.*, coalesce(g.granted, false) AS granted FROM live_sessions s
           LEFT JOIN consent_grants g ON g.account_id = s.account_id AND g.purpose = $3
           WHERE s.id = $1 AND s.account_id = $2""",
        session_id,
        account_id,
        LOCATION_PURPOSE,
    )


async def _stop(conn: Any, session_id: uuid.UUID, account_id: uuid.UUID, at: datetime) -> Any:
    return await conn.fetchrow(
        """UPDATE live_sessions SET ended_at = $3, end_reason = 'stopped'
           WHERE id = $1 AND account_id = $2 AND ended_at IS NULL RETURNING *""",
        session_id,
        account_id,
        at,
    )


async def _expire(conn: Any, now: datetime, limit: int) -> Any:
    return await conn.fetch(
        """UPDATE live_sessions SET ended_at = expires_at, end_reason = 'expired'
           WHERE id IN (SELECT id FROM live_sessions WHERE ended_at IS NULL AND expires_at <= $1
                        ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)
           RETURNING *""",
        now,
        limit,
    )


async def _delete_ended(conn: Any, cutoff: datetime, limit: int) -> int:
    deleted: int = await conn.fetchval(
        """WITH gone AS (
               DELETE FROM live_sessions WHERE id IN (
                   SELECT id FROM live_sessions WHERE ended_at < $1
                   ORDER BY ended_at LIMIT $2 FOR UPDATE SKIP LOCKED)
               RETURNING 1)
           SELECT count(*) FROM gone""",
        cutoff,
        limit,
    )
    return deleted


async def end_all(conn: Any, account_id: uuid.UUID, at: datetime) -> list[LiveSession]:
    """End every open session of the account (its location grant was withdrawn), in the
    caller's transaction."""
    rows = await conn.fetch(
        """UPDATE live_sessions SET ended_at = $2, end_reason = 'withdrawn'
           WHERE account_id = $1 AND ended_at IS NULL RETURNING *""",
        account_id,
        at,
    )
    return [session(r) for r in rows]


class LiveStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def start(self, s: LiveSession) -> None:
        await self._db.transaction(_start, s)

    async def check(self, session_id: uuid.UUID, account_id: uuid.UUID) -> LiveCheck | None:
        """The account's session `session_id` and its location grant now (one statement),
        or None if the account has no such session."""
        row = await self._db.read(_check, session_id, account_id)
        return None if row is None else LiveCheck(session(row), bool(row["granted"]))

    async def stop(
        self, session_id: uuid.UUID, account_id: uuid.UUID, at: datetime
    ) -> LiveSession | None:
        """End the account's open session; None if it has none open by that id."""
        row = await self._db.read(_stop, session_id, account_id, at)
        return None if row is None else session(row)

    async def expire(self, now: datetime, limit: int) -> list[LiveSession]:
        """End up to `limit` open sessions whose time is up (safe with several processes)."""
        return [session(r) for r in await self._db.read(_expire, now, limit)]

    async def delete_ended(self, cutoff: datetime, limit: int) -> int:
        """Delete up to `limit` sessions that ended before `cutoff`, oldest first (safe with
        several processes); returns how many went."""
        return await self._db.read(_delete_ended, cutoff, limit)
