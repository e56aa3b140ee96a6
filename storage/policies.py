"""Privacy-policy versions per organization, and every account's acceptances.

A version is published once and never changed (the database refuses updates); the newest
version of an organization is its current one. Publication order is the row id, so "newer"
is "larger id" everywhere. Accepting appends a row (account, version, time, device) to
`policy_acceptances`; only the current version can be accepted. Publishing and accepting
are recorded in the audit log in the same transaction.

The gate: an account must accept before going on while its organization has a *material*
version newer than every version it accepted (`material_policy > accepted_policy`, both
ids, 0 for none). `GATE_COLUMNS` computes both inside the statements that already read an
account (token check, gateway credentials), so the gate costs no extra round trip.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.audit import AuditEvent, account_actor, append
from storage.database import Database
from storage.errors import ConflictError, NotFoundError, StorageError


def gate_columns(org_id: str, account_id: str) -> str:
    """Select-list items `material_policy` and `accepted_policy` (ids, 0 for none) for the
    SQL expressions `org_id` and `account_id` of the statement they go into."""
    return f"""(SELECT coalesce(max(pv.id), 0) FROM policy_versions pv
                WHERE pv.org_id = {org_id} AND pv.material) AS material_policy,
               (SELECT coalesce(max(pa.policy_id), 0) FROM policy_acceptances pa
                WHERE pa.account_id = {account_id}) AS accepted_policy"""


class PolicyError(StorageError):
    """An acceptance that cannot be recorded; `reason` says why: "unknown" (no such
    version in the organization) or "not_current" (a newer version was published)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class NewPolicy:
    version: str
    language: str
    material: bool
    text: str


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    id: int
    org_id: uuid.UUID
    version: str
    language: str
    material: bool
    published_at: datetime
    published_by: uuid.UUID | None  # None: the publisher's account was purged since
    text: str | None  # None where a listing leaves the text out


@dataclass(frozen=True, slots=True)
class Acceptance:
    policy_id: int
    version: str
    accepted_at: datetime
    device_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class PolicyState:
    """An account's standing: its org's current version, the newest version it accepted,
    and whether it must accept before going on."""

    current: PolicyVersion | None
    accepted: Acceptance | None
    material_policy: int  # id of the org's newest material version, 0 for none

    @property
    def accepted_current(self) -> bool:
        return (
            self.current is not None
            and self.accepted is not None
            and self.accepted.policy_id >= self.current.id
        )

    @property
    def reconsent_required(self) -> bool:
        accepted = 0 if self.accepted is None else self.accepted.policy_id
        return self.material_policy > accepted


_SUMMARY = "id, org_id, version, language, material, published_at, published_by"


def _version(row: Any, with_text: bool) -> PolicyVersion:
    return PolicyVersion(
        row["id"],
        row["org_id"],
        row["version"],
        row["language"],
        row["material"],
        row["published_at"],
        row["published_by"],
        row["body"] if with_text else None,
    )


async def _publish(
    conn: Any, org_id: uuid.UUID, by: uuid.UUID, new: NewPolicy, at: datetime
) -> PolicyVersion:
    # One publication at a time per organization: ids then follow commit order.
    await conn.execute("SELECT 1 FROM orgs WHERE id = $1 FOR NO KEY UPDATE", org_id)
    row = await conn.fetchrow(
        f"""INSERT INTO policy_versions
                (org_id, version, language, material, body, published_at, published_by)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (org_id, version) DO NOTHING
            RETURNING {_SUMMARY}, body""",
        org_id,
        new.version,
        new.language,
        new.material,
        new.text,
        at,
        by,
    )
    if row is None:
        raise ConflictError(
            f"version {new.version!r} is already published; versions never change, "
            "publish a new one",
            field="version",
        )
    published = AuditEvent(
        "policy_published",
        account_actor(by),
        None,
        org_id,
        {"policy_id": row["id"], "version": new.version, "material": new.material},
    )
    await append(conn, [published], at)
    return _version(row, True)


async def _versions(conn: Any, org_id: uuid.UUID, before: str | None, limit: int) -> Any:
    before_id = None
    if before is not None:
        before_id = await conn.fetchval(
            "SELECT id FROM policy_versions WHERE org_id = $1 AND version = $2", org_id, before
        )
        if before_id is None:
            raise NotFoundError("no such policy version")
    return await conn.fetch(
        f"""SELECT {_SUMMARY} FROM policy_versions
            WHERE org_id = $1 AND ($2::bigint IS NULL OR id < $2)
            ORDER BY id DESC LIMIT $3""",
        org_id,
        before_id,
        limit,
    )


async def _get(conn: Any, org_id: uuid.UUID, version: str) -> Any:
    return await conn.fetchrow(
        f"SELECT {_SUMMARY}, body FROM policy_versions WHERE org_id = $1 AND version = $2",
        org_id,
        version,
    )


async def _state(conn: Any, org_id: uuid.UUID, account_id: uuid.UUID) -> PolicyState:
    row = await conn.fetchrow(
        f"""SELECT c.id, c.org_id, c.version, c.language, c.material, c.published_at,
                   c.published_by, a.policy_id AS accepted_id, av.version AS accepted_version,
                   a.accepted_at, a.device_id, {gate_columns("$1", "$2")}
            FROM (SELECT 1) AS one
            LEFT JOIN LATERAL (SELECT {_SUMMARY} FROM policy_versions
                               WHERE org_id = $1 ORDER BY id DESC LIMIT 1) AS c ON true
            LEFT JOIN LATERAL (SELECT policy_id, accepted_at, device_id FROM policy_acceptances
                               WHERE account_id = $2 ORDER BY policy_id DESC LIMIT 1) AS a
                   ON true
            LEFT JOIN policy_versions av ON av.id = a.policy_id""",
        org_id,
        account_id,
    )
    current = None if row["id"] is None else _version(row, False)
    accepted = None
    if row["accepted_id"] is not None:
        accepted = Acceptance(
            row["accepted_id"], row["accepted_version"], row["accepted_at"], row["device_id"]
        )
    return PolicyState(current, accepted, row["material_policy"])


async def _accept(
    conn: Any,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    device_id: uuid.UUID,
    version: str,
    at: datetime,
) -> PolicyState:
    current = await conn.fetchrow(
        "SELECT id, version FROM policy_versions WHERE org_id = $1 ORDER BY id DESC LIMIT 1",
        org_id,
    )
    if current is None or current["version"] != version:
        if await _get(conn, org_id, version) is None:
            raise PolicyError(f"your organization has no policy version {version!r}", "unknown")
        raise PolicyError(
            f"{version!r} is not the current policy version ({current['version']!r} is): "
            "accept the current one",
            "not_current",
        )
    status = await conn.execute(
        """INSERT INTO policy_acceptances (account_id, policy_id, accepted_at, device_id)
           VALUES ($1, $2, $3, $4) ON CONFLICT (account_id, policy_id) DO NOTHING""",
        account_id,
        current["id"],
        at,
        device_id,
    )
    state = await _state(conn, org_id, account_id)
    if status != "INSERT 0 0":  # accepting again records nothing
        accepted = AuditEvent(
            "policy_accepted",
            account_actor(account_id, device_id),
            account_id,
            org_id,
            {"policy_id": current["id"], "version": version},
        )
        await append(conn, [accepted], at)
    return state


async def _gate(conn: Any, org_id: uuid.UUID, account_id: uuid.UUID) -> tuple[int, int]:
    row = await conn.fetchrow(f"SELECT {gate_columns('$1', '$2')}", org_id, account_id)
    return row["material_policy"], row["accepted_policy"]


async def _newest_material(conn: Any, org_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    rows = await conn.fetch(
        """SELECT org_id, max(id) AS id FROM policy_versions
           WHERE material AND org_id = ANY($1::uuid[]) GROUP BY org_id""",
        org_ids,
    )
    return {row["org_id"]: int(row["id"]) for row in rows}


class PolicyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def newest_material(self, org_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
        """Each organization's newest material version id (none: not listed), in one
        statement: what the gate of `gate_columns` compares acceptances with."""
        return await self._db.read(_newest_material, list(org_ids))

    async def publish(
        self, org_id: uuid.UUID, by: uuid.UUID, new: NewPolicy, at: datetime
    ) -> PolicyVersion:
        """Publish `new` as the organization's current version. ConflictError ("version")
        if the organization already published that label."""
        return await self._db.transaction(_publish, org_id, by, new, at)

    async def versions(
        self, org_id: uuid.UUID, before: str | None, limit: int
    ) -> list[PolicyVersion]:
        """The organization's versions, newest first, without their text; `before` (a
        version label) pages on. NotFoundError for an unknown `before`."""
        rows = await self._db.transaction(_versions, org_id, before, limit)
        return [_version(r, False) for r in rows]

    async def get(self, org_id: uuid.UUID, version: str) -> PolicyVersion:
        """One version with its text; NotFoundError if the organization has no such one."""
        row = await self._db.read(_get, org_id, version)
        if row is None:
            raise NotFoundError("no such policy version")
        return _version(row, True)

    async def state(self, org_id: uuid.UUID, account_id: uuid.UUID) -> PolicyState:
        return await self._db.read(_state, org_id, account_id)

    async def accept(
        self,
        org_id: uuid.UUID,
        account_id: uuid.UUID,
        device_id: uuid.UUID,
        version: str,
        at: datetime,
    ) -> PolicyState:
        """Record that the account accepted `version` (from `device_id`). PolicyError
        "unknown" or "not_current" otherwise, and nothing is recorded. Accepting the
        version already accepted records nothing new."""
        return await self._db.transaction(_accept, org_id, account_id, device_id, version, at)

    async def gate(self, org_id: uuid.UUID, account_id: uuid.UUID) -> tuple[int, int]:
        """(newest material version id of the org, newest version id the account
        accepted), 0 for none: the account must accept while the first is larger."""
        return await self._db.read(_gate, org_id, account_id)
