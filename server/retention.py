"""The retention schedule: every kind of data obrol erases on a clock, how long it is kept,
and the promise that period keeps - in one place. The one sweeper (server/sweeper.py) runs
every rule here that has a `sweep`, in this order, in every server process.

Each sweep erases in bounded batches (`sweep_batch` rows, one short transaction each, rows
another process holds skipped with SKIP LOCKED, never the stream lock), rests between
batches so that a backlog takes at most `sweep_busy_fraction` of the time, and gives each
rule at most PASS_BATCHES batches per pass, so a large backlog in one rule never holds up
another (live sessions end on time while a year of messages is purged). A rule that had
more to do makes the sweeper start its next pass at once instead of sleeping. What was
erased is counted per rule and logged as counts, never contents.

Adding a rule (cancelled accounts purged within 7 days):
write a sweep - `async (services, now) -> (Erased, more)` - whose batches run through
`batches` (`rows_before` makes the batch for a store call that deletes up to `limit` rows
older than a cutoff), give it a setting with its unit in the name and the promise's minimum
enforced in server/settings.py, and add a `Rule` to `rules()`. `schedule(settings)` (shown
at `GET /v1/orgs/{org}/retention`) then lists it.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

import trio

from server.audit import prune_audit
from server.gateway.announce import announce_live_end
from server.settings import Settings
from server.sweep_status import Erased

if TYPE_CHECKING:
    from server.services import Services

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
        erasure = await services.erasure.erase_expired(now, limit)
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
            purge = await services.erasure.erase_older(conversation_id, cutoff, self.seq, limit)
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


async def _login_records(services: Services, now: datetime) -> tuple[Erased, bool]:
    cutoff = now - timedelta(days=services.settings.login_records_retention_days)
    return await batches(services, rows_before(services, services.logins.delete_before, cutoff))


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


async def _prune_audit(services: Services, now: datetime) -> tuple[Erased, bool]:
    """The audit log's prefix past its retention, up to a checkpoint (its own batches)."""
    return Erased(rows=await prune_audit(services, now)), False


def rules(org_messages: Sweep | None = None) -> tuple[Rule, ...]:
    """The schedule, in the order the sweeper runs it. `org_messages`: that rule's sweep
    (it keeps a position between passes, so each sweeper brings its own)."""
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
