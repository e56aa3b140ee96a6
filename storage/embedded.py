"""A private PostgreSQL cluster in obrol's data folder: the default database.

`EmbeddedPostgres.start()` creates the cluster on first use (initdb, a random password for
the `obrol` role, scram-sha-256), starts `postgres` as a child process listening only on a
Unix socket, waits until it accepts connections and returns a connection URL. `stop()` asks
for a fast shutdown and waits for the process to exit. A lock file keeps two obrol
processes off one cluster; a postmaster left behind by a killed obrol is stopped on the next
start.

PostgreSQL refuses to run as root. Run as root, obrol runs PostgreSQL as an existing
unprivileged account (`postgres`, else `nobody`, or `postgres_os_user`) and changes the owner
of the cluster folder only: never users, never the permissions of folders it did not create.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO
from urllib.parse import quote

import asyncpg

from storage.errors import EmbeddedPostgresError
from storage.pg_binaries import (
    OsAccount,
    PostgresBinaries,
    default_account_for_root,
    find_binaries,
    first_blocking_folder,
)

logger = logging.getLogger(__name__)

ROLE = "obrol"
DATABASE = "obrol"
PORT = 5432  # only names the Unix socket file; no TCP listener is opened
SOCKET_PATH_MAX = 100  # sun_path is 104-108 bytes depending on the platform
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped has stopped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        return stat_line.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def create_private_dir(path: Path) -> None:
    """Create obrol's data folder if missing: private to us, but enterable (never
    listable) by others when we are root, since PostgreSQL must then run as another user."""
    if not path.exists():
        path.mkdir(parents=True, mode=0o711 if os.geteuid() == 0 else 0o700)


class EmbeddedPostgres:
    """One PostgreSQL cluster in `cluster_dir`, owned by this process while it runs."""

    def __init__(
        self,
        cluster_dir: Path,
        *,
        bin_dir: Path | None = None,
        os_user: str | None = None,
        durable: bool = True,
    ) -> None:
        """`durable=False` turns off fsync: for throwaway test clusters only."""
        self.cluster_dir = cluster_dir.resolve()
        self._bin_dir = bin_dir
        self._os_user = os_user
        self._durable = durable
        self._lock: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._socket_dir: Path | None = None
        self._temp_socket_dir = False
        self.url: str | None = None
        self.binaries: PostgresBinaries | None = None

    @property
    def password_file(self) -> Path:
        return self.cluster_dir.parent / f"{self.cluster_dir.name}.password"

    @property
    def log_file(self) -> Path:
        return self.cluster_dir.parent / f"{self.cluster_dir.name}.log"

    def start(self) -> str:
        """Create (first time) and start the cluster; returns its connection URL.

        Blocks for about a second (initdb on first use takes a few). Raises
        EmbeddedPostgresError with the reason and the tail of the server log.
        """
        create_private_dir(self.cluster_dir.parent)
        self._acquire_lock()
        try:
            account = self._account()
            existing = (self.cluster_dir / "PG_VERSION").is_file()
            required = int((self.cluster_dir / "PG_VERSION").read_text()) if existing else None
            self.binaries = find_binaries(
                explicit=self._bin_dir, account=account, required_major=required
            )
            blocked = first_blocking_folder(self.cluster_dir, account)
            if blocked is not None:
                raise EmbeddedPostgresError(
                    f"PostgreSQL runs as user {account.name!r}, which cannot enter {blocked}; "
                    "choose a data folder it can reach, or give a database URL"
                )
            if not existing:
                self._initdb(account)
            self._stop_orphan()
            self._launch(account)
            self.url = self._connection_url()
            asyncio.run(self._ensure_database())
        except BaseException:
            self.stop()
            raise
        logger.info(
            "embedded PostgreSQL %s running in %s (socket %s)",
            self.binaries.major_version,
            self.cluster_dir,
            self._socket_dir,
        )
        return self.url

    def stop(self) -> None:
        """Fast shutdown; escalates to immediate shutdown and kill if it does not exit."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            for sig, wait_s in (
                (signal.SIGINT, STOP_TIMEOUT_S),
                (signal.SIGQUIT, 5.0),
                (signal.SIGKILL, 5.0),
            ):
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)
                try:
                    process.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    logger.warning("embedded PostgreSQL did not stop after %s", sig.name)
        if self._temp_socket_dir and self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        self._socket_dir = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def _account(self) -> OsAccount:
        if os.geteuid() != 0:
            return OsAccount.current()
        if (self.cluster_dir / "PG_VERSION").is_file():
            owner = self.cluster_dir.stat().st_uid
            if owner == 0:
                raise EmbeddedPostgresError(f"{self.cluster_dir} is owned by root")
            return OsAccount.by_uid(owner)
        if self._os_user:
            return OsAccount.named(self._os_user)
        return default_account_for_root()

    def _acquire_lock(self) -> None:
        path = self.cluster_dir.parent / f"{self.cluster_dir.name}.lock"
        lock = path.open("ab")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise EmbeddedPostgresError(
                f"another obrol process is using the database in {self.cluster_dir}"
            ) from None
        self._lock = lock

    def _as_account(self, account: OsAccount) -> dict[str, object]:
        if account.is_self:
            return {}
        return {"user": account.uid, "group": account.gid, "extra_groups": []}

    def _initdb(self, account: OsAccount) -> None:
        assert self.binaries is not None
        password = secrets.token_urlsafe(32)
        self.cluster_dir.mkdir(mode=0o700)
        # initdb reads the role's password from a file the PostgreSQL account can read.
        pw_dir = Path(tempfile.mkdtemp(prefix="obrol-initdb-"))
        try:
            os.chown(self.cluster_dir, account.uid, account.gid)
            os.chown(pw_dir, account.uid, account.gid)
            pwfile = pw_dir / "pw"
            pwfile.write_text(password)
            os.chown(pwfile, account.uid, account.gid)
            args = [
                str(self.binaries.initdb),
                "-D",
                str(self.cluster_dir),
                "-U",
                ROLE,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--locale=C",
            ]
            if not self._durable:
                args.append("--no-sync")
            result = subprocess.run(
                args,
                capture_output=True,
                text=True,
                check=False,
                timeout=300,
                **self._as_account(account),  # type: ignore[call-overload]
            )
            if result.returncode != 0:
                raise EmbeddedPostgresError(f"initdb failed: {result.stderr.strip()[-2000:]}")
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(password)
        except BaseException:
            shutil.rmtree(self.cluster_dir, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(pw_dir, ignore_errors=True)

    def _stop_orphan(self) -> None:
        """Stop a postmaster a killed obrol left running (we hold the lock: it is ours)."""
        pid_file = self.cluster_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and b"postgres" not in cmdline.read_bytes():
            return  # the pid was reused by an unrelated process; the file is stale
        try:
            os.kill(pid, signal.SIGINT)
        except (ProcessLookupError, PermissionError):
            return
        logger.warning("stopping PostgreSQL (pid %d) left running by an earlier obrol", pid)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.05)
        raise EmbeddedPostgresError(f"PostgreSQL left running as pid {pid} did not stop")

    def _choose_socket_dir(self, account: OsAccount) -> Path:
        if len(str(self.cluster_dir / f".s.PGSQL.{PORT}")) <= SOCKET_PATH_MAX:
            self._temp_socket_dir = False
            return self.cluster_dir
        folder = Path(tempfile.mkdtemp(prefix="obrol-pg-"))
        os.chown(folder, account.uid, account.gid)
        self._temp_socket_dir = True
        return folder

    def _launch(self, account: OsAccount) -> None:
        assert self.binaries is not None
        self._socket_dir = self._choose_socket_dir(account)
        settings = {
            "listen_addresses": "",
            "unix_socket_directories": str(self._socket_dir),
            "unix_socket_permissions": "0700",
            "port": str(PORT),
            "max_connections": "200",
        }
        if not self._durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        args = [str(self.binaries.postgres), "-D", str(self.cluster_dir)]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C reaches us, not PostgreSQL
                **self._as_account(account),  # type: ignore[call-overload]
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self._process is not None
        pid_file = self.cluster_dir / "postmaster.pid"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmbeddedPostgresError(
                    f"PostgreSQL exited while starting; {self.log_file} ends with:\n"
                    + self._log_tail()
                )
            with contextlib.suppress(OSError):
                lines = pid_file.read_text().splitlines()
                # line 8 is the postmaster's status; "ready" once it accepts connections
                if (
                    len(lines) >= 8
                    and lines[0] == str(self._process.pid)
                    and lines[7].strip() == "ready"
                ):
                    return
            time.sleep(0.02)
        raise EmbeddedPostgresError(f"PostgreSQL did not become ready in {START_TIMEOUT_S:.0f} s")

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-15:])
        return "(no log)"

    def _connection_url(self, database: str = DATABASE) -> str:
        password = self.password_file.read_text().strip()
        return (
            f"postgresql://{ROLE}:{quote(password, safe='')}@/{database}"
            f"?host={quote(str(self._socket_dir), safe='')}&port={PORT}"
        )

    async def _ensure_database(self) -> None:
        conn = await asyncpg.connect(self._connection_url("postgres"))
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await conn.close()
