"""The retention schedule: every kind of data obrol erases on a clock, how long it is kept,
and the promise that period keeps - in one place. The one sweeper (server/sweeper.py) runs
every rule here that has a `sweep`, in this order, in every server process.

Each sweep erases in bounded batches (`sweep_batch` rows, one short transaction each, rows
another process holds skipped with SKIP LOCKED; erasing messages takes the stream lock
for its batch, as their tombstones need positions: storage.tombstones), rests between
batches so that a backlog takes at most `sweep_busy_fraction` of the time, and gives each
rule at most PASS_BATCHES batches per pass, so a large backlog in one rule never holds up
another (live sessions end on time while a year of messages is purged). A rule that had
more to do makes the sweeper start its next pass at once instead of sleeping. What was
erased is counted per rule and logged as counts, never contents.

Adding a rule:
write a sweep - `async (services, now) -> (Erased, more)` - whose batches run through
`batches` (`rows_before` makes the batch for a store call that deletes up to `limit` rows
older than a cutoff), give it a setting with its unit in the name and the promise's minimum
enforced in server/settings.py, and add a `Rule` to `rules()`. `schedule(settings)` (shown
at `GET /v1/orgs/{org}/retention`) then lists it.
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


@dataclass(frozen=True, slots=True)
class Rule:
    name: str  # in logs, the status and the schedule
    data: str  # what is erased
    period: Callable[[Settings], str]  # how long it is kept, from the settings, in words
    source: str  # the promise it keeps
    sweep: Sweep | None  # None: kept by another part of the server (`period` says which)


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


async def _consent_clocks(services: Services, now: datetime) -> tuple[Erased, bool]:
    limit = services.settings.sweep_batch

    async def batch() -> tuple[Erased, bool]:
        async with services.hub.stream_order:  # tombstones: server/gateway/erased.py
            erasure = await services.erasure.erase_expired(now, limit)
            await announce_erased(services.hub, erasure.erased)
        for file_id in erasure.files:
            await services.blobs.delete(file_id)
        return Erased(len(erasure.messages), len(erasure.files)), len(erasure.messages) == limit

    return await batches(services, batch)


async def _live_sessions_open(services: Services, now: datetime) -> tuple[Erased, bool]:
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
            async with services.hub.stream_order:  # tombstones: server/gateway/erased.py
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


async def _login_records(services: Services, now: datetime) -> tuple[Erased, bool]:
    cutoff = now - timedelta(days=services.settings.login_records_retention_days)
    return await batches(services, rows_before(services, services.logins.delete_before, cutoff))


async def _tombstones(services: Services, now: datetime) -> tuple[Erased, bool]:
    cutoff = now - timedelta(days=services.settings.tombstones_retention_days)
    delete = services.tombstones.purge_before
    return await batches(services, rows_before(services, delete, cutoff))


async def _live_sessions_ended(services: Services, now: datetime) -> tuple[Erased, bool]:
    cutoff = now - timedelta(days=services.settings.live_sessions_retention_days)
    return await batches(services, rows_before(services, services.live.delete_ended, cutoff))


async def _rights_requests(services: Services, now: datetime) -> tuple[Erased, bool]:
    cutoff = now - timedelta(days=services.settings.requests_retention_days)
    delete = services.requests.delete_closed_before
    return await batches(services, rows_before(services, delete, cutoff))


async def _notices(services: Services, now: datetime) -> tuple[Erased, bool]:
    cutoff = now - timedelta(days=services.settings.notices_retention_days)
    return await batches(services, rows_before(services, services.notices.delete_before, cutoff))


async def _auth_tokens(services: Services, now: datetime) -> tuple[Erased, bool]:
    cutoff = now - timedelta(days=services.settings.auth_tokens_retention_days)
    delete = services.tokens.delete_expired_before
    return await batches(services, rows_before(services, delete, cutoff))


async def _export_archives(services: Services, now: datetime) -> tuple[Erased, bool]:
    limit = services.settings.sweep_batch

    async def batch() -> tuple[Erased, bool]:
        due = await services.exports.archives_due(now, limit)
        files = 0
        for export_id, _attempt in due:
            files += await trio.to_thread.run_sync(services.archives.delete, export_id)
        await services.exports.mark_deleted([export_id for export_id, _ in due], now)
        return Erased(len(due), files), len(due) == limit

    return await batches(services, batch)


def org_messages_rule(sweep: Sweep | None) -> Rule:
    return Rule(
        "org_messages",
        "stored messages (with their receipts, the file rows and blobs they shared) older than "
        "their conversation's retention, or else their organization's",
        lambda s: (
            "the organization's `message_retention_days`, or the conversation's own "
            "setting (none: kept until deleted); a ceiling for every stored message, whatever "
            "its consent tag says"
        ),
        "policies 000 and 004: the organization controls its business data; the consent tag's "
        '`retention: "default"` (PROTOCOL.md 5.4) is this setting',
        sweep,
    )


async def _cancelled_accounts(services: Services, now: datetime) -> tuple[Erased, bool]:
    """Purge cancelled accounts (storage/purge.py), one account at a time: the messages
    they sent (each leaving a tombstone, under the stream lock), then the blobs of their
    uploads, then the other rows in batches, the account itself once nothing is left."""
    limit = services.settings.sweep_batch

    async def batch() -> tuple[Erased, bool]:
        due = await services.purge.next_due(now)
        if due is None:
            return Erased(), False
        async with services.hub.stream_order:  # tombstones: server/gateway/erased.py
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


async def _cancelled_orgs(services: Services, now: datetime) -> tuple[Erased, bool]:
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


async def _prune_audit(services: Services, now: datetime) -> tuple[Erased, bool]:
    """The audit log's prefix past its retention, up to a checkpoint (its own batches)."""
    return Erased(rows=await prune_audit(services, now)), False


def rules(org_messages: Sweep | None = None, orphan_blobs: Sweep | None = None) -> tuple[Rule, ...]:
    """The schedule, in the order the sweeper runs it. `org_messages`, `orphan_blobs`: those
    rules' sweeps (they keep a position between passes, so each sweeper brings its own)."""
    return (
        Rule(
            "live_sessions_open",
            "live-location sessions past their end: ended, and everyone who saw them told",
            lambda s: (
                f"until the session's `until`, at most {s.live_location_max_s} s "
                "(`live_location_max_s`)"
            ),
            "the person's location is shared only while they share it (policies 002, 003)",
            _live_sessions_open,
        ),
        Rule(
            "consent_clocks",
            "messages whose consent tag's retention or expiry ran out (with their receipts, "
            "the file rows and blobs they shared)",
            lambda s: "the tag's `retention` seconds or `expires_at`, whichever comes first",
            "data processed under consent is kept no longer than the person agreed to "
            "(policies 000-004)",
            _consent_clocks,
        ),
        org_messages_rule(org_messages),
        Rule(
            "login_records",
            "login records (every attempt: time, login name, address, client, outcome)",
            lambda s: (
                f"{s.login_records_retention_days} days (`login_records_retention_days`, "
                "at least 92: 3 calendar months)"
            ),
            "policy 003, article 3: log-in records are kept 3 months",
            _login_records,
        ),
        Rule(
            "tombstones",
            "tombstones: which message of which conversation was erased, why and when "
            "(never its sender or contents), for devices that were offline at the time",
            lambda s: (
                f"{s.tombstones_retention_days} days (`tombstones_retention_days`); a device "
                "offline longer reads its history again (PROTOCOL.md 6.9)"
            ),
            "deletion reaches every device: what a person deleted disappears from the "
            "devices that hold it, including those offline when it was deleted",
            _tombstones,
        ),
        Rule(
            "live_sessions_ended",
            "ended live-location sessions (who shared with which conversation, when; never a "
            "position)",
            lambda s: (
                f"{s.live_sessions_retention_days} days after the end "
                "(`live_sessions_retention_days`)"
            ),
            "policy 003, article 3: destroyed once its purpose is achieved, within 7 days",
            _live_sessions_ended,
        ),
        Rule(
            "rights_requests",
            "closed data-rights requests (kind, dates, status, the person's words, the answer)",
            lambda s: (
                f"{s.requests_retention_days} days after closing "
                "(`requests_retention_days`, at least 3 years)"
            ),
            "policy 003, article 3: records of complaint and dispute handling, 3 years",
            _rights_requests,
        ),
        Rule(
            "notices",
            "service-ending and security-incident notices",
            lambda s: (
                f"{s.notices_retention_days} days after sending, or after the last day "
                "of service for a service-ending notice (`notices_retention_days`)"
            ),
            "policies 000, 002, 004: members are told of incidents and of the end of the "
            "service; kept so that those who were away can read them",
            _notices,
        ),
        Rule(
            "cancelled_accounts",
            "every row of a cancelled account (messages it sent with their receipts, files and "
            "blobs, its receipts, devices, tokens, login records - also those under its email "
            "address -, consents and their history, policy acceptances, attendance, live "
            "sessions, push registrations, conversation memberships, notices, guardian "
            "consents, its data key's tombstone) and then the account; its requests stay, "
            "naming nobody",
            lambda s: (
                f"purged from {s.cancelled_accounts_purge_delay_h} h after the cancellation "
                "(`cancelled_accounts_purge_delay_h`, at most 120); unreadable from the "
                "cancellation on (its data key is destroyed then)"
            ),
            'policy 000 (E): "once the account is cancelled, no information will be '
            'retained"; policy 003, article 3: destroyed without delay, within 7 days',
            _cancelled_accounts,
        ),
        Rule(
            "cancelled_orgs",
            "a deleted organization's own rows (conversations, files, sites, attendance, policy "
            "versions, purposes switched off, notices, requests, departments) and then the "
            "organization, once every account in it is purged",
            lambda s: (
                "right after the last of its accounts (`cancelled_accounts`); the accounts are "
                "unreadable from the deletion on"
            ),
            "policies 000 and 004: data migration before an organization cancels, nothing "
            "retained once it has",
            _cancelled_orgs,
        ),
        Rule(
            "auth_tokens",
            "expired sign-in tokens (hashes only: device, account, family, dates), revoked or not",
            lambda s: (
                f"{s.auth_tokens_retention_days} days after they expired "
                "(`auth_tokens_retention_days`); a revoked one is kept until then too, so a "
                "rotated-away refresh token presented again still ends its family"
            ),
            "nothing is kept once it has no use: an expired token only lets the server "
            "answer `token_expired` instead of `unauthenticated`",
            _auth_tokens,
        ),
        Rule(
            "audit_log",
            "audit-log entries (who did what to whose data, when: ids and counts only)",
            lambda s: (
                f"{s.audit_retention_days} days (`audit_retention_days`, at least 183: 6 "
                "months), pruned only up to a signed checkpoint (server/audit.py)"
            ),
            "access records are kept at least 6 months and protected from tampering (policy 003)",
            _prune_audit,
        ),
        Rule(
            "orphan_blobs",
            "files in the files folder with no file row (a crash between deleting a file's "
            "row and its blob), and temporary files of uploads that never finished",
            lambda s: (
                f"{s.orphan_blob_grace_s} s after they were last written "
                "(`orphan_blob_grace_s`; the folder is walked at most hourly)"
            ),
            "what the other rules erase is erased from disk too, even after a crash",
            orphan_blobs,
        ),
        Rule(
            "export_archives",
            "export archives (the zip of a person's or an organization's data, sealed on disk)",
            lambda s: (
                f"until its download link is used, at most {s.export_link_ttl_s // 3600} h "
                f"({s.export_link_ttl_s} s, `export_link_ttl_s`) after it is ready"
            ),
            "the copy a person asked for is theirs to take, not ours to keep (policies 000-004)",
            _export_archives,
        ),
        Rule(
            "account_data",
            "what belongs to an account: profile, devices, consent grants and history, policy "
            "acceptances, attendance records, push registrations, guardian consents",
            lambda s: (
                "while the account exists; erased with it when it is cancelled (its data key "
                "destroyed at once, its rows purged within 7 days)"
            ),
            "policies 000-004: once the account is cancelled, no information is retained",
            None,
        ),
        Rule(
            "push_results",
            "push providers' answers other than acceptance (per device: when, outcome, reason)",
            lambda s: "1 day: pruned by the push bridge's outbox worker (push/worker.py)",
            "kept only as long as it helps find out why a device gets no pushes",
            None,
        ),
    )


def periods(settings: Settings) -> dict[str, str]:
    """Each rule's period in words, by name (what the access summary quotes)."""
    return {r.name: r.period(settings) for r in rules()}


def schedule(settings: Settings) -> list[dict[str, str]]:
    """Every rule as `{"name", "data", "period", "source"}`, the periods from `settings`."""
    return [
        {"name": r.name, "data": r.data, "period": r.period(settings), "source": r.source}
        for r in rules()
    ]
