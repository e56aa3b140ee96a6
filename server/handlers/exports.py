"""The access summary and data exports: what obrol holds on me, and a copy of it.

Both need a fresh re-authentication (`require_fresh`). The summary counts every category
of storage/personal_data.py and quotes, for each, the retention schedule's periods
(server/retention.py); the export archive holds one JSON file per category of the same
list, so the two cannot disagree. An organization's owners and admins export its data the
same way (scope `org`), e.g. to move it elsewhere before the organization is deleted.

Jobs are visible to whoever asked for them (anyone else: not_found). A ready job shows a
download link, new on every look (256 random bits; only its hash is kept); any link of a
job works once in all, until `export_link_ttl_s` after it was ready.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from server.errors import ApiError, ApiErrorCode, forbidden, not_found
from server.handlers.access import Actor, require_fresh, require_org
from server.retention import periods
from server.services import Services
from storage.export_archive import open_archive
from storage.exports import ExportJob
from storage.personal_data import PERSON, count_all

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobView:
    job: ExportJob
    token: str | None  # a new download link's token, when the job is downloadable


@dataclass(frozen=True, slots=True)
class Download:
    job: ExportJob
    key: bytes
    source: Any  # the archive file, open (storage.export_archive.read_archive reads it)


class ExportHandler:
    def __init__(self, services: Services) -> None:
        self._s = services

    async def summary(self, actor: Actor) -> list[dict[str, Any]]:
        """Every category held on the actor: its name, what it is, count (and bytes for
        files), and how long it is kept."""
        require_fresh(actor, self._s.clock())
        counts = await self._s.db.transaction(count_all, PERSON, actor.account_id)
        words = periods(self._s.settings)
        out = []
        for category, count in zip(PERSON, counts, strict=True):
            item: dict[str, Any] = {
                "name": category.name,
                "what": category.what,
                "count": count.count,
            }
            if count.bytes is not None:
                item["bytes"] = count.bytes
            item["retention"] = [{"rule": r, "period": words[r]} for r in category.retention]
            out.append(item)
        return out

    async def request(self, actor: Actor) -> ExportJob:
        """Queue an export of the actor's own data."""
        require_fresh(actor, self._s.clock())
        return await self._queue(actor, "account")

    async def request_org(self, actor: Actor, org_id: uuid.UUID) -> ExportJob:
        """Queue an export of the organization's data (owners and admins only)."""
        require_org(actor, org_id)
        if not actor.is_admin:
            raise forbidden("only the organization's owners and admins export its data")
        require_fresh(actor, self._s.clock())
        return await self._queue(actor, "org")

    async def _queue(self, actor: Actor, scope: str) -> ExportJob:
        job = await self._s.exports.create(
            actor.org_id, actor.account_id, scope, self._s.clock(), actor.by
        )
        self._s.export_nudge.set()
        logger.info("export %s (%s) queued in org %s", job.id, scope, actor.org_id)
        return job

    async def get(self, actor: Actor, export_id: uuid.UUID) -> JobView:
        job = await self._s.exports.get(export_id)
        if job.account_id != actor.account_id:
            raise not_found("no such export")
        return await self._view(job)

    async def mine(self, actor: Actor, before: uuid.UUID | None, limit: int) -> list[JobView]:
        jobs = await self._s.exports.mine(actor.account_id, before, limit)
        return [await self._view(job) for job in jobs]

    async def _view(self, job: ExportJob) -> JobView:
        now = self._s.clock()
        if not job.downloadable(now):
            return JobView(job, None)
        token = secrets.token_urlsafe(32)  # 256 bits
        await self._s.exports.add_link(job, token, now)
        return JobView(job, token)

    async def download(self, token: str) -> Download:
        """The archive behind a link, used up now. not_found for an unknown link; gone
        for one used, expired or erased."""
        if not 20 <= len(token) <= 100:
            raise not_found("no such download link")
        job, key = await self._s.exports.take_download(token, self._s.clock())
        try:
            source = await open_archive(self._s.archives.path(job.id, job.attempt))
        except FileNotFoundError:  # deleted by hand, or lost with a disk
            logger.error("the archive of export %s is missing", job.id)
            raise ApiError(ApiErrorCode.GONE, "the archive is gone; ask for a new export") from None
        logger.info("export %s downloaded", job.id)
        return Download(job, key, source)
