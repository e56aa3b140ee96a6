"""Uploaded files: metadata in PostgreSQL, bytes in a folder, addressed only by id.

A blob is written to a temporary file in the same folder, fsynced and renamed into place,
so a crash never leaves a half-written blob under a valid id. Blobs are 0600 and their
folders 0700: readable by the server's own user only.
"""

from __future__ import annotations

import contextlib
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
from storage.visible import VISIBLE


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


FILE_MODE = 0o600
FOLDER_MODE = 0o700


def _make_private_dirs(folder: Path) -> None:
    """Create `folder` and missing parents up to an existing one, each mode 0700."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another upload made it meanwhile
            path.mkdir(mode=FOLDER_MODE)
            path.chmod(FOLDER_MODE)  # whatever the umask


def _open_private(path: Path) -> int:
    """Open `path` for writing, empty and mode 0600 (also a leftover from a crash)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd


class BlobStore:
    """Files on disk under `root`, named by their uuid."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, file_id: uuid.UUID) -> Path:
        text = str(file_id)
        return self.root / text[:2] / text

    def make_private(self) -> None:
        """Tighten what an older obrol stored with looser modes (folders 0755, blobs 0644)
        to 0700 and 0600. Blocking; does nothing (one stat) when `root` is already 0700."""
        if not self.root.exists() or self.root.stat().st_mode & 0o777 == FOLDER_MODE:
            return
        for folder, _subfolders, files in os.walk(self.root):
            os.chmod(folder, FOLDER_MODE)
            for name in files:
                os.chmod(os.path.join(folder, name), FILE_MODE)

    async def write(self, file_id: uuid.UUID, chunks: Any, max_bytes: int) -> tuple[int, bytes]:
        """Write the async iterable `chunks`; returns (size, sha256).

        Raises BlobTooLargeError past `max_bytes`, leaving nothing behind.
        """
        final = self.path(file_id)
        await trio.to_thread.run_sync(_make_private_dirs, final.parent)
        temp = final.with_name(f".{final.name}.part")
        digest = hashlib.sha256()
        size = 0
        try:
            fd = await trio.to_thread.run_sync(_open_private, temp)
            async with trio.wrap_file(os.fdopen(fd, "wb")) as out:
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


async def _visible_to(conn: Any, file_id: uuid.UUID, account_id: uuid.UUID) -> bool:
    return bool(
        await conn.fetchval(
            f"""SELECT EXISTS (SELECT 1 FROM messages m JOIN conversation_members cm
                    ON cm.conversation_id = m.conversation_id AND cm.account_id = $2
                WHERE m.file_id = $1 AND {VISIBLE})""",
            file_id,
            account_id,
        )
    )


class FileStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, record: FileRecord) -> FileRecord:
        return await self._db.transaction(_insert, record)

    async def get(self, file_id: uuid.UUID) -> FileRecord:
        """NotFoundError for an unknown id."""
        return await self._db.read(_get, file_id)

    async def visible_to(self, file_id: uuid.UUID, account_id: uuid.UUID) -> bool:
        """Whether the account may see a message that shares the file (its consent scope,
        and its membership when the message was stored)."""
        return await self._db.read(_visible_to, file_id, account_id)
