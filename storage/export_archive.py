"""Export archives on disk: a zip, streamed, sealed as it is written, opened as it is read.

The zip is written by the standard library's zipfile into a non-seekable sink (so every
entry ends with a data descriptor and nothing is ever rewritten), and the sink seals what
it is given as one libsodium secretstream, exactly like a blob (`storage.sealing`: frames
of 64 KiB, the last one tagged FINAL, the export id as associated data, EXPORT_ARCHIVE as
the label) under a random key of this archive alone. That key is kept only sealed under the
requester's data key (storage/exports.py). Memory stays at one frame plus what zlib holds,
whatever the archive's size.

Files are `<root>/<export id>-<attempt>`, mode 0600 in a 0700 folder; each attempt of a job
writes its own, so a worker whose job was taken over never writes into the new one's file.
Everything here is blocking: call it from a worker thread.
"""

from __future__ import annotations

import json
import os
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import trio

from storage.files import FILE_MODE, FOLDER_MODE
from storage.sealing import (
    BLOB_HEAD_BYTES,
    BLOB_SEALED_FRAME_BYTES,
    EXPORT_ARCHIVE,
    KEY_BYTES,
    BlobOpener,
    BlobSealer,
    UnreadableError,
)


class ArchiveFolder:
    """Where archives are kept: `<data_dir>/exports`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, export_id: uuid.UUID, attempt: int) -> Path:
        return self.root / f"{export_id}-{attempt}"

    def create(self, export_id: uuid.UUID, attempt: int) -> int:
        """A new, empty archive file (mode 0600), open for writing: its descriptor."""
        if not self.root.exists():
            self.root.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
            self.root.chmod(FOLDER_MODE)
        path = self.path(export_id, attempt)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        os.fchmod(fd, FILE_MODE)
        return fd

    def delete(self, export_id: uuid.UUID) -> int:
        """Delete every file of the export (all attempts); how many there were."""
        if not self.root.exists():
            return 0
        gone = 0
        for path in self.root.glob(f"{export_id}-*"):
            path.unlink(missing_ok=True)
            gone += 1
        return gone


class SealedSink:
    """A write-only, non-seekable file for zipfile that seals and writes what it gets."""

    def __init__(self, fd: int, key: bytes, export_id: uuid.UUID) -> None:
        self._fd = fd
        self._sealer = BlobSealer(key, export_id, EXPORT_ARCHIVE)
        self._write_all(self._sealer.head)
        self.plain_bytes = 0

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def write(self, data: bytes) -> int:
        self.plain_bytes += len(data)
        sealed = self._sealer.update(bytes(data))
        if sealed:
            self._write_all(sealed)
        return len(data)

    def flush(self) -> None:
        """Nothing to do: a frame is written once it is full (zipfile calls this)."""

    def close(self) -> None:
        """Nothing to do: `finish` ends the file (zipfile never closes a file it was given)."""

    def finish(self) -> None:
        """The last frame, then fsync and close."""
        self._write_all(self._sealer.final())
        os.fsync(self._fd)
        os.close(self._fd)

    def abandon(self) -> None:
        os.close(self._fd)


class ArchiveWriter:
    """A zip being written into a SealedSink: JSON entries and file entries, streamed."""

    def __init__(self, sink: SealedSink, at: datetime) -> None:
        self._sink = sink
        self._zip = zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1)
        self._date = (max(at.year, 1980), at.month, at.day, at.hour, at.minute, at.second)
        self._entry: Any = None

    def begin(self, name: str, compress: bool) -> None:
        """Start the entry `name` (deflated, or stored for files that rarely shrink)."""
        info = zipfile.ZipInfo(name, self._date)
        info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        info.external_attr = 0o600 << 16
        self._entry = self._zip.open(info, "w", force_zip64=True)

    def write(self, data: bytes) -> None:
        self._entry.write(data)

    def write_many(self, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            self._entry.write(chunk)

    def end(self) -> None:
        self._entry.close()
        self._entry = None

    def add_json(self, name: str, value: Any) -> None:
        self.begin(name, True)
        self.write(json.dumps(value, ensure_ascii=False, indent=1).encode())
        self.end()

    def close(self) -> int:
        """Write the central directory and seal the end: the zip's size in bytes."""
        self._zip.close()
        self._sink.finish()
        return self._sink.plain_bytes

    def abandon(self) -> None:
        """Stop without finishing (the file is deleted by the caller)."""
        self._sink.abandon()


def new_archive_key() -> bytes:
    return os.urandom(KEY_BYTES)


async def open_archive(path: Path) -> trio.abc.AsyncResource:
    """The archive file, open for `read_archive` (FileNotFoundError if it is gone): opened
    before the response starts, so a sweeper deleting it meanwhile does not cut it short."""
    source: trio.abc.AsyncResource = await trio.open_file(path, "rb")
    return source


async def read_archive(source: Any, key: bytes, export_id: uuid.UUID) -> AsyncIterator[bytes]:
    """The zip's bytes from an open archive file, opened frame by frame; the file is closed
    at the end. UnreadableError if it does not open or is cut short."""
    async with source:
        opener = BlobOpener(key, export_id, await source.read(BLOB_HEAD_BYTES), EXPORT_ARCHIVE)
        while frame := await source.read(BLOB_SEALED_FRAME_BYTES):
            plain = opener.open(frame)
            if plain:
                yield plain
        if not opener.done:
            raise UnreadableError("the archive is cut short")
