"""Push registrations (one token per device, one device per token), quiet hours and mutes."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.database import Database
from storage.errors import NotFoundError
from storage.stream import lock_stream

logger = logging.getLogger(__name__)

COLUMNS = """device_id, provider, token, environment, topic, project, preview, created_at,
    updated_at, disabled_at, disabled_reason, provider_timestamp, last_result_at, last_outcome,
    last_status, last_reason"""


@dataclass(frozen=True, slots=True)
class Registration:
    device_id: uuid.UUID
    provider: str
    token: str
    environment: str | None
    topic: str | None
    project: str | None
    preview: bool
    created_at: datetime
    updated_at: datetime
    disabled_at: datetime | None
    disabled_reason: str | None
    provider_timestamp: datetime | None
    last_result_at: datetime | None  # the provider's latest answer, whatever it was
    last_outcome: str | None
    last_status: int | None
    last_reason: str | None


@dataclass(frozen=True, slots=True)
class NewRegistration:
    provider: str
    token: str
    environment: str | None
    topic: str | None
    project: str | None
    preview: bool


@dataclass(frozen=True, slots=True)
class PushResult:
    at: datetime
    kind: str
    outcome: str
    status: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class PushSettings:
    dnd_start_min: int | None
    dnd_end_min: int | None
    time_zone: str


async def drop_registrations(conn: Any, device_ids: list[uuid.UUID]) -> None:
    """Inside the transaction that revokes, signs out or logs out devices: their push
    registrations go too (with their pending jobs, dead letters and results). Takes the
    stream lock (see storage.push_outbox on locks): a message commit then either finds the
    registration and its job goes with it, or does not find it."""
    if not device_ids:
        return
    await lock_stream(conn)
    await conn.execute(
        """DELETE FROM push_registrations WHERE device_id IN (
               SELECT device_id FROM push_registrations WHERE device_id = ANY($1::uuid[])
               ORDER BY device_id FOR UPDATE)""",
        device_ids,
    )


async def _register(conn: Any, device_id: uuid.UUID, new: NewRegistration) -> Registration:
    await lock_stream(conn)  # after a concurrent revoke or sign-out, never before it
    live = await conn.fetchval(
        """SELECT 1 FROM devices d JOIN accounts a ON a.id = d.account_id
           WHERE d.id = $1 AND d.revoked_at IS NULL AND d.signed_out_at IS NULL
             AND a.status = 'active'""",
        device_id,
    )
    if live is None:  # revoked, signed out or deactivated meanwhile: nothing to wake
        raise NotFoundError("device")
    # One token, one device: the token moves here from whichever device held it.
    moved = await conn.fetch(
        """SELECT device_id FROM push_registrations
           WHERE provider = $1 AND token = $2 AND device_id <> $3""",
        new.provider,
        new.token,
        device_id,
    )
    if moved:
        logger.info(
            "push token moved from device %s to device %s", moved[0]["device_id"], device_id
        )
    await drop_registrations(conn, [r["device_id"] for r in moved])
    row = await conn.fetchrow(
        f"""INSERT INTO push_registrations AS r (device_id, provider, token, environment,
                topic, project, preview)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (device_id) DO UPDATE SET provider = EXCLUDED.provider,
                token = EXCLUDED.token, environment = EXCLUDED.environment,
                topic = EXCLUDED.topic, project = EXCLUDED.project,
                preview = EXCLUDED.preview, updated_at = now(), disabled_at = NULL,
                disabled_reason = NULL, provider_timestamp = NULL, last_result_at = NULL,
                last_outcome = NULL, last_status = NULL, last_reason = NULL
            RETURNING {COLUMNS}""",
        device_id,
        new.provider,
        new.token,
        new.environment,
        new.topic,
        new.project,
        new.preview,
    )
    return Registration(**dict(row))


async def _get(conn: Any, device_id: uuid.UUID) -> Registration | None:
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM push_registrations WHERE device_id = $1", device_id
    )
    return None if row is None else Registration(**dict(row))


async def _results(conn: Any, device_id: uuid.UUID, limit: int) -> list[PushResult]:
    rows = await conn.fetch(
        """SELECT at, kind, outcome, status, reason FROM push_results
           WHERE device_id = $1 ORDER BY id DESC LIMIT $2""",
        device_id,
        limit,
    )
    return [PushResult(**dict(r)) for r in rows]


async def _device_org(conn: Any, device_id: uuid.UUID) -> uuid.UUID | None:
    org: uuid.UUID | None = await conn.fetchval(
        "SELECT a.org_id FROM devices d JOIN accounts a ON a.id = d.account_id WHERE d.id = $1",
        device_id,
    )
    return org


async def _set_settings(conn: Any, account_id: uuid.UUID, settings: PushSettings) -> None:
    await conn.execute(
        """INSERT INTO push_settings (account_id, dnd_start_min, dnd_end_min, time_zone)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (account_id) DO UPDATE SET dnd_start_min = EXCLUDED.dnd_start_min,
               dnd_end_min = EXCLUDED.dnd_end_min, time_zone = EXCLUDED.time_zone,
               updated_at = now()""",
        account_id,
        settings.dnd_start_min,
        settings.dnd_end_min,
        settings.time_zone,
    )


async def _settings(conn: Any, account_id: uuid.UUID) -> PushSettings:
    row = await conn.fetchrow(
        "SELECT dnd_start_min, dnd_end_min, time_zone FROM push_settings WHERE account_id = $1",
        account_id,
    )
    return PushSettings(None, None, "UTC") if row is None else PushSettings(**dict(row))


async def _mute(
    conn: Any, account_id: uuid.UUID, conversation_id: uuid.UUID, until: datetime | None
) -> None:
    """Mute a conversation the account is an active member of; NotFoundError otherwise."""
    member = await conn.fetchval(
        """SELECT 1 FROM conversation_members
           WHERE conversation_id = $1 AND account_id = $2 AND left_pos IS NULL""",
        conversation_id,
        account_id,
    )
    if member is None:
        raise NotFoundError("conversation")
    await conn.execute(
        """INSERT INTO conversation_mutes (account_id, conversation_id, until)
           VALUES ($1, $2, $3)
           ON CONFLICT (account_id, conversation_id) DO UPDATE SET until = EXCLUDED.until""",
        account_id,
        conversation_id,
        until,
    )


async def _unmute(conn: Any, account_id: uuid.UUID, conversation_id: uuid.UUID) -> None:
    await conn.execute(
        "DELETE FROM conversation_mutes WHERE account_id = $1 AND conversation_id = $2",
        account_id,
        conversation_id,
    )


async def _mutes(conn: Any, account_id: uuid.UUID) -> dict[uuid.UUID, datetime | None]:
    rows = await conn.fetch(
        """SELECT conversation_id, until FROM conversation_mutes
           WHERE account_id = $1 AND (until IS NULL OR until > now())
           ORDER BY conversation_id""",
        account_id,
    )
    return {r["conversation_id"]: r["until"] for r in rows}


class PushRegistrationStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def register(self, device_id: uuid.UUID, new: NewRegistration) -> Registration:
        """Create or replace the device's registration (a disabled one comes back to life);
        the same token held by another device moves to this one. NotFoundError if the
        device was revoked or signed out, or its account deactivated."""
        return await self._db.transaction(_register, device_id, new)

    async def get(self, device_id: uuid.UUID) -> Registration | None:
        return await self._db.read(_get, device_id)

    async def unregister(self, device_id: uuid.UUID) -> None:
        await self._db.transaction(drop_registrations, [device_id])

    async def results(self, device_id: uuid.UUID, limit: int = 20) -> list[PushResult]:
        """The device's latest provider answers other than acceptances, newest first."""
        return await self._db.read(_results, device_id, limit)

    async def device_org(self, device_id: uuid.UUID) -> uuid.UUID | None:
        """The organization a device belongs to (None: no such device)."""
        return await self._db.read(_device_org, device_id)

    async def settings(self, account_id: uuid.UUID) -> PushSettings:
        return await self._db.read(_settings, account_id)

    async def set_settings(self, account_id: uuid.UUID, settings: PushSettings) -> None:
        await self._db.transaction(_set_settings, account_id, settings)

    async def mute(
        self, account_id: uuid.UUID, conversation_id: uuid.UUID, until: datetime | None
    ) -> None:
        await self._db.transaction(_mute, account_id, conversation_id, until)

    async def unmute(self, account_id: uuid.UUID, conversation_id: uuid.UUID) -> None:
        await self._db.transaction(_unmute, account_id, conversation_id)

    async def mutes(self, account_id: uuid.UUID) -> dict[uuid.UUID, datetime | None]:
        return await self._db.read(_mutes, account_id)


@dataclass(frozen=True, slots=True)
class DeadToken:
    """A provider said this device's token is dead (outcome "disable")."""

    device_id: uuid.UUID
    token: str  # the token the push went to
    reason: str
    at: datetime | None  # APNs: since when the token is no longer valid


async def disable_dead_tokens(
    conn: Any, dead: list[DeadToken]
) -> tuple[set[uuid.UUID], set[uuid.UUID]]:
    """Inside a push settlement (the registrations locked): disable the registrations whose
    token a provider called dead, and drop their pending jobs, message and notice alike.
    Only the token the provider spoke of: the app may have registered a new one meanwhile,
    and (Apple) a token registered after the time it stopped being valid is good again.
    Returns (devices disabled, devices whose token was renewed meanwhile); the caller
    releases the renewed devices' jobs and dead-letters the rest's."""
    if not dead:
        return set(), set()
    disabled = await conn.fetch(
        """UPDATE push_registrations r SET disabled_at = now(), disabled_reason = s.reason,
               provider_timestamp = s.at
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[])
               AS s(device_id, token, reason, at)
           WHERE r.device_id = s.device_id AND r.token = s.token
             AND (s.at IS NULL OR r.updated_at <= s.at)
           RETURNING r.device_id""",
        [d.device_id for d in dead],
        [d.token for d in dead],
        [d.reason for d in dead],
        [d.at for d in dead],
    )
    gone = {r["device_id"] for r in disabled}
    await conn.execute("DELETE FROM push_jobs WHERE device_id = ANY($1::uuid[])", list(gone))
    await conn.execute("DELETE FROM push_notice_jobs WHERE device_id = ANY($1::uuid[])", list(gone))
    tokens = {
        r["device_id"]: r["token"]
        for r in await conn.fetch(
            "SELECT device_id, token FROM push_registrations WHERE device_id = ANY($1)",
            [d.device_id for d in dead if d.device_id not in gone],
        )
    }
    renewed = {d.device_id for d in dead if tokens.get(d.device_id, d.token) != d.token}
    return gone, renewed
