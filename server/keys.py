"""The master key file, and the keyring the server opens with it (`storage.keyring`).

The master key is 32 random bytes in a file of its own: `<data_dir>/master.key` by default,
or `master_key_file`. It is made on the first start, mode 0600, like the identity key, and
never written to the database: a copy of the database alone opens nothing. A file that other
users may read, or that is not 32 bytes, stops the server; so does a key that does not match
the database (its check value), with one line saying what to do.

Back the key file up apart from the database: losing it loses every sealed value.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import trio

from server.settings import Settings
from storage.database import Database
from storage.keyring import Keyring, MasterKeyError, master_versions
from storage.sealing import KEY_BYTES

logger = logging.getLogger(__name__)


def read_key_file(path: Path) -> bytes | None:
    """The key in `path`, or None if there is no such file. MasterKeyError if others may
    read it or it is not a key."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MasterKeyError(
            f"cannot read the master key {path}: {exc.strerror}", "missing"
        ) from None
    if mode & 0o077:
        raise MasterKeyError(
            f"the master key {path} is readable by other users (mode {mode:o}); chmod 600 it",
            "mismatch",
        )
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise MasterKeyError(
            f"{path} is not a master key (it must hold exactly {KEY_BYTES} bytes)", "mismatch"
        )
    return key


def write_key_file(path: Path, key: bytes) -> None:
    """Create `path` (mode 0600, never over an existing file) holding `key`, on disk before
    this returns (file and folder fsynced)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def open_keyring(settings: Settings, db: Database) -> Keyring:
    """The keyring of the master key file, checked against the database; a new key (and
    file) when neither the file nor the database has one yet. MasterKeyError, naming the
    file, when they do not go together."""
    path = settings.master_key_path
    key = await trio.to_thread.run_sync(read_key_file, path)
    if key is None:
        known = [version for version, _, retired in await db.read(master_versions) if not retired]
        if known:
            raise MasterKeyError(
                f"there is no master key at {path}, but this database's data keys are wrapped "
                f"by master key version {max(known)}: restore that file, or set "
                "master_key_file to where it is",
                "missing",
            )
        key = os.urandom(KEY_BYTES)
        try:
            await trio.to_thread.run_sync(write_key_file, path, key)
        except OSError as exc:
            raise MasterKeyError(
                f"cannot create the master key {path}: {exc.strerror}", "missing"
            ) from None
        logger.info("made a new master key in %s: back it up apart from the database", path)
    try:
        return await Keyring.open(
            db, key, cache_size=settings.key_cache_size, ttl_s=settings.key_cache_ttl_s
        )
    except MasterKeyError as exc:
        raise MasterKeyError(f"{path}: {exc}", exc.reason) from None
