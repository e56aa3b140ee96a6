"""Export jobs: durable rows claimed by workers with a lease, and their download links.

A job is `queued` when asked for, `running` while a worker holds its lease, `ready` once
its archive is written, `failed` if it could not be, and `expired` once its archive is
deleted (its link was used, or it expired). Each job is a tracked data-rights request
(kind `export`, or `org_export` for an organization's), answered when the archive is ready.

Workers (any process) claim jobs with `FOR UPDATE SKIP LOCKED`: a queued job, or a running
one whose lease ran out (its worker died). Each claim moves `attempt` on, and every later
update of the worker names the attempt it holds, so a worker whose job was taken over
finds nothing to update and stops (`LeaseLostError`). A claim past MAX_ATTEMPTS fails the
job instead of running it again.

Links: only the SHA-256 of a token is stored. Any link of a job works until the first
download (single use: the archive is then used up) and until `expires_at`; after either,
`take_download` raises ExportError("gone"); an unknown token is NotFoundError.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from storage.audit import ANONYMOUS, AuditActor, AuditEvent, append
from storage.database import Database
from storage.errors import NotFoundError, StorageError
from storage.keyring import KeyDestroyedError, Keyring
from storage.requests import open_request, set_status
from storage.sealing import EXPORT_KEY, UnreadableError, ad, open_sealed, seal

MAX_ATTEMPTS = 3
SCOPE_KINDS = {"account": "export", "org": "org_export"}  # the request each scope opens

COLUMNS = """id, org_id, account_id, scope, request_id, status, requested_at, attempt,
    lease_until, items_done, items_total, bytes_done, bytes_total, archive_bytes, ready_at,
    expires_at, downloaded_at, deleted_at, error"""


class ExportError(StorageError):
    """`reason` "gone": the archive was downloaded already, expired or was erased."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class LeaseLostError(StorageError):
    """Another worker claimed the job meanwhile (this one's lease ran out): stop."""


@dataclass(frozen=True, slots=True)
class ExportJob:
    id: uuid.UUID
    org_id: uuid.UUID
    account_id: uuid.UUID
    scope: str
    request_id: uuid.UUID | None
    status: str
    requested_at: datetime
    attempt: int
    lease_until: datetime | None
    items_done: int
    items_total: int | None
    bytes_done: int
    bytes_total: int | None
    archive_bytes: int | None
    ready_at: datetime | None
    expires_at: datetime | None
    downloaded_at: datetime | None
    deleted_at: datetime | None
    error: str | None

    @property
    def subject(self) -> uuid.UUID:
        """Whose data: the person's account, or the organization."""
        return self.account_id if self.scope == "account" else self.org_id

    def downloadable(self, now: datetime) -> bool:
        return (
            self.status == "ready"
            and self.downloaded_at is None
            and self.expires_at is not None
            and now < self.expires_at
        )


def _job(row: Any) -> ExportJob:
    return ExportJob(**dict(row))


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def _create(
    conn: Any, org_id: uuid.UUID, account_id: uuid.UUID, scope: str, at: datetime, by: AuditActor
) -> ExportJob:
    request = await open_request(conn, org_id, account_id, SCOPE_KINDS[scope], at)
    export_id = uuid.uuid4()
    row = await conn.fetchrow(
        f"""INSERT INTO exports (id, org_id, account_id, scope, request_id, requested_at)
            VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}""",
        export_id,
        org_id,
        account_id,
        scope,
        request.id,
        at,
    )
    event = AuditEvent(
        "export_requested",
        by,
        subject_id=account_id if scope == "account" else None,
        org_id=org_id,
        detail={"what": scope, "export_id": str(export_id)},
    )
    await append(conn, [event], at)
    return _job(row)


async def _claim(conn: Any, now: datetime, lease_s: float) -> ExportJob | None:
    """The next job to work on, leased to the caller; jobs past MAX_ATTEMPTS fail."""
    while True:
        row = await conn.fetchrow(
            f"""UPDATE exports SET status = 'running', attempt = attempt + 1,
                    lease_until = $2, items_done = 0, bytes_done = 0
                WHERE id = (
                    SELECT id FROM exports
                    WHERE status = 'queued' OR (status = 'running' AND lease_until < $1)
                    ORDER BY requested_at LIMIT 1 FOR UPDATE SKIP LOCKED)
                RETURNING {COLUMNS}""",
            now,
            now + timedelta(seconds=lease_s),
        )
        if row is None:
            return None
        job = _job(row)
        if job.attempt > MAX_ATTEMPTS:
            await _fail(conn, job.id, job.attempt, "the export was interrupted too often", now)
            continue
        if job.request_id is not None and job.attempt == 1:
            await set_status(conn, job.request_id, "in_progress", now)
        return job


async def _progress(
    conn: Any,
    export_id: uuid.UUID,
    attempt: int,
    items_done: int,
    bytes_done: int,
    lease_until: datetime,
    items_total: int | None,
    bytes_total: int | None,
) -> None:
    found = await conn.fetchval(
        """UPDATE exports SET items_done = $3, bytes_done = $4, lease_until = $5,
               items_total = coalesce($6, items_total), bytes_total = coalesce($7, bytes_total)
           WHERE id = $1 AND attempt = $2 AND status = 'running' RETURNING 1""",
        export_id,
        attempt,
        items_done,
        bytes_done,
        lease_until,
        items_total,
        bytes_total,
    )
    if found is None:
        raise LeaseLostError("another worker took the export over")


async def _finish(
    conn: Any,
    keyring: Keyring,
    job: ExportJob,
    archive_key: bytes,
    archive_bytes: int,
    at: datetime,
    expires_at: datetime,
) -> None:
    keys, destroyed = await keyring.for_write(conn, [job.account_id])
    if destroyed:
        raise KeyDestroyedError("the requester's data was erased")
    wrapped = seal(keys[job.account_id], archive_key, ad(EXPORT_KEY, job.id))
    found = await conn.fetchval(
        """UPDATE exports SET status = 'ready', archive_key = $3, archive_bytes = $4,
               ready_at = $5, expires_at = $6, lease_until = NULL,
               items_done = coalesce(items_total, items_done),
               bytes_done = coalesce(bytes_total, bytes_done)
           WHERE id = $1 AND attempt = $2 AND status = 'running' RETURNING 1""",
        job.id,
        job.attempt,
        wrapped,
        archive_bytes,
        at,
        expires_at,
    )
    if found is None:
        raise LeaseLostError("another worker took the export over")
    if job.request_id is not None:
        note = f"the archive is ready to download until {expires_at:%Y-%m-%d %H:%M} UTC"
        await set_status(conn, job.request_id, "done", at, note=note)


async def _fail(conn: Any, export_id: uuid.UUID, attempt: int, error: str, at: datetime) -> bool:
    request_id = await conn.fetchval(
        """UPDATE exports SET status = 'failed', error = $3, lease_until = NULL
           WHERE id = $1 AND attempt = $2 AND status = 'running' RETURNING request_id""",
        export_id,
        attempt,
        error,
    )
    if request_id is None:
        return False
    open_still = await conn.fetchval(
        "SELECT closed_at IS NULL FROM rights_requests WHERE id = $1", request_id
    )
    if open_still:
        await set_status(conn, request_id, "refused", at, note=f"the export failed: {error}")
    return True


async def _release(conn: Any, export_id: uuid.UUID, attempt: int) -> None:
    """Give a job back (this server is stopping): the next claim starts it over."""
    await conn.execute(
        """UPDATE exports SET status = 'queued', lease_until = NULL, attempt = attempt - 1
           WHERE id = $1 AND attempt = $2 AND status = 'running'""",
        export_id,
        attempt,
    )


async def _mine(conn: Any, account_id: uuid.UUID, before: uuid.UUID | None, limit: int) -> Any:
    return await conn.fetch(
        f"""SELECT {COLUMNS} FROM exports
            WHERE account_id = $1 AND ($2::uuid IS NULL OR (requested_at, id) < (
                SELECT requested_at, id FROM exports WHERE id = $2 AND account_id = $1))
            ORDER BY requested_at DESC, id DESC LIMIT $3""",
        account_id,
        before,
        limit,
    )


async def _get(conn: Any, export_id: uuid.UUID) -> Any:
    return await conn.fetchrow(f"SELECT {COLUMNS} FROM exports WHERE id = $1", export_id)


async def _add_link(conn: Any, export_id: uuid.UUID, digest: bytes, at: datetime) -> None:
    await conn.execute(
        "INSERT INTO export_links (token_hash, export_id, created_at) VALUES ($1, $2, $3)",
        digest,
        export_id,
        at,
    )


async def _take_download(
    conn: Any, keyring: Keyring, digest: bytes, now: datetime
) -> tuple[ExportJob, bytes]:
    row = await conn.fetchrow(
        f"""SELECT {COLUMNS}, archive_key FROM exports
            WHERE id = (SELECT export_id FROM export_links WHERE token_hash = $1)
            FOR UPDATE""",
        digest,
    )
    if row is None:
        raise NotFoundError("no such download link")
    job = _job({k: v for k, v in row.items() if k != "archive_key"})
    if not job.downloadable(now) or row["archive_key"] is None:
        raise ExportError("this download link was used already or has expired", "gone")
    key = (await keyring.for_read(conn, [job.account_id])).get(job.account_id)
    if key is None:
        raise ExportError("the archive was erased with its owner's data", "gone")
    try:
        archive_key = open_sealed(key, bytes(row["archive_key"]), ad(EXPORT_KEY, job.id))
    except UnreadableError:
        raise ExportError("the archive cannot be opened any more", "gone") from None
    await conn.execute("UPDATE exports SET downloaded_at = $2 WHERE id = $1", job.id, now)
    event = AuditEvent(
        "export_downloaded",
        ANONYMOUS,  # whoever holds the link
        subject_id=job.account_id if job.scope == "account" else None,
        org_id=job.org_id,
        detail={"what": job.scope, "export_id": str(job.id)},
    )
    await append(conn, [event], now)
    return job, archive_key


async def _archives_due(conn: Any, now: datetime, limit: int) -> list[tuple[uuid.UUID, int]]:
    rows = await conn.fetch(
        """SELECT id, attempt FROM exports
           WHERE ready_at IS NOT NULL AND deleted_at IS NULL
             AND (expires_at <= $1 OR downloaded_at IS NOT NULL)
           ORDER BY expires_at LIMIT $2""",
        now,
        limit,
    )
    return [(r["id"], r["attempt"]) for r in rows]


async def _mark_deleted(conn: Any, ids: list[uuid.UUID], at: datetime) -> None:
    await conn.execute(
        """UPDATE exports SET deleted_at = $2, status = 'expired', archive_key = NULL
           WHERE id = ANY($1::uuid[])""",
        ids,
        at,
    )


async def org_export_ready_since(conn: Any, org_id: uuid.UUID, since: datetime) -> bool:
    """Whether the organization has an export that was ready (downloaded or not) at
    `since` or later (on an open transaction)."""
    return bool(
        await conn.fetchval(
            """SELECT EXISTS (SELECT 1 FROM exports WHERE org_id = $1 AND scope = 'org'
                   AND ready_at >= $2)""",
            org_id,
            since,
        )
    )


async def _of_account(conn: Any, account_id: uuid.UUID) -> list[uuid.UUID]:
    rows = await conn.fetch("SELECT id FROM exports WHERE account_id = $1", account_id)
    return [r["id"] for r in rows]


class ExportStore:
    def __init__(self, db: Database, keyring: Keyring) -> None:
        self._db = db
        self._keyring = keyring

    async def create(
        self, org_id: uuid.UUID, account_id: uuid.UUID, scope: str, at: datetime, by: AuditActor
    ) -> ExportJob:
        """Queue an export of the account's (`scope` "account") or the organization's
        ("org") data asked for by `account_id`; opens its tracked request and records
        `export_requested`, all in one transaction."""
        return await self._db.transaction(_create, org_id, account_id, scope, at, by)

    async def claim(self, now: datetime, lease_s: float) -> ExportJob | None:
        """The next queued job (or one whose worker's lease ran out), leased until
        `now + lease_s`; None when there is none."""
        return await self._db.transaction(_claim, now, lease_s)

    async def progress(
        self,
        job: ExportJob,
        items_done: int,
        bytes_done: int,
        lease_until: datetime,
        items_total: int | None = None,
        bytes_total: int | None = None,
    ) -> None:
        """Record progress and renew the lease; LeaseLostError if the job was taken over."""
        await self._db.read(
            _progress,
            job.id,
            job.attempt,
            items_done,
            bytes_done,
            lease_until,
            items_total,
            bytes_total,
        )

    async def finish(
        self,
        job: ExportJob,
        archive_key: bytes,
        archive_bytes: int,
        at: datetime,
        expires_at: datetime,
    ) -> None:
        """The archive is written: the job is ready (its key sealed under the requester's
        data key) and its request answered. LeaseLostError if it was taken over;
        KeyDestroyedError if the requester's key is gone."""
        await self._db.transaction(
            _finish, self._keyring, job, archive_key, archive_bytes, at, expires_at
        )

    async def fail(self, job: ExportJob, error: str, at: datetime) -> bool:
        """The job failed (`error`: words for the person, no contents); its request is
        refused with it. False if the job was taken over meanwhile."""
        return await self._db.transaction(_fail, job.id, job.attempt, error, at)

    async def release(self, job: ExportJob) -> None:
        """Give the job back to the queue at once (this process is stopping)."""
        await self._db.read(_release, job.id, job.attempt)

    async def mine(
        self, account_id: uuid.UUID, before: uuid.UUID | None, limit: int
    ) -> list[ExportJob]:
        """The jobs the account asked for, newest first, after the page ending at `before`."""
        return [_job(r) for r in await self._db.read(_mine, account_id, before, limit)]

    async def get(self, export_id: uuid.UUID) -> ExportJob:
        """NotFoundError for an unknown id."""
        row = await self._db.read(_get, export_id)
        if row is None:
            raise NotFoundError("no such export")
        return _job(row)

    async def add_link(self, job: ExportJob, token: str, at: datetime) -> None:
        """Keep the hash of a new download link of the job."""
        await self._db.read(_add_link, job.id, token_hash(token), at)

    async def take_download(self, token: str, now: datetime) -> tuple[ExportJob, bytes]:
        """Use the link up (and every other link of its job): the job and its archive's
        key; records `export_downloaded`. NotFoundError for an unknown token,
        ExportError("gone") for one used, expired or erased."""
        return await self._db.transaction(_take_download, self._keyring, token_hash(token), now)

    async def of_account(self, account_id: uuid.UUID) -> list[uuid.UUID]:
        """Every export the account asked for (its own or its organization's): the purge
        deletes their archives before the rows go with the account."""
        return await self._db.read(_of_account, account_id)

    async def archives_due(self, now: datetime, limit: int) -> list[tuple[uuid.UUID, int]]:
        """Up to `limit` archives to delete (downloaded, or past `expires_at`): (id,
        attempt). Two processes may both find one: deleting a file twice is harmless."""
        return await self._db.read(_archives_due, now, limit)

    async def mark_deleted(self, ids: list[uuid.UUID], at: datetime) -> None:
        """The archives of `ids` are deleted: the jobs are `expired`, their keys dropped."""
        await self._db.read(_mark_deleted, ids, at)


async def org_exported_since(db: Database, org_id: uuid.UUID, since: datetime) -> bool:
    """Whether the organization has an export that was ready (downloaded or not) at
    `since` or later: what deleting an organization may require first."""
    return await db.read(org_export_ready_since, org_id, since)
