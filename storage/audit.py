"""The audit log: who did what to whose data, append-only and hash-chained.

Recording (the API every feature uses)
    An event is `AuditEvent(action, actor, subject_id=..., org_id=..., detail={...})`:
    `actor` is `account_actor(account_id, device_id)`, SYSTEM, OPERATOR or ANONYMOUS (an
    unauthenticated caller); `subject_id` the account whose data it is about; `detail`
    ids and counts only.

    - Inside a transaction that makes the change: `await append(conn, [event, ...], at)`
      as its last statement. The entry then exists if and only if the change committed.
      Consent, role, policy, guardian-consent changes, logins and logouts do this.
    - On its own (e.g. an admin read, which changes nothing): `await
      services.audit.record(event, at)` (`AuditStore.record`), one transaction.

    `append` locks the chain head (one row) until the transaction ends: every append, from
    any request in any server process, waits its turn, so the chain never forks. Call it
    last, after every other lock the transaction takes, and keep such transactions short.

What an entry may hold (checked when the event is made; a violation is a ValueError, a
bug in the caller): the action is one of ACTIONS; detail keys are in DETAIL_KEYS and values
are integers, booleans, null, short identifier-like strings (ids, purposes, role names,
version labels; no spaces or "@") or lists of them. So no email address, name, message
text, coordinate or IP address can enter the log. Login entries name the login record
(its id), which holds the IP address and user agent for 3 months; the audit log keeps
neither, so it does not extend that retention. Add a key or an action here, on purpose,
when a feature needs one.

Reading: `for_account` (entries whose subject or actor is the account), `for_org`, and
`page`/`checkpoints`/`head` for verification and export (storage.audit_chain).

Checkpoints (`checkpoint`) sign the head with the server identity key; pruning
(`prune`) deletes a prefix of the chain up to a checkpoint older than the retention,
after appending an `audit_pruned` entry that says so. The database refuses every other
update or delete of the log (migration 0012).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from storage.audit_chain import (
    ACTOR_KINDS,
    PRUNED_ACTION,
    AuditEntry,
    Checkpoint,
    checkpoint_message,
    format_time,
)
from storage.database import Database

ACTIONS = frozenset(
    {
        "login",  # a password login opened a session (actor: the account and device)
        "login_failed",  # a failed attempt on an existing account (reason, login record)
        "logout",
        "reauthenticated",  # the password was entered again before a data-rights action
        "admin_read",  # someone who manages the subject read their personal data (what)
        "export_requested",
        "export_downloaded",
        "deletion",
        "consent_granted",
        "consent_withdrawn",
        "purpose_switched",  # an org switched a purpose off or on (withdrawn: how many)
        "role_changed",
        "member_corrected",  # an admin changed a member's fields (their names only)
        "member_deactivated",
        "policy_published",
        "policy_accepted",
        "guardian_consent_recorded",
        "guardian_consent_withdrawn",
        PRUNED_ACTION,  # the retention sweeper deleted the entries through a checkpoint
    }
)

DETAIL_KEYS = frozenset(
    {
        "purpose",
        "reason",
        "off",
        "withdrawn",
        "policy_id",
        "version",
        "material",
        "consent_id",
        "from_role",
        "to_role",
        "admin_department_id",
        "fields",
        "what",
        "count",
        "login_record_id",
        "through_seq",
        "checkpoint_at",
        "entries",
        "files",
        "export_id",
    }
)

# Identifiers only: no spaces, no "@", nothing long.
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,63}$")
_LIST_MAX = 64


@dataclass(frozen=True, slots=True)
class AuditActor:
    """Who acted: an account (from one of its devices, when known), the system itself,
    the server's operator, or an unauthenticated caller."""

    kind: str
    account_id: uuid.UUID | None = None
    device_id: uuid.UUID | None = None

    def __post_init__(self) -> None:
        if self.kind not in ACTOR_KINDS:
            raise ValueError(f"unknown actor kind {self.kind!r}")
        if (self.kind == "account") != (self.account_id is not None):
            raise ValueError("an account actor, and only it, names an account")


SYSTEM = AuditActor("system")
OPERATOR = AuditActor("operator")
ANONYMOUS = AuditActor("anonymous")


def account_actor(account_id: uuid.UUID, device_id: uuid.UUID | None = None) -> AuditActor:
    return AuditActor("account", account_id, device_id)


def _check_value(key: str, value: Any) -> None:
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, str) and _TOKEN.match(value):
        return
    if isinstance(value, list) and len(value) <= _LIST_MAX:
        for item in value:
            if isinstance(item, list):
                raise ValueError(f"audit detail {key!r}: no nested lists")
            _check_value(key, item)
        return
    raise ValueError(f"audit detail {key!r} must be an id, a count or a flag")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """Something to record (see the module docstring for what it may hold)."""

    action: str
    actor: AuditActor
    subject_id: uuid.UUID | None = None
    org_id: uuid.UUID | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown audit action {self.action!r}: add it to ACTIONS")
        for key, value in self.detail.items():
            if key not in DETAIL_KEYS:
                raise ValueError(f"audit detail key {key!r} is not allowed: see DETAIL_KEYS")
            _check_value(key, value)


def _entry(seq: int, at: datetime, event: AuditEvent, prev_hash: bytes) -> AuditEntry:
    unhashed = AuditEntry(
        seq=seq,
        at=at,
        actor_kind=event.actor.kind,
        actor_account=event.actor.account_id,
        actor_device=event.actor.device_id,
        subject_id=event.subject_id,
        org_id=event.org_id,
        action=event.action,
        detail=dict(event.detail),
        prev_hash=prev_hash,
        hash=b"",
    )
    return AuditEntry(**{**_fields(unhashed), "hash": unhashed.computed_hash()})


def _fields(entry: AuditEntry) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in AuditEntry.__slots__}


_COLUMNS = (
    "seq, at, actor_kind, actor_account, actor_device, subject_id, org_id, action, detail, "
    "prev_hash, hash"
)


def _from_row(row: Any) -> AuditEntry:
    return AuditEntry(
        seq=row["seq"],
        at=row["at"],
        actor_kind=row["actor_kind"],
        actor_account=row["actor_account"],
        actor_device=row["actor_device"],
        subject_id=row["subject_id"],
        org_id=row["org_id"],
        action=row["action"],
        detail=json.loads(row["detail"]),
        prev_hash=bytes(row["prev_hash"]),
        hash=bytes(row["hash"]),
    )


def _checkpoint_from(row: Any) -> Checkpoint:
    return Checkpoint(
        row["seq"], bytes(row["hash"]), row["at"], bytes(row["public_key"]), bytes(row["signature"])
    )


async def append(conn: Any, events: Sequence[AuditEvent], at: datetime) -> list[AuditEntry]:
    """Append `events`, in order, at time `at`, inside the caller's open transaction (as
    its last statement: it holds the chain head's lock until the transaction ends)."""
    if not events:
        return []
    format_time(at)  # a time without a zone is refused before anything is locked
    head = await conn.fetchrow("SELECT seq, hash FROM audit_head FOR UPDATE")
    seq, prev = head["seq"], bytes(head["hash"])
    entries = []
    for event in events:
        seq += 1
        entry = _entry(seq, at, event, prev)
        entries.append(entry)
        prev = entry.hash
    await conn.executemany(
        f"INSERT INTO audit_log ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, "
        "$9::jsonb, $10, $11)",
        [
            (
                e.seq,
                e.at,
                e.actor_kind,
                e.actor_account,
                e.actor_device,
                e.subject_id,
                e.org_id,
                e.action,
                json.dumps(e.detail),
                e.prev_hash,
                e.hash,
            )
            for e in entries
        ],
    )
    return entries


async def _for_account(conn: Any, account_id: uuid.UUID, after: int, limit: int) -> Any:
    return await conn.fetch(
        f"""SELECT {_COLUMNS} FROM audit_log
            WHERE (subject_id = $1 OR actor_account = $1) AND seq > $2
            ORDER BY seq LIMIT $3""",
        account_id,
        after,
        limit,
    )


async def _for_org(
    conn: Any, org_id: uuid.UUID, account_id: uuid.UUID | None, after: int, limit: int
) -> Any:
    return await conn.fetch(
        f"""SELECT {_COLUMNS} FROM audit_log
            WHERE org_id = $1 AND seq > $2
              AND ($3::uuid IS NULL OR subject_id = $3 OR actor_account = $3)
            ORDER BY seq LIMIT $4""",
        org_id,
        after,
        account_id,
        limit,
    )


async def _page(conn: Any, after: int, through: int, limit: int) -> Any:
    return await conn.fetch(
        f"SELECT {_COLUMNS} FROM audit_log WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
        after,
        through,
        limit,
    )


async def _checkpoints(conn: Any, low: int, high: int) -> Any:
    return await conn.fetch(
        """SELECT seq, hash, at, public_key, signature FROM audit_checkpoints
           WHERE seq >= $1 AND seq <= $2 ORDER BY seq""",
        low,
        high,
    )


@dataclass(frozen=True, slots=True)
class Head:
    """The chain's end, the first entry kept, and how far pruning may go."""

    seq: int
    hash: bytes
    pruned_through: int
    first_seq: int | None  # None: no entry kept


async def _head(conn: Any) -> Head:
    row = await conn.fetchrow(
        """SELECT h.seq, h.hash, h.pruned_through, (SELECT min(seq) FROM audit_log) AS first
           FROM audit_head h"""
    )
    return Head(row["seq"], bytes(row["hash"]), row["pruned_through"], row["first"])


@dataclass(frozen=True, slots=True)
class CheckpointRule:
    """Sign the head once `every` entries are unsigned, or once the oldest unsigned one is
    `interval_s` old (or whenever there is anything unsigned, with `force`)."""

    every: int
    interval_s: float
    force: bool = False


async def _checkpoint(
    conn: Any,
    sign: Callable[[bytes], bytes],
    public_key: bytes,
    rule: CheckpointRule,
    at: datetime,
) -> Checkpoint | None:
    head = await conn.fetchrow("SELECT seq, hash FROM audit_head")
    last = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM audit_checkpoints")
    if head["seq"] <= last:
        return None
    if not rule.force and head["seq"] - last < rule.every:
        oldest = await conn.fetchval("SELECT at FROM audit_log WHERE seq = $1", last + 1)
        if oldest is not None and (at - oldest).total_seconds() < rule.interval_s:
            return None
    chain_hash = bytes(head["hash"])
    signature = sign(checkpoint_message(head["seq"], chain_hash, at))
    inserted = await conn.fetchrow(
        """INSERT INTO audit_checkpoints (seq, hash, at, public_key, signature)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq) DO NOTHING
           RETURNING seq, hash, at, public_key, signature""",
        head["seq"],
        chain_hash,
        at,
        public_key,
        signature,
    )
    return None if inserted is None else _checkpoint_from(inserted)


async def _start_pruning(conn: Any, cutoff: datetime, at: datetime) -> int:
    """Choose the newest checkpoint made before `cutoff` and, if the log still holds
    entries up to it, record the pruning in the chain (moving pruned_through to it).
    Returns the seq pruning may delete through (0: nothing)."""
    head = await conn.fetchrow("SELECT pruned_through FROM audit_head FOR UPDATE")
    target = await conn.fetchrow(
        "SELECT seq, at FROM audit_checkpoints WHERE at <= $1 ORDER BY seq DESC LIMIT 1", cutoff
    )
    through: int = head["pruned_through"]
    if target is None or target["seq"] <= through:
        return through
    await conn.execute("UPDATE audit_head SET pruned_through = $1", target["seq"])
    first = await conn.fetchval("SELECT min(seq) FROM audit_log")
    event = AuditEvent(
        PRUNED_ACTION,
        SYSTEM,
        detail={
            "through_seq": target["seq"],
            "checkpoint_at": format_time(target["at"]),
            "entries": target["seq"] - (first or 1) + 1,
        },
    )
    await append(conn, [event], at)
    return int(target["seq"])


async def _prune_batch(conn: Any, through: int, batch: int) -> int:
    await conn.execute("SET LOCAL obrol.audit_prune = 'on'")
    deleted = await conn.fetch(
        """DELETE FROM audit_log WHERE seq IN (
               SELECT seq FROM audit_log WHERE seq <= $1 ORDER BY seq LIMIT $2
               FOR UPDATE SKIP LOCKED)
           RETURNING seq""",
        through,
        batch,
    )
    if len(deleted) < batch:
        await conn.execute("DELETE FROM audit_checkpoints WHERE seq < $1", through)
    return len(deleted)


class AuditStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, event: AuditEvent, at: datetime) -> AuditEntry:
        """Append one event in a transaction of its own."""
        return (await self._db.transaction(append, [event], at))[0]

    async def record_many(self, events: Sequence[AuditEvent], at: datetime) -> list[AuditEntry]:
        """Append several events, in order, in one transaction."""
        return await self._db.transaction(append, list(events), at)

    async def for_account(
        self, account_id: uuid.UUID, after: int = 0, limit: int = 100
    ) -> list[AuditEntry]:
        """Entries whose subject or actor is the account, oldest first, after seq `after`."""
        return [_from_row(r) for r in await self._db.read(_for_account, account_id, after, limit)]

    async def for_org(
        self, org_id: uuid.UUID, account_id: uuid.UUID | None, after: int = 0, limit: int = 100
    ) -> list[AuditEntry]:
        """The organization's entries (only those naming `account_id`, if given)."""
        rows = await self._db.read(_for_org, org_id, account_id, after, limit)
        return [_from_row(r) for r in rows]

    async def head(self) -> Head:
        return await self._db.read(_head)

    async def page(self, after: int, through: int, limit: int) -> list[AuditEntry]:
        """Entries with after < seq <= through, in seq order, at most `limit`."""
        return [_from_row(r) for r in await self._db.read(_page, after, through, limit)]

    async def checkpoints(self, low: int = 0, high: int = 2**63 - 1) -> list[Checkpoint]:
        """The checkpoints with low <= seq <= high, in seq order."""
        return [_checkpoint_from(r) for r in await self._db.read(_checkpoints, low, high)]

    async def checkpoint(
        self,
        sign: Callable[[bytes], bytes],
        public_key: bytes,
        rule: CheckpointRule,
        at: datetime,
    ) -> Checkpoint | None:
        """Sign the chain's head at `at` if `rule` says it is time; `sign` returns the
        Ed25519 signature of a message. None if nothing was signed (not due, nothing new,
        or another process signed the same head first)."""
        return await self._db.transaction(_checkpoint, sign, public_key, rule, at)

    async def prune(self, cutoff: datetime, at: datetime, batch: int) -> int:
        """Delete the entries through the newest checkpoint made before `cutoff`, in
        transactions of at most `batch` rows (an `audit_pruned` entry records it first;
        a pruning cut short is finished by the next call). Returns the entries deleted."""
        through = await self._db.transaction(_start_pruning, cutoff, at)
        deleted = 0
        while through:
            count = await self._db.transaction(_prune_batch, through, batch)
            deleted += count
            if count < batch:
                break
        return deleted
