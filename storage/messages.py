"""Stored messages: group-committed appends, catch-up by stream position, history by seq.

Bodies are sealed under the sender's data key with the message id as associated data
(`storage.keyring`, `storage.sealing`), once per message in the commit and with one key
lookup per batch (none when the senders' keys are cached). Every read opens them again; the
body of a sender whose key was destroyed comes back empty with `erased` set, and the server
shows it as an `erased` system message.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from storage.database import Database
from storage.errors import NotFoundError
from storage.keyring import Keyring
from storage.push_outbox import enqueue_for_messages, push_targets
from storage.sealing import MESSAGE_BODY, ad, open_message_body, seal
from storage.stream import allocate_positions, lock_stream
from storage.tombstones import CATCH_UP_COLUMNS, TOMBSTONE_VISIBLE, Tombstone, tombstone
from storage.visible import VISIBLE, VISIBLE_ABOVE_CURSOR

COLUMNS = """m.id, m.conversation_id, m.seq, m.pos, m.sender_id, m.sender_device_id,
    m.client_id, m.kind, m.body, m.consent, m.scope, m.sent_at"""


@dataclass(frozen=True, slots=True)
class NewMessage:
    conversation_id: uuid.UUID
    sender_id: uuid.UUID
    sender_device_id: uuid.UUID
    client_id: str
    kind: str
    body: bytes
    consent: bytes | None
    sent_at: datetime
    scope: tuple[uuid.UUID, ...] | None = None  # who may see it besides the sender
    purpose: str | None = None  # the consent tag's purpose: the sender must hold the grant
    erase_at: datetime | None = None  # the sweeper erases it then (the tag's retention)
    until_withdrawn: bool = False  # erased when the sender withdraws the grant
    file_id: uuid.UUID | None = None  # the file a `file` message shares


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: uuid.UUID
    conversation_id: uuid.UUID
    seq: int
    pos: int
    sender_id: uuid.UUID
    sender_device_id: uuid.UUID
    client_id: str
    kind: str
    body: bytes
    consent: bytes | None
    sent_at: datetime
    scope: tuple[uuid.UUID, ...] | None = None
    # The sender's key was destroyed (or the body does not open): `body` is empty, and the
    # message stands for an erased one.
    erased: bool = False


class Outcome(Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # same sender device and client id as a stored message
    NOT_MEMBER = "not_member"
    CONSENT_NOT_GRANTED = "consent_not_granted"  # no active grant for the tag's purpose
    SCOPE_INVALID = "scope_invalid"  # the tag's scope names someone who is not a member
    SENDER_ERASED = "sender_erased"  # the sender's data key was destroyed


@dataclass(frozen=True, slots=True)
class AppendResult:
    outcome: Outcome
    message: StoredMessage | None  # the stored message (the original one for DUPLICATE)


@dataclass(frozen=True, slots=True)
class AppendBatch:
    """The results, and the members of every conversation written to, at commit time.

    `recovered`: those of the `unsure` sends (see `MessageStore.append`) that had been
    stored, in pos order; `members` covers their conversations too."""

    results: list[AppendResult]
    members: dict[uuid.UUID, frozenset[uuid.UUID]]
    recovered: list[StoredMessage] = field(default_factory=list)


def _stored(row: Any, body: bytes, erased: bool) -> StoredMessage:
    return StoredMessage(
        row["id"],
        row["conversation_id"],
        row["seq"],
        row["pos"],
        row["sender_id"],
        row["sender_device_id"],
        row["client_id"],
        row["kind"],
        body,
        None if row["consent"] is None else bytes(row["consent"]),
        row["sent_at"],
        None if row["scope"] is None else tuple(row["scope"]),
        erased,
    )


async def open_messages(conn: Any, keyring: Keyring, rows: list[Any]) -> list[StoredMessage]:
    """Stored messages from rows of COLUMNS, their bodies opened (one key lookup)."""
    if not rows:
        return []
    keys = await keyring.for_read(conn, {r["sender_id"] for r in rows})
    messages = []
    for row in rows:
        body = open_message_body(keys, row["id"], row["sender_id"], bytes(row["body"]))
        messages.append(_stored(row, b"" if body is None else body, body is None))
    return messages


async def _store(
    conn: Any, items: list[NewMessage], keys: dict[uuid.UUID, bytes]
) -> list[StoredMessage]:
    """Number and write new messages, in order (the stream lock is held); bodies sealed
    under `keys` (the senders' data keys)."""
    per_conversation: dict[uuid.UUID, list[int]] = {}
    for index, item in enumerate(items):
        per_conversation.setdefault(item.conversation_id, []).append(index)
    seqs: dict[int, int] = {}
    for row in await conn.fetch(
        """UPDATE conversations c SET last_seq = c.last_seq + w.n
           FROM unnest($1::uuid[], $2::bigint[]) AS w(id, n) WHERE c.id = w.id
           RETURNING c.id, c.last_seq""",
        list(per_conversation),
        [len(indexes) for indexes in per_conversation.values()],
    ):
        indexes = per_conversation[row["id"]]
        first = row["last_seq"] - len(indexes) + 1
        for offset, index in enumerate(indexes):
            seqs[index] = first + offset
    positions = await allocate_positions(conn, len(items))
    stored: list[StoredMessage] = []
    for index, (item, pos) in enumerate(zip(items, positions, strict=True)):
        message = StoredMessage(
            uuid.uuid4(),
            item.conversation_id,
            seqs[index],
            pos,
            item.sender_id,
            item.sender_device_id,
            item.client_id,
            item.kind,
            item.body,
            item.consent,
            item.sent_at,
            item.scope,
        )
        stored.append(message)
    await conn.copy_records_to_table(
        "messages",
        records=[
            (
                m.id,
                m.conversation_id,
                m.seq,
                m.pos,
                m.sender_id,
                m.sender_device_id,
                m.client_id,
                m.kind,
                seal(keys[m.sender_id], m.body, ad(MESSAGE_BODY, m.id)),
                m.consent,
                None if m.scope is None else list(m.scope),
                m.sent_at,
                item.purpose,
                item.erase_at,
                item.until_withdrawn,
                item.file_id,
            )
            for m, item in zip(stored, items, strict=True)
        ],
        columns=[
            "id",
            "conversation_id",
            "seq",
            "pos",
            "sender_id",
            "sender_device_id",
            "client_id",
            "kind",
            "body",
            "consent",
            "scope",
            "sent_at",
            "purpose",
            "erase_at",
            "until_withdrawn",
            "file_id",
        ],
    )
    return stored


async def _with_grants(
    conn: Any, items: list[NewMessage], fresh: list[int], results: list[AppendResult | None]
) -> list[int]:
    """The `fresh` items whose sender holds an active grant for their tag's purpose; the
    others are answered CONSENT_NOT_GRANTED. The grants are read FOR SHARE: a withdrawal
    (FOR UPDATE) either commits before this batch reads them, and the batch sees it, or
    waits for the batch to commit, and then erases what the batch stored under the grant.
    No statement at all for a batch without tagged messages."""
    wanted = {(items[i].sender_id, items[i].purpose) for i in fresh if items[i].purpose}
    if not wanted:
        return fresh
    held = {
        (r["account_id"], r["purpose"])
        for r in await conn.fetch(
            """SELECT g.account_id, g.purpose FROM consent_grants g
               JOIN unnest($1::uuid[], $2::text[]) AS want(a, p)
                 ON g.account_id = want.a AND g.purpose = want.p
               WHERE g.granted ORDER BY g.account_id, g.purpose FOR SHARE OF g""",
            [a for a, _ in wanted],
            [p for _, p in wanted],
        )
    }
    kept = []
    for index in fresh:
        item = items[index]
        if item.purpose and (item.sender_id, item.purpose) not in held:
            results[index] = AppendResult(Outcome.CONSENT_NOT_GRANTED, None)
        else:
            kept.append(index)
    return kept


async def _with_keys(
    conn: Any,
    keyring: Keyring,
    items: list[NewMessage],
    fresh: list[int],
    results: list[AppendResult | None],
) -> tuple[dict[uuid.UUID, bytes], list[int]]:
    """The senders' data keys (made now for first-time senders), and the `fresh` items
    whose sender still has one; the others are answered SENDER_ERASED."""
    if not fresh:
        return {}, fresh
    keys, erased = await keyring.for_write(conn, {items[i].sender_id for i in fresh})
    if not erased:
        return keys, fresh
    for index in fresh:
        if items[index].sender_id in erased:
            results[index] = AppendResult(Outcome.SENDER_ERASED, None)
    return keys, [i for i in fresh if items[i].sender_id not in erased]


async def _append(
    conn: Any,
    keyring: Keyring,
    items: list[NewMessage],
    unsure: list[NewMessage],
    push_grace_s: float,
) -> AppendBatch:
    """Store a batch in one transaction; one result per item, in order, and the members of
    the batch's conversations as of the commit (who the messages fan out to).

    Items whose sender is not an active member of the conversation are refused, and an
    item repeating a stored (sender device, client id) returns the stored message:
    neither aborts the rest of the batch; nor do tagged items whose scope names a
    non-member or whose sender lacks the grant (`_with_grants`), nor items of a sender
    whose data key was destroyed. Six statements whatever the batch holds (the lock,
    members, repeats, sequence numbers, positions, the rows), one more for the push outbox
    and one for the grants when the batch holds tagged messages, one for the senders' data
    keys not in the keyring's cache (and one to make the keys of first-time senders), each
    a round trip. The `unsure` sends are looked up with the repeats.
    """
    # The lock first: membership changes take it too, so the member lists read next stay
    # those of the commit, and serve both the sender check and the fan-out.
    await lock_stream(conn)
    members: dict[uuid.UUID, set[uuid.UUID]] = {i.conversation_id: set() for i in (*items, *unsure)}
    for row in await conn.fetch(
        """SELECT conversation_id, account_id FROM conversation_members
           WHERE conversation_id = ANY($1::uuid[]) AND left_pos IS NULL""",
        list(members),
    ):
        members[row["conversation_id"]].add(row["account_id"])
    existing = {
        (m.sender_device_id, m.client_id): m
        for m in await open_messages(
            conn,
            keyring,
            await conn.fetch(
                f"""SELECT {COLUMNS} FROM messages m
                    JOIN unnest($1::uuid[], $2::text[]) AS want(d, c)
                      ON m.sender_device_id = want.d AND m.client_id = want.c""",
                [i.sender_device_id for i in (*items, *unsure)],
                [i.client_id for i in (*items, *unsure)],
            ),
        )
    }
    recovered = {
        existing[key].id: existing[key]
        for key in ((i.sender_device_id, i.client_id) for i in unsure)
        if key in existing
    }
    results: list[AppendResult | None] = [None] * len(items)
    fresh: list[int] = []
    claimed: dict[tuple[uuid.UUID, str], int] = {}
    for index, item in enumerate(items):
        key = (item.sender_device_id, item.client_id)
        if key in existing:
            results[index] = AppendResult(Outcome.DUPLICATE, existing[key])
        elif item.sender_id not in members[item.conversation_id]:
            results[index] = AppendResult(Outcome.NOT_MEMBER, None)
        elif item.scope is not None and not members[item.conversation_id].issuperset(item.scope):
            results[index] = AppendResult(Outcome.SCOPE_INVALID, None)
        elif key in claimed:
            continue  # a repeat inside this batch: answered with the first one below
        else:
            claimed[key] = index
            fresh.append(index)
    fresh = await _with_grants(conn, items, fresh, results)
    keys, fresh = await _with_keys(conn, keyring, items, fresh, results)
    if fresh:
        stored = await _store(conn, [items[i] for i in fresh], keys)
        for index, message in zip(fresh, stored, strict=True):
            results[index] = AppendResult(Outcome.STORED, message)
        await enqueue_for_messages(conn, push_targets(stored, members), push_grace_s)
    for index, item in enumerate(items):
        if results[index] is None:  # an in-batch repeat
            first = results[claimed[(item.sender_device_id, item.client_id)]]
            assert first is not None
            refused = first.message is None
            results[index] = first if refused else AppendResult(Outcome.DUPLICATE, first.message)
    done = [r for r in results if r is not None]
    return AppendBatch(
        done,
        {c: frozenset(a) for c, a in members.items()},
        sorted(recovered.values(), key=lambda m: m.pos),
    )


async def _after(
    conn: Any, keyring: Keyring, account_id: uuid.UUID, after_pos: int, limit: int
) -> tuple[list[StoredMessage | Tombstone], int]:
    """The rows after `after_pos` (messages and tombstones, in pos order), and where to
    continue. Read conversation by conversation (those the account is in: an index range on
    (conversation, pos) each), so what other conversations hold is never stepped over.
    Where to continue: the last row's pos, or with no rows `after_pos` clamped to the highest
    committed pos (a cursor past the end of the stream - from another server, or made up -
    would otherwise hide every live message below it). One statement, so one snapshot:
    positions commit in order, so whatever it does not see lies above both the rows and the
    clamp. (The senders' data keys the cache lacks take one more, which needs no snapshot
    of its own.)"""
    rows = await conn.fetch(
        f"""SELECT e.stream_end, r.*
            FROM (SELECT greatest((SELECT coalesce(max(pos), 0) FROM messages),
                                  (SELECT coalesce(max(pos), 0) FROM tombstones))
                         AS stream_end) e
            LEFT JOIN LATERAL (
                SELECT u.* FROM conversation_members cm
                CROSS JOIN LATERAL (
                    (SELECT {COLUMNS}, NULL::text AS reason FROM messages m
                     WHERE {VISIBLE_ABOVE_CURSOR}
                     ORDER BY m.conversation_id, m.pos LIMIT $3)
                    UNION ALL
                    (SELECT {CATCH_UP_COLUMNS} FROM tombstones t
                     WHERE t.conversation_id = cm.conversation_id
                       AND (t.conversation_id, t.pos) > (cm.conversation_id, $2)
                       AND {TOMBSTONE_VISIBLE}
                     ORDER BY t.conversation_id, t.pos LIMIT $3)
                ) u
                WHERE cm.account_id = $1
                ORDER BY u.pos LIMIT $3
            ) r ON true
            ORDER BY r.pos""",
        account_id,
        after_pos,
        limit,
    )
    if rows[0]["id"] is None:
        return [], min(after_pos, int(rows[0]["stream_end"]))
    opened = iter(await open_messages(conn, keyring, [r for r in rows if r["reason"] is None]))
    found: list[StoredMessage | Tombstone] = [
        next(opened) if r["reason"] is None else tombstone(r) for r in rows
    ]
    return found, int(rows[-1]["pos"])


async def _visible_to(
    conn: Any, message_id: uuid.UUID, conversation_id: uuid.UUID, account_id: uuid.UUID
) -> Any:
    return await conn.fetchrow(
        f"""SELECT m.sender_id, m.scope FROM messages m
            JOIN conversation_members cm
              ON cm.conversation_id = m.conversation_id AND cm.account_id = $3
            WHERE m.id = $1 AND m.conversation_id = $2 AND {VISIBLE}""",
        message_id,
        conversation_id,
        account_id,
    )


async def _history(
    conn: Any,
    keyring: Keyring,
    conversation_id: uuid.UUID,
    account_id: uuid.UUID,
    before_seq: int | None,
    limit: int,
) -> list[StoredMessage]:
    rows = await conn.fetch(
        f"""SELECT {COLUMNS} FROM messages m
            JOIN conversation_members cm
              ON cm.conversation_id = m.conversation_id AND cm.account_id = $2
            WHERE m.conversation_id = $1 AND ($3::bigint IS NULL OR m.seq < $3) AND {VISIBLE}
            ORDER BY m.seq DESC LIMIT $4""",
        conversation_id,
        account_id,
        before_seq,
        limit,
    )
    return await open_messages(conn, keyring, rows)


async def _advance_cursor(conn: Any, device_id: uuid.UUID, pos: int) -> int:
    value = await conn.fetchval(
        """INSERT INTO device_cursors (device_id, pos) VALUES ($1, $2)
           ON CONFLICT (device_id) DO UPDATE
             SET pos = greatest(device_cursors.pos, EXCLUDED.pos), updated_at = now()
           RETURNING pos""",
        device_id,
        pos,
    )
    return int(value)


async def _advance_cursors(conn: Any, cursors: dict[uuid.UUID, int]) -> None:
    await conn.executemany(
        """INSERT INTO device_cursors (device_id, pos) VALUES ($1, $2)
           ON CONFLICT (device_id) DO UPDATE
             SET pos = greatest(device_cursors.pos, EXCLUDED.pos), updated_at = now()""",
        list(cursors.items()),
    )


async def _cursor(conn: Any, device_id: uuid.UUID) -> int:
    value = await conn.fetchval("SELECT pos FROM device_cursors WHERE device_id = $1", device_id)
    return 0 if value is None else int(value)


class MessageStore:
    def __init__(self, db: Database, keyring: Keyring, push_grace_s: float = 2.0) -> None:
        self._db = db
        self._keyring = keyring
        self._push_grace_s = push_grace_s  # how long a push job waits for the device

    async def append(
        self, items: list[NewMessage], unsure: Sequence[NewMessage] = ()
    ) -> AppendBatch:
        """Group commit: the whole batch in one transaction and one bridge hop, with the
        conversations' members as of the commit (who the messages fan out to).

        `unsure`: sends of earlier commits that failed, which may have been stored all the
        same (the connection was lost around COMMIT). Those that were come back in
        `recovered`, so that they can be fanned out before anything newer."""
        return await self._db.transaction(
            _append, self._keyring, items, list(unsure), self._push_grace_s
        )

    async def after(
        self, account_id: uuid.UUID, after_pos: int, limit: int
    ) -> tuple[list[StoredMessage | Tombstone], int, bool]:
        """Catch-up: messages visible to the account with pos > after_pos, and the
        tombstones of erased messages it may have received (storage.tombstones), in pos
        order.

        Returns (rows, next_pos, limited): next_pos is the pos to continue after, and
        limited says more rows may follow.
        """
        rows, next_pos = await self._db.read(_after, self._keyring, account_id, after_pos, limit)
        return rows, next_pos, len(rows) == limit

    async def audience(
        self, message_id: uuid.UUID, conversation_id: uuid.UUID, account_id: uuid.UUID
    ) -> tuple[uuid.UUID, tuple[uuid.UUID, ...] | None]:
        """Who may learn of a message the account can see: (its sender, its consent scope,
        None for the whole conversation). Raises NotFoundError if there is no such message
        in the conversation, or the account may not see it."""
        row = await self._db.read(_visible_to, message_id, conversation_id, account_id)
        if row is None:
            raise NotFoundError("message")
        scope = row["scope"]
        return row["sender_id"], None if scope is None else tuple(scope)

    async def history(
        self,
        conversation_id: uuid.UUID,
        account_id: uuid.UUID,
        before_seq: int | None,
        limit: int,
    ) -> list[StoredMessage]:
        """Newest first, below `before_seq`, only what the account may see."""
        return await self._db.read(
            _history, self._keyring, conversation_id, account_id, before_seq, limit
        )

    async def advance_cursor(self, device_id: uuid.UUID, pos: int) -> int:
        """Move the device's cursor forward (never back); returns the cursor."""
        return await self._db.transaction(_advance_cursor, device_id, pos)

    async def advance_cursors(self, cursors: dict[uuid.UUID, int]) -> None:
        """Move many devices' cursors forward in one transaction."""
        await self._db.transaction(_advance_cursors, cursors)

    async def cursor(self, device_id: uuid.UUID) -> int:
        return await self._db.read(_cursor, device_id)
