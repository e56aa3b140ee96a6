"""The push outbox: jobs written with the messages they announce, claimed by workers.

At most one job per device (`push_jobs.device_id` is the key). A message commit upserts the
job of every recipient device with a live registration, in the same transaction as the
message: a burst collapses into one row carrying the latest message, due a grace after the
first one. Workers in any process claim due rows with `FOR UPDATE SKIP LOCKED` under a lease;
a job whose device's cursor already reached its position, or whose alert's message was
erased since, is moot and deleted at claim time. Notices from an organization's admins have
jobs of their own (storage/push_notices.py), never moot and never merged with these; a claim
leases both kinds and a settlement records both.

Locks: a message commit holds the stream lock while it upserts jobs, and every other
transaction that writes jobs of several devices or deletes registrations (read receipts,
registering, revoking, signing out, re-driving) takes the stream lock first, so they run one
at a time. The worker's claim skips locked rows; its settle locks registrations, then jobs,
each in device id order, and a commit needs only KEY SHARE on registrations (which settle's
updates do not block). So no two of them can wait for each other in a cycle.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from storage.database import Database
from storage.keyring import Keyring
from storage.push_notices import (
    lease_notice_jobs,
    redrive_notice_letters,
    settle_notice_jobs,
)
from storage.push_registrations import DeadToken, disable_dead_tokens
from storage.sealing import open_message_body
from storage.stream import current_pos, lock_stream
from storage.visible import VISIBLE

if TYPE_CHECKING:  # storage.messages imports this module to enqueue in its commits
    from storage.messages import StoredMessage

# A badge counts at most this many unread messages (bounds the query; "99+" beyond).
BADGE_CAP = 99

# Merging into a device's pending job. An alert wins over a badge update; the message shown
# is the newest alert's (a badge update or an older re-driven message never replaces it);
# a badge update does not move a waiting alert's position (the device having acked the
# alert's message still makes it moot), but one arriving while a push is in flight turns the
# row into a badge update past it, sent after that push. A job backing off after a refusal
# keeps its later due time.
JOB_UPSERT = """
    ON CONFLICT (device_id) DO UPDATE SET
        kind = CASE WHEN EXCLUDED.kind = 'alert' THEN 'alert'
                    WHEN j.claimed_until > now() THEN 'badge'
                    ELSE j.kind END,
        conversation_id = CASE WHEN EXCLUDED.message_id IS NOT NULL AND EXCLUDED.pos >= j.pos
                               AND (EXCLUDED.kind = 'alert' OR j.kind = 'badge')
                          THEN EXCLUDED.conversation_id ELSE j.conversation_id END,
        message_id = CASE WHEN EXCLUDED.message_id IS NOT NULL AND EXCLUDED.pos >= j.pos
                          AND (EXCLUDED.kind = 'alert' OR j.kind = 'badge')
                     THEN EXCLUDED.message_id ELSE j.message_id END,
        msg_seq = CASE WHEN EXCLUDED.message_id IS NOT NULL AND EXCLUDED.pos >= j.pos
                       AND (EXCLUDED.kind = 'alert' OR j.kind = 'badge')
                  THEN EXCLUDED.msg_seq ELSE j.msg_seq END,
        pos = CASE WHEN EXCLUDED.kind = 'badge' AND j.kind = 'alert'
                        AND NOT coalesce(j.claimed_until > now(), false)
                   THEN j.pos ELSE greatest(j.pos, EXCLUDED.pos) END,
        -- in flight: what arrives now is a new burst with its own grace; waiting: it joins
        -- the burst, which keeps its (earlier) due time
        burst = CASE WHEN j.claimed_until > now() THEN EXCLUDED.burst
                     ELSE j.burst + EXCLUDED.burst END,
        queued_at = CASE WHEN j.claimed_until > now() THEN EXCLUDED.queued_at
                         ELSE j.queued_at END,
        due_at = CASE WHEN j.claimed_until > now() OR j.attempts > 0
                      THEN greatest(j.due_at, EXCLUDED.due_at)
                      ELSE least(j.due_at, EXCLUDED.due_at) END"""


@dataclass(frozen=True, slots=True)
class PushTarget:
    """An account to alert after a commit: the latest message of the batch it may see (not
    its own), and how many of the batch's messages it stands for."""

    account_id: uuid.UUID
    message: StoredMessage
    count: int


def push_targets(
    stored: Sequence[StoredMessage], members: Mapping[uuid.UUID, Collection[uuid.UUID]]
) -> list[PushTarget]:
    """Who hears of a committed batch, per account: the conversations' active members
    (`members`, read under the stream lock: all joined before these messages), minus each
    message's sender, within its consent scope. Linear in messages plus members, so a batch
    to a 1,000-member group costs one pass over the members, not one per message."""
    best: dict[uuid.UUID, tuple[StoredMessage, int]] = {}
    by_conversation: dict[uuid.UUID, list[StoredMessage]] = {}
    for message in sorted(stored, key=lambda m: m.pos):
        by_conversation.setdefault(message.conversation_id, []).append(message)
    for conversation, messages in by_conversation.items():
        active = members.get(conversation, frozenset())
        for account, message, count in _conversation_targets(messages, active):
            seen = best.get(account)
            if seen is None:
                best[account] = (message, count)
            else:  # in several conversations of the batch: one job, for the latest
                latest = message if message.pos > seen[0].pos else seen[0]
                best[account] = (latest, count + seen[1])
    return [PushTarget(a, m, n) for a, (m, n) in sorted(best.items())]


def _conversation_targets(
    messages: list[StoredMessage], active: Collection[uuid.UUID]
) -> Iterator[tuple[uuid.UUID, StoredMessage, int]]:
    """(account, latest message for it, how many) for one conversation's messages in pos
    order: every member for the unscoped ones, only the scope for the tagged ones."""
    open_ = [m for m in messages if m.scope is None]
    own = Counter(m.sender_id for m in open_)
    for account in active if open_ else ():
        count = len(open_) - own[account]
        if count > 0:  # then some open message is not this account's own
            yield account, next(m for m in reversed(open_) if m.sender_id != account), count
    for message in messages:
        for account in message.scope or ():
            if account != message.sender_id and account in active:
                yield account, message, 1


async def enqueue_for_messages(conn: Any, targets: list[PushTarget], grace_s: float) -> None:
    """Inside a message commit (the stream lock held): upsert a job for every live (not
    revoked, not signed out), registered (not disabled) device of each target account: an
    alert, or a badge update where the account muted the conversation (so a muted
    conversation's later message cannot take an alert's place in the device's one job)."""
    if not targets:
        return
    await conn.execute(
        f"""INSERT INTO push_jobs AS j (device_id, account_id, kind, conversation_id,
                message_id, msg_seq, pos, burst, queued_at, due_at)
            SELECT d.id, d.account_id, CASE WHEN mu.account_id IS NULL THEN 'alert'
                                            ELSE 'badge' END,
                   t.conversation_id, t.message_id, t.seq, t.pos, t.n, now(),
                   now() + $7 * interval '1 second'
            FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::bigint[], $5::bigint[],
                        $6::int[]) AS t(account_id, conversation_id, message_id, seq, pos, n)
            JOIN devices d ON d.account_id = t.account_id
                 AND d.revoked_at IS NULL AND d.signed_out_at IS NULL
            JOIN push_registrations r ON r.device_id = d.id AND r.disabled_at IS NULL
            LEFT JOIN conversation_mutes mu ON mu.account_id = t.account_id
                 AND mu.conversation_id = t.conversation_id
                 AND (mu.until IS NULL OR mu.until > now())
            ORDER BY d.id
            {JOB_UPSERT}""",
        [t.account_id for t in targets],
        [t.message.conversation_id for t in targets],
        [t.message.id for t in targets],
        [t.message.seq for t in targets],
        [t.message.pos for t in targets],
        [t.count for t in targets],
        grace_s,
    )


async def enqueue_badge_updates(
    conn: Any, advanced: list[tuple[uuid.UUID, uuid.UUID, int, uuid.UUID]], grace_s: float
) -> None:
    """After read marks advanced: (account, conversation, read seq, reading device).

    A pending alert for a message now read becomes a badge update; every other registered
    device of the account without a job gets a badge update. Its position is the stream's
    current end, so a connected, caught-up device (which hears of the read itself) finds it
    moot."""
    if not advanced:
        return
    accounts = [a for a, _, _, _ in advanced]
    await lock_stream(conn)
    await conn.execute(
        """SELECT 1 FROM push_jobs WHERE account_id = ANY($1::uuid[])
           ORDER BY device_id FOR UPDATE""",
        accounts,
    )
    await conn.execute(
        """WITH read AS (
               SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[])
                   AS r(account_id, conversation_id, read_seq)),
           stale AS (
               SELECT j.device_id FROM push_jobs j JOIN read r
                 ON r.account_id = j.account_id AND r.conversation_id = j.conversation_id
               WHERE j.kind = 'alert' AND j.msg_seq <= r.read_seq
               ORDER BY j.device_id FOR UPDATE OF j)
           UPDATE push_jobs j SET kind = 'badge' FROM stale
           WHERE j.device_id = stale.device_id""",
        accounts,
        [c for _, c, _, _ in advanced],
        [s for _, _, s, _ in advanced],
    )
    pos = await current_pos(conn)
    await conn.execute(
        f"""INSERT INTO push_jobs AS j (device_id, account_id, kind, pos, burst, queued_at,
                due_at)
            SELECT d.id, d.account_id, 'badge', $3, 0, now(), now() + $4 * interval '1 second'
            FROM devices d
            JOIN push_registrations r ON r.device_id = d.id AND r.disabled_at IS NULL
            WHERE d.account_id = ANY($1::uuid[]) AND d.id <> ALL($2::uuid[])
              AND d.revoked_at IS NULL AND d.signed_out_at IS NULL
            ORDER BY d.id
            {JOB_UPSERT}""",
        accounts,
        [device for _, _, _, device in advanced],
        pos,
        grace_s,
    )


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A due job, leased to the caller, with everything needed to build its push."""

    device_id: uuid.UUID
    account_id: uuid.UUID
    kind: str  # "alert" | "badge" | "notice" (storage/push_notices.py)
    conversation_id: uuid.UUID | None
    message_id: uuid.UUID | None
    pos: int
    burst: int
    queued_at: datetime
    attempts: int
    provider: str
    token: str
    environment: str | None
    topic: str | None
    project: str | None
    badge: int
    muted: bool  # the conversation is muted for the account
    dnd_start_min: int | None  # the account's do-not-disturb window, local minutes
    dnd_end_min: int | None
    time_zone: str
    preview_kind: str | None  # with the device's preview opt-in, an untagged message's kind
    preview_body: bytes | None  # ... its msgpack body
    preview_sender: str | None  # ... and its sender's display name
    lease: datetime  # claimed_until: the settlement must show it
    notice_id: uuid.UUID | None = None  # kind "notice": the notice it announces
    notice_kind: str | None = None  # ... "service_ending" | "security_incident"


@dataclass(frozen=True, slots=True)
class Claim:
    jobs: list[ClaimedJob]
    moot: int  # jobs dropped because their device had the message already
    more: bool = False  # a kind filled its share of the claim: more may be due right now


async def _lease_all(
    conn: Any, limit: int, lease_s: float
) -> tuple[list[Any], int, list[Any], bool]:
    """Lease up to `limit` due jobs, message jobs first but at most three quarters of them
    (so a backlog of message pushes never holds back a notice's), notice jobs in the rest.
    (live message rows, moot count, notice rows, whether a kind filled its share)"""
    share = limit - limit // 4
    live, moot = await _lease(conn, share, lease_s)
    notices = await lease_notice_jobs(conn, limit - len(live) - moot, lease_s)
    more = len(live) + moot >= share or len(notices) >= limit - len(live) - moot > 0
    return live, moot, notices, more


async def _lease(conn: Any, limit: int, lease_s: float) -> tuple[list[Any], int]:
    """Lease up to `limit` due message jobs; delete the moot ones. (live rows, moot count)"""
    rows = await conn.fetch(
        """WITH picked AS (
               SELECT device_id FROM push_jobs
               WHERE due_at <= now() AND (claimed_until IS NULL OR claimed_until < now())
               ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED)
           UPDATE push_jobs j SET claimed_until = now() + $2 * interval '1 second'
           FROM picked WHERE j.device_id = picked.device_id
           RETURNING j.*, coalesce((SELECT c.pos FROM device_cursors c
                                    WHERE c.device_id = j.device_id), 0) AS cursor,
                     j.kind = 'alert' AND j.message_id IS NOT NULL AND NOT EXISTS
                         (SELECT 1 FROM messages m WHERE m.id = j.message_id) AS erased""",
        limit,
        lease_s,
    )
    # Moot: the device has the message already, or the alert's message was erased since
    # (deleted by its sender, withdrawn, expired): no "New message" for what is gone.
    moot = [r["device_id"] for r in rows if r["cursor"] >= r["pos"] or r["erased"]]
    if moot:
        await conn.execute("DELETE FROM push_jobs WHERE device_id = ANY($1::uuid[])", moot)
    return [r for r in rows if r["cursor"] < r["pos"] and not r["erased"]], len(moot)


async def _details(
    conn: Any, keyring: Keyring, live: list[Any], notices: list[Any]
) -> list[ClaimedJob]:
    """What the leased jobs' pushes need: registrations, badges, quiet hours, mutes and
    previews (bodies opened with their senders' keys; an erased one has no preview). Read
    after the lease is committed, so no job row stays locked meanwhile (a commit to those
    devices would wait on it, holding the stream lock). Notice jobs (`notices`) need only
    the registration and the badge: a notice alerts whatever the mutes and quiet hours."""
    devices = [r["device_id"] for r in live + notices]
    accounts = list({r["account_id"] for r in live + notices})
    registrations = {
        r["device_id"]: r
        for r in await conn.fetch(
            "SELECT * FROM push_registrations WHERE device_id = ANY($1::uuid[])", devices
        )
    }
    live = [r for r in live if r["device_id"] in registrations]  # not removed meanwhile
    notices = [r for r in notices if r["device_id"] in registrations]
    badges = await _badges(conn, accounts)
    settings = {
        r["account_id"]: r
        for r in await conn.fetch(
            "SELECT * FROM push_settings WHERE account_id = ANY($1::uuid[])", accounts
        )
    }
    muted = {
        (r["account_id"], r["conversation_id"])
        for r in await conn.fetch(
            """SELECT account_id, conversation_id FROM conversation_mutes
               WHERE account_id = ANY($1::uuid[]) AND (until IS NULL OR until > now())""",
            accounts,
        )
    }
    want_preview = [
        r["message_id"]
        for r in live
        if r["kind"] == "alert" and registrations[r["device_id"]]["preview"]
    ]
    rows = await conn.fetch(
        """SELECT m.id, m.kind, m.body, m.sender_id, a.display_name FROM messages m
           JOIN accounts a ON a.id = m.sender_id
           WHERE m.id = ANY($1::uuid[]) AND m.consent IS NULL""",
        want_preview,
    )
    keys = await keyring.for_read(conn, {r["sender_id"] for r in rows}) if rows else {}
    previews = {}
    for r in rows:
        body = open_message_body(keys, r["id"], r["sender_id"], bytes(r["body"]))
        if body is not None:
            previews[r["id"]] = (r["kind"], body, r["display_name"])
    jobs = []
    for row in live:
        reg = registrations[row["device_id"]]
        quiet = settings.get(row["account_id"])
        preview = previews.get(row["message_id"]) if reg["preview"] else None
        jobs.append(
            ClaimedJob(
                device_id=row["device_id"],
                account_id=row["account_id"],
                kind=row["kind"],
                conversation_id=row["conversation_id"],
                message_id=row["message_id"],
                pos=row["pos"],
                burst=row["burst"],
                queued_at=row["queued_at"],
                attempts=row["attempts"],
                provider=reg["provider"],
                token=reg["token"],
                environment=reg["environment"],
                topic=reg["topic"],
                project=reg["project"],
                badge=badges.get(row["account_id"], 0),
                muted=(row["account_id"], row["conversation_id"]) in muted,
                dnd_start_min=None if quiet is None else quiet["dnd_start_min"],
                dnd_end_min=None if quiet is None else quiet["dnd_end_min"],
                time_zone="UTC" if quiet is None else quiet["time_zone"],
                preview_kind=None if preview is None else preview[0],
                preview_body=None if preview is None else preview[1],
                preview_sender=None if preview is None else preview[2],
                lease=row["claimed_until"],
            )
        )
    for row in notices:
        reg = registrations[row["device_id"]]
        jobs.append(
            ClaimedJob(
                device_id=row["device_id"],
                account_id=row["account_id"],
                kind="notice",
                conversation_id=None,
                message_id=None,
                pos=0,
                burst=1,
                queued_at=row["queued_at"],
                attempts=row["attempts"],
                provider=reg["provider"],
                token=reg["token"],
                environment=reg["environment"],
                topic=reg["topic"],
                project=reg["project"],
                badge=badges.get(row["account_id"], 0),
                muted=False,
                dnd_start_min=None,
                dnd_end_min=None,
                time_zone="UTC",
                preview_kind=None,
                preview_body=None,
                preview_sender=None,
                lease=row["claimed_until"],
                notice_id=row["notice_id"],
                notice_kind=row["notice_kind"],
            )
        )
    return jobs


async def _badges(conn: Any, accounts: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    """Unread messages per account, up to BADGE_CAP: visible to it, not its own, above its
    read mark in each conversation. The cap bounds the work (at most BADGE_CAP rows read
    per account, whatever its backlog), as apps show "99+" beyond it anyway."""
    rows = await conn.fetch(
        f"""SELECT a.id AS account_id, (
                SELECT count(*) FROM (
                    SELECT 1 FROM conversation_members cm
                    LEFT JOIN read_marks r
                      ON r.account_id = cm.account_id AND r.conversation_id = cm.conversation_id
                    CROSS JOIN LATERAL (
                        SELECT 1 FROM messages m
                        WHERE m.conversation_id = cm.conversation_id
                          AND m.seq > coalesce(r.read_seq, 0) AND m.sender_id <> cm.account_id
                          AND {VISIBLE}
                        LIMIT {BADGE_CAP}) unread
                    WHERE cm.account_id = a.id
                    LIMIT {BADGE_CAP}) capped) AS unread
            FROM unnest($1::uuid[]) AS a(id)""",
        accounts,
    )
    return {r["account_id"]: int(r["unread"]) for r in rows}


@dataclass(frozen=True, slots=True)
class Settlement:
    """What became of one claimed job's push."""

    device_id: uuid.UUID
    pos: int  # the position the claim was for
    lease: datetime  # the claim's claimed_until: proves the job is still ours
    token: str  # the token the push went to
    kind: str
    outcome: str  # push.providers.Outcome value
    status: int | None
    reason: str
    retry_at: datetime | None = None  # outcome "retry": when to try again
    provider_timestamp: datetime | None = None  # outcome "disable"
    notice_id: uuid.UUID | None = None  # a notice's push (storage/push_notices.py)


@dataclass
class _Sorted:
    done: list[uuid.UUID] = field(default_factory=list)  # accepted: the job is finished
    # the row is free again for a newer message: accepted while one arrived, or refused
    # (or out of retries) but superseded by one never tried
    released: list[uuid.UUID] = field(default_factory=list)
    retry: list[Settlement] = field(default_factory=list)
    dead: list[Settlement] = field(default_factory=list)
    disable: list[Settlement] = field(default_factory=list)
    exhausted: list[uuid.UUID] = field(default_factory=list)  # retries ran out: dead too


async def _lock_registrations(conn: Any, settled: list[Settlement]) -> None:
    """A settlement locks the registrations first (in device id order), then the jobs."""
    await conn.execute(
        """SELECT 1 FROM push_registrations WHERE device_id = ANY($1::uuid[])
           ORDER BY device_id FOR NO KEY UPDATE""",
        sorted({s.device_id for s in settled}),
    )


async def _sort(conn: Any, settled: list[Settlement], max_attempts: int) -> _Sorted:
    """Lock the jobs (in device id order; the registrations are locked already) and sort
    the outcomes by what they do. A job whose lease is no longer ours (it ran out and
    another worker claimed the job) is left to that worker."""
    by_device = {s.device_id: s for s in settled}
    devices = sorted(by_device)
    current = {
        r["device_id"]: r
        for r in await conn.fetch(
            """SELECT device_id, pos, attempts, claimed_until FROM push_jobs
               WHERE device_id = ANY($1::uuid[]) ORDER BY device_id FOR UPDATE""",
            devices,
        )
    }
    out = _Sorted()
    for device in devices:
        s = by_device[device]
        row = current.get(device)
        if row is None or row["claimed_until"] != s.lease:
            continue  # gone with its registration, or claimed again by someone else
        superseded = row["pos"] != s.pos  # a message arrived while this push was out
        if s.outcome == "accepted":
            (out.released if superseded else out.done).append(device)
        elif s.outcome == "disable":
            out.disable.append(s)
        elif s.outcome == "retry" and row["attempts"] + 1 < max_attempts:
            out.retry.append(s)
        elif superseded:
            out.released.append(device)  # the newer message gets its own tries
        else:
            out.dead.append(s)
            if s.outcome == "retry":
                out.exhausted.append(device)
    return out


async def _dead_letter(conn: Any, dead: list[Settlement]) -> None:
    """Move these jobs to the dead letters, with the provider's last answer."""
    if dead:
        await conn.executemany(
            """WITH gone AS (DELETE FROM push_jobs WHERE device_id = $1 RETURNING *)
               INSERT INTO push_dead_letters (device_id, account_id, kind, conversation_id,
                   message_id, msg_seq, pos, burst, queued_at, attempts, last_status,
                   last_reason)
               SELECT device_id, account_id, kind, conversation_id, message_id, msg_seq, pos,
                      burst, queued_at, attempts + 1, $2, $3 FROM gone""",
            [(s.device_id, s.status, s.reason) for s in dead],
        )


async def _settle(conn: Any, settled: list[Settlement], max_attempts: int) -> list[uuid.UUID]:
    """Returns the devices whose job ran out of attempts and was dead-lettered."""
    await _lock_registrations(conn, settled)
    messages = [s for s in settled if s.notice_id is None]
    exhausted = await _settle_messages(conn, messages, max_attempts) if messages else []
    notices = [s for s in settled if s.notice_id is not None]
    if notices:
        exhausted += await settle_notice_jobs(conn, notices, max_attempts)
    await _record_results(conn, settled)
    return exhausted


async def _settle_messages(
    conn: Any, settled: list[Settlement], max_attempts: int
) -> list[uuid.UUID]:
    sorted_ = await _sort(conn, settled, max_attempts)
    done, released, retry = sorted_.done, sorted_.released, sorted_.retry
    dead, disable = sorted_.dead, sorted_.disable
    if done:
        await conn.execute("DELETE FROM push_jobs WHERE device_id = ANY($1::uuid[])", done)
    if released:
        await conn.execute(
            """UPDATE push_jobs SET claimed_until = NULL, attempts = 0, last_status = NULL,
                   last_reason = NULL WHERE device_id = ANY($1::uuid[])""",
            released,
        )
    if retry:
        await conn.executemany(
            """UPDATE push_jobs SET claimed_until = NULL, attempts = attempts + 1,
                   due_at = $2, last_status = $3, last_reason = $4 WHERE device_id = $1""",
            [(s.device_id, s.retry_at, s.status, s.reason) for s in retry],
        )
    await _dead_letter(conn, dead)
    if disable:
        gone, renewed = await disable_dead_tokens(
            conn,
            [DeadToken(s.device_id, s.token, s.reason, s.provider_timestamp) for s in disable],
        )
        await conn.execute(  # a new token registered meanwhile: the job goes out to it
            "UPDATE push_jobs SET claimed_until = NULL WHERE device_id = ANY($1::uuid[])",
            list(renewed),
        )
        stale = [s for s in disable if s.device_id not in gone and s.device_id not in renewed]
        await _dead_letter(conn, stale)  # the same token, dead only before it was renewed
    return sorted_.exhausted


async def _record_results(conn: Any, settled: list[Settlement]) -> None:
    """The providers' latest answer on each registration; every answer but an acceptance
    in push_results."""
    await conn.execute(
        """UPDATE push_registrations r SET last_result_at = now(), last_outcome = s.outcome,
               last_status = s.status, last_reason = s.reason
           FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[])
               AS s(device_id, outcome, status, reason)
           WHERE r.device_id = s.device_id""",
        [s.device_id for s in settled],
        [s.outcome for s in settled],
        [s.status for s in settled],
        [s.reason for s in settled],
    )
    trouble = [s for s in settled if s.outcome != "accepted"]
    if trouble:
        await conn.execute(
            """INSERT INTO push_results (device_id, kind, outcome, status, reason)
               SELECT s.* FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[],
                                      $5::text[]) AS s(device_id, kind, outcome, status, reason)
               WHERE EXISTS (SELECT 1 FROM push_registrations r
                             WHERE r.device_id = s.device_id)""",
            [s.device_id for s in trouble],
            [s.kind for s in trouble],
            [s.outcome for s in trouble],
            [s.status for s in trouble],
            [s.reason for s in trouble],
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    device_id: uuid.UUID
    account_id: uuid.UUID
    kind: str
    conversation_id: uuid.UUID | None
    message_id: uuid.UUID | None
    attempts: int
    last_status: int | None
    last_reason: str
    queued_at: datetime
    dead_at: datetime
    notice_id: uuid.UUID | None  # kind "notice": the notice whose push it was


DEAD_COLUMNS = """d.id, d.device_id, d.account_id, d.kind, d.conversation_id, d.message_id,
    d.attempts, d.last_status, d.last_reason, d.queued_at, d.dead_at, d.notice_id"""


async def _dead_letters(
    conn: Any, org_id: uuid.UUID, after_id: int, limit: int
) -> list[DeadLetter]:
    rows = await conn.fetch(
        f"""SELECT {DEAD_COLUMNS} FROM push_dead_letters d
            JOIN accounts a ON a.id = d.account_id
            WHERE a.org_id = $1 AND d.id > $2 ORDER BY d.id LIMIT $3""",
        org_id,
        after_id,
        limit,
    )
    return [DeadLetter(**dict(r)) for r in rows]


async def _redrive(conn: Any, org_id: uuid.UUID, ids: list[int]) -> int:
    """Put dead letters back in the outbox, due now. A device that has a job already keeps
    it (with the later message); returns how many dead letters were re-driven (put back, or
    merged into a pending job); those of a disabled or removed registration are dropped."""
    await lock_stream(conn)  # see the module docstring on locks
    rows = await conn.fetch(
        """DELETE FROM push_dead_letters d USING accounts a
           WHERE a.id = d.account_id AND a.org_id = $1 AND d.id = ANY($2::bigint[])
           RETURNING d.*""",
        org_id,
        ids,
    )
    await redrive_notice_letters(conn, [r for r in rows if r["notice_id"] is not None])
    latest: dict[uuid.UUID, Any] = {}
    for row in sorted((r for r in rows if r["notice_id"] is None), key=lambda r: r["pos"]):
        latest[row["device_id"]] = row
    await conn.executemany(
        f"""INSERT INTO push_jobs AS j (device_id, account_id, kind, conversation_id,
                message_id, msg_seq, pos, burst, queued_at, due_at)
            SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, now()
            FROM push_registrations r WHERE r.device_id = $1 AND r.disabled_at IS NULL
            {JOB_UPSERT}""",
        [
            (
                r["device_id"],
                r["account_id"],
                r["kind"],
                r["conversation_id"],
                r["message_id"],
                r["msg_seq"],
                r["pos"],
                r["burst"],
                r["queued_at"],
            )
            for _, r in sorted(latest.items())
        ],
    )
    return len(rows)


@dataclass(frozen=True, slots=True)
class OutboxState:
    pending: int
    due: int  # due now and not leased
    oldest_due_s: float  # how long the most overdue unleased job has waited (0: none)
    dead_letters: int


async def _state(conn: Any, org_id: uuid.UUID | None) -> OutboxState:
    """The outbox of one organization's accounts, or (None) of the whole server."""
    row = await conn.fetchrow(
        """WITH jobs AS (
               SELECT j.due_at, j.claimed_until FROM push_jobs j
               WHERE $1::uuid IS NULL
                  OR j.account_id IN (SELECT id FROM accounts WHERE org_id = $1)
               UNION ALL
               SELECT j.due_at, j.claimed_until FROM push_notice_jobs j
               WHERE $1::uuid IS NULL
                  OR j.account_id IN (SELECT id FROM accounts WHERE org_id = $1))
           SELECT (SELECT count(*) FROM jobs) AS pending,
                  count(*) AS due,
                  coalesce(extract(epoch FROM now() - min(due_at)), 0)::float8 AS oldest,
                  (SELECT count(*) FROM push_dead_letters d
                   WHERE $1::uuid IS NULL
                      OR d.account_id IN (SELECT id FROM accounts WHERE org_id = $1)) AS dead
           FROM jobs
           WHERE due_at <= now() AND (claimed_until IS NULL OR claimed_until < now())""",
        org_id,
    )
    return OutboxState(int(row["pending"]), int(row["due"]), row["oldest"], int(row["dead"]))


async def _prune_results(conn: Any, keep_s: float) -> int:
    status = await conn.execute(
        "DELETE FROM push_results WHERE at < now() - $1 * interval '1 second'", keep_s
    )
    return int(status.split()[-1])


class PushOutbox:
    def __init__(self, db: Database, keyring: Keyring) -> None:
        self._db = db
        self._keyring = keyring

    async def claim(self, limit: int, lease_s: float) -> Claim:
        """Lease up to `limit` due jobs for `lease_s`; moot ones are deleted, not returned.
        A registration removed between the lease and the read drops its job from the claim
        (its row is gone with it)."""
        live, moot, notices, more = await self._db.transaction(_lease_all, limit, lease_s)
        if not live and not notices:
            return Claim([], moot, more)
        jobs = await self._db.transaction(_details, self._keyring, live, notices)
        return Claim(jobs, moot, more)

    async def settle(self, settled: Sequence[Settlement], max_attempts: int) -> list[uuid.UUID]:
        """Record what the providers answered, in one transaction; returns the devices
        whose job was dead-lettered for running out of attempts."""
        if not settled:
            return []
        return await self._db.transaction(_settle, list(settled), max_attempts)

    async def dead_letters(
        self, org_id: uuid.UUID, after_id: int = 0, limit: int = 100
    ) -> list[DeadLetter]:
        return await self._db.read(_dead_letters, org_id, after_id, limit)

    async def redrive(self, org_id: uuid.UUID, ids: Sequence[int]) -> int:
        return await self._db.transaction(_redrive, org_id, list(ids))

    async def state(self, org_id: uuid.UUID | None = None) -> OutboxState:
        """Pending, due and dead-lettered pushes of the org's accounts (None: all)."""
        return await self._db.read(_state, org_id)

    async def prune_results(self, keep_s: float) -> int:
        return await self._db.transaction(_prune_results, keep_s)
