"""Push jobs for an organization's notices (service ending, security incident).

A notice is not a message: it has no stream position, so no device cursor makes its push
moot, and it must not merge into (or be replaced by) a device's message job. So a notice
push is a row of its own, one per device and notice (`push_notice_jobs`), written in the
notice's transaction for every live, registered device of every recipient, due at once,
and sent by the same workers through the same providers (`PushOutbox.claim` leases both
kinds; `PushOutbox.settle` records both). A device that is connected gets the live `notice`
frame and the push too: the app tells them apart from nothing, both carry the notice id.

Locks: rows are only ever inserted with a fresh notice id (no conflict to wait on), holding
KEY SHARE on the registrations in device id order (which only a deletion of them waits for,
and that locks them in the same order); a settlement locks registrations before jobs, like
the message outbox (storage/push_outbox.py). So no stream lock is needed here.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from storage.push_registrations import DeadToken, disable_dead_tokens

if TYPE_CHECKING:  # storage.push_outbox imports this module to claim and settle
    from storage.push_outbox import Settlement


async def enqueue_for_notice(
    conn: Any, notice_id: uuid.UUID, org_id: uuid.UUID, accounts: Sequence[uuid.UUID] | None
) -> int:
    """Inside the notice's transaction: a job for every live (not revoked, not signed out),
    registered (not disabled) device of the recipients, active accounts of the organization
    (`accounts` None: every member). Returns how many."""
    status = await conn.execute(
        """INSERT INTO push_notice_jobs (device_id, notice_id, account_id, queued_at, due_at)
           SELECT d.id, $1, d.account_id, now(), now()
           FROM accounts a
           JOIN devices d ON d.account_id = a.id
                AND d.revoked_at IS NULL AND d.signed_out_at IS NULL
           JOIN push_registrations r ON r.device_id = d.id AND r.disabled_at IS NULL
           WHERE a.org_id = $2 AND a.status = 'active'
             AND ($3::uuid[] IS NULL OR a.id = ANY($3::uuid[]))
           ORDER BY d.id
           -- a registration being deleted meanwhile (sign-out, revocation) is skipped
           -- once that commits, not a foreign-key failure of the whole notice
           FOR KEY SHARE OF r""",
        notice_id,
        org_id,
        None if accounts is None else list(accounts),
    )
    return int(status.split()[-1])


async def lease_notice_jobs(conn: Any, limit: int, lease_s: float) -> list[Any]:
    """Lease up to `limit` due notice jobs (with their notice's kind); none is ever moot."""
    if limit <= 0:
        return []
    rows: list[Any] = await conn.fetch(
        """WITH picked AS (
               SELECT device_id, notice_id FROM push_notice_jobs
               WHERE due_at <= now() AND (claimed_until IS NULL OR claimed_until < now())
               ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED)
           UPDATE push_notice_jobs j SET claimed_until = now() + $2 * interval '1 second'
           FROM picked, notices n
           WHERE j.device_id = picked.device_id AND j.notice_id = picked.notice_id
             AND n.id = j.notice_id
           RETURNING j.*, n.kind AS notice_kind""",
        limit,
        lease_s,
    )
    return rows


async def _dead_letter(conn: Any, dead: list[Settlement]) -> None:
    if dead:
        await conn.executemany(
            """WITH gone AS (DELETE FROM push_notice_jobs WHERE device_id = $1
                                 AND notice_id = $2 RETURNING *)
               INSERT INTO push_dead_letters (device_id, account_id, kind, notice_id, pos,
                   burst, queued_at, attempts, last_status, last_reason)
               SELECT device_id, account_id, 'notice', notice_id, 0, 1, queued_at,
                      attempts + 1, $3, $4 FROM gone""",
            [(s.device_id, s.notice_id, s.status, s.reason) for s in dead],
        )


async def settle_notice_jobs(
    conn: Any, settled: list[Settlement], max_attempts: int
) -> list[uuid.UUID]:
    """Record what the providers answered for notice pushes (the registrations already
    locked by the caller); returns the devices whose notice job ran out of attempts.
    A job whose lease is no longer ours is left to whoever claimed it."""
    keys = sorted((s.device_id, s.notice_id) for s in settled if s.notice_id is not None)
    current = {
        (r["device_id"], r["notice_id"]): r
        for r in await conn.fetch(
            """SELECT j.device_id, j.notice_id, j.attempts, j.claimed_until
               FROM push_notice_jobs j
               JOIN unnest($1::uuid[], $2::uuid[]) AS k(device_id, notice_id)
                 ON k.device_id = j.device_id AND k.notice_id = j.notice_id
               ORDER BY j.device_id, j.notice_id FOR UPDATE OF j""",
            [d for d, _ in keys],
            [n for _, n in keys],
        )
    }
    done: list[Settlement] = []
    retry: list[Settlement] = []
    dead: list[Settlement] = []
    disable: list[Settlement] = []
    exhausted: list[uuid.UUID] = []
    for s in settled:
        row = current.get((s.device_id, s.notice_id))
        if row is None or row["claimed_until"] != s.lease:
            continue
        if s.outcome == "accepted":
            done.append(s)
        elif s.outcome == "disable":
            disable.append(s)
        elif s.outcome == "retry" and row["attempts"] + 1 < max_attempts:
            retry.append(s)
        else:
            dead.append(s)
            if s.outcome == "retry":
                exhausted.append(s.device_id)
    await conn.executemany(
        "DELETE FROM push_notice_jobs WHERE device_id = $1 AND notice_id = $2",
        [(s.device_id, s.notice_id) for s in done],
    )
    await conn.executemany(
        """UPDATE push_notice_jobs SET claimed_until = NULL, attempts = attempts + 1,
               due_at = $3, last_status = $4, last_reason = $5
           WHERE device_id = $1 AND notice_id = $2""",
        [(s.device_id, s.notice_id, s.retry_at, s.status, s.reason) for s in retry],
    )
    gone, renewed = await disable_dead_tokens(
        conn, [DeadToken(s.device_id, s.token, s.reason, s.provider_timestamp) for s in disable]
    )
    await conn.executemany(  # a new token registered meanwhile: the job goes out to it
        "UPDATE push_notice_jobs SET claimed_until = NULL WHERE device_id = $1 AND notice_id = $2",
        [(s.device_id, s.notice_id) for s in disable if s.device_id in renewed],
    )
    stale = [s for s in disable if s.device_id not in gone and s.device_id not in renewed]
    await _dead_letter(conn, dead + stale)
    return exhausted


async def redrive_notice_letters(conn: Any, rows: list[Any]) -> None:
    """Put dead-lettered notice pushes (rows already deleted from the dead letters) back in
    the outbox, due now; those of a disabled or removed registration are dropped."""
    await conn.executemany(
        """INSERT INTO push_notice_jobs (device_id, notice_id, account_id, queued_at, due_at)
           SELECT $1, $2, $3, $4, now() FROM push_registrations r
           WHERE r.device_id = $1 AND r.disabled_at IS NULL
             AND EXISTS (SELECT 1 FROM notices n WHERE n.id = $2)
           ON CONFLICT (device_id, notice_id) DO NOTHING""",
        [(r["device_id"], r["notice_id"], r["account_id"], r["queued_at"]) for r in rows],
    )
