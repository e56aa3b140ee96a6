"""Member accounts: the organization's directory, and what login needs.

The personal fields `phone` and `birth_date` are sealed under the account's own data key
(`storage.keyring`): stored as sealed bytes, opened on every read, and null once the key
was destroyed.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from storage.audit import AuditActor, AuditEvent, append
from storage.cancellation import CancellationError
from storage.database import Database
from storage.errors import NotFoundError
from storage.keyring import KeyDestroyedError, Keyring
from storage.logins import settle_login
from storage.push_registrations import drop_registrations
from storage.sealing import (
    ACCOUNT_BIRTH_DATE,
    ACCOUNT_PHONE,
    UnreadableError,
    ad,
    is_sealed,
    open_sealed,
    seal,
)

logger = logging.getLogger(__name__)

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


# The sealed personal fields: the associated-data label of each.
PERSONAL = {"phone": ACCOUNT_PHONE, "birth_date": ACCOUNT_BIRTH_DATE}


def _plain(name: str, value: Any) -> bytes:
    return (value.isoformat() if name == "birth_date" else str(value)).encode()


def _value(name: str, plain: bytes) -> Any:
    text = plain.decode()
    return date.fromisoformat(text) if name == "birth_date" else text


async def seal_personal(
    conn: Any, keyring: Keyring, account_id: uuid.UUID, fields: dict[str, Any]
) -> dict[str, Any]:
    """`fields` with the personal ones (PERSONAL) sealed under the account's data key (made
    now if it has none); None stays None. KeyDestroyedError if the key was destroyed."""
    given = [name for name in PERSONAL if fields.get(name) is not None]
    if not given:
        return fields
    keys, destroyed = await keyring.for_write(conn, [account_id])
    if destroyed:
        raise KeyDestroyedError("this account's data was erased")
    key = keys[account_id]
    sealed = dict(fields)
    for name in given:
        sealed[name] = seal(key, _plain(name, fields[name]), ad(PERSONAL[name], account_id))
    return sealed


def open_personal(
    row: Any, name: str, keys: dict[uuid.UUID, bytes | None], id_column: str = "id"
) -> Any:
    """The personal field `name` of an accounts row, opened with `keys` (`Keyring.for_read`
    of the row's account): None if unset, or if the account's key was destroyed."""
    stored = row[name]
    if stored is None:
        return None
    account_id = row[id_column]
    stored = bytes(stored)
    if account_id in keys and keys[account_id] is None:
        return None  # erased
    try:
        if not is_sealed(stored):
            return _value(name, stored)  # stored before personal fields were sealed
        key = keys.get(account_id)
        if key is None:
            raise UnreadableError("no data key")
        return _value(name, open_sealed(key, stored, ad(PERSONAL[name], account_id)))
    except (UnreadableError, ValueError):
        logger.error("the %s of account %s is unreadable; shown as unset", name, account_id)
        return None


def _account(row: Any, keys: dict[uuid.UUID, bytes | None]) -> Account:
    values = {name: row[name] for name in Account.__slots__ if name not in PERSONAL}
    return Account(**values, **{name: open_personal(row, name, keys) for name in PERSONAL})


async def open_accounts(conn: Any, keyring: Keyring, rows: list[Any]) -> list[Account]:
    """Accounts from rows of COLUMNS, their personal fields opened (one key lookup, none
    when no row has any)."""
    owners = [r["id"] for r in rows if any(r[name] is not None for name in PERSONAL)]
    keys = await keyring.for_read(conn, owners) if owners else {}
    return [_account(r, keys) for r in rows]


async def insert_account(
    conn: Any, keyring: Keyring, org_id: uuid.UUID, new: NewAccount
) -> Account:
    """Insert a member (on an open transaction). ConflictError for a taken name or email."""
    account_id = uuid.uuid4()
    personal = await seal_personal(
        conn, keyring, account_id, {"phone": new.phone, "birth_date": new.birth_date}
    )
    row = await conn.fetchrow(
        f"""INSERT INTO accounts (id, org_id, account_name, work_email, display_name, phone,
                department_id, position, role, admin_department_id, password_hash,
                password_change_required, birth_date, status)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
            RETURNING {COLUMNS}""",
        account_id,
        org_id,
        new.account_name,
        new.work_email,
        new.display_name,
        personal["phone"],
        new.department_id,
        new.position,
        new.role,
        new.admin_department_id,
        new.password_hash,
        new.password_change_required,
        personal["birth_date"],
        new.status,
    )
    return _account(row, await _keys_of(conn, keyring, row))


async def _keys_of(conn: Any, keyring: Keyring, row: Any) -> dict[uuid.UUID, bytes | None]:
    if all(row[name] is None for name in PERSONAL):
        return {}
    return await keyring.for_read(conn, [row["id"]])


async def get_account(
    conn: Any, keyring: Keyring, org_id: uuid.UUID, account_id: uuid.UUID
) -> Account:
    """The member `account_id` of `org_id` (on an open transaction); NotFoundError."""
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM accounts WHERE org_id = $1 AND id = $2", org_id, account_id
    )
    if row is None:
        raise NotFoundError("no such member")
    return _account(row, await _keys_of(conn, keyring, row))


async def lock_account(
    conn: Any, keyring: Keyring, org_id: uuid.UUID, account_id: uuid.UUID
) -> Account:
    """`get_account`, the row locked for the change that follows (on an open transaction)."""
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM accounts WHERE org_id = $1 AND id = $2 FOR UPDATE",
        org_id,
        account_id,
    )
    if row is None:
        raise NotFoundError("no such member")
    return _account(row, await _keys_of(conn, keyring, row))


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


async def _find_for_login(conn: Any, keyring: Keyring, email: str) -> tuple[Account, bytes] | None:
    # A cancelled account's row shows a placeholder address; until it is purged, its own
    # address still finds it (through its cancellation), so that its password gets
    # account_cancelled rather than a plain "wrong email or password".
    row = await conn.fetchrow(
        f"""SELECT {COLUMNS}, password_hash FROM accounts WHERE id = coalesce(
                (SELECT id FROM accounts WHERE lower(work_email) = lower($1)),
                (SELECT account_id FROM cancellations WHERE lower(email) = lower($1)
                 ORDER BY cancelled_at DESC LIMIT 1))""",
        email,
    )
    if row is None:
        return None
    return _account(row, await _keys_of(conn, keyring, row)), bytes(row["password_hash"])


async def _password_hash(conn: Any, account_id: uuid.UUID) -> bytes:
    value = await conn.fetchval("SELECT password_hash FROM accounts WHERE id = $1", account_id)
    if value is None:
        raise NotFoundError("no such member")
    return bytes(value)


async def _list(
    conn: Any,
    keyring: Keyring,
    org_id: uuid.UUID,
    after: tuple[str, uuid.UUID] | None,
    limit: int,
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
    return await open_accounts(conn, keyring, rows)


async def update_account(
    conn: Any,
    keyring: Keyring,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    changes: dict[str, Any],
) -> Account:
    """Change fields named in UPDATABLE (on an open transaction). A new phone number is
    sealed (KeyDestroyedError if the account's key was destroyed)."""
    unknown = set(changes) - UPDATABLE
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    if not changes:
        return await get_account(conn, keyring, org_id, account_id)
    changes = await seal_personal(conn, keyring, account_id, changes)
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
    return _account(row, await _keys_of(conn, keyring, row))


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


def _refuse_cancelled(account: Account) -> None:
    """A cancelled account is not managed any more: only the purge changes it."""
    if account.status == "cancelled":
        raise CancellationError(
            "this account was cancelled: only the purge changes it", "cancelled"
        )


async def _update_member(
    conn: Any,
    keyring: Keyring,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    changes: dict[str, Any],
    by: AuditActor,
    at: datetime,
) -> Account:
    before = await lock_account(conn, keyring, org_id, account_id)
    _refuse_cancelled(before)
    after = await update_account(conn, keyring, org_id, account_id, changes)
    await append(conn, correction_events(before, after, by), at)
    return after


async def _deactivate(
    conn: Any,
    keyring: Keyring,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    by: AuditActor,
    at: datetime,
) -> Account:
    _refuse_cancelled(await lock_account(conn, keyring, org_id, account_id))
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
    return _account(row, await _keys_of(conn, keyring, row))


class AccountStore:
    def __init__(self, db: Database, keyring: Keyring) -> None:
        self._db = db
        self._keyring = keyring

    async def add(self, org_id: uuid.UUID, new: NewAccount) -> Account:
        """ConflictError for a taken account name or email; NotFoundError for a department
        outside the org."""
        return await self._db.transaction(insert_account, self._keyring, org_id, new)

    async def get(self, org_id: uuid.UUID, account_id: uuid.UUID) -> Account:
        """NotFoundError unless the account exists in `org_id`."""
        return await self._db.read(get_account, self._keyring, org_id, account_id)

    async def find_for_login(self, email: str) -> tuple[Account, bytes] | None:
        """The account with this work email (any case) and its password hash."""
        return await self._db.transaction(_find_for_login, self._keyring, email)

    async def password_hash(self, account_id: uuid.UUID) -> bytes:
        return await self._db.transaction(_password_hash, account_id)

    async def directory(
        self, org_id: uuid.UUID, after: tuple[str, uuid.UUID] | None, limit: int
    ) -> list[Account]:
        """Members of `org_id` ordered by display name, after the keyset `after`."""
        return await self._db.transaction(_list, self._keyring, org_id, after, limit)

    async def update(
        self, org_id: uuid.UUID, account_id: uuid.UUID, changes: dict[str, Any]
    ) -> Account:
        """Change fields named in UPDATABLE. ConflictError / NotFoundError as for `add`."""
        return await self._db.transaction(
            update_account, self._keyring, org_id, account_id, changes
        )

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
        return await self._db.transaction(
            _update_member, self._keyring, org_id, account_id, changes, by, at
        )

    async def deactivate(
        self, org_id: uuid.UUID, account_id: uuid.UUID, by: AuditActor, at: datetime
    ) -> Account:
        """Deactivate the member and revoke every token of theirs, in one transaction that
        records it in the audit log (done by `by`)."""
        return await self._db.transaction(_deactivate, self._keyring, org_id, account_id, by, at)

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
