"""The embedded PostgreSQL cluster: created once, reused, stopped, never shared."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from storage.embedded import EmbeddedPostgres
from storage.errors import EmbeddedPostgresError


@pytest.fixture
def data_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="obrol-embedded-"))
    folder.chmod(0o711)
    yield folder / "data"
    shutil.rmtree(folder, ignore_errors=True)


def query(url: str, sql: str) -> object:
    async def run() -> object:
        conn = await asyncpg.connect(url)
        try:
            if ";" in sql:
                return await conn.execute(sql)
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


def postgres_running_in(cluster: Path) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(cluster).encode() in cmdline and b"postgres" in cmdline:
                return True
    return False


def test_cluster_is_created_reused_and_stopped(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir / "postgres", durable=False)
    url = pg.start()
    query(url, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    assert not (data_dir / "postgres").stat().st_mode & 0o077
    if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as an unprivileged account
        assert (data_dir / "postgres").stat().st_uid != 0
    pg.stop()
    assert not postgres_running_in(data_dir / "postgres")

    again = EmbeddedPostgres(data_dir / "postgres", durable=False)
    try:
        assert query(again.start(), "SELECT x FROM kept") == 42
    finally:
        again.stop()


def test_two_processes_cannot_share_a_cluster(data_dir: Path) -> None:
    first = EmbeddedPostgres(data_dir / "postgres", durable=False)
    first.start()
    try:
        with pytest.raises(EmbeddedPostgresError, match="another obrol"):
            EmbeddedPostgres(data_dir / "postgres", durable=False).start()
    finally:
        first.stop()


def test_postgres_left_by_a_killed_obrol_is_replaced(data_dir: Path) -> None:
    crashed = EmbeddedPostgres(data_dir / "postgres", durable=False)
    crashed.start()
    # Simulate obrol dying without stopping PostgreSQL: its lock goes, the process stays.
    assert crashed._lock is not None and crashed._process is not None
    orphan = crashed._process
    crashed._lock.close()
    crashed._lock = None
    crashed._process = None

    fresh = EmbeddedPostgres(data_dir / "postgres", durable=False)
    try:
        url = fresh.start()
        assert orphan.wait(timeout=30) is not None  # the orphan was stopped
        assert query(url, "SELECT 1") == 1
    finally:
        fresh.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another account")
def test_unreachable_data_dir_is_a_clear_error() -> None:
    folder = Path(tempfile.mkdtemp(prefix="obrol-private-"))  # mode 0700, owned by root
    try:
        pg = EmbeddedPostgres(folder / "data" / "postgres", durable=False)
        with pytest.raises(EmbeddedPostgresError, match="cannot enter"):
            pg.start()
        assert not postgres_running_in(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
