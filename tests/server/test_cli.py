"""`obrol serve` as a user runs it: embedded database, health, clean stop on SIGTERM."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.storage.test_embedded import postgres_running_in


@pytest.fixture
def workdir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="obrol-cli-"))
    folder.chmod(0o711)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBROL_")}
    return subprocess.Popen(
        [sys.executable, "-m", "server.cli", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_serve_with_embedded_database_and_stop_on_sigterm(workdir: Path) -> None:
    process = start(["serve", "--port", "0"], workdir)
    try:
        assert process.stdout is not None
        output = []
        deadline = time.monotonic() + 60
        api = None
        while time.monotonic() < deadline and api is None:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            match = re.search(r"API:\s+(http://\S+)", line)
            api = match.group(1) if match else None
        assert api, "".join(output)
        health = httpx.get(f"{api}/healthz", timeout=10)
        assert health.json() == {"status": "ok", "database": "ok"}
        key = httpx.get(f"{api}/.well-known/obrol/server-key", timeout=10).json()["public_key"]
        assert any(key in line for line in output)  # printed at start-up
        assert (workdir / "obrol-data" / "postgres").is_dir()  # the default data folder
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert not postgres_running_in(workdir / "obrol-data" / "postgres")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_bad_configuration_exits_with_a_message(workdir: Path) -> None:
    process = start(["serve", "--config", "missing.toml"], workdir)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert out.startswith("obrol: error: config file missing.toml does not exist")
    process = start(["serve", "--port", "99999"], workdir)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 2 and "port" in out and "Traceback" not in out
