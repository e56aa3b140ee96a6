"""A PostgreSQL of the test's own, which the test stops abruptly and starts again.

The shared session cluster (tests/conftest.py) must stay up for every other test, so
outage tests start their own embedded cluster (the code `obrol serve` uses), stop it as an
administrator or a crash would (`pg_ctl stop -m immediate`: no checkpoint, every connection
cut), and start it again on the same socket, so the server's URL stays valid.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from storage.embedded import EmbeddedPostgres


class StoppablePostgres:
    """An embedded cluster in a temporary folder; `url` stays the same across restarts."""

    def __init__(self, folder: Path, *, durable: bool) -> None:
        self._pg = EmbeddedPostgres(folder / "pg", durable=durable)
        self.url = ""

    def start(self) -> str:
        """Start (creating it the first time); blocks until it accepts connections."""
        url = self._pg.start()
        assert not self.url or url == self.url, "the restarted cluster moved"
        self.url = url
        return url

    def stop_immediately(self) -> None:
        """`pg_ctl stop -m immediate`, run as the cluster's owner; waits until it is down."""
        binaries = self._pg.binaries
        assert binaries is not None
        cluster = self._pg.cluster_dir
        owner = cluster.stat()
        as_owner: dict[str, object] = {}
        if os.geteuid() != owner.st_uid:  # root: PostgreSQL runs as another account
            as_owner = {"user": owner.st_uid, "group": owner.st_gid, "extra_groups": []}
        subprocess.run(
            [str(binaries.bin_dir / "pg_ctl"), "stop", "-D", str(cluster), "-m", "immediate"],
            check=True,
            capture_output=True,
            timeout=60,
            **as_owner,  # type: ignore[call-overload]
        )
        self._pg.stop()  # reaps the exited postmaster and releases the cluster lock

    def close(self) -> None:
        self._pg.stop()

    async def start_async(self) -> str:
        return await trio.to_thread.run_sync(self.start)

    async def stop_immediately_async(self) -> None:
        await trio.to_thread.run_sync(self.stop_immediately)


def _enterable_temp_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="obrol-outage-"))
    folder.chmod(0o711)  # as root, PostgreSQL runs as another user and must enter it
    return folder


@asynccontextmanager
async def stoppable_postgres(*, durable: bool) -> AsyncIterator[StoppablePostgres]:
    """A started StoppablePostgres, stopped and removed afterwards. `durable=False` turns
    fsync and synchronous commit off: a stop may then lose committed transactions."""
    folder = _enterable_temp_folder()
    pg = StoppablePostgres(folder, durable=durable)
    try:
        await pg.start_async()
        yield pg
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(pg.close)
        shutil.rmtree(folder, ignore_errors=True)
