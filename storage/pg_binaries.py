"""Finding PostgreSQL server binaries for the embedded cluster, and who may run them.

Candidates, in order: an explicit folder from the settings; the binaries bundled in the
`pgserver` wheel (a dependency, so `pip install` alone gives a machine with no PostgreSQL a
working server); `pg_config --bindir`; the usual system folders (Debian/Ubuntu, RHEL,
Homebrew). The first candidate that has `postgres` and `initdb`, that the account running
PostgreSQL can execute, and whose major version matches an existing cluster is used.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from storage.errors import EmbeddedPostgresError


@dataclass(frozen=True, slots=True)
class OsAccount:
    """The operating-system account PostgreSQL runs as."""

    name: str
    uid: int
    gid: int

    @classmethod
    def current(cls) -> OsAccount:
        uid = os.geteuid()
        return cls(name=pwd.getpwuid(uid).pw_name, uid=uid, gid=os.getegid())

    @classmethod
    def named(cls, name: str) -> OsAccount:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise EmbeddedPostgresError(f"no operating-system user named {name!r}") from None
        return cls(name=name, uid=entry.pw_uid, gid=entry.pw_gid)

    @classmethod
    def by_uid(cls, uid: int) -> OsAccount:
        entry = pwd.getpwuid(uid)
        return cls(name=entry.pw_name, uid=uid, gid=entry.pw_gid)

    @property
    def is_self(self) -> bool:
        return self.uid == os.geteuid()


def default_account_for_root() -> OsAccount:
    """PostgreSQL refuses to run as root: pick an existing unprivileged account for it.

    `postgres` where a distribution created it, else `nobody`. We never create users.
    """
    for name in ("postgres", "nobody"):
        try:
            return OsAccount.named(name)
        except EmbeddedPostgresError:
            continue
    raise EmbeddedPostgresError(
        "running as root, and neither a 'postgres' nor a 'nobody' user exists to run "
        "PostgreSQL as; set postgres_os_user, or give a database URL"
    )


def first_blocking_folder(path: Path, account: OsAccount) -> Path | None:
    """The first folder on the way to `path` that `account` cannot enter, or None."""
    if account.is_self and account.uid != 0:
        for folder in [*reversed(path.parents)]:
            if not os.access(folder, os.X_OK):
                return folder
        return None
    groups = {account.gid, *os.getgrouplist(account.name, account.gid)}
    for folder in [*reversed(path.parents)]:
        try:
            st = folder.stat()
        except OSError:
            return folder
        if st.st_uid == account.uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            return folder
    return None


@dataclass(frozen=True, slots=True)
class PostgresBinaries:
    """The chosen server binaries, and in words why these (printed at start-up)."""

    bin_dir: Path
    major_version: int
    why: str = ""

    @property
    def postgres(self) -> Path:
        return self.bin_dir / "postgres"

    @property
    def initdb(self) -> Path:
        return self.bin_dir / "initdb"


@dataclass(frozen=True, slots=True)
class Candidate:
    """A folder that may hold server binaries, and where it came from."""

    bin_dir: Path
    origin: str  # "set by postgres_bin_dir", "bundled with obrol (pgserver)", ...


def bundled_bin_dir() -> Path | None:
    """Where the pgserver wheel keeps its PostgreSQL binaries, if it is installed."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def candidate_bin_dirs(explicit: Path | None) -> list[Candidate]:
    """Folders that may hold PostgreSQL server binaries, most preferred first."""
    if explicit is not None:
        return [Candidate(explicit, "set by postgres_bin_dir")]
    found: list[Candidate] = []
    bundled = bundled_bin_dir()
    if bundled is not None:
        found.append(Candidate(bundled, "bundled with obrol (pgserver)"))
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=10
        )
        if result.returncode == 0 and result.stdout.strip():
            found.append(Candidate(Path(result.stdout.strip()), f"named by {pg_config}"))

    def by_version(folder: Path) -> int:
        digits = re.findall(r"\d+", folder.as_posix())
        return int(digits[-1]) if digits else 0

    for pattern in (
        "/usr/lib/postgresql/*/bin",
        "/usr/pgsql-*/bin",
        "/opt/homebrew/opt/postgresql@*/bin",
        "/usr/local/opt/postgresql@*/bin",
    ):
        folders = sorted(map(Path, glob.glob(pattern)), key=by_version, reverse=True)
        found.extend(Candidate(folder, "system installation") for folder in folders)
    return found


def server_major_version(bin_dir: Path) -> int | None:
    """The major version `postgres --version` reports, or None if it does not run."""
    try:
        result = subprocess.run(
            [str(bin_dir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except OSError:
        return None
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", result.stdout)
    return int(match.group(1)) if match and result.returncode == 0 else None


def find_binaries(
    *,
    explicit: Path | None,
    account: OsAccount,
    required_major: int | None,
    candidates: list[Candidate] | None = None,
) -> PostgresBinaries:
    """Pick the binaries to run from `candidates` (default: `candidate_bin_dirs(explicit)`).

    The result's `why` names where they come from and why earlier candidates were passed
    over. Raises EmbeddedPostgresError saying what was tried.
    """
    tried: list[str] = []
    for candidate in candidates if candidates is not None else candidate_bin_dirs(explicit):
        bin_dir = candidate.bin_dir
        if not (bin_dir / "postgres").is_file() or not (bin_dir / "initdb").is_file():
            tried.append(f"{bin_dir}: no postgres/initdb there")
            continue
        blocked = first_blocking_folder(bin_dir / "postgres", account)
        if blocked is not None:
            tried.append(
                f"{bin_dir}: user {account.name!r}, which runs PostgreSQL, cannot enter {blocked}"
            )
            continue
        major = server_major_version(bin_dir)
        if major is None:
            tried.append(f"{bin_dir}: `postgres --version` failed")
            continue
        if required_major is not None and major != required_major:
            tried.append(f"{bin_dir}: PostgreSQL {major}, the cluster needs {required_major}")
            continue
        why = candidate.origin
        if tried:
            why += "; passed over: " + "; ".join(tried)
        return PostgresBinaries(bin_dir=bin_dir, major_version=major, why=why)
    detail = "; ".join(tried) or "no candidate folders"
    raise EmbeddedPostgresError(
        "no usable PostgreSQL server binaries for the embedded database "
        f"({detail}). Reinstall obrol (it bundles PostgreSQL through the pgserver package), "
        "set postgres_bin_dir, or give a database URL."
    )
