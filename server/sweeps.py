"""The sweeps of the retention schedule (server/retention.py): what each rule erases, in
bounded batches.

Each sweep is `async (services, now) -> (Erased, more)`; its batches (one short transaction
each, rows another process holds skipped with SKIP LOCKED; erasing messages takes the
stream lock for its batch, as their tombstones need positions: storage.tombstones) run
through `batches`, which rests between them so that a backlog takes at most
`sweep_busy_fraction` of the time and gives each rule at most PASS_BATCHES batches per pass.
`rows_before` makes the batch for a store call that deletes up to `limit` rows older than a
cutoff. What was erased is counted, never described.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

import trio

from server.audit import prune_audit
from server.gateway.announce import announce_live_end
from server.gateway.erased import announce_erased
from server.settings import Settings
from server.sweep_status import Erased

if TYPE_CHECKING:
    from server.services import Services

logger = logging.getLogger(__name__)

PASS_BATCHES = 20  # batches one rule may run in one pass before the others get their turn


Sweep = Callable[["Services", datetime], Awaitable[tuple[Erased, bool]]]

Batch = Callable[[], Awaitable[tuple[Erased, bool]]]


async def batches(services: Services, batch: Batch) -> tuple[Erased, bool]:
    """Run `batch` (one transaction: what it erased, whether another may follow) up to
    PASS_BATCHES times; (what went, whether more is left). Between batches it rests, so that
    working off a backlog takes at most `sweep_busy_fraction` of the time: the pause after a
    batch is the batch's own time scaled, so it lengthens by itself when the database is
    busy with live traffic."""
    fraction = services.settings.sweep_busy_fraction
    total = Erased()
    for _ in range(PASS_BATCHES):
        began = trio.current_time()
        erased, again = await batch()
        total.add(erased)
        if not again:
            return total, False
        await trio.sleep((trio.current_time() - began) * (1 - fraction) / fraction)
    return total, True


def rows_before(
    services: Services, delete: Callable[[datetime, int], Awaitable[int]], cutoff: datetime
) -> Batch:
    """A batch for a store call that deletes up to `limit` rows older than `cutoff`."""
    limit = services.settings.sweep_batch

    async def batch() -> tuple[Erased, bool]:
        done = await delete(cutoff, limit)
        return Erased(done), done == limit

    return batch


async def consent_clocks(services: Services, now: datetime) -> tuple[Erased, bool]:
    limit = services.settings.sweep_batch

    async def batch() -> tuple[Erased, bool]:
        erasure = await services.erasure.erase_expired(now, limit)
        await announce_erased(services.hub, erasure.erased)
        for file_id in erasure.files:
            await services.blobs.delete(file_id)
        return Erased(len(erasure.messages), len(erasure.files)), len(erasure.messages) == limit

    return await batches(services, batch)


async def live_sessions_open(services: Services, now: datetime) -> tuple[Erased, bool]:
    limit = services.settings.sweep_batch

    async def batch() -> tuple[Erased, bool]:
        ended = await services.live.expire(now, limit)
        await announce_live_end(services, ended)
        return Erased(len(ended)), len(ended) == limit

    return await batches(services, batch)


@dataclass
class OrgMessagesSweep:
    """Walks the conversations that have a retention period, a page at a time, and erases
    each one's messages past it, oldest first. Where it is (page, conversation, seq) carries
    over from one pass to the next, in this process; another process walks on its own, and
    SKIP LOCKED keeps the two off each other's rows. A pass ends when a walk does."""

    after: uuid.UUID | None = None  # the walk: conversations after this id (None: from the start)
    walked: bool = False  # the walk read its last page: done once the queue is
    queue: list[tuple[uuid.UUID, datetime]] = field(default_factory=list)  # (id, cutoff)
    seq: int = 0  # in queue[0]: erased up to here

    async def __call__(self, services: Services, now: datetime) -> tuple[Erased, bool]:
        return await batches(services, partial(self._step, services, now))

    async def _step(self, services: Services, now: datetime) -> tuple[Erased, bool]:
        """One page of conversations read, or one batch of a conversation erased."""
        limit, erased = services.settings.sweep_batch, Erased()
        if not self.queue:
            due, self.after = await services.retention.due(self.after, limit)
            self.walked = self.after is None
            for conversation in due:
                cutoff = now - timedelta(days=conversation.days)
                if conversation.oldest < cutoff:
                    self.queue.append((conversation.id, cutoff))
            self.seq = 0
        else:
            conversation_id, cutoff = self.queue[0]
            purge = await services.erasure.erase_older(
                conversation_id, cutoff, self.seq, limit, now
            )
            await announce_erased(services.hub, purge.erased)
            for file_id in purge.files:
                await services.blobs.delete(file_id)
            erased = Erased(purge.messages, len(purge.files))
            if purge.messages == purge.head == limit:
                self.seq = purge.last_seq
            else:
                self.queue.pop(0)
                self.seq = 0
        if not self.queue and self.walked:
            self.walked = False  # the next pass walks again from the start
            return erased, False
        return erased, True


ORPHAN_WALK_EVERY_S = 3600.0  # the files folder is walked at most this often
TEMPORARY_SUFFIXES = (".part", ".seal")  # storage.files: writes in progress (or abandoned)


@dataclass
class OrphanBlobsSweep:
    """Deletes what a crash left in the files folder: a blob whose row is gone (the commit
    that deleted the row came, the blob deletion after it did not) and a temporary file of
    an unfinished write, once older than `orphan_blob_grace_s` (by modification time), so a
    blob written for an upload whose row is about to be recorded is never touched. A walk
    of the folder in name order, `sweep_batch` files at a time (one query for their rows),
    at most every ORPHAN_WALK_EVERY_S; where it is carries over between passes. Files of
    any other name are not obrol's and are left alone."""

    after: str = ""  # the walk: files after this "xx/name"
    next_walk: datetime | None = None  # the walk ended: the next begins then

    async def __call__(self, services: Services, now: datetime) -> tuple[Erased, bool]:
        if self.next_walk is not None and now < self.next_walk:
            return Erased(), False
        self.next_walk = None
        return await batches(services, partial(self._step, services, now))

    async def _step(self, services: Services, now: datetime) -> tuple[Erased, bool]:
        older_than = now.timestamp() - services.settings.orphan_blob_grace_s
        names, after = await services.blobs.old_entries(
            self.after, older_than, services.settings.sweep_batch
        )
        blobs: dict[uuid.UUID, str] = {}
        doomed: list[str] = []
        for name in names:
            base = name.partition("/")[2]
            if base.startswith(".") and base.endswith(TEMPORARY_SUFFIXES):
                doomed.append(name)
                continue
            try:
                file_id = uuid.UUID(base)
            except ValueError:
                continue
            if str(file_id) == base:
                blobs[file_id] = name
        if blobs:
            kept = await services.files.existing(list(blobs))
            doomed += [name for file_id, name in blobs.items() if file_id not in kept]
        erased = Erased(files=await services.blobs.delete_entries(doomed))
        if after is None:
            self.after, self.next_walk = "", now + timedelta(seconds=ORPHAN_WALK_EVERY_S)
            return erased, False
        self.after = after
        return erased, True


def older_than(
    days: Callable[[Settings], int],
    store_call: Callable[[Services], Callable[[datetime, int], Awaitable[int]]],
) -> Sweep:
    """A sweep deleting, through `store_call(services)(cutoff, limit)`, the rows older than
    `days(settings)` days, in batches."""

    async def sweep(services: Services, now: datetime) -> tuple[Erased, bool]:
        cutoff = now - timedelta(days=days(services.settings))
        return await batches(services, rows_before(services, store_call(services), cutoff))

    return sweep


login_records = older_than(
    lambda s: s.login_records_retention_days, lambda services: services.logins.delete_before
)
tombstones = older_than(
    lambda s: s.tombstones_retention_days, lambda services: services.tombstones.purge_before
)
live_sessions_ended = older_than(
    lambda s: s.live_sessions_retention_days, lambda services: services.live.delete_ended
)
rights_requests = older_than(
    lambda s: s.requests_retention_days,
    lambda services: services.requests.delete_closed_before,
)
notices = older_than(
    lambda s: s.notices_retention_days, lambda services: services.notices.delete_before
)
auth_tokens = older_than(
    lambda s: s.auth_tokens_retention_days,
    lambda services: services.tokens.delete_expired_before,
)


async def export_archives(services: Services, now: datetime) -> tuple[Erased, bool]:
    limit = services.settings.sweep_batch

    async def batch() -> tuple[Erased, bool]:
        due = await services.exports.archives_due(now, limit)
        files = 0
        for export_id, _attempt in due:
            files += await trio.to_thread.run_sync(services.archives.delete, export_id)
        await services.exports.mark_deleted([export_id for export_id, _ in due], now)
        return Erased(len(due), files), len(due) == limit

    return await batches(services, batch)


async def cancelled_accounts(services: Services, now: datetime) -> tuple[Erased, bool]:
    """Purge cancelled accounts (storage/purge.py), one account at a time: the messages
    they sent (each leaving a tombstone, under the stream lock), then the blobs of their
    uploads, then the other rows in batches, the account itself once nothing is left."""
    limit = services.settings.sweep_batch

    async def batch() -> tuple[Erased, bool]:
        due = await services.purge.next_due(now)
        if due is None:
            return Erased(), False
        erasure = await services.purge.messages(due.account_id, now, limit)
        if erasure is not None:
            await announce_erased(services.hub, erasure.erased)
        if erasure is not None and erasure.messages:
            for file_id in erasure.files:
                await services.blobs.delete(file_id)
            return Erased(len(erasure.messages), len(erasure.files)), True
        for export_id in await services.exports.of_account(due.account_id):
            # Their archives (unreadable already: the key wrapping them is gone); the rows
            # go with the account.
            await trio.to_thread.run_sync(services.archives.delete, export_id)
        uploads = await services.purge.uploads(due.account_id, limit)
        for file_id in uploads:
            await services.blobs.delete(file_id)
        done = await services.purge.batch(due.account_id, uploads, now, limit)
        for file_id in done.files:
            await services.blobs.delete(file_id)
        if done.finished:
            logger.info("cancelled account %s purged", due.account_id)
        erased = Erased(done.rows + (1 if done.finished else 0), len(uploads) + len(done.files))
        return erased, done.ran

    return await batches(services, batch)


async def cancelled_orgs(services: Services, now: datetime) -> tuple[Erased, bool]:
    """Purge deleted organizations (storage/org_cancellation.py) once `cancelled_accounts`
    has purged every account in them: their own rows in batches, then the organization."""
    limit = services.settings.sweep_batch

    async def batch() -> tuple[Erased, bool]:
        done = await services.org_cancellations.purge_batch(limit, now)
        if done is None:
            return Erased(), False
        for file_id in done.files:
            await services.blobs.delete(file_id)
        if done.finished:
            logger.info("a deleted organization was purged")
        return Erased(done.rows + (1 if done.finished else 0), len(done.files)), True

    return await batches(services, batch)


async def audit_entries(services: Services, now: datetime) -> tuple[Erased, bool]:
    """The audit log's prefix past its retention, up to a checkpoint (its own batches)."""
    return Erased(rows=await prune_audit(services, now)), False
