"""A person deletes one message they sent, or one file they shared (issue 12, part 2).

Each is one transaction: the stream lock first (tombstones need positions: see
storage.tombstones), the rows erased as every erasure does (storage.erasure: receipts, the
file row no other message shares), a tombstone per message (reason `deleted_by_sender`),
and the audit entry `deletion` (what, how many: never an id of the content). The caller
deletes the blobs and fans the tombstones out after the commit.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from storage.audit import AuditEvent, account_actor, append
from storage.database import Database
from storage.erasure import ERASED_COLUMNS, Erasure, finish_erasure
from storage.errors import NotFoundError, StorageError
from storage.stream import lock_stream
from storage.visible import VISIBLE

REASON = "deleted_by_sender"


class NotYoursError(StorageError):
    """Only the sender of a message (the uploader of a file) may delete it."""


async def _audit(
    conn: Any,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    device_id: uuid.UUID | None,
    what: str,
    count: int,
    at: datetime,
) -> None:
    event = AuditEvent(
        "deletion",
        account_actor(account_id, device_id),
        account_id,
        org_id,
        {"what": what, "count": count},
    )
    await append(conn, [event], at)


async def _delete_message(
    conn: Any,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    device_id: uuid.UUID | None,
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    at: datetime,
) -> Erasure:
    await lock_stream(conn)
    row = await conn.fetchrow(
        f"""SELECT m.sender_id FROM messages m
            JOIN conversation_members cm
              ON cm.conversation_id = m.conversation_id AND cm.account_id = $3
            WHERE m.id = $1 AND m.conversation_id = $2 AND {VISIBLE}
            FOR UPDATE OF m""",
        message_id,
        conversation_id,
        account_id,
    )
    if row is None:
        raise NotFoundError("no such message in this conversation")
    if row["sender_id"] != account_id:
        raise NotYoursError("only its sender may delete a message")
    rows = await conn.fetch(
        f"DELETE FROM messages WHERE id = $1 RETURNING {ERASED_COLUMNS}", message_id
    )
    erasure = await finish_erasure(conn, rows, REASON, at)
    await _audit(conn, org_id, account_id, device_id, "message", len(rows), at)
    return erasure


async def _delete_file(
    conn: Any,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    device_id: uuid.UUID | None,
    file_id: uuid.UUID,
    at: datetime,
) -> Erasure:
    await lock_stream(conn)
    row = await conn.fetchrow(
        "SELECT uploader_id, org_id FROM files WHERE id = $1 FOR UPDATE", file_id
    )
    if row is None or row["org_id"] != org_id:
        raise NotFoundError("no such file")
    if row["uploader_id"] != account_id:
        seen = await conn.fetchval(
            f"""SELECT EXISTS (SELECT 1 FROM messages m JOIN conversation_members cm
                    ON cm.conversation_id = m.conversation_id AND cm.account_id = $2
                WHERE m.file_id = $1 AND {VISIBLE})""",
            file_id,
            account_id,
        )
        if not seen:  # who cannot see it does not learn that it exists
            raise NotFoundError("no such file")
        raise NotYoursError("only the person who shared a file may delete it")
    # Every message sharing the file goes with it: it is only a pointer to the file.
    rows = await conn.fetch(
        f"DELETE FROM messages WHERE file_id = $1 RETURNING {ERASED_COLUMNS}", file_id
    )
    erasure = await finish_erasure(conn, rows, REASON, at)
    files = list(erasure.files)
    if await conn.fetchval("DELETE FROM files WHERE id = $1 RETURNING id", file_id):
        files.append(file_id)  # never shared in a message: not deleted with one
    await _audit(conn, org_id, account_id, device_id, "file", 1, at)
    return Erasure(erasure.messages, files, erasure.erased)


class DeletionStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def delete_message(
        self,
        org_id: uuid.UUID,
        account_id: uuid.UUID,
        device_id: uuid.UUID | None,
        conversation_id: uuid.UUID,
        message_id: uuid.UUID,
        at: datetime,
    ) -> Erasure:
        """Erase the account's own message. NotFoundError if the account cannot see such a
        message in the conversation (unknown, another organization's, already deleted);
        NotYoursError if someone else sent it."""
        return await self._db.transaction(
            _delete_message, org_id, account_id, device_id, conversation_id, message_id, at
        )

    async def delete_file(
        self,
        org_id: uuid.UUID,
        account_id: uuid.UUID,
        device_id: uuid.UUID | None,
        file_id: uuid.UUID,
        at: datetime,
    ) -> Erasure:
        """Erase a file the account uploaded, and every message that shares it.
        NotFoundError if the account cannot see it; NotYoursError if someone else
        uploaded it."""
        return await self._db.transaction(_delete_file, org_id, account_id, device_id, file_id, at)
