"""Uploaded files: metadata in PostgreSQL, bytes in a folder, addressed only by id.

A blob is written to a temporary file in the same folder, fsynced and renamed into place,
so a crash never leaves a half-written blob under a valid id. Blobs are 0600 and their
folders 0700: readable by the server's own user only.

Blobs are sealed as they stream in, under the uploader's data key (`storage.sealing`: frames
of 64 KiB, so memory stays flat whatever the size), and opened frame by frame as they stream
out. The file's name and SHA-256 are sealed in its row under the same key. Once the
uploader's key is destroyed, the record says `erased` and the blob cannot be read.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import trio

from storage.database import Database
from storage.errors import NotFoundError, StorageError
from storage.keyring import KeyDestroyedError, Keyring
from storage.sealing import (
    BLOB_FRAME_BYTES,
    BLOB_HEAD_BYTES,
    BLOB_MAGIC,
    BLOB_SEALED_FRAME_BYTES,
    FILE_NAME,
    FILE_SHA256,
    BlobOpener,
    BlobSealer,
    UnreadableError,
    ad,
    is_sealed,
    open_sealed,
    seal,
)
from storage.visible import VISIBLE

logger = logging.getLogger(__name__)


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
    # The uploader's data key was destroyed: `name` and `sha256` are empty, the blob is
    # unreadable.
    erased: bool = False
    # The uploader's data key, to read the blob with (`BlobStore.read`).
    blob_key: bytes | None = field(default=None, repr=False, compare=False)


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

    async def write(
        self, file_id: uuid.UUID, chunks: Any, max_bytes: int, key: bytes
    ) -> tuple[int, bytes]:
        """Write the async iterable `chunks`, sealed under `key` (the uploader's data key);
        returns the plaintext's (size, sha256).

        Raises BlobTooLargeError past `max_bytes`, leaving nothing behind.
        """
        final = self.path(file_id)
        await trio.to_thread.run_sync(_make_private_dirs, final.parent)
        temp = final.with_name(f".{final.name}.part")
        digest = hashlib.sha256()
        size = 0
        sealer = BlobSealer(key, file_id)
        try:
            fd = await trio.to_thread.run_sync(_open_private, temp)
            async with trio.wrap_file(os.fdopen(fd, "wb")) as out:
                await out.write(sealer.head)
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise BlobTooLargeError(f"the file is larger than {max_bytes} bytes")
                    digest.update(chunk)
                    sealed = sealer.update(chunk)
                    if sealed:
                        await out.write(sealed)
                await out.write(sealer.final())
                await out.flush()
                await trio.to_thread.run_sync(os.fsync, out.fileno())
            await trio.to_thread.run_sync(os.replace, temp, final)
        except BaseException:
            await trio.to_thread.run_sync(lambda: temp.unlink(missing_ok=True))
            raise
        return size, digest.digest()

    async def read(
        self, file_id: uuid.UUID, key: bytes | None, chunk_bytes: int
    ) -> AsyncIterator[bytes]:
        """The plaintext of a blob, in chunks: opened frame by frame under `key` (or, for a
        blob stored before blobs were sealed, read as it is, `chunk_bytes` at a time).
        UnreadableError (possibly after some chunks) if it does not open or is cut short;
        FileNotFoundError if there is no such blob."""
        async with await trio.open_file(self.path(file_id), "rb") as source:
            head = await source.read(BLOB_HEAD_BYTES)
            if not head.startswith(BLOB_MAGIC):
                if head:
                    yield head
                while chunk := await source.read(chunk_bytes):
                    yield chunk
                return
            if key is None:
                raise UnreadableError("a sealed blob without its key")
            opener = BlobOpener(key, file_id, head)
            while frame := await source.read(BLOB_SEALED_FRAME_BYTES):
                plain = opener.open(frame)
                if plain:
                    yield plain
            if not opener.done:
                raise UnreadableError("the blob is cut short")

    async def seal_in_place(self, file_id: uuid.UUID, key: bytes) -> bool:
        """Seal a blob stored before blobs were sealed (nothing to do for a sealed one):
        written beside it, fsynced and renamed over it. False if there is no such blob."""
        path = self.path(file_id)
        temp = path.with_name(f".{path.name}.{os.getpid()}.seal")

        def seal_file() -> bool:
            try:
                source = open(path, "rb")  # noqa: SIM115 - closed by the with below
            except FileNotFoundError:
                return False
            with source:
                head = source.read(BLOB_HEAD_BYTES)
                if _opens(key, file_id, head, source.read(BLOB_SEALED_FRAME_BYTES)):
                    return True
                source.seek(0)
                sealer = BlobSealer(key, file_id)
                try:
                    with os.fdopen(_open_private(temp), "wb") as out:
                        out.write(sealer.head)
                        while chunk := source.read(BLOB_FRAME_BYTES):
                            out.write(sealer.update(chunk))
                        out.write(sealer.final())
                        out.flush()
                        os.fsync(out.fileno())
                    os.replace(temp, path)
                except BaseException:
                    temp.unlink(missing_ok=True)
                    raise
            return True

        return await trio.to_thread.run_sync(seal_file)

    async def delete(self, file_id: uuid.UUID) -> None:
        await trio.to_thread.run_sync(lambda: self.path(file_id).unlink(missing_ok=True))

    async def old_entries(
        self, after: str, older_than: float, limit: int
    ) -> tuple[list[str], str | None]:
        """Up to `limit` files of the folder last modified before `older_than` (unix
        seconds), as "xx/name", in name order after `after` ("" for the start): blobs and
        the temporary files of writes that never finished. Also where to go on from (None:
        the whole folder was walked). Blocking work in a thread: directory listings and one
        stat per file, no file opened."""
        return await trio.to_thread.run_sync(self._old_entries, after, older_than, limit)

    def _old_entries(
        self, after: str, older_than: float, limit: int
    ) -> tuple[list[str], str | None]:
        try:
            folders = sorted(
                e.name for e in os.scandir(self.root) if e.is_dir() and len(e.name) == 2
            )
        except FileNotFoundError:
            return [], None
        start, _, last = after.partition("/")
        found: list[str] = []
        for folder in (f for f in folders if f >= start):
            try:
                entries = sorted(os.scandir(self.root / folder), key=lambda e: e.name)
            except FileNotFoundError:
                continue
            for entry in entries:
                if (folder == start and entry.name <= last) or not entry.is_file(
                    follow_symlinks=False
                ):
                    continue
                try:
                    modified = entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue  # deleted meanwhile
                if modified < older_than:
                    found.append(f"{folder}/{entry.name}")
                    if len(found) == limit:
                        return found, found[-1]
        return found, None

    async def delete_entries(self, names: list[str]) -> int:
        """Delete these "xx/name" files (from `old_entries`); returns how many were there."""

        def delete() -> int:
            gone = 0
            for name in names:
                try:
                    (self.root / name).unlink()
                except FileNotFoundError:
                    continue
                gone += 1
            return gone

        return await trio.to_thread.run_sync(delete)


def _opened(key: bytes | None, value: bytes, associated: bytes) -> bytes:
    """A sealed value opened (UnreadableError if it does not), a plaintext one as it is."""
    if not is_sealed(value):
        return value  # stored before values were sealed
    if key is None:
        raise UnreadableError("no data key")
    return open_sealed(key, value, associated)


def _opens(key: bytes, file_id: uuid.UUID, head: bytes, first_frame: bytes) -> bool:
    """Whether a blob starting with `head` and `first_frame` is sealed under `key`."""
    if not head.startswith(BLOB_MAGIC):
        return False
    try:
        BlobOpener(key, file_id, head).open(first_frame)
    except UnreadableError:
        return False
    return True


def _record(row: Any, keys: dict[uuid.UUID, bytes | None]) -> FileRecord:
    """A record from a row, its name and digest opened with `keys` (`Keyring.for_read`)."""
    file_id, uploader = row["id"], row["uploader_id"]
    name, digest = bytes(row["name"]), bytes(row["sha256"])
    key = keys.get(uploader)
    erased = uploader in keys and key is None
    if not erased:
        try:
            name = _opened(key, name, ad(FILE_NAME, file_id))
            digest = _opened(key, digest, ad(FILE_SHA256, file_id))
        except UnreadableError:
            logger.error("the record of file %s is unreadable; shown as erased", file_id)
            erased = True
    return FileRecord(
        file_id,
        row["org_id"],
        row["conversation_id"],
        uploader,
        "" if erased else name.decode(),
        row["mime"],
        row["size"],
        b"" if erased else digest,
        row["created_at"],
        erased,
        None if erased else key,
    )


def open_file_rows(rows: list[Any], keys: dict[uuid.UUID, bytes | None]) -> list[FileRecord]:
    """Records from `files` rows, names and digests opened with `keys`
    (`Keyring.for_read` of the uploaders)."""
    return [_record(row, keys) for row in rows]


async def _insert(conn: Any, keyring: Keyring, record: FileRecord) -> FileRecord:
    """KeyDestroyedError if the uploader's data key was destroyed."""
    keys, destroyed = await keyring.for_write(conn, [record.uploader_id])
    if destroyed:
        raise KeyDestroyedError("this account's data was erased")
    key = keys[record.uploader_id]
    row = await conn.fetchrow(
        """INSERT INTO files (id, org_id, conversation_id, uploader_id, name, mime, size, sha256)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *""",
        record.id,
        record.org_id,
        record.conversation_id,
        record.uploader_id,
        seal(key, record.name.encode(), ad(FILE_NAME, record.id)),
        record.mime,
        record.size,
        seal(key, record.sha256, ad(FILE_SHA256, record.id)),
    )
    return _record(row, {record.uploader_id: key})


async def _get(conn: Any, keyring: Keyring, file_id: uuid.UUID) -> FileRecord:
    row = await conn.fetchrow("SELECT * FROM files WHERE id = $1", file_id)
    if row is None:
        raise NotFoundError("no such file")
    return _record(row, await keyring.for_read(conn, [row["uploader_id"]]))


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


async def _existing(conn: Any, file_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    rows = await conn.fetch("SELECT id FROM files WHERE id = ANY($1::uuid[])", file_ids)
    return {r["id"] for r in rows}


class FileStore:
    def __init__(self, db: Database, keyring: Keyring) -> None:
        self._db = db
        self._keyring = keyring

    async def add(self, record: FileRecord) -> FileRecord:
        """Record an uploaded file, its name and digest sealed. KeyDestroyedError if the
        uploader's data key was destroyed."""
        return await self._db.transaction(_insert, self._keyring, record)

    async def get(self, file_id: uuid.UUID) -> FileRecord:
        """The file (`erased` if its uploader's key was destroyed, `blob_key` the key to
        read its blob with). NotFoundError for an unknown id."""
        return await self._db.read(_get, self._keyring, file_id)

    async def existing(self, file_ids: list[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these files have a row."""
        return await self._db.read(_existing, file_ids)

    async def visible_to(self, file_id: uuid.UUID, account_id: uuid.UUID) -> bool:
        """Whether the account may see a message that shares the file (its consent scope,
        and its membership when the message was stored)."""
        return await self._db.read(_visible_to, file_id, account_id)
