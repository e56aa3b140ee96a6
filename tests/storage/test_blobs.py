"""Blobs on disk: readable by the server's own user only (files 0600, folders 0700)."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path

import pytest

from storage.files import BlobStore, BlobTooLargeError

KEY = bytes(range(32))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def chunks(*parts: bytes) -> AsyncGenerator[bytes, None]:
    for part in parts:
        yield part


async def test_blobs_and_their_folders_are_private(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # the usual umask would leave 0755 folders and 0644 files
    try:
        store = BlobStore(tmp_path / "data" / "files")
        file_id = uuid.uuid4()
        size, _digest = await store.write(file_id, chunks(b"hello ", b"world"), 1024, KEY)
        assert size == 11
        blob = store.path(file_id)
        assert mode(blob) == 0o600
        assert mode(blob.parent) == 0o700
        assert mode(store.root) == 0o700
        assert mode(store.root.parent) == 0o700  # a data folder created on the way

        async with aclosing(chunks(b"x" * 2048)) as too_large:
            with pytest.raises(BlobTooLargeError):
                await store.write(uuid.uuid4(), too_large, 1024, KEY)
        assert sorted(p.name for p in blob.parent.iterdir()) == [blob.name]
    finally:
        os.umask(old_umask)


def test_blobs_stored_by_an_older_obrol_are_made_private(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "files")
    blob = store.path(uuid.uuid4())
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"old")
    for path, old in ((store.root, 0o755), (blob.parent, 0o755), (blob, 0o644)):
        path.chmod(old)
    store.make_private()
    assert (mode(store.root), mode(blob.parent), mode(blob)) == (0o700, 0o700, 0o600)
    assert blob.read_bytes() == b"old"
