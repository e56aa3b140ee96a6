"""`--push-share`: offline phones, a real stand-in, the push loss check, end to end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from push.standin import StandIn, running_standin
from tests.harness import Harness, start_harness
from tests.loadtest.test_end_to_end import read_report, run_passed, run_tester
from tests.push.bridge_helpers import push_settings


def assert_every_phone_pushed_its_latest(push: dict[str, Any], phones: int) -> None:
    assert push["phones"] == phones
    assert push["pushes_expected"] > 0
    assert push["lost"] == 0 and push["lost_sample"] == []
    assert push["unexpected"] == 0
    assert push["to_connected_devices"] == 0
    assert push["unknown_tokens"] == 0
    assert push["refused"] == {}
    # Bursts collapse: at least one alert per phone that had messages, at most one per pair.
    assert push["pushes_expected"] <= push["alerts"] <= push["messages_to_phones"]
    assert push["badge_updates"] == 0  # nobody reads, mutes or sets quiet hours
    assert push["loss_check"] == "passed"


def test_offline_phones_each_get_a_push_for_their_latest_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "report"
    report, out = run_passed(
        folder, capsys,
        "--devices", "60",
        "--duration", "5",
        "--rate", "30",
        "--push-share", "0.3",
        "--push-grace", "0.5",
    )  # fmt: skip
    assert report["loss_check"] == report["message_loss_check"] == "passed"
    # 18 phones (30%) never connect; the other 42 devices get every message exactly once.
    assert report["connected"] == 42
    assert report["lost"] == 0 and report["deliveries_received"] == report["deliveries_expected"]
    push = report["push"]
    assert_every_phone_pushed_its_latest(push, phones=18)
    assert push["phones_by_provider"] == {"apns": 9, "fcm": 9}
    assert push["pushes_received"] == push["alerts"]
    assert push["server"]["this_process"]["counts"]["sent"] == push["pushes_received"]
    assert push["moot"] == 0  # phones never acknowledge, connected devices have no token
    assert push["duplicates"] == 0
    assert set(push["latency_ms"]) >= {"p50", "p99", "p999", "max"}
    assert push["latency_ms"]["max"] is not None
    assert push["standin"]["own"] is True
    assert "push check" in out and "push check" in (folder / "index.html").read_text()
    assert (folder / "standin.log").stat().st_size > 0


@pytest.fixture
async def standin(tmp_path: Path) -> AsyncIterator[StandIn]:
    async with running_standin(tmp_path / "standin") as running:
        yield running


async def test_a_running_server_and_its_stand_in_given_by_url(
    nursery: trio.Nursery, database_url: str, tmp_path: Path, standin: StandIn
) -> None:
    async with start_harness(
        nursery, database_url, tmp_path / "data", **push_settings(standin)
    ) as server:
        await _run_against(server, standin, tmp_path)


async def _run_against(server: Harness, standin: StandIn, tmp_path: Path) -> None:
    assert server.running.api_url is not None
    common = [
        "--url", server.running.api_url,
        "--gateway-url", server.gateway_url,
        "--devices", "20",
        "--duration", "2",
        "--rate", "20",
        "--push-share", "0.25",
        "--push-grace", str(server.settings.push_grace_s),
        "--cache", str(tmp_path / "cache.json"),
        "--quiet",
    ]  # fmt: skip
    refused = await run_tester(*common, "--report", str(tmp_path / "refused"))
    assert refused.returncode == 2
    assert "--standin-url" in refused.stderr.decode()
    given = ["--standin-url", standin.url, "--standin-ca", str(standin.credentials.ca_file)]
    for name in ("first", "second"):  # the second reuses the cache, and the stand-in
        done = await run_tester(*common, *given, "--report", str(tmp_path / name))
        assert done.returncode == 0, done.stderr.decode()
        report = read_report(tmp_path / name)
        assert report["loss_check"] == "passed"
        assert_every_phone_pushed_its_latest(report["push"], phones=5)
        assert report["push"]["standin"]["own"] is False
    # A run without phones removes the registrations the earlier runs made: no push at all.
    before = len(standin.received)
    plain = [c for c in common if c not in ("--push-share", "0.25")]
    done = await run_tester(*plain, "--report", str(tmp_path / "plain"))
    assert done.returncode == 0, done.stderr.decode()
    assert read_report(tmp_path / "plain")["push"] is None
    await trio.sleep(server.settings.push_grace_s * 3 + 1.5)  # anything still due went out
    assert [r for r in standin.received[before:] if r.service in ("apns", "fcm")] == []
