"""`python -m push.standin` and `obrol push-standin` as a load tester starts them: one JSON
line on stdout once listening, a working stand-in, a clean exit on SIGTERM or SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from push.standin import StandInCredentials
from tests.push.helpers import provider_token

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINTS = {
    "module": [sys.executable, "-m", "push.standin"],
    "obrol": [sys.executable, "-m", "server.cli", "push-standin"],
}


async def first_line(process: trio.Process) -> str:
    assert process.stdout is not None
    buffer = b""
    with trio.fail_after(60):
        while b"\n" not in buffer:
            chunk = await process.stdout.receive_some()
            assert chunk, "the stand-in exited before announcing itself"
            buffer += chunk
    line, _, rest = buffer.partition(b"\n")
    assert rest == b"", "more than one line on stdout"
    return line.decode()


async def push(announced: dict[str, Any]) -> httpx.Response:
    credentials = StandInCredentials.load(Path(announced["directory"]))
    context = credentials.client_ssl_context()
    async with httpx.AsyncClient(http2=True, verify=context, timeout=30) as client:
        return await client.post(
            f"{announced['url']}/3/device/{'0a' * 32}",
            json={"aps": {"badge": 1}},
            headers={
                "authorization": f"bearer {provider_token(credentials)}",
                "apns-topic": announced["apns_topic"],
            },
        )


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_it_announces_serves_and_stops_cleanly(
    tmp_path: Path, entry: str, signum: signal.Signals
) -> None:
    stderr = (tmp_path / "stderr.log").open("wb")
    argv = [*ENTRY_POINTS[entry], "--port", "0", "--dir", str(tmp_path / "creds")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await trio.lowlevel.open_process(
        argv, stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT, env=env
    )
    try:
        announced = json.loads(await first_line(process))
        assert announced["url"].startswith("https://127.0.0.1:")
        for key in ("ca_file", "apns_key_file", "fcm_service_account_file"):
            assert await trio.Path(announced[key]).is_file()
        for key in ("apns_key_id", "apns_team_id", "apns_topic", "fcm_project"):
            assert announced[key]
        response = await push(announced)
        assert response.status_code == 200
        process.send_signal(signum)
        with trio.fail_after(30):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        stderr.close()
    log = (tmp_path / "stderr.log").read_text()
    assert "listening on" in log
    assert process.stdout is not None
    await process.stdout.aclose()


async def test_without_a_folder_it_uses_a_private_temporary_one_and_removes_it(
    tmp_path: Path,
) -> None:
    argv = [*ENTRY_POINTS["module"], "--port", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await trio.lowlevel.open_process(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT, env=env
    )
    try:
        announced = json.loads(await first_line(process))
        folder = trio.Path(announced["directory"])
        assert (await folder.stat()).st_mode & 0o777 == 0o700
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await process.wait() == 0
        assert not await folder.exists()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.stdout is not None
    await process.stdout.aclose()
