"""The embedded PostgreSQL cluster: created once, reused, stopped, never shared; reachable
as root from a private folder; restartable after a crash; private files, no personal data
in its log."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from storage.embedded import EmbeddedPostgres
from storage.errors import EmbeddedPostgresError
from storage.pg_binaries import Candidate, OsAccount, bundled_bin_dir, find_binaries

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
SYSTEM_BIN = Path("/usr/lib/postgresql/15/bin")  # Debian's PostgreSQL 15, where installed


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """Where root keeps clusters its PostgreSQL account cannot reach (not /var/lib/obrol)."""
    folder = Path(tempfile.mkdtemp(prefix="obrol-shared-"))
    folder.chmod(0o711)
    yield folder / "clusters"
    shutil.rmtree(folder, ignore_errors=True)


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
    """A postgres process serves `cluster` (or the folder it links to)."""
    names = {str(cluster).encode(), os.path.realpath(cluster).encode()}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"postgres" in cmdline and any(name in cmdline for name in names):
                return True
    return False


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_cluster_is_created_reused_and_stopped(data_dir: Path, shared_root: Path) -> None:
    pg = EmbeddedPostgres(data_dir / "postgres", durable=False, shared_root=shared_root)
    url = pg.start()
    query(url, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    assert mode(data_dir) == 0o700  # the data folder is the server's own
    assert mode(pg.cluster_dir) == 0o700
    if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as an unprivileged account
        assert pg.cluster_dir.stat().st_uid != 0
    pg.stop()
    assert not postgres_running_in(pg.cluster_dir)

    again = EmbeddedPostgres(data_dir / "postgres", durable=False, shared_root=shared_root)
    try:
        assert query(again.start(), "SELECT x FROM kept") == 42
        assert again.cluster_dir == pg.cluster_dir
    finally:
        again.stop()


def test_two_processes_cannot_share_a_cluster(data_dir: Path, shared_root: Path) -> None:
    first = EmbeddedPostgres(data_dir / "postgres", durable=False, shared_root=shared_root)
    first.start()
    try:
        with pytest.raises(EmbeddedPostgresError, match="another obrol"):
            EmbeddedPostgres(data_dir / "postgres", durable=False, shared_root=shared_root).start()
    finally:
        first.stop()


def test_postgres_left_by_a_killed_obrol_is_replaced(data_dir: Path, shared_root: Path) -> None:
    crashed = EmbeddedPostgres(data_dir / "postgres", durable=False, shared_root=shared_root)
    crashed.start()
    # Simulate obrol dying without stopping PostgreSQL: its lock goes, the process stays.
    assert crashed._lock is not None and crashed._process is not None
    orphan = crashed._process
    crashed._lock.close()
    crashed._lock = None
    crashed._process = None

    fresh = EmbeddedPostgres(data_dir / "postgres", durable=False, shared_root=shared_root)
    try:
        url = fresh.start()
        assert orphan.wait(timeout=30) is not None  # the orphan was stopped
        assert query(url, "SELECT 1") == 1
    finally:
        fresh.stop()


def test_a_killed_postmaster_is_restarted_on_the_same_url(
    data_dir: Path, shared_root: Path
) -> None:
    pg = EmbeddedPostgres(data_dir / "postgres", durable=False, shared_root=shared_root)
    url = pg.start()
    try:
        # (a throwaway cluster commits asynchronously: this session waits for its WAL)
        query(
            url,
            "SET synchronous_commit = on; CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)",
        )
        old_pid = pg.pid
        assert old_pid is not None and pg.exit_status() is None
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pg.exit_status() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pg.exit_status() == -signal.SIGKILL
        # Its backends may hold the shared memory for a moment: the caller retries.
        deadline = time.monotonic() + 30
        while True:
            try:
                pg.restart()
                break
            except EmbeddedPostgresError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert pg.pid != old_pid and pg.exit_status() is None
        assert query(url, "SELECT x FROM kept") == 7
    finally:
        pg.stop()
    assert not postgres_running_in(pg.cluster_dir)


def test_files_are_private_and_the_log_holds_no_personal_data(
    data_dir: Path, shared_root: Path
) -> None:
    email = "member.unique-9f3a@b.example"
    pg = EmbeddedPostgres(data_dir / "postgres", durable=False, shared_root=shared_root)
    url = pg.start()
    try:

        async def violate() -> None:
            conn = await asyncpg.connect(url)
            try:
                await conn.execute("CREATE TABLE people (email text)")
                await conn.execute("CREATE UNIQUE INDEX people_email ON people (lower(email))")
                await conn.execute("INSERT INTO people VALUES ($1)", email)
                with pytest.raises(asyncpg.UniqueViolationError) as caught:
                    await conn.execute("INSERT INTO people VALUES ($1)", email.upper())
                assert email in (caught.value.detail or "")  # the client is still told
                with pytest.raises(asyncpg.InvalidTextRepresentationError):
                    await conn.execute(f"SELECT '{email}'::uuid")  # the value in the message
                assert await conn.fetchval("SHOW log_error_verbosity") == "terse"
            finally:
                await conn.close()

        asyncio.run(violate())
    finally:
        pg.stop()
    log = pg.log_file.read_text()
    assert "database system is ready" in log  # server events are logged
    assert "member" not in log.lower() and "DETAIL" not in log and "STATEMENT" not in log
    for private in (pg.log_file, pg.password_file, data_dir / "postgres.lock"):
        assert mode(private) == 0o600, private
        assert private.stat().st_uid == os.geteuid()


@as_root
def test_a_private_data_dir_as_root_keeps_the_cluster_in_the_shared_root(
    shared_root: Path,
) -> None:
    """`python3 run.py serve` in /root: PostgreSQL's account cannot enter it, and obrol
    must not open it up. The cluster lives in the shared root, linked from the data dir."""
    home = Path(tempfile.mkdtemp(prefix="obrol-root-home-"))  # mode 0700, owned by root
    try:
        path = home / "obrol-data" / "postgres"
        pg = EmbeddedPostgres(path, durable=False, shared_root=shared_root)
        url = pg.start()
        try:
            query(url, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)")
            assert pg.relocated and path.is_symlink()
            assert pg.cluster_dir.parent == shared_root
            assert str(pg.cluster_dir) in pg.describe() and str(path) in pg.describe()
        finally:
            pg.stop()
        assert mode(home) == 0o700 and mode(home / "obrol-data") == 0o700  # nothing loosened
        assert mode(shared_root) == 0o711 and shared_root.stat().st_uid == 0
        owner = pwd.getpwuid(pg.cluster_dir.stat().st_uid).pw_name
        assert owner != "root" and mode(pg.cluster_dir) == 0o700

        again = EmbeddedPostgres(path, durable=False, shared_root=shared_root)
        try:
            assert query(again.start(), "SELECT x FROM kept") == 1
        finally:
            again.stop()

        # The data folder deleted, its cluster left behind: refused with what to do.
        shutil.rmtree(home / "obrol-data")
        with pytest.raises(EmbeddedPostgresError, match=f"rm -rf {pg.cluster_dir}"):
            EmbeddedPostgres(path, durable=False, shared_root=shared_root).start()
    finally:
        shutil.rmtree(home, ignore_errors=True)


@as_root
def test_an_existing_cluster_made_unreachable_is_a_clear_error(
    data_dir: Path, shared_root: Path
) -> None:
    data_dir.mkdir(mode=0o711)
    data_dir.chmod(0o711)  # as an older obrol made it: the cluster inside it
    pg = EmbeddedPostgres(data_dir / "postgres", durable=False, shared_root=shared_root)
    pg.start()
    pg.stop()
    assert not pg.relocated
    data_dir.chmod(0o700)
    with pytest.raises(EmbeddedPostgresError, match=f"cannot enter {data_dir}"):
        EmbeddedPostgres(data_dir / "postgres", durable=False, shared_root=shared_root).start()
    assert not postgres_running_in(data_dir / "postgres")


@as_root
@pytest.mark.skipif(not (SYSTEM_BIN / "postgres").is_file(), reason="no system PostgreSQL 15")
def test_bundled_binaries_out_of_reach_fall_back_to_the_system_ones(shared_root: Path) -> None:
    """A clone in /root: the bundled binaries sit where `postgres` cannot read them."""
    bundled = bundled_bin_dir()
    assert bundled is not None
    home = Path(tempfile.mkdtemp(prefix="obrol-root-clone-"))  # mode 0700, owned by root
    try:
        (home / "bin").symlink_to(bundled)
        candidates = [
            Candidate(home / "bin", "bundled with obrol (pgserver)"),
            Candidate(SYSTEM_BIN, "system installation"),
        ]
        chosen = find_binaries(
            explicit=None,
            account=OsAccount.named("postgres"),
            required_major=None,
            candidates=candidates,
        )
        assert chosen.bin_dir == SYSTEM_BIN and chosen.major_version == 15
        assert chosen.why.startswith("system installation; passed over: ")
        assert f"cannot enter {home}" in chosen.why

        pg = EmbeddedPostgres(
            home / "obrol-data" / "postgres",
            durable=False,
            shared_root=shared_root,
            bin_candidates=candidates,
        )
        try:
            version = query(pg.start(), "SHOW server_version")
            assert str(version).startswith("15")
            assert pg.describe().startswith("embedded PostgreSQL 15 in ")
        finally:
            pg.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)
