"""The consent registry: grants per account and purpose, their history, org switch-offs.

A grant is the person's own act (from one of their devices); an organization can only
switch a purpose off for everyone, which withdraws every grant of it and refuses new ones.
Every change appends to `consent_history`, and to the audit log, in the same transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.audit import AuditEvent, account_actor, append
from storage.database import Database
from storage.errors import StorageError
from storage.revocation import Revocation, revoke
from storage.stream import lock_stream

PURPOSES = ("location_share", "attendance", "media_share", "contacts_sync")


class ConsentError(StorageError):
    """A consent change that cannot be made; `reason` says which rule refused it:
    "switched_off" (the org switched the purpose off) or "not_granted" (nothing to
    withdraw)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Grant:
    purpose: str
    granted: bool
    changed_at: datetime | None  # None: never decided
    switched_off: bool  # the organization switched the purpose off


@dataclass(frozen=True, slots=True)
class ConsentEvent:
    id: int
    purpose: str
    action: str
    at: datetime
    device_id: uuid.UUID | None
    policy_version: str | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class MemberGrants:
    account_id: uuid.UUID
    granted: dict[str, datetime]  # purpose -> since when


# The privacy-policy version the account accepted last (None: none yet): the one a consent
# change is made under.
ACCEPTED_POLICY = """SELECT v.version FROM policy_acceptances a
    JOIN policy_versions v ON v.id = a.policy_id
    WHERE a.account_id = $1 ORDER BY a.policy_id DESC LIMIT 1"""


async def _state(conn: Any, org_id: uuid.UUID, account_id: uuid.UUID) -> list[Grant]:
    grants = {
        r["purpose"]: r
        for r in await conn.fetch(
            "SELECT purpose, granted, changed_at FROM consent_grants WHERE account_id = $1",
            account_id,
        )
    }
    off = {
        r["purpose"]
        for r in await conn.fetch("SELECT purpose FROM org_purposes_off WHERE org_id = $1", org_id)
    }
    return [
        Grant(
            purpose,
            bool(grants[purpose]["granted"]) if purpose in grants else False,
            grants[purpose]["changed_at"] if purpose in grants else None,
            purpose in off,
        )
        for purpose in PURPOSES
    ]


async def _record(
    conn: Any,
    account_id: uuid.UUID,
    purpose: str,
    granted: bool,
    at: datetime,
    device_id: uuid.UUID | None,
    reason: str | None = None,
) -> None:
    policy = await conn.fetchval(ACCEPTED_POLICY, account_id)
    await conn.execute(
        """INSERT INTO consent_grants
               (account_id, purpose, granted, changed_at, device_id, policy_version)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (account_id, purpose) DO UPDATE SET granted = EXCLUDED.granted,
               changed_at = EXCLUDED.changed_at, device_id = EXCLUDED.device_id,
               policy_version = EXCLUDED.policy_version""",
        account_id,
        purpose,
        granted,
        at,
        device_id,
        policy,
    )
    await conn.execute(
        """INSERT INTO consent_history
               (account_id, purpose, action, at, device_id, policy_version, reason)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        account_id,
        purpose,
        "granted" if granted else "withdrawn",
        at,
        device_id,
        policy,
        reason,
    )


async def _holds(conn: Any, account_id: uuid.UUID, purpose: str) -> bool:
    granted = await conn.fetchval(
        "SELECT granted FROM consent_grants WHERE account_id = $1 AND purpose = $2",
        account_id,
        purpose,
    )
    return granted is True


async def _granted(conn: Any, account_id: uuid.UUID, purpose: str) -> bool:
    """Whether the grant is active, its row locked for the change that follows."""
    current = await conn.fetchval(
        "SELECT granted FROM consent_grants WHERE account_id = $1 AND purpose = $2 FOR UPDATE",
        account_id,
        purpose,
    )
    return current is True


async def _grant(
    conn: Any,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    device_id: uuid.UUID,
    purpose: str,
    at: datetime,
) -> list[Grant]:
    off = await conn.fetchval(
        "SELECT 1 FROM org_purposes_off WHERE org_id = $1 AND purpose = $2", org_id, purpose
    )
    if off is not None:
        raise ConsentError(f"your organization switched {purpose} off", "switched_off")
    if not await _granted(conn, account_id, purpose):  # granting again records nothing
        await _record(conn, account_id, purpose, True, at, device_id)
        granted = AuditEvent(
            "consent_granted",
            account_actor(account_id, device_id),
            account_id,
            org_id,
            {"purpose": purpose},
        )
        await append(conn, [granted], at)
    return await _state(conn, org_id, account_id)


async def _withdraw(
    conn: Any,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    device_id: uuid.UUID,
    purpose: str,
    at: datetime,
) -> tuple[list[Grant], Revocation]:
    # The stream lock before the grant's row lock: the erasure writes tombstones (which
    # need it), and a message commit takes the two in this order too.
    await lock_stream(conn)
    if not await _granted(conn, account_id, purpose):
        raise ConsentError(f"{purpose} is not granted: nothing to withdraw", "not_granted")
    await _record(conn, account_id, purpose, False, at, device_id)
    revocation = await revoke(conn, account_id, purpose, at)
    state = await _state(conn, org_id, account_id)
    withdrawn = AuditEvent(
        "consent_withdrawn",
        account_actor(account_id, device_id),
        account_id,
        org_id,
        {"purpose": purpose},
    )
    await append(conn, [withdrawn], at)
    return state, revocation


async def _history(conn: Any, account_id: uuid.UUID, after_id: int, limit: int) -> Any:
    return await conn.fetch(
        """SELECT id, purpose, action, at, device_id, policy_version, reason
           FROM consent_history WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3""",
        account_id,
        after_id,
        limit,
    )


async def _members(conn: Any, org_id: uuid.UUID, after: uuid.UUID | None, limit: int) -> Any:
    return await conn.fetch(
        """SELECT a.id, array_agg(g.purpose ORDER BY g.purpose)
                  FILTER (WHERE g.granted) AS purposes,
                  array_agg(g.changed_at ORDER BY g.purpose) FILTER (WHERE g.granted) AS since
           FROM accounts a LEFT JOIN consent_grants g ON g.account_id = a.id
           WHERE a.org_id = $1 AND ($2::uuid IS NULL OR a.id > $2)
           GROUP BY a.id ORDER BY a.id LIMIT $3""",
        org_id,
        after,
        limit,
    )


async def _switch(
    conn: Any, org_id: uuid.UUID, purpose: str, off: bool, by: uuid.UUID, at: datetime
) -> list[Revocation]:
    """Switch a purpose off (every active grant of it in the org withdrawn, recorded with
    the reason) or back on (nobody's grant comes back by itself)."""
    if not off:
        status = await conn.execute(
            "DELETE FROM org_purposes_off WHERE org_id = $1 AND purpose = $2", org_id, purpose
        )
        if status != "DELETE 0":  # switching on what is on records nothing
            switched = {"purpose": purpose, "off": False}
            on = AuditEvent("purpose_switched", account_actor(by), None, org_id, switched)
            await append(conn, [on], at)
        return []
    await lock_stream(conn)  # before the grants' row locks, as in _withdraw
    status = await conn.execute(
        """INSERT INTO org_purposes_off (org_id, purpose, off_at, by_account)
           VALUES ($1, $2, $3, $4) ON CONFLICT (org_id, purpose) DO NOTHING""",
        org_id,
        purpose,
        at,
        by,
    )
    holders = await conn.fetch(
        """SELECT g.account_id FROM consent_grants g JOIN accounts a ON a.id = g.account_id
           WHERE a.org_id = $1 AND g.purpose = $2 AND g.granted
           ORDER BY g.account_id FOR UPDATE OF g""",
        org_id,
        purpose,
    )
    revocations = []
    for holder in holders:
        await _record(conn, holder["account_id"], purpose, False, at, None, "org_switched_off")
        revocations.append(await revoke(conn, holder["account_id"], purpose, at))
    if status != "INSERT 0 0" or holders:  # switching off what is off records nothing
        events = [
            AuditEvent(
                "purpose_switched",
                account_actor(by),
                None,
                org_id,
                {"purpose": purpose, "off": True, "withdrawn": len(holders)},
            )
        ]
        events += [
            AuditEvent(
                "consent_withdrawn",
                account_actor(by),
                r.account_id,
                org_id,
                {"purpose": purpose, "reason": "org_switched_off"},
            )
            for r in revocations
        ]
        await append(conn, events, at)
    return revocations


class ConsentStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def state(self, org_id: uuid.UUID, account_id: uuid.UUID) -> list[Grant]:
        """Every purpose, granted or not, and whether the org switched it off."""
        return await self._db.transaction(_state, org_id, account_id)

    async def holds(self, account_id: uuid.UUID, purpose: str) -> bool:
        """Whether the account holds an active grant for `purpose` now."""
        return await self._db.read(_holds, account_id, purpose)

    async def grant(
        self,
        org_id: uuid.UUID,
        account_id: uuid.UUID,
        device_id: uuid.UUID,
        purpose: str,
        at: datetime,
    ) -> list[Grant]:
        """Grant `purpose` (from `device_id`); ConsentError "switched_off" if the org
        switched it off. Granting what is granted records nothing."""
        return await self._db.transaction(_grant, org_id, account_id, device_id, purpose, at)

    async def withdraw(
        self,
        org_id: uuid.UUID,
        account_id: uuid.UUID,
        device_id: uuid.UUID,
        purpose: str,
        at: datetime,
    ) -> tuple[list[Grant], Revocation]:
        """Withdraw `purpose` and erase and end what that requires (storage.revocation);
        ConsentError "not_granted" if it is not granted."""
        return await self._db.transaction(_withdraw, org_id, account_id, device_id, purpose, at)

    async def history(
        self, account_id: uuid.UUID, after_id: int = 0, limit: int = 100
    ) -> list[ConsentEvent]:
        rows = await self._db.read(_history, account_id, after_id, limit)
        return [ConsentEvent(**dict(r)) for r in rows]

    async def members(
        self, org_id: uuid.UUID, after: uuid.UUID | None, limit: int
    ) -> list[MemberGrants]:
        """The org's members and what each has granted, by account id."""
        rows = await self._db.read(_members, org_id, after, limit)
        return [
            MemberGrants(r["id"], dict(zip(r["purposes"] or [], r["since"] or [], strict=True)))
            for r in rows
        ]

    async def switch(
        self, org_id: uuid.UUID, purpose: str, off: bool, by: uuid.UUID, at: datetime
    ) -> list[Revocation]:
        """Switch `purpose` off (every grant withdrawn, as `withdraw` does) or on again."""
        return await self._db.transaction(_switch, org_id, purpose, off, by, at)


async def require_grant(conn: Any, org_id: uuid.UUID, account_id: uuid.UUID, purpose: str) -> None:
    """Inside the caller's transaction: raise ConsentError unless the account holds an active
    grant of `purpose` ("switched_off" if its org switched the purpose off, "not_granted"
    otherwise). The grant row stays share-locked until the caller commits, so a withdrawal
    (which locks it for update) waits for the work done under the grant and holds for
    everything after it."""
    off = await conn.fetchval(
        "SELECT 1 FROM org_purposes_off WHERE org_id = $1 AND purpose = $2", org_id, purpose
    )
    if off is not None:
        raise ConsentError(f"your organization switched {purpose} off", "switched_off")
    granted = await conn.fetchval(
        "SELECT granted FROM consent_grants WHERE account_id = $1 AND purpose = $2 FOR SHARE",
        account_id,
        purpose,
    )
    if granted is not True:
        raise ConsentError(f"this needs your {purpose} consent: grant it first", "not_granted")
