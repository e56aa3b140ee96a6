"""Enrolled devices: each holds its own Ed25519 key; the server never sees device secrets."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.database import Database
from storage.errors import ConflictError, NotFoundError
from storage.policies import gate_columns
from storage.push_registrations import drop_registrations

COLUMNS = "id, account_id, name, platform, public_key, created_at, last_seen_at, revoked_at"


@dataclass(frozen=True, slots=True)
class Device:
    id: uuid.UUID
    account_id: uuid.UUID
    name: str
    platform: str
    public_key: bytes
    created_at: datetime
    last_seen_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the gateway needs to admit a device: its key and whether it may connect."""

    device_id: uuid.UUID
    account_id: uuid.UUID
    org_id: uuid.UUID
    public_key: bytes
    revoked: bool  # the device was revoked (it must wipe itself)
    account_active: bool  # its account is active (not deactivated, not waiting for a guardian)
    guardian_consent_required: bool  # its account is a minor's, waiting for a guardian's consent
    password_change_required: bool  # the account must change its initial password first
    signed_out: bool  # its session was ended elsewhere: it must log in again
    material_policy: int = 0  # the org's newest material policy version (storage.policies)
    accepted_policy: int = 0  # the newest one its account accepted


def _device(row: Any) -> Device:
    return Device(
        row["id"],
        row["account_id"],
        row["name"],
        row["platform"],
        bytes(row["public_key"]),
        row["created_at"],
        row["last_seen_at"],
        row["revoked_at"],
    )


async def enroll_device(
    conn: Any, account_id: uuid.UUID, name: str, platform: str, public_key: bytes
) -> Device:
    """Enroll a key for the account, or return the live device that already holds it.

    ConflictError if the key belongs to another account or to a revoked device.
    """
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM devices WHERE public_key = $1", public_key)
    if row is not None:
        if row["account_id"] != account_id or row["revoked_at"] is not None:
            raise ConflictError("this device key cannot be enrolled", field="public_key")
        return _device(row)
    row = await conn.fetchrow(
        f"""INSERT INTO devices (id, account_id, name, platform, public_key)
            VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}""",
        uuid.uuid4(),
        account_id,
        name,
        platform,
        public_key,
    )
    return _device(row)


async def _list(conn: Any, account_id: uuid.UUID) -> list[Device]:
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM devices WHERE account_id = $1 ORDER BY created_at, id",
        account_id,
    )
    return [_device(r) for r in rows]


_CREDENTIALS = f"""SELECT d.id, d.account_id, a.org_id, d.public_key,
        d.revoked_at IS NOT NULL AS revoked, a.status = 'active' AS account_active,
        a.status = 'pending_guardian' AS guardian_consent_required,
        a.password_change_required, d.signed_out_at IS NOT NULL AS signed_out,
        {gate_columns("a.org_id", "a.id")}
    FROM devices d JOIN accounts a ON a.id = d.account_id"""


def _credentials_of(row: Any) -> Credentials:
    return Credentials(
        row["id"],
        row["account_id"],
        row["org_id"],
        bytes(row["public_key"]),
        row["revoked"],
        row["account_active"],
        row["guardian_consent_required"],
        row["password_change_required"],
        row["signed_out"],
        row["material_policy"],
        row["accepted_policy"],
    )


async def _credentials(conn: Any, device_id: uuid.UUID) -> Credentials:
    row = await conn.fetchrow(f"{_CREDENTIALS} WHERE d.id = $1", device_id)
    if row is None:
        raise NotFoundError("no such device")
    return _credentials_of(row)


async def _credentials_many(conn: Any, device_ids: list[uuid.UUID]) -> list[Credentials]:
    rows = await conn.fetch(f"{_CREDENTIALS} WHERE d.id = ANY($1::uuid[])", device_ids)
    return [_credentials_of(row) for row in rows]


async def _standing_changed(conn: Any, since: datetime | None) -> tuple[datetime, list[uuid.UUID]]:
    row = await conn.fetchrow(
        """SELECT now() AS at, CASE WHEN $1::timestamptz IS NULL THEN '{}'::uuid[] ELSE ARRAY(
               SELECT id FROM devices WHERE standing_changed_at > $1
               UNION
               SELECT d.id FROM accounts a JOIN devices d ON d.account_id = a.id
               WHERE a.standing_changed_at > $1) END AS ids""",
        since,
    )
    return row["at"], list(row["ids"])


async def _revoke(conn: Any, account_id: uuid.UUID, device_id: uuid.UUID) -> Device:
    row = await conn.fetchrow(
        f"""UPDATE devices SET revoked_at = coalesce(revoked_at, now())
            WHERE id = $1 AND account_id = $2 RETURNING {COLUMNS}""",
        device_id,
        account_id,
    )
    if row is None:
        raise NotFoundError("no such device")
    await conn.execute(
        "UPDATE auth_tokens SET revoked_at = now() WHERE device_id = $1 AND revoked_at IS NULL",
        device_id,
    )
    await drop_registrations(conn, [device_id])
    return _device(row)


async def _mark_seen(conn: Any, seen: dict[uuid.UUID, datetime]) -> None:
    await conn.execute(
        """UPDATE devices d SET last_seen_at = greatest(d.last_seen_at, s.at)
           FROM unnest($1::uuid[], $2::timestamptz[]) AS s(id, at) WHERE d.id = s.id""",
        list(seen),
        list(seen.values()),
    )


class DeviceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def enroll(
        self, account_id: uuid.UUID, name: str, platform: str, public_key: bytes
    ) -> Device:
        return await self._db.transaction(enroll_device, account_id, name, platform, public_key)

    async def list(self, account_id: uuid.UUID) -> list[Device]:
        return await self._db.transaction(_list, account_id)

    async def credentials(self, device_id: uuid.UUID) -> Credentials:
        """The device's key and whether it may connect, in one statement (the handshake's
        only read). Raises NotFoundError for an unknown device."""
        return await self._db.read(_credentials, device_id)

    async def credentials_many(
        self, device_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, Credentials]:
        """`credentials` of each of these devices that exists, in one statement."""
        found = await self._db.read(_credentials_many, list(device_ids))
        return {c.device_id: c for c in found}

    async def standing_changed(
        self, since: datetime | None
    ) -> tuple[datetime, Sequence[uuid.UUID]]:
        """The database's clock now, and the devices whose standing (their own, or their
        account's: what `credentials` says may stop them connecting) changed after `since`
        (none for None), as the database stamped it (migration 0024)."""
        return await self._db.read(_standing_changed, since)

    async def revoke(self, account_id: uuid.UUID, device_id: uuid.UUID) -> Device:
        """Revoke the account's device and every token bound to it, in one transaction."""
        return await self._db.transaction(_revoke, account_id, device_id)

    async def mark_seen(self, seen: dict[uuid.UUID, datetime]) -> None:
        """Record when devices were last connected (never moves a time back)."""
        await self._db.transaction(_mark_seen, seen)
