"""`obrol keys rotate`: a new master key, every data key re-wrapped, the old key file gone.

The procedure (README, "Encryption at rest"):

1. Stop every obrol server using the database (the command refuses while one runs: a
   running server holds the old master key only).
2. `obrol keys rotate` writes a new key to `<master key file>.next` (0600, fsynced) and
   registers its check value, re-wraps the data keys in batches of `--batch`, each batch one
   transaction, then retires the old version and renames the new file over the old one: the
   old key is gone, and with it every copy of a data key wrapped by it (backups, old row
   versions in PostgreSQL), destroyed ones included.
3. Back up the new key file, then start the servers.

Cut short (a crash, Ctrl-C), it is run again and resumes: each data key records the
version that wraps it. Until it finishes, servers refuse to start and say so.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from protocol.errors import ObrolError
from server.keys import read_key_file, sync_folder, write_key_file
from server.org_command import command_database
from server.settings import Settings, load_settings
from storage.database import Database
from storage.key_rotation import left_to_rewrap, register_next, retire, rewrap_batch
from storage.keyring import (
    KEYRING_LOCK,
    MasterKey,
    MasterKeyError,
    check_value,
    master_versions,
)
from storage.sealing import KEY_BYTES

DEFAULT_BATCH = 1000


class KeyRotationError(ObrolError):
    """The rotation cannot go on; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Rotated:
    version: int  # the master key's version now
    rewrapped: int  # data keys re-wrapped by this run
    path: Path


def add_keys_commands(commands: Any) -> None:
    """Register `obrol keys rotate` on the CLI's subcommands."""
    keys = commands.add_parser("keys", help="the master key that wraps the accounts' data keys")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    rotate = actions.add_parser(
        "rotate",
        help="make a new master key and re-wrap every data key under it (servers stopped)",
        description="Make a new master key, re-wrap every account's data key under it in "
        "batches, then delete the old key file. Stop every server using the database first. "
        "Run it again to resume one that was cut short.",
    )
    rotate.add_argument(
        "--batch", type=int, default=DEFAULT_BATCH, help="data keys per transaction"
    )
    rotate.add_argument("--data-dir", type=Path, help="data folder (default ./obrol-data)")
    rotate.add_argument("--database-url", help="PostgreSQL URL (default: the embedded one)")
    rotate.add_argument("--config", type=Path, help="TOML settings file")


def run_keys_command(args: argparse.Namespace) -> int:
    """Run `obrol keys ...`; raises ObrolError (the CLI prints it) when it cannot."""
    if args.batch < 1:
        raise KeyRotationError("--batch must be at least 1")
    settings = load_settings(args.config, data_dir=args.data_dir, database_url=args.database_url)

    def progress(done: int, total: int) -> None:
        print(f"re-wrapped {done} of {total} data keys", flush=True)

    rotated = trio.run(rotate_master_key, settings, args.batch, progress)
    print(
        f"master key rotated to version {rotated.version} ({rotated.rewrapped} data keys "
        f"re-wrapped by this run); the old key file is deleted. Back up {rotated.path} now."
    )
    return 0


async def rotate_master_key(
    settings: Settings, batch: int, progress: Callable[[int, int], None] | None = None
) -> Rotated:
    """Rotate (or finish rotating) the master key of `settings`' database; `progress(done,
    total)` after each batch. KeyRotationError or MasterKeyError when it cannot."""
    async with command_database(settings) as db:
        held = await db.hold_lock(KEYRING_LOCK, shared=False)
        if held is None:
            raise KeyRotationError(
                "an obrol server is running on this database: stop every server using it, "
                "then rotate (a running server holds the old master key only)"
            )
        try:
            return await _rotate(settings, db, batch, progress)
        finally:
            await held.release()


async def _rotate(
    settings: Settings, db: Database, batch: int, progress: Callable[[int, int], None] | None
) -> Rotated:
    path = settings.master_key_path
    next_path = path.with_name(path.name + ".next")
    current_key = await trio.to_thread.run_sync(read_key_file, path)
    next_key = await trio.to_thread.run_sync(read_key_file, next_path)
    versions = await db.read(master_versions)
    if not versions:
        raise KeyRotationError("this database has no master key yet: start the server once")
    if current_key is None:
        raise KeyRotationError(f"there is no master key at {path}: restore it first")
    known = {check: (version, retired is not None) for version, check, retired in versions}
    latest = max(version for version, _, retired in versions if retired is None)
    current = known.get(check_value(current_key))
    if current is None:
        raise KeyRotationError(f"{path} does not match this database: restore the right key")
    version, retired = current
    if retired:  # cut short after retiring: only the renaming is left
        if next_key is None or known.get(check_value(next_key)) != (latest, False):
            raise KeyRotationError(
                f"{path} holds retired master key version {version}, and {next_path} does "
                f"not hold the current one (version {latest}): restore it"
            )
        await trio.to_thread.run_sync(_replace, next_path, path)
        return Rotated(latest, 0, path)
    new = await _next_key(db, next_path, next_key, known, version, latest)
    old = MasterKey(version, current_key)
    total = await db.read(left_to_rewrap, new.version)
    done = 0
    while count := await db.transaction(rewrap_batch, old, new, batch):
        done += count
        if progress is not None:
            progress(done, total)
    await db.transaction(retire, old.version, new.version)
    await trio.to_thread.run_sync(_replace, next_path, path)
    return Rotated(new.version, done, path)


async def _next_key(
    db: Database,
    next_path: Path,
    next_key: bytes | None,
    known: dict[bytes, tuple[int, bool]],
    version: int,
    latest: int,
) -> MasterKey:
    """The key to rotate to: the unfinished rotation's (in `next_path`), or a new one,
    written to `next_path` before its check value is registered (so that no data key is
    ever wrapped by a key that is not on disk)."""
    if latest != version:  # cut short while re-wrapping
        if next_key is None or known.get(check_value(next_key)) != (latest, False):
            raise KeyRotationError(
                f"a rotation to master key version {latest} is unfinished, but {next_path} "
                "is missing or holds another key: restore it (the data keys re-wrapped "
                "already open with it only)"
            )
        return MasterKey(latest, next_key)
    if next_key is None:
        next_key = os.urandom(KEY_BYTES)
        await trio.to_thread.run_sync(write_key_file, next_path, next_key)
    elif check_value(next_key) in known:
        raise KeyRotationError(
            f"{next_path} holds a master key this database knows already: remove it"
        )
    try:
        new_version = await db.transaction(register_next, check_value(next_key), version)
    except MasterKeyError as exc:
        raise KeyRotationError(str(exc)) from None
    return MasterKey(new_version, next_key)


def _replace(new: Path, old: Path) -> None:
    """Put `new` in the place of `old` (whose key is then gone), durably."""
    os.replace(new, old)
    sync_folder(old.parent)
