"""Purging cancelled accounts: every row of the person, in bounded batches, then the account.

Each batch is one short transaction on one cancelled account (its `cancellations` row
locked with SKIP LOCKED, so several server processes work on different accounts and never
wait for each other). It deletes up to `limit` rows, working through STEPS in order; a step
deletes `WHERE <the person's rows> LIMIT n` (rows another transaction holds skipped), so a
batch is idempotent: after a crash the next batch simply finds what is left. No step takes
the stream lock: the messages the person sent go first, in batches of their own that do
(`messages`: each leaves a tombstone, which takes a stream position). Their id is also
taken out of the consent scope of other people's messages and live sessions that named
them. Once a batch finds nothing left, it finishes the account in the same
transaction: the people-references the organization keeps (who created a conversation or
a site, published a policy, switched a purpose off, recorded a guardian's consent) are set
to NULL, the person's rights requests forgotten (`storage.requests.forget_person`), the
`cancellation` request closed as done, an audit `deletion` entry with the counts appended
(ids and counts only), and the data-key tombstone, the `cancellations` row and the account
row deleted. The foreign keys to `accounts` are the backstop: if anything of the person
were still there, the account row would not go, and the next pass tries again.

Files: the blobs of the person's uploads are deleted before their rows (`uploads`, then
`batch` with those ids), so a crash in between leaves rows whose blobs are gone (unreadable
already: the key was destroyed), never a blob nobody can find. The few files their messages
shared that someone else uploaded come back from `batch` to be deleted after the commit,
as storage/erasure.py does it.

Counts are kept on the `cancellations` row across batches; nothing here is logged or kept
but counts.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from protocol.codec import decode_consent, encode_consent
from storage.audit import SYSTEM, AuditEvent, append
from storage.database import Database
from storage.erasure import ERASED_COLUMNS, Erasure, finish_erasure
from storage.requests import forget_person, set_status
from storage.stream import lock_stream
from storage.tombstones import forget_account

logger = logging.getLogger(__name__)

# :account the account, :devices its devices, :email the work email it had, :limit how many
# rows at most (`_bind` makes them positional). Each deletes (or changes) the person's rows.
STEPS: tuple[tuple[str, str], ...] = (
    (
        "message_receipts",
        """DELETE FROM message_receipts WHERE ctid = ANY(ARRAY(
               SELECT ctid FROM message_receipts WHERE device_id = ANY(:devices)
               LIMIT :limit FOR UPDATE SKIP LOCKED))""",
    ),
    (
        "live_sessions",
        """DELETE FROM live_sessions WHERE id IN (
               SELECT id FROM live_sessions WHERE account_id = :account
               LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    (
        "consent_history",
        """DELETE FROM consent_history WHERE id IN (
               SELECT id FROM consent_history WHERE account_id = :account
               LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    (
        "consent_grants",
        """DELETE FROM consent_grants WHERE (account_id, purpose) IN (
               SELECT account_id, purpose FROM consent_grants WHERE account_id = :account
               LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    (
        "policy_acceptances",
        """DELETE FROM policy_acceptances WHERE id IN (
               SELECT id FROM policy_acceptances WHERE account_id = :account
               LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    (
        "attendance_records",
        """DELETE FROM attendance_records WHERE id IN (
               SELECT id FROM attendance_records WHERE account_id = :account
               LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    (
        "device_cursors",
        """DELETE FROM device_cursors WHERE device_id IN (
               SELECT device_id FROM device_cursors WHERE device_id = ANY(:devices)
               LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    (
        # Dropped at the cancellation already (under the stream lock, as every drop is);
        # none can be made since. Their jobs, dead letters and results go with them.
        "push_registrations",
        """DELETE FROM push_registrations WHERE device_id IN (
               SELECT device_id FROM push_registrations WHERE device_id = ANY(:devices)
               LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    (
        "push_dead_letters",
        """DELETE FROM push_dead_letters WHERE id IN (
               SELECT id FROM push_dead_letters WHERE account_id = :account
               LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    (
        "push_jobs",
        """DELETE FROM push_jobs WHERE device_id IN (
               SELECT device_id FROM push_jobs WHERE account_id = :account
               LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    (
        "auth_tokens",
        """DELETE FROM auth_tokens WHERE token_hash IN (
               SELECT token_hash FROM auth_tokens WHERE account_id = :account
               LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    (
        # Every attempt of theirs, and every attempt made under their address (also those
        # that named no account: typos of the password before the account existed).
        "login_records",
        """DELETE FROM login_records WHERE id IN (
               SELECT id FROM login_records
               WHERE account_id = :account OR lower(login_name) = lower(:email)
               LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    (
        "read_marks",
        """DELETE FROM read_marks WHERE (account_id, conversation_id) IN (
               SELECT account_id, conversation_id FROM read_marks WHERE account_id = :account
               LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    (
        "conversation_mutes",
        """DELETE FROM conversation_mutes WHERE (account_id, conversation_id) IN (
               SELECT account_id, conversation_id FROM conversation_mutes
               WHERE account_id = :account LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    ("push_settings", "DELETE FROM push_settings WHERE account_id = :account"),
    (
        # A direct conversation's key is the pair's ids: it stops naming the person (the
        # other side keeps the conversation and their own messages in it).
        "direct_keys",
        """UPDATE conversations SET direct_key = NULL WHERE id IN (
               SELECT c.id FROM conversation_members m
               JOIN conversations c ON c.id = m.conversation_id
               WHERE m.account_id = :account AND c.direct_key IS NOT NULL
               LIMIT :limit FOR UPDATE OF c SKIP LOCKED)""",
    ),
    (
        "conversation_members",
        """DELETE FROM conversation_members WHERE (conversation_id, account_id) IN (
               SELECT conversation_id, account_id FROM conversation_members
               WHERE account_id = :account LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    (
        "notice_recipients",
        """DELETE FROM notice_recipients WHERE (notice_id, account_id) IN (
               SELECT notice_id, account_id FROM notice_recipients WHERE account_id = :account
               LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    (
        "guardian_consent_withdrawals",
        """DELETE FROM guardian_consent_withdrawals WHERE consent_id IN (
               SELECT w.consent_id FROM guardian_consent_withdrawals w
               JOIN guardian_consents g ON g.id = w.consent_id
               WHERE g.account_id = :account LIMIT :limit FOR UPDATE OF w SKIP LOCKED)""",
    ),
    (
        "guardian_consents",
        """DELETE FROM guardian_consents WHERE id IN (
               SELECT id FROM guardian_consents WHERE account_id = :account
               LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    # What the person did for the organization stays, naming nobody.
    (
        "conversations_created",
        """UPDATE conversations SET created_by = NULL WHERE id IN (
               SELECT id FROM conversations WHERE created_by = :account
               LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    (
        "attendance_sites_created",
        """UPDATE attendance_sites SET created_by = NULL WHERE id IN (
               SELECT id FROM attendance_sites WHERE created_by = :account
               LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    (
        "policies_published",
        """UPDATE policy_versions SET published_by = NULL WHERE id IN (
               SELECT id FROM policy_versions WHERE published_by = :account
               LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    (
        "purposes_switched_off",
        """UPDATE org_purposes_off SET by_account = NULL WHERE (org_id, purpose) IN (
               SELECT org_id, purpose FROM org_purposes_off WHERE by_account = :account
               LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    (
        "guardian_consents_recorded",
        """UPDATE guardian_consents SET recorded_by = NULL WHERE id IN (
               SELECT id FROM guardian_consents WHERE recorded_by = :account
               LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    (
        "guardian_withdrawals_recorded",
        """UPDATE guardian_consent_withdrawals SET withdrawn_by = NULL WHERE consent_id IN (
               SELECT consent_id FROM guardian_consent_withdrawals WHERE withdrawn_by = :account
               LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
    (
        "devices",
        """DELETE FROM devices WHERE id IN (
               SELECT id FROM devices WHERE account_id = :account
               LIMIT :limit FOR UPDATE SKIP LOCKED)""",
    ),
)


@dataclass(frozen=True, slots=True)
class Due:
    """A cancelled account whose purge may run now."""

    account_id: uuid.UUID
    org_id: uuid.UUID


@dataclass(slots=True)
class PurgeBatch:
    """What one batch did: rows deleted or changed (counts only), the files whose rows it
    deleted for someone else's upload (delete their blobs after the commit), whether the
    account is gone now, and whether the batch ran at all (False: another process holds
    the account, or it was purged meanwhile)."""

    rows: int = 0
    files: list[uuid.UUID] = field(default_factory=list)
    finished: bool = False
    ran: bool = True


async def _next_due(conn: Any, now: datetime) -> Due | None:
    row = await conn.fetchrow(
        """SELECT account_id, org_id FROM cancellations WHERE purge_after <= $1
           ORDER BY purge_after, account_id LIMIT 1 FOR UPDATE SKIP LOCKED""",
        now,
    )
    return None if row is None else Due(row["account_id"], row["org_id"])


async def _uploads(conn: Any, account_id: uuid.UUID, limit: int) -> list[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT id FROM files WHERE uploader_id = $1 ORDER BY id LIMIT $2", account_id, limit
    )
    return [r["id"] for r in rows]


async def _count(conn: Any, statement: str, *args: Any) -> int:
    """Rows a DELETE or UPDATE touched, from its status ("DELETE 12", "UPDATE 3")."""
    status: str = await conn.execute(statement, *args)
    return int(status.rsplit(" ", 1)[1])


async def _batch(
    conn: Any, account_id: uuid.UUID, uploads: list[uuid.UUID], now: datetime, limit: int
) -> PurgeBatch:
    work = await conn.fetchrow(
        """SELECT account_id, org_id, email, request_id, purged_rows, purged_files
           FROM cancellations WHERE account_id = $1 FOR UPDATE SKIP LOCKED""",
        account_id,
    )
    if work is None:
        return PurgeBatch(ran=False)
    done = PurgeBatch()
    rows = await conn.fetch("SELECT id FROM devices WHERE account_id = $1", account_id)
    devices = [r["id"] for r in rows]
    if devices and await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE sender_device_id = ANY($1::uuid[]))",
        devices,
    ):
        return done  # `messages` erases those first (a batch that finds some held skips)
    budget = limit
    uploaded = 0
    if uploads:  # their blobs are gone already
        uploaded = await _count(
            conn,
            "DELETE FROM files WHERE id = ANY($1::uuid[]) AND uploader_id = $2",
            uploads,
            account_id,
        )
        budget -= uploaded
    if budget > 0:
        scrubbed = await _scrub_scopes(conn, account_id, budget)
        budget -= scrubbed
        done.rows += scrubbed
    values = {"account": account_id, "devices": devices, "email": work["email"]}
    for _name, statement in STEPS:
        if budget <= 0:
            break
        touched = await _count(conn, *_bind(statement, {**values, "limit": budget}))
        budget -= touched
        done.rows += touched
    rows_so_far = work["purged_rows"] + done.rows
    files_so_far = work["purged_files"] + uploaded + len(done.files)
    if done.rows == 0 and uploaded == 0 and not await _uploads(conn, account_id, 1):
        done.finished = await _finish(conn, work, rows_so_far, files_so_far, now)
    if not done.finished:
        await conn.execute(
            """UPDATE cancellations SET purged_rows = $2, purged_files = $3
               WHERE account_id = $1""",
            account_id,
            rows_so_far,
            files_so_far,
        )
    return done


_TYPES = {"account": "uuid", "devices": "uuid[]", "email": "text", "limit": "int"}


def _bind(statement: str, values: dict[str, Any]) -> list[Any]:
    """`statement` with its :names made positional (typed), and the values in order."""
    args: list[Any] = [statement]
    for name, kind in _TYPES.items():
        if f":{name}" in statement:
            args.append(values[name])
            args[0] = args[0].replace(f":{name}", f"${len(args) - 1}::{kind}")
    return args


async def _scrub_scopes(conn: Any, account_id: uuid.UUID, limit: int) -> int:
    """Take the person out of the consent scope of up to `limit` other people's messages
    that named them (the scope column and the stored tag alike); a scope naming only them
    becomes the sender's alone, which is who could see it besides them. Returns how many."""
    rows = await conn.fetch(
        """SELECT id, sender_id, scope, consent FROM messages
           WHERE scope @> ARRAY[$1::uuid] LIMIT $2 FOR UPDATE SKIP LOCKED""",
        account_id,
        limit,
    )
    changes = []
    for row in rows:
        scope = [a for a in row["scope"] if a != account_id] or [row["sender_id"]]
        consent = row["consent"]
        if consent is not None:
            tag = decode_consent(bytes(consent))
            consent = encode_consent(replace(tag, scope=tuple(a.bytes for a in scope)))
        changes.append((row["id"], scope, consent))
    await conn.executemany("UPDATE messages SET scope = $2, consent = $3 WHERE id = $1", changes)
    live = await _count(
        conn,
        """UPDATE live_sessions
           SET scope = CASE WHEN cardinality(scope) > 1 THEN array_remove(scope, $1)
                            ELSE ARRAY[account_id] END
           WHERE scope @> ARRAY[$1::uuid]""",
        account_id,
    )
    return len(changes) + live


async def _messages(conn: Any, account_id: uuid.UUID, now: datetime, limit: int) -> Erasure | None:
    """Up to `limit` messages the person sent, with their receipts and the file rows no
    other message shares, each leaving an `account_cancelled` tombstone. The stream lock
    comes first (tombstones take stream positions; storage/erasure.py). None if another
    process holds the account."""
    await lock_stream(conn)
    held = await conn.fetchval(
        "SELECT account_id FROM cancellations WHERE account_id = $1 FOR UPDATE SKIP LOCKED",
        account_id,
    )
    if held is None:
        return None
    rows = await conn.fetch(
        f"""DELETE FROM messages WHERE id IN (
               SELECT m.id FROM messages m JOIN devices d ON d.id = m.sender_device_id
               WHERE d.account_id = $1
               LIMIT $2 FOR UPDATE OF m SKIP LOCKED)
           RETURNING {ERASED_COLUMNS}""",
        account_id,
        limit,
    )
    erasure = await finish_erasure(conn, rows, "account_cancelled", now)
    if rows:
        await conn.execute(
            """UPDATE cancellations SET purged_rows = purged_rows + $2,
                      purged_files = purged_files + $3
               WHERE account_id = $1""",
            account_id,
            len(rows),
            len(erasure.files),
        )
    return erasure


async def _finish(conn: Any, work: Any, rows: int, files: int, now: datetime) -> bool:
    """Nothing of the person is left: forget them and delete the account (False, nothing
    changed, if a row of theirs appeared meanwhile and holds the account)."""
    account_id, org_id = work["account_id"], work["org_id"]
    try:
        async with conn.transaction():  # a savepoint: a straggler undoes only this part
            await forget_person(conn, account_id)
            await forget_account(conn, account_id)  # tombstones' audiences
            if work["request_id"] is not None:
                current = await conn.fetchval(
                    "SELECT status FROM rights_requests WHERE id = $1", work["request_id"]
                )
                if current in ("open", "in_progress"):
                    await set_status(
                        conn,
                        work["request_id"],
                        "done",
                        now,
                        note=f"the account was purged: {rows} rows and {files} files erased",
                    )
            detail = {"what": "account_purged", "count": rows, "files": files}
            event = AuditEvent("deletion", SYSTEM, account_id, org_id, detail)
            await append(conn, [event], now)
            # Attempts made under the account since the login records' batch (few: rate
            # limited): login_records has no foreign key to hold the account back.
            await conn.execute(
                """DELETE FROM login_records
                   WHERE account_id = $1 OR lower(login_name) = lower($2)""",
                account_id,
                work["email"],
            )
            await conn.execute("DELETE FROM data_keys WHERE account_id = $1", account_id)
            await conn.execute("DELETE FROM cancellations WHERE account_id = $1", account_id)
            await conn.execute("DELETE FROM accounts WHERE id = $1", account_id)
    except asyncpg.ForeignKeyViolationError as exc:
        # A row of theirs appeared meanwhile (the next batch deletes it), or a table the
        # steps do not know refers to the account: let the others' purges go first.
        logger.warning(
            "purge of account %s held back by %s; retried in an hour",
            account_id,
            exc.constraint_name,
        )
        await conn.execute(
            "UPDATE cancellations SET purge_after = $2 WHERE account_id = $1",
            account_id,
            now + timedelta(hours=1),
        )
        return False
    return True


class PurgeStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def next_due(self, now: datetime) -> Due | None:
        """A cancelled account whose purge may run at `now` (none held by another
        process), or None."""
        return await self._db.read(_next_due, now)

    async def uploads(self, account_id: uuid.UUID, limit: int) -> list[uuid.UUID]:
        """Up to `limit` files the account uploaded: delete their blobs, then pass them to
        `batch`."""
        return await self._db.read(_uploads, account_id, limit)

    async def messages(self, account_id: uuid.UUID, now: datetime, limit: int) -> Erasure | None:
        """Erase up to `limit` of the messages the person sent (tombstones written: fan
        them out, and delete the returned files' blobs, after the commit); None if another
        process holds the account. Call it until it erases nothing, then `batch`."""
        return await self._db.transaction(_messages, account_id, now, limit)

    async def batch(
        self, account_id: uuid.UUID, uploads: list[uuid.UUID], now: datetime, limit: int
    ) -> PurgeBatch:
        """One batch of the account's purge (see the module doc): the file rows `uploads`
        (blobs deleted already), then up to `limit` rows in all; the account itself once
        nothing else is left."""
        return await self._db.transaction(_batch, account_id, uploads, now, limit)
