"""The export worker: claims queued export jobs and writes their archives.

Every server process runs `export_workers` of these. A worker claims a job with a lease
(storage/exports.py: `FOR UPDATE SKIP LOCKED`, so several processes never run the same
job), renews the lease with every progress update, and writes the archive from the
categories of storage/personal_data.py: one JSON file per category, read a page at a time,
then the bytes of every file the category lists, a chunk at a time, so memory stays flat
whatever the size. All zip and disk work runs in a worker thread, one call at a time.

A job whose worker died is taken over once its lease ran out and starts over from scratch
(a new file per attempt); a server that stops gives its job back at once. A job that fails
is marked `failed` and its request refused with a note (never with contents).
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import timedelta
from typing import Any

import trio

from server.services import Services
from storage.errors import DatabaseUnavailableError
from storage.export_archive import ArchiveWriter, SealedSink, new_archive_key
from storage.exports import ExportJob, LeaseLostError
from storage.keyring import KeyDestroyedError
from storage.personal_data import SCOPES, Category, count_all, read_page
from storage.sealing import UnreadableError

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5  # at most this often a progress update (and lease renewal)
BLOB_BATCH_BYTES = 1024 * 1024  # file bytes handed to the writer thread at once


class _Progress:
    """Counts what was written and tells the store now and then (renewing the lease)."""

    def __init__(self, services: Services, job: ExportJob) -> None:
        self._s = services
        self._job = job
        self.items = 0
        self.bytes = 0
        self._told = trio.current_time()

    async def tell(self, *, force: bool = False, **totals: int) -> None:
        if not force and trio.current_time() - self._told < PROGRESS_EVERY_S:
            return
        lease_until = self._s.clock() + timedelta(seconds=self._s.settings.export_lease_s)
        await self._s.exports.progress(
            self._job,
            self.items,
            self.bytes,
            lease_until,
            totals.get("items_total"),
            totals.get("bytes_total"),
        )
        self._told = trio.current_time()


async def _write_category(
    services: Services,
    job: ExportJob,
    writer: ArchiveWriter,
    category: Category,
    progress: _Progress,
) -> tuple[int, list[dict[str, Any]]]:
    """`<name>.json`, page by page: how many items, and the files to add (for a category
    of files: id, name, uploader, key holder's id)."""
    db, keyring = services.db, services.keyring
    limit = services.settings.export_page_rows
    await trio.to_thread.run_sync(writer.begin, f"{category.name}.json", True)
    await trio.to_thread.run_sync(writer.write, b"[")
    after: Any = None
    count = 0
    blobs: list[dict[str, Any]] = []
    while True:
        items, after = await db.read(read_page, keyring, category, job.subject, after, limit)
        if items:
            text = ",".join("\n " + json.dumps(item, ensure_ascii=False) for item in items)
            await trio.to_thread.run_sync(writer.write, (("," if count else "") + text).encode())
            count += len(items)
            progress.items += len(items)
            if category.blobs:
                blobs.extend(
                    {"id": i["id"], "path": i["archive_path"], "uploader_id": i["uploader_id"]}
                    for i in items
                    if i["archive_path"] is not None
                )
            await progress.tell()
        if after is None:
            break
    await trio.to_thread.run_sync(writer.write, b"\n]\n")
    await trio.to_thread.run_sync(writer.end)
    return count, blobs


async def _write_blob(
    services: Services, writer: ArchiveWriter, blob: dict[str, Any], progress: _Progress
) -> bool:
    """The file's bytes under its path; False if it is gone or does not open (listed in
    the archive's `missing_files`)."""
    record = await services.files.get(uuid.UUID(blob["id"]))
    if record.erased:
        return False
    await trio.to_thread.run_sync(writer.begin, blob["path"], False)
    batch: list[bytes] = []
    held = 0
    try:
        async for chunk in services.blobs.read(record.id, record.blob_key, BLOB_BATCH_BYTES):
            batch.append(chunk)
            held += len(chunk)
            if held >= BLOB_BATCH_BYTES:
                await trio.to_thread.run_sync(writer.write_many, batch)
                progress.bytes += held
                batch, held = [], 0
                await progress.tell()
    except (FileNotFoundError, UnreadableError) as exc:
        logger.error("file %s could not be exported: %s", record.id, type(exc).__name__)
        await trio.to_thread.run_sync(writer.end)
        return False
    await trio.to_thread.run_sync(writer.write_many, batch)
    progress.bytes += held
    await trio.to_thread.run_sync(writer.end)
    return True


async def write_archive(services: Services, job: ExportJob) -> None:
    """Write the job's archive and mark it ready (its request answered). LeaseLostError
    if another worker took it over; the file of this attempt is deleted on any failure."""
    categories = SCOPES[job.scope]
    counts = await services.db.transaction(count_all, categories, job.subject)
    progress = _Progress(services, job)
    await progress.tell(
        force=True,
        items_total=sum(c.count for c in counts),
        bytes_total=sum(c.bytes or 0 for c in counts),
    )
    folder = services.archives
    await trio.to_thread.run_sync(folder.delete, job.id)  # an earlier attempt's leftovers
    key = new_archive_key()
    fd = await trio.to_thread.run_sync(folder.create, job.id, job.attempt)
    writer = ArchiveWriter(SealedSink(fd, key, job.id), services.clock())
    finished = False
    try:
        manifest: list[dict[str, Any]] = []
        missing: list[str] = []
        for category in categories:
            count, blobs = await _write_category(services, job, writer, category, progress)
            manifest.append(
                {"name": category.name, "file": f"{category.name}.json", "count": count}
            )
            for blob in blobs:
                if not await _write_blob(services, writer, blob, progress):
                    missing.append(blob["id"])
        about = {
            "scope": job.scope,
            "subject_id": str(job.subject),
            "export_id": str(job.id),
            "created_at": services.clock().isoformat(),
            "categories": manifest,
            "missing_files": missing,
        }
        await trio.to_thread.run_sync(writer.add_json, "manifest.json", about)
        size = await trio.to_thread.run_sync(writer.close)
        finished = True
        now = services.clock()
        expires = now + timedelta(seconds=services.settings.export_link_ttl_s)
        await services.exports.finish(job, key, size, now, expires)
    except BaseException:
        with trio.CancelScope(shield=True):
            if not finished:
                await trio.to_thread.run_sync(writer.abandon)
            await trio.to_thread.run_sync(folder.path(job.id, job.attempt).unlink, True)
        raise


async def _run_job(services: Services, job: ExportJob) -> None:
    logger.info("export %s (%s) started, attempt %d", job.id, job.scope, job.attempt)
    try:
        await write_archive(services, job)
    except LeaseLostError:
        logger.warning("export %s was taken over by another worker", job.id)
    except KeyDestroyedError:
        await services.exports.fail(job, "the data was erased", services.clock())
    except DatabaseUnavailableError:
        raise
    except trio.Cancelled:
        with trio.CancelScope(shield=True):
            await services.exports.release(job)
        raise
    except Exception:
        logger.exception("export %s failed", job.id)
        await services.exports.fail(job, "an internal error; ask again", services.clock())
    else:
        logger.info("export %s is ready", job.id)


async def run_export_worker(services: Services) -> None:
    """Claim and run jobs until cancelled (a job in hand is given back to the queue)."""
    settings = services.settings
    while True:
        try:
            job = await services.exports.claim(services.clock(), settings.export_lease_s)
            if job is not None:
                await _run_job(services, job)
                continue
        except DatabaseUnavailableError as exc:
            logger.warning("export worker: database unavailable (%s)", exc)
        await services.export_nudge.wait(settings.export_poll_interval_s)


async def run_export_workers(services: Services, scope: trio.CancelScope) -> None:
    """`export_workers` workers until `scope` is cancelled (the server stops)."""
    with scope:
        async with trio.open_nursery() as nursery:
            for _ in range(services.settings.export_workers):
                nursery.start_soon(run_export_worker, services)
