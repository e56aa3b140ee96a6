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
When that account cannot reach the data folder (it is private to root: /root is 0700, and
obrol creates its data folder 0700), a new cluster is kept in `/var/lib/obrol/<hash of the
data folder's path>` instead, and `<data_dir>/postgres` is a symbolic link to it. The password,
lock and log files stay in the data folder, readable by the server's own user only.

The cluster logs server events but never statement text, parameter values or DETAIL lines
(which quote the values of a violated unique key, such as an email address).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
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
    Candidate,
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
# Where root keeps clusters its PostgreSQL account cannot reach in the data folder.
SHARED_ROOT = Path("/var/lib/obrol")

# Server settings passed on the command line at every start.
BASE_SETTINGS = {
    "listen_addresses": "",
    "unix_socket_permissions": "0700",
    "port": str(PORT),
    "max_connections": "200",
    # Personal data never reaches the log: no DETAIL/HINT/CONTEXT lines (a unique violation's
    # DETAIL quotes the key, e.g. an email), no failing statements, no statement or
    # parameter logging, and no per-statement errors at all (some quote a value in their
    # message). Server events (start, stop, checkpoints, crashes, FATAL, PANIC) are kept;
    # obrol reports statement errors itself, without the values.
    "log_error_verbosity": "terse",
    "log_min_messages": "log",
    "log_min_error_statement": "panic",
    "log_statement": "none",
    "log_min_duration_statement": "-1",
    "log_connections": "off",
    "log_disconnections": "off",
}


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
    """Create obrol's data folder if missing, mode 0700 (the server's own user only).

    An existing folder is left as it is: never loosened, and not tightened either (an older
    obrol run as root made it 0711 so that its PostgreSQL account could enter it).
    """
    if not path.exists():
        path.mkdir(parents=True, mode=0o700)
        path.chmod(0o700)  # whatever the umask


def open_private(path: Path, flags: int) -> int:
    """Open (creating) `path` for the server's own user only: mode 0600, also when it
    already existed with a looser mode. Returns the file descriptor."""
    fd = os.open(path, flags | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def describe_exit(status: int) -> str:
    """A process's exit status in words ("killed by SIGKILL", "exit status 1")."""
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-status).name}"
        return f"killed by signal {-status}"
    return f"exit status {status}"


class EmbeddedPostgres:
    """One PostgreSQL cluster at `path`, owned by this process while it runs."""

    def __init__(
        self,
        path: Path,
        *,
        bin_dir: Path | None = None,
        os_user: str | None = None,
        durable: bool = True,
        shared_root: Path = SHARED_ROOT,
        bin_candidates: list[Candidate] | None = None,
    ) -> None:
        """`durable=False` turns off fsync: for throwaway test clusters only.

        `shared_root` is where root keeps a cluster its PostgreSQL account cannot reach at
        `path`; `bin_candidates` replaces the usual search for binaries (tests).
        """
        # The name in the data folder (a link when the cluster was kept elsewhere).
        self.path = Path(os.path.realpath(path.parent)) / path.name
        self.cluster_dir = self.path  # where the cluster really is; settled by start()
        self._bin_dir = bin_dir
        self._os_user = os_user
        self._durable = durable
        self._shared_root = shared_root
        self._bin_candidates = bin_candidates
        self._account_cache: OsAccount | None = None
        self._lock: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._socket_dir: Path | None = None
        self._temp_socket_dir = False
        self.url: str | None = None
        self.binaries: PostgresBinaries | None = None

    @property
    def password_file(self) -> Path:
        return self.path.parent / f"{self.path.name}.password"

    @property
    def log_file(self) -> Path:
        return self.path.parent / f"{self.path.name}.log"

    @property
    def relocated(self) -> bool:
        """True when the cluster is kept outside the data folder (see the module doc)."""
        return self.cluster_dir != self.path

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while this object runs it."""
        return None if self._process is None else self._process.pid

    def describe(self) -> str:
        """Where the cluster is and which PostgreSQL runs it, for the start-up banner."""
        version = self.binaries.major_version if self.binaries else "?"
        text = f"embedded PostgreSQL {version} in {self.cluster_dir}"
        if self.relocated:
            text += f" (linked from {self.path})"
        return text

    def start(self) -> str:
        """Create (first time) and start the cluster; returns its connection URL.

        Blocks for about a second (initdb on first use takes a few). Raises
        EmbeddedPostgresError with the reason and the tail of the server log.
        """
        create_private_dir(self.path.parent)
        self._acquire_lock()
        try:
            self.cluster_dir = self._located()
            if self.relocated:
                self._ensure_shared_root()  # even when its link points to nothing now
            account = self._account()
            existing = (self.cluster_dir / "PG_VERSION").is_file()
            self.binaries = self._choose_binaries(account, existing)
            self._settle_location(account, existing)
            if not existing:
                self._initdb(account)
                if self.relocated and not self.path.is_symlink():
                    self.path.symlink_to(self.cluster_dir, target_is_directory=True)
            self._stop_orphan()
            self._launch(account)
            self.url = self._connection_url()
            asyncio.run(self._ensure_database())
        except BaseException:
            self.stop()
            raise
        logger.info(
            "%s, running as user %r (pid %d, socket %s, log %s)",
            self.describe(),
            account.name,
            self.pid,
            self._socket_dir,
            self.log_file,
        )
        return self.url

    def exit_status(self) -> int | None:
        """The postmaster's exit status if it stopped on its own; None while it runs
        (and before start() or after stop())."""
        process = self._process
        return None if process is None else process.poll()

    def restart(self) -> None:
        """Start PostgreSQL again after it stopped on its own, on the same socket and
        password: the connection URL stays valid.

        Raises EmbeddedPostgresError if it does not come up (for instance while processes of
        the old postmaster still hold its shared memory); the caller tries again later.
        """
        if self._lock is None or self.binaries is None:
            raise EmbeddedPostgresError("the embedded database was not started")
        if self._process is not None and self._process.poll() is None:
            self._wait_ready()  # an earlier try still starting (crash recovery can be long)
            return
        self._stop_orphan()
        self._launch(self._account(), socket_dir=self._socket_dir)

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

    def _located(self) -> Path:
        """The cluster folder: `path` itself, or where its link points."""
        if self.path.is_symlink():
            return Path(os.path.realpath(self.path))
        return self.path

    def _account(self) -> OsAccount:
        if self._account_cache is None:
            self._account_cache = self._find_account()
        return self._account_cache

    def _find_account(self) -> OsAccount:
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

    def _choose_binaries(self, account: OsAccount, existing: bool) -> PostgresBinaries:
        """Binaries `account` can run (of the cluster's major version if it exists)."""
        required = int((self.cluster_dir / "PG_VERSION").read_text()) if existing else None
        binaries = find_binaries(
            explicit=self._bin_dir,
            account=account,
            required_major=required,
            candidates=self._bin_candidates,
        )
        logger.info(
            "PostgreSQL %d binaries in %s: %s",
            binaries.major_version,
            binaries.bin_dir,
            binaries.why,
        )
        return binaries

    def _settle_location(self, account: OsAccount, existing: bool) -> None:
        """Make sure `account` can reach the cluster folder: a new cluster moves to the
        shared root when it could not (see the module doc); else EmbeddedPostgresError."""
        blocked = first_blocking_folder(self.cluster_dir, account)
        movable = not existing and not account.is_self and not os.path.lexists(self.path)
        if blocked is not None and movable:
            self.cluster_dir = self._relocate(account, blocked)
            blocked = first_blocking_folder(self.cluster_dir, account)
        if blocked is not None:
            raise EmbeddedPostgresError(
                f"PostgreSQL runs as user {account.name!r}, which cannot enter {blocked} "
                f"on the way to the database cluster {self.cluster_dir}; give it access "
                "to that folder, or give a database URL"
            )

    def _relocate(self, account: OsAccount, blocked: Path) -> Path:
        """Choose the folder for a new cluster under the shared root (see the module doc)."""
        name = hashlib.sha256(str(self.path).encode()).hexdigest()[:16]
        target = self._shared_root / name
        if (target / "PG_VERSION").is_file():
            raise EmbeddedPostgresError(
                f"{target} holds the database cluster of an earlier data folder at "
                f"{self.path.parent}, but {self.path} no longer points to it. To start "
                f"afresh, delete it (rm -rf {target}); to keep it, restore the data folder "
                f"or link it again (ln -s {target} {self.path})"
            )
        self._ensure_shared_root()
        logger.info(
            "user %r, which runs PostgreSQL, cannot enter %s: the database cluster is kept "
            "in %s, linked from %s",
            account.name,
            blocked,
            target,
            self.path,
        )
        return target

    def _ensure_shared_root(self) -> None:
        """Create the shared root if missing: root's, mode 0711 (enter, never list)."""
        if not self._shared_root.exists():
            self._shared_root.mkdir(parents=True, mode=0o711)
            self._shared_root.chmod(0o711)

    def _acquire_lock(self) -> None:
        path = self.path.parent / f"{self.path.name}.lock"
        lock = os.fdopen(open_private(path, os.O_WRONLY | os.O_APPEND), "ab")
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
                start_new_session=True,  # a Ctrl-C meant for obrol must not cut it short
                **self._as_account(account),  # type: ignore[call-overload]
            )
            if result.returncode != 0:
                raise EmbeddedPostgresError(f"initdb failed: {result.stderr.strip()[-2000:]}")
            fd = open_private(self.password_file, os.O_WRONLY | os.O_TRUNC)
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

    def _launch(self, account: OsAccount, socket_dir: Path | None = None) -> None:
        assert self.binaries is not None
        self._socket_dir = socket_dir or self._choose_socket_dir(account)
        settings = BASE_SETTINGS | {"unix_socket_directories": str(self._socket_dir)}
        if not self._durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        args = [str(self.binaries.postgres), "-D", str(self.cluster_dir)]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        # Ours, 0600: PostgreSQL writes to the descriptor it inherits and needs no access.
        with os.fdopen(open_private(self.log_file, os.O_WRONLY | os.O_APPEND), "ab") as log:
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
