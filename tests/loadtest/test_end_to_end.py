"""Short real runs: own server or a running one, real devices, exact loss check."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from loadtest.cli import main
from tests.harness import Harness


def read_report(folder: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((folder / "report.json").read_text())
    return report


def run_passed(
    folder: Path, capsys: pytest.CaptureFixture[str], *options: str
) -> tuple[dict[str, Any], str]:
    """`obrol loadtest *options` in this process, reporting into `folder`; asserts it exited
    0 and returns its report and what it printed."""
    status = main([*options, "--report", str(folder), "--quiet"])
    out = capsys.readouterr()
    assert status == 0, out.err
    return read_report(folder), out.out


def assert_everything_delivered_once(report: dict[str, Any], devices: int) -> None:
    assert report["connected"] == devices
    assert report["messages_sent"] > 0
    assert report["messages_acked"] == report["messages_sent"]
    assert report["deliveries_expected"] > 0
    assert report["deliveries_received"] == report["deliveries_expected"]
    assert report["lost"] == 0
    assert report["duplicates"] == 0
    assert report["unexpected_deliveries"] == 0
    assert report["loss_check"] == "passed"


def test_a_short_run_on_its_own_server_delivers_every_message_exactly_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "report"
    report, out = run_passed(
        folder, capsys,
        "--devices", "50",
        "--duration", "5",
        "--rate", "40",
        "--mix", "text=6,file=2,location=2",
        "--storm", "20",
    )  # fmt: skip
    assert_everything_delivered_once(report, devices=50)
    # Every device dropped by the storm came back and caught up; nothing was lost on the way.
    assert report["storm"]["dropped"] == report["storm"]["reconnected"] == 10
    assert set(report["latency_ms"]) >= {"p50", "p90", "p99", "p999", "max"}
    assert report["server"]["cpu_s"] > 0 and report["server"]["rss_mb"] > 0
    # The server's own view, from its /metrics: every handshake of the ramp, and deliveries.
    server_side = report["server_latency"]
    assert server_side["handshake_ms"]["count"] >= 50
    assert server_side["delivery_ms"]["count"] > 0 and server_side["delivery_ms"]["p99"] > 0
    assert "server delivery p50/p90/p99" in out
    assert report["errors"] == {}
    assert (folder / "report.png").stat().st_size > 0
    assert "report.png" in (folder / "index.html").read_text()
    assert "loss check" in out


def test_live_location_updates_flow_beside_stored_messages_and_stay_out_of_the_loss_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `live` picks start a session per device and conversation, then send `live_pos`
    # updates; the server fans them out as ephemeral `msg` frames (no cid, no pos). The
    # storm drops devices mid-run: their sessions outlive the reconnect on the server.
    report, out = run_passed(
        tmp_path / "report", capsys,
        "--devices", "40",
        "--duration", "5",
        "--rate", "40",
        "--mix", "text=4,location=1,live=5",
        "--storm", "25",
    )  # fmt: skip
    # Stored messages: every one delivered exactly once, the live updates in no way counted.
    assert_everything_delivered_once(report, devices=40)
    assert report["stale_messages"] == 0 and report["errors"] == {}
    live = report["live"]
    assert live["starts"] > 0 and live["started"] == live["starts"] - live["starts_unanswered"]
    assert live["starts_refused"] == 0 and live["start_refusals"] == {}
    assert live["updates_sent"] > 0 and live["updates_refused"] == 0
    # Fanned out to the conversations' devices online then: never more than all of them.
    assert 0 < live["updates_received"] <= live["updates_audience"]
    # The end of the run stopped every session, and the server said so (`live_end`).
    assert live["stops"] == live["stops_confirmed"] == live["started"]
    assert live["stop_refusals"] == {} and live["ends_received"] >= live["stops"]
    assert "live updates" in out


def test_a_short_run_over_tls_on_its_own_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--tls`: the server of its own serves https:// and wss:// on a throwaway certificate;
    # provisioning, every device's connection and the loss check go through it.
    folder = tmp_path / "report"
    report, _ = run_passed(folder, capsys, "--tls", "--devices", "30", "--duration", "3",
                           "--rate", "20")  # fmt: skip
    assert_everything_delivered_once(report, devices=30)
    log = (folder / "server.log").read_text()
    assert "gateway:    wss://" in log and "API:        https://" in log


async def run_tester(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "loadtest", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def test_against_a_running_server_provisioning_is_cached_and_reused(
    server: Harness, tmp_path: Path
) -> None:
    assert server.running.api_url is not None
    cache = tmp_path / "cache.json"
    common = [
        "--url", server.running.api_url,
        "--gateway-url", server.gateway_url,
        "--devices", "20",
        "--duration", "2",
        "--rate", "20",
        "--cache", str(cache),
        "--quiet",
    ]  # fmt: skip
    first = await run_tester(*common, "--report", str(tmp_path / "first"))
    assert first.returncode == 0, first.stderr.decode()
    report = read_report(tmp_path / "first")
    assert_everything_delivered_once(report, devices=20)
    assert report["provisioning"]["created"] == {"users": 10, "devices": 20, "conversations": 3}
    assert report["server"] is None  # not ours: its process is not measured ...
    assert report["server_latency"]["delivery_ms"]["count"] > 0  # ... but it says its own

    second = await run_tester(*common, "--report", str(tmp_path / "second"))
    assert second.returncode == 0, second.stderr.decode()
    report = read_report(tmp_path / "second")
    assert_everything_delivered_once(report, devices=20)
    assert report["provisioning"]["created"] == {"users": 0, "devices": 0, "conversations": 0}
    assert report["stale_messages"] == 0  # started after the first run's traffic


async def test_a_server_that_refuses_the_keys_is_a_clear_error(
    server: Harness, tmp_path: Path
) -> None:
    assert server.running.api_url is not None
    common = [
        "--url", server.running.api_url,
        "--gateway-url", server.gateway_url,
        "--devices", "6",
        "--duration", "1",
        "--cache", str(tmp_path / "cache.json"),
        "--quiet",
    ]  # fmt: skip
    assert (await run_tester(*common, "--report", str(tmp_path / "ok"))).returncode == 0
    # The cache now names devices this server never enrolled.
    data = json.loads((tmp_path / "cache.json").read_text())
    for entry in data["servers"].values():
        for user in entry["users"]:
            for device in user["devices"]:
                device["id"] = str(uuid.uuid4())
    (tmp_path / "cache.json").write_text(json.dumps(data))
    refused = await run_tester(*common, "--report", str(tmp_path / "refused"))
    assert refused.returncode == 3
    message = refused.stderr.decode()
    assert "no device could connect" in message and "unknown_device" in message
    assert "Traceback" not in message


def test_bad_options_and_an_unreachable_server_say_what_is_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--devices", "0"]) == 2
    assert "--devices must be" in capsys.readouterr().err
    assert main(["--groups", "2:x"]) == 2
    assert "--groups" in capsys.readouterr().err
    assert main(["--no-such-flag"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err
    status = main(["--url", "http://127.0.0.1:9", "--report", str(tmp_path), "--quiet"])
    assert status == 3
    err = capsys.readouterr().err
    assert "cannot reach the obrol API at http://127.0.0.1:9" in err
    assert "Traceback" not in err


def test_the_hand_run_fuzzer_runs_against_a_server_of_its_own() -> None:
    # `python -m loadtest.fuzz_cli`, shortened: provisions over REST, fuzzes, checks normal
    # traffic after each round and that the server process survived with a clean log.
    from loadtest.fuzz_cli import main

    assert main(["--connections", "40", "--round", "20", "--concurrency", "4", "--seed", "5"]) == 0
