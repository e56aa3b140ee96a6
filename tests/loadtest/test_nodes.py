"""The load tester against several gateway processes: its own server with workers, and two
nodes sharing one database, devices spread over them; the exact loss check spans them all."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.cli import main
from tests.loadtest.test_end_to_end import (
    assert_everything_delivered_once,
    read_report,
    run_tester,
)
from tests.server.test_bus import two_nodes


def test_a_run_on_its_own_server_with_two_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "report"
    status = main(
        [
            "--devices", "40",
            "--duration", "3",
            "--rate", "30",
            "--server-workers", "2",
            "--report", str(folder),
            "--quiet",
        ]
    )  # fmt: skip
    out = capsys.readouterr()
    assert status == 0, out.err
    report = read_report(folder)
    assert_everything_delivered_once(report, devices=40)
    # The server's CPU is the supervisor's and both workers'; its metrics are theirs too.
    assert report["server"]["cpu_s"] > 0
    assert report["server_latency"]["handshake_ms"]["count"] >= 40


async def test_devices_spread_over_two_nodes_lose_nothing(
    tmp_path: Path, database_url: str
) -> None:
    async with two_nodes(tmp_path, database_url) as (a, b, _):
        assert a.running.api_url is not None
        folder = tmp_path / "report"
        result = await run_tester(
            "--url", a.running.api_url,
            "--gateway-url", f"{a.gateway_url},{b.gateway_url}",
            "--devices", "30",
            "--duration", "3",
            "--rate", "30",
            "--cache", str(tmp_path / "cache.json"),
            "--report", str(folder),
            "--quiet",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr.decode()
        assert_everything_delivered_once(read_report(folder), devices=30)
