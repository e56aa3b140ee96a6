"""The APNs + FCM stand-in a `--push-share` run sends its pushes to.

Our own: `python -m push.standin --port 0 --dir <report>/standin` as a child process (its
log in `standin.log`), started before the server of our own (which is pointed at it through
`OBROL_*` settings) and stopped after it, like the server: SIGINT, then SIGKILL if it hangs.
A running one (`--standin-url`, for `--url`): only its recording API is used, trusted
through `--standin-ca`.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio

from loadtest.localserver import open_log, stop_child
from protocol.errors import ObrolError

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


class StandinError(ObrolError):
    """The stand-in did not start, or cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Standin:
    """Where the stand-in listens, the CA to trust for it, and (ours) what it announced."""

    url: str
    ca_file: Path
    pid: int | None = None  # our own stand-in's process
    announced: dict[str, Any] | None = None  # our own: its start-up line
    # The server's operator_token, to read its push counters (/v1/operator/push): made up
    # for a server of our own, --operator-token for one given by --url (None: not read).
    operator_token: str | None = None

    def server_env(self, grace_s: float) -> dict[str, str]:
        """The `OBROL_*` settings that make a server send its pushes here."""
        a = self.announced
        if a is None:
            raise StandinError("only a stand-in of our own has credentials to hand out")
        port = urlsplit(self.url).port or 443
        env = {
            "OBROL_APNS_KEY_FILE": str(a["apns_key_file"]),
            "OBROL_APNS_KEY_ID": str(a["apns_key_id"]),
            "OBROL_APNS_TEAM_ID": str(a["apns_team_id"]),
            "OBROL_APNS_TOPICS": json.dumps([a["apns_topic"]]),
            "OBROL_APNS_PRODUCTION_HOST": "127.0.0.1",
            "OBROL_APNS_SANDBOX_HOST": "127.0.0.1",
            "OBROL_APNS_PORT": str(port),
            "OBROL_FCM_SERVICE_ACCOUNT_FILE": str(a["fcm_service_account_file"]),
            "OBROL_FCM_BASE_URL": self.url,
            "OBROL_PUSH_CA_FILE": str(a["ca_file"]),
            "OBROL_PUSH_GRACE_S": repr(float(grace_s)),
        }
        if self.operator_token is not None:
            env["OBROL_OPERATOR_TOKEN"] = self.operator_token
        return env


@asynccontextmanager
async def standin_process(directory: Path, log_path: Path) -> AsyncIterator[Standin]:
    """Start the stand-in on a free port with its credentials in `directory` (reused if
    there), yield it, stop it on the way out however the body ends."""
    command = [sys.executable, "-m", "push.standin", "--port", "0", "--dir", str(directory)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open_log(log_path) as log:
        process = await trio.lowlevel.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,  # a Ctrl-C reaches the tester only; it stops us
        )
    try:
        announced = await _announcement(process, log_path)
        yield Standin(
            url=str(announced["url"]),
            ca_file=Path(announced["ca_file"]),
            pid=process.pid,
            announced=announced,
            operator_token=secrets.token_urlsafe(32),  # for the server we start with it
        )
    finally:
        await _stop(process)


async def _announcement(process: trio.Process, log_path: Path) -> dict[str, Any]:
    """The one JSON line the stand-in prints once it listens."""
    assert process.stdout is not None
    line = b""
    with trio.move_on_after(START_TIMEOUT_S):
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(4096)
            if not chunk:
                break
            line += chunk
    if not line.endswith(b"\n"):
        tail = (await trio.Path(log_path).read_text(encoding="utf-8", errors="replace"))[-2000:]
        raise StandinError(
            f"the push stand-in did not start (status {process.poll()}); {log_path}:\n{tail}"
        )
    try:
        announced: dict[str, Any] = json.loads(line)
    except ValueError:
        raise StandinError(f"the push stand-in announced {line[:200]!r}, not JSON") from None
    return announced


async def _stop(process: trio.Process) -> None:
    await stop_child(process, STOP_TIMEOUT_S)
    if process.stdout is not None:
        with trio.CancelScope(shield=True):
            await process.stdout.aclose()
