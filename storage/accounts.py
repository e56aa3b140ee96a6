"""Member accounts: the organization's directory, and what login needs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from storage.audit import AuditActor, AuditEvent, append
from storage.database import Database
from storage.errors import NotFoundError
from storage.logins import settle_login
from storage.push_registrations import drop_registrations

COLUMNS = """id, org_id, account_name, work_email, display_name, phone, department_id,
    position, role, admin_department_id, status, password_change_required,
    created_at, updated_at, birth_date"""

# Fields `update` may change; everything else is fixed or has its own operation (the birth
# date: storage.minors, which applies the guardian rule with it).
UPDATABLE = frozenset(
    {
        "account_name",
        "work_email",
        "display_name",
        "phone",
        "department_id",
        "position",
        "role",
        "admin_department_id",
    }
)


@dataclass(frozen=True, slots=True)
class NewAccount:
    account_name: str
    work_email: str
    display_name: str
    password_hash: bytes
    role: str = "member"
    phone: str | None = None
    department_id: uuid.UUID | None = None
    position: str | None = None
    admin_department_id: uuid.UUID | None = None
    password_change_required: bool = False
    birth_date: date | None = None
    status: str = "active"  # "pending_guardian": a minor without a guardian's consent yet


@dataclass(frozen=True, slots=True)
class Account:
    id: uuid.UUID
    org_id: uuid.UUID
    account_name: str
    work_email: str
    display_name: str
    phone: str | None
    department_id: uuid.UUID | None
    position: str | None
    role: str
    admin_department_id: uuid.UUID | None
    status: str
    password_change_required: bool
    created_at: datetime
    updated_at: datetime
    birth_date: date | None  # shown only to the person and the org's owners and admins


def _account(row: Any) -> Account:
    return Account(**{name: row[name] for name in Account.__slots__})


async def insert_account(conn: Any, org_id: uuid.UUID, new: NewAccount) -> Account:
    """Insert a member (on an open transaction). ConflictError for a taken name or email."""
    row = await conn.fetchrow(
        f"""INSERT INTO accounts (id, org_id, account_name, work_email, display_name, phone,
                department_id, position, role, admin_department_id, password_hash,
                password_change_required, birth_date, status)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
            RETURNING {COLUMNS}""",
        uuid.uuid4(),
        org_id,
        new.account_name,
        new.work_email,
        new.display_name,
        new.phone,
        new.department_id,
        new.position,
        new.role,
        new.admin_department_id,
        new.password_hash,
        new.password_change_required,
        new.birth_date,
        new.status,
    )
    return _account(row)


async def get_account(conn: Any, org_id: uuid.UUID, account_id: uuid.UUID) -> Account:
    """The member `account_id` of `org_id` (on an open transaction); NotFoundError."""
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM accounts WHERE org_id = $1 AND id = $2", org_id, account_id
    )
    if row is None:
        raise NotFoundError("no such member")
    return _account(row)


async def lock_account(conn: Any, org_id: uuid.UUID, account_id: uuid.UUID) -> Account:
    """`get_account`, the row locked for the change that follows (on an open transaction)."""
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM accounts WHERE org_id = $1 AND id = $2 FOR UPDATE",
        org_id,
        account_id,
    )
    if row is None:
        raise NotFoundError("no such member")
    return _account(row)


def correction_events(before: Account, after: Account, by: AuditActor) -> list[AuditEvent]:
    """What the audit log records of a member's entry changed by `by`: a new role (or
    department-admin scope), and the names (never the values) of the other fields that
    changed."""
    events = []
    if (before.role, before.admin_department_id) != (after.role, after.admin_department_id):
        scope = after.admin_department_id
        detail = {
            "from_role": before.role,
            "to_role": after.role,
            "admin_department_id": None if scope is None else str(scope),
        }
        events.append(AuditEvent("role_changed", by, after.id, after.org_id, detail))
    fields = [
        name
        for name in sorted((UPDATABLE | {"birth_date"}) - {"role", "admin_department_id"})
        if getattr(before, name) != getattr(after, name)
    ]
    if fields:
        events.append(
            AuditEvent("member_corrected", by, after.id, after.org_id, {"fields": fields})
        )
    return events


async def _find_for_login(conn: Any, email: str) -> tuple[Account, bytes] | None:
    row = await conn.fetchrow(
        f"SELECT {COLUMNS}, password_hash FROM accounts WHERE lower(work_email) = lower($1)",
        email,
    )
    return None if row is None else (_account(row), bytes(row["password_hash"]))


async def _password_hash(conn: Any, account_id: uuid.UUID) -> bytes:
    value = await conn.fetchval("SELECT password_hash FROM accounts WHERE id = $1", account_id)
    if value is None:
        raise NotFoundError("no such member")
    return bytes(value)


async def _list(
    conn: Any, org_id: uuid.UUID, after: tuple[str, uuid.UUID] | None, limit: int
) -> list[Account]:
    if after is None:
        rows = await conn.fetch(
            f"""SELECT {COLUMNS} FROM accounts WHERE org_id = $1
                ORDER BY lower(display_name), id LIMIT $2""",
            org_id,
            limit,
        )
    else:
        rows = await conn.fetch(
            f"""SELECT {COLUMNS} FROM accounts WHERE org_id = $1
                  AND (lower(display_name), id) > ($2, $3)
                ORDER BY lower(display_name), id LIMIT $4""",
            org_id,
            after[0],
            after[1],
            limit,
        )
    return [_account(r) for r in rows]


async def update_account(
    conn: Any, org_id: uuid.UUID, account_id: uuid.UUID, changes: dict[str, Any]
) -> Account:
    """Change fields named in UPDATABLE (on an open transaction)."""
    unknown = set(changes) - UPDATABLE
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    if not changes:
        return await get_account(conn, org_id, account_id)
    names = sorted(changes)
    assignments = ", ".join(f"{name} = ${i + 3}" for i, name in enumerate(names))
    row = await conn.fetchrow(
        f"""UPDATE accounts SET {assignments}, updated_at = now()
            WHERE org_id = $1 AND id = $2 RETURNING {COLUMNS}""",
        org_id,
        account_id,
        *(changes[name] for name in names),
    )
    if row is None:
        raise NotFoundError("no such member")
    return _account(row)


async def _change_password(
    conn: Any,
    account_id: uuid.UUID,
    keep_device_id: uuid.UUID,
    password_hash: bytes,
    record_id: int,
    now: datetime,
) -> list[uuid.UUID]:
    await conn.execute(
        """UPDATE accounts SET password_hash = $2, password_change_required = false,
               updated_at = now() WHERE id = $1""",
        account_id,
        password_hash,
    )
    await conn.execute(
        """UPDATE auth_tokens SET revoked_at = $3
           WHERE account_id = $1 AND device_id <> $2 AND revoked_at IS NULL""",
        account_id,
        keep_device_id,
        now,
    )
    rows = await conn.fetch(
        """UPDATE devices SET signed_out_at = coalesce(signed_out_at, $3)
           WHERE account_id = $1 AND id <> $2 AND revoked_at IS NULL RETURNING id""",
        account_id,
        keep_device_id,
        now,
    )
    signed_out = [r["id"] for r in rows]
    await drop_registrations(conn, signed_out)  # a signed-out phone must not be woken
    await settle_login(conn, record_id, "password_changed", account_id, keep_device_id)
    return signed_out


async def _update_member(
    conn: Any,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    changes: dict[str, Any],
    by: AuditActor,
    at: datetime,
) -> Account:
    before = await lock_account(conn, org_id, account_id)
    after = await update_account(conn, org_id, account_id, changes)
    await append(conn, correction_events(before, after, by), at)
    return after


async def _deactivate(
    conn: Any, org_id: uuid.UUID, account_id: uuid.UUID, by: AuditActor, at: datetime
) -> Account:
    row = await conn.fetchrow(
        f"""UPDATE accounts SET status = 'deactivated', updated_at = now()
            WHERE org_id = $1 AND id = $2 RETURNING {COLUMNS}""",
        org_id,
        account_id,
    )
    if row is None:
        raise NotFoundError("no such member")
    await conn.execute(
        """UPDATE auth_tokens SET revoked_at = now()
           WHERE account_id = $1 AND revoked_at IS NULL""",
        account_id,
    )
    devices = await conn.fetch("SELECT id FROM devices WHERE account_id = $1", account_id)
    await drop_registrations(conn, [d["id"] for d in devices])
    await append(conn, [AuditEvent("member_deactivated", by, account_id, org_id)], at)
    return _account(row)


class AccountStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, org_id: uuid.UUID, new: NewAccount) -> Account:
        """ConflictError for a taken account name or email; NotFoundError for a department
        outside the org."""
        return await self._db.transaction(insert_account, org_id, new)

    async def get(self, org_id: uuid.UUID, account_id: uuid.UUID) -> Account:
        """NotFoundError unless the account exists in `org_id`."""
        return await self._db.read(get_account, org_id, account_id)

    async def find_for_login(self, email: str) -> tuple[Account, bytes] | None:
        """The account with this work email (any case) and its password hash."""
        return await self._db.transaction(_find_for_login, email)

    async def password_hash(self, account_id: uuid.UUID) -> bytes:
        return await self._db.transaction(_password_hash, account_id)

    async def directory(
        self, org_id: uuid.UUID, after: tuple[str, uuid.UUID] | None, limit: int
    ) -> list[Account]:
        """Members of `org_id` ordered by display name, after the keyset `after`."""
        return await self._db.transaction(_list, org_id, after, limit)

    async def update(
        self, org_id: uuid.UUID, account_id: uuid.UUID, changes: dict[str, Any]
    ) -> Account:
        """Change fields named in UPDATABLE. ConflictError / NotFoundError as for `add`."""
        return await self._db.transaction(update_account, org_id, account_id, changes)

    async def update_member(
        self,
        org_id: uuid.UUID,
        account_id: uuid.UUID,
        changes: dict[str, Any],
        by: AuditActor,
        at: datetime,
    ) -> Account:
        """`update` by someone who manages the member: the audit log records a new role
        and the names of the fields that changed (`correction_events`)."""
        return await self._db.transaction(_update_member, org_id, account_id, changes, by, at)

    async def change_password(
        self,
        account_id: uuid.UUID,
        keep_device_id: uuid.UUID,
        password_hash: bytes,
        record_id: int,
        now: datetime,
    ) -> list[uuid.UUID]:
        """Set a new password (no change required any more) and end every session of the
        account but `keep_device_id`'s: the other devices' tokens are revoked and they are
        signed out of the gateway until they log in again. Settles the login record
        `record_id` (the current-password check) in the same transaction. Returns the
        devices signed out."""
        return await self._db.transaction(
            _change_password, account_id, keep_device_id, password_hash, record_id, now
        )

    async def deactivate(
        self, org_id: uuid.UUID, account_id: uuid.UUID, by: AuditActor, at: datetime
    ) -> Account:
        """Deactivate the member and revoke every token of theirs, in one transaction that
        records it in the audit log (done by `by`)."""
        return await self._db.transaction(_deactivate, org_id, account_id, by, at)
