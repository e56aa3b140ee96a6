"""Uploaded files: metadata in PostgreSQL, bytes in a folder, addressed only by id.

A blob is written to a temporary file in the same folder, fsynced and renamed into place,
so a crash never leaves a half-written blob under a valid id.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import trio

from storage.database import Database
from storage.errors import NotFoundError, StorageError


class BlobTooLargeError(StorageError):
    """The upload went past the size limit; nothing was kept."""


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: uuid.UUID
    org_id: uuid.UUID
    conversation_id: uuid.UUID
    uploader_id: uuid.UUID
    name: str
    mime: str
    size: int
    sha256: bytes
    created_at: datetime


class BlobStore:
    """Files on disk under `root`, named by their uuid."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, file_id: uuid.UUID) -> Path:
        text = str(file_id)
        return self.root / text[:2] / text

    async def write(self, file_id: uuid.UUID, chunks: Any, max_bytes: int) -> tuple[int, bytes]:
        """Write the async iterable `chunks`; returns (size, sha256).

        Raises BlobTooLargeError past `max_bytes`, leaving nothing behind.
        """
        final = self.path(file_id)
        await trio.to_thread.run_sync(lambda: final.parent.mkdir(parents=True, exist_ok=True))
        temp = final.with_name(f".{final.name}.part")
        digest = hashlib.sha256()
        size = 0
        try:
            async with await trio.open_file(temp, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise BlobTooLargeError(f"the file is larger than {max_bytes} bytes")
                    digest.update(chunk)
                    await out.write(chunk)
                await out.flush()
                await trio.to_thread.run_sync(os.fsync, out.fileno())
            await trio.to_thread.run_sync(os.replace, temp, final)
        except BaseException:
            await trio.to_thread.run_sync(lambda: temp.unlink(missing_ok=True))
            raise
        return size, digest.digest()

    async def delete(self, file_id: uuid.UUID) -> None:
        await trio.to_thread.run_sync(lambda: self.path(file_id).unlink(missing_ok=True))


def _record(row: Any) -> FileRecord:
    return FileRecord(
        row["id"],
        row["org_id"],
        row["conversation_id"],
        row["uploader_id"],
        row["name"],
        row["mime"],
        row["size"],
        bytes(row["sha256"]),
        row["created_at"],
    )


async def _insert(conn: Any, record: FileRecord) -> FileRecord:
    row = await conn.fetchrow(
        """INSERT INTO files (id, org_id, conversation_id, uploader_id, name, mime, size, sha256)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *""",
        record.id,
        record.org_id,
        record.conversation_id,
        record.uploader_id,
        record.name,
        record.mime,
        record.size,
        record.sha256,
    )
    return _record(row)


async def _get(conn: Any, file_id: uuid.UUID) -> FileRecord:
    row = await conn.fetchrow("SELECT * FROM files WHERE id = $1", file_id)
    if row is None:
        raise NotFoundError("no such file")
    return _record(row)


class FileStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, record: FileRecord) -> FileRecord:
        return await self._db.transaction(_insert, record)

    async def get(self, file_id: uuid.UUID) -> FileRecord:
        """NotFoundError for an unknown id."""
        return await self._db.read(_get, file_id)
