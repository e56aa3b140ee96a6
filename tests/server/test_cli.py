"""`obrol serve` and `python3 run.py serve` as a user runs them: a real process with its
embedded database, stopped by SIGTERM or Ctrl-C with nothing left running, a clear line for
a port in use, a database that is restarted when it dies, private files."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import Process
from tests.storage.test_embedded import postgres_running_in

ROOT = Path(__file__).resolve().parents[2]
OBROL = ROOT / ".venv" / "bin" / "obrol"


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A folder private to the user (mode 0700, like /root), and a shared root outside it
    for the clusters a root-run obrol cannot keep there."""
    folder = Path(tempfile.mkdtemp(prefix="obrol-cli-"))
    shared = Path(tempfile.mkdtemp(prefix="obrol-cli-shared-"))
    shared.chmod(0o711)
    (folder / ".shared").symlink_to(shared)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(shared, ignore_errors=True)


def obrol(args: list[str], cwd: Path) -> Process:
    return Process([sys.executable, "-m", "server.cli", *args], cwd)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def health(api: str) -> httpx.Response | None:
    try:
        return httpx.get(f"{api}/healthz", timeout=5)
    except httpx.HTTPError:
        return None


def test_serve_with_embedded_database_and_stop_on_sigterm(workdir: Path) -> None:
    process = obrol(["serve", "--port", "0"], workdir)
    try:
        api = process.wait_for(r"API:\s+(http://\S+)").group(1)
        response = health(api)
        assert response is not None
        assert response.json() == {
            "status": "ok",
            "database": "ok",
            "bus": "ok",
            "push": {"apns": "off", "fcm": "off"},
        }
        key = httpx.get(f"{api}/.well-known/obrol/server-key", timeout=10).json()["public_key"]
        assert key in process.output  # printed at start-up
        process.wait_for(r"PostgreSQL \d+ binaries in \S+: bundled with obrol")  # and why
        data = workdir / "obrol-data"  # the default data folder
        cluster = Path(os.path.realpath(data / "postgres"))
        assert (cluster / "PG_VERSION").is_file()
        process.wait_for(rf"database:\s+embedded PostgreSQL \d+ in {re.escape(str(cluster))}")

        # Data at rest: the server's own user only; the database account owns just its cluster.
        assert mode(data) == 0o700
        for name in ("server-identity.key", "postgres.log", "postgres.password", "postgres.lock"):
            assert mode(data / name) == 0o600, name
            assert (data / name).stat().st_uid == os.geteuid(), name
        assert mode(cluster) == 0o700
        if os.geteuid() == 0:  # /tmp/obrol-cli-* is 0700 like /root: the cluster lives apart
            assert (data / "postgres").is_symlink() and cluster.stat().st_uid != 0
            assert mode(workdir) == 0o700  # and nothing was opened up for it

        process.popen.send_signal(signal.SIGTERM)
        assert process.finish() == 0
        assert not postgres_running_in(cluster)
    finally:
        process.close()


@pytest.mark.skipif(not OBROL.exists(), reason="run.py has not installed .venv here")
def test_run_py_serve_stops_everything_on_sigterm_and_ctrl_c(workdir: Path) -> None:
    """What a user does: `python3 run.py serve`, then SIGTERM to run.py's process id, or
    Ctrl-C in its terminal (SIGINT to the whole foreground process group)."""
    for how in ("SIGTERM", "SIGINT"):
        process = Process(
            [sys.executable, str(ROOT / "run.py"), "serve", "--port", "0"],
            workdir,
            new_session=True,
        )
        try:
            api = process.wait_for(r"API:\s+(http://\S+)").group(1)
            response = health(api)
            assert response is not None and response.status_code == 200
            cluster = Path(os.path.realpath(workdir / "obrol-data" / "postgres"))
            assert postgres_running_in(cluster)
            if how == "SIGTERM":
                os.kill(process.popen.pid, signal.SIGTERM)
            else:
                os.killpg(process.popen.pid, signal.SIGINT)
            assert process.finish() == 0, process.output
            assert f"{how} received: shutting down" in process.output
            assert "Traceback" not in process.output and "KeyboardInterrupt" not in process.output
            assert not postgres_running_in(cluster)
        finally:
            process.close()


def test_a_port_in_use_is_one_clear_line_and_nothing_keeps_running(workdir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args, what, option in (
            (["--port", str(port)], "HTTP API", "--port"),
            (["--port", "0", "--gateway-port", str(port)], "WebSocket gateway", "--gateway-port"),
        ):
            process = obrol(["serve", *args], workdir)
            try:
                assert process.finish() == 2, process.output
                errors = [line for line in process.lines if line.startswith("obrol: error")]
                assert errors == [
                    f"obrol: error: port {port} on 127.0.0.1 ({what}) is already in use: "
                    f"stop the program using it, or choose another port with {option}\n"
                ], process.output
                assert "Traceback" not in process.output
                assert not postgres_running_in(workdir / "obrol-data" / "postgres")
            finally:
                process.close()


def test_a_killed_embedded_postgres_is_restarted(workdir: Path) -> None:
    process = obrol(["serve", "--port", "0"], workdir)
    try:
        api = process.wait_for(r"API:\s+(http://\S+)").group(1)
        cluster = Path(os.path.realpath(workdir / "obrol-data" / "postgres"))
        pid_file = cluster / "postmaster.pid"
        old_pid = int(pid_file.read_text().split()[0])
        os.kill(old_pid, signal.SIGKILL)
        process.wait_for(r"embedded PostgreSQL stopped unexpectedly \(killed by SIGKILL\)")
        process.wait_for(r"embedded PostgreSQL restarted \(pid \d+\)")
        deadline = time.monotonic() + 60
        response = health(api)
        # The database first, then the bus's own connection (which retries with a pause).
        while (
            response is None or response.status_code != 200 or response.json()["status"] != "ok"
        ) and time.monotonic() < deadline:
            time.sleep(0.2)
            response = health(api)
        assert response is not None
        assert response.json() == {
            "status": "ok",
            "database": "ok",
            "bus": "ok",
            "push": {"apns": "off", "fcm": "off"},
        }
        assert int(pid_file.read_text().split()[0]) != old_pid
        process.popen.send_signal(signal.SIGTERM)
        assert process.finish() == 0, process.output
        assert not postgres_running_in(cluster)
    finally:
        process.close()


def test_bad_configuration_exits_with_a_message(workdir: Path) -> None:
    process = obrol(["serve", "--config", "missing.toml"], workdir)
    try:
        assert process.finish() == 2
        assert process.output.startswith("obrol: error: config file missing.toml does not exist")
    finally:
        process.close()
    process = obrol(["serve", "--port", "99999"], workdir)
    try:
        assert process.finish() == 2
        assert "port" in process.output and "Traceback" not in process.output
    finally:
        process.close()
