"""A server of the tester's own: `obrol serve` on free ports with a fresh embedded database.

Started as a separate process (`python -m server.cli serve --port 0`), in its own session so
a Ctrl-C at the terminal reaches only the tester, which then stops the server itself
(SIGINT, then SIGKILL if it hangs). Its output (the banner with its addresses, then its log)
goes to `server.log` in the report folder.
Fast password hashing (`OBROL_PASSWORD_HASH_STRENGTH=minimal`) keeps provisioning quick; the
load itself does not hash passwords. Open sign-up is on (`OBROL_ALLOW_ORG_SIGNUP=true`): the
provisioning creates its organization with `POST /v1/orgs`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import trio

from loadtest.devcert import make_dev_certificate
from protocol.errors import ObrolError

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
_LINE = re.compile(r"^\s*(API|gateway|server key):\s*(\S+)\s*$")


class LocalServerError(ObrolError):
    """The server of our own did not start; the message quotes its log."""


@dataclass(frozen=True, slots=True)
class LocalServer:
    api_url: str
    gateway_url: str
    server_key: str
    pid: int
    data_dir: Path
    log_path: Path
    ca_file: Path | None = None
    """With TLS: the CA of the throwaway certificate it serves (trust it)."""


def open_log(path: Path) -> BinaryIO:
    """A log file for a child process's output (given to it, then closed here)."""
    return open(path, "wb")


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


@asynccontextmanager
async def local_server(
    data_dir: Path | None,
    log_path: Path,
    *,
    tls: bool = False,
    settings: Mapping[str, str] | None = None,
    workers: int = 1,
    args: Sequence[str] = (),
) -> AsyncIterator[LocalServer]:
    """Start the server, yield where it listens, stop it (and remove a temporary data
    folder) on the way out, however the body ends. With `tls`, it serves https:// and
    wss:// with a throwaway certificate (loadtest/devcert.py) made next to its log.
    `settings`: more `OBROL_*` environment variables for it (the push stand-in's).
    `workers`: its gateway+API processes (`obrol serve --workers N`; 1: one process);
    `args`: more options for `obrol serve`."""
    temporary: Path | None = None
    if data_dir is None:
        temporary = Path(tempfile.mkdtemp(prefix="obrol-loadtest-"))
        # As root, PostgreSQL runs as another user and must be able to enter the folder.
        temporary.chmod(0o711)
        data_dir = temporary / "data"
    env = dict(os.environ)
    env.setdefault("OBROL_PASSWORD_HASH_STRENGTH", "minimal")
    if temporary is not None:  # as root the cluster may live apart: keep it in here too
        env["OBROL_POSTGRES_SHARED_DIR"] = str(temporary / "clusters")
    env["OBROL_ALLOW_ORG_SIGNUP"] = "true"  # provisioning signs its org up over the API
    env.update(settings or {})
    command = [
        sys.executable,
        "-m",
        "server.cli",
        "serve",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        "--workers",
        str(workers),
        *args,
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    certificate = None
    if tls:
        folder = log_path.parent / "tls"
        folder.mkdir(mode=0o700, exist_ok=True)
        folder.chmod(0o700)
        certificate = make_dev_certificate(folder)
        command += [
            "--tls-cert",
            str(certificate.cert_file),
            "--tls-key",
            str(certificate.key_file),
        ]
    try:
        with open_log(log_path) as log:
            process = await trio.lowlevel.open_process(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        try:
            found = await _wait_for_banner(process, log_path)
            yield LocalServer(
                api_url=found["API"],
                gateway_url=found["gateway"],
                server_key=found["server key"],
                pid=process.pid,
                data_dir=data_dir,
                log_path=log_path,
                ca_file=None if certificate is None else certificate.ca_file,
            )
        finally:
            await stop_child(process)
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


async def _wait_for_banner(process: trio.Process, log_path: Path) -> dict[str, str]:
    """The API and gateway addresses and the key the server prints once it is up (read
    from its log, which holds its stdout and stderr)."""
    found: dict[str, str] = {}
    with trio.move_on_after(START_TIMEOUT_S) as deadline:
        while len(found) < 3:
            await trio.sleep(0.1)
            text = await trio.Path(log_path).read_text(encoding="utf-8", errors="replace")
            for line in text.splitlines():
                match = _LINE.match(line)
                if match:
                    found[match.group(1)] = match.group(2)
            if len(found) < 3 and process.poll() is not None:
                raise LocalServerError(
                    f"the server exited during start-up (status {process.returncode}); "
                    f"its log {log_path} ends with:\n{_log_tail(log_path)}"
                )
    if deadline.cancelled_caught:
        raise LocalServerError(
            f"the server did not start within {START_TIMEOUT_S:.0f} s; its log {log_path} "
            f"ends with:\n{_log_tail(log_path)}"
        )
    return found


async def stop_child(process: trio.Process, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGINT, then SIGKILL if it has not exited within `timeout_s`; shielded."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            with trio.move_on_after(timeout_s):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
