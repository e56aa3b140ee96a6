"""The load tester's pure parts: options, layout, message tags, exact loss accounting."""

from __future__ import annotations

import io
import random
from collections import Counter
from pathlib import Path

import pytest

from loadtest.cli import build_parser
from loadtest.config import ConfigError, GroupClass, Mix, RunConfig, parse_groups, parse_mix
from loadtest.ledger import (
    ACKED,
    REFUSED,
    SCHEDULED,
    WRITTEN,
    Received,
    SendLedger,
    bitset,
    check_device,
)
from loadtest.progress import Display, Tick
from loadtest.schedule import arrivals, kind_picker, make_cid, message_key, parse_cid
from loadtest.server_metrics import between, parse
from loadtest.topology import build_topology


def config(**changes: object) -> RunConfig:
    base: dict[str, object] = {
        "devices": 100,
        "users": 40,
        "groups": (GroupClass(2, 10), GroupClass(10, 3), GroupClass(40, 1)),
        "rate": 10.0,
        "arrival": "poisson",
        "duration_s": 5.0,
        "ramp_rate": 100.0,
        "mix": Mix(1, 0, 0),
        "text_chars": 10,
        "storm_percent": 0.0,
        "storm_at_s": None,
        "soak_s": 0.0,
        "drain_timeout_s": 5.0,
        "workers": 2,
        "report_dir": Path("report"),
    }
    base.update(changes)
    return RunConfig(**base)  # type: ignore[arg-type]


def test_groups_and_mix_parse_or_say_what_is_wrong() -> None:
    assert parse_groups("2:5, 10:2", users=20) == (GroupClass(2, 5), GroupClass(10, 2))
    assert [g.size for g in parse_groups("auto", users=1000)] == [2, 10, 100, 1000]
    assert [g.size for g in parse_groups("auto", users=50)] == [2, 10]
    for bad in ("2:x", "1:3", "30:1", "2:0"):
        with pytest.raises(ConfigError, match="--groups"):
            parse_groups(bad, users=20)
    assert parse_mix("text=8,location=2") == Mix(8, 0, 2)
    for bad in ("text", "video=1", "text=-1", "text=0"):
        with pytest.raises(ConfigError, match="--mix"):
            parse_mix(bad)


def test_the_mix_takes_live_location_updates_as_a_kind_of_their_own() -> None:
    assert parse_mix("text=85,file=5,location=5,live=5") == Mix(85, 5, 5, 5)
    assert parse_mix(" live=3 ") == Mix(0, 0, 0, 3)
    assert parse_mix("text=9,location=1").live == 0  # a mix without it sends none
    # The default of every standard run (BENCHMARKS.md) has no live updates.
    assert parse_mix(build_parser().get_default("mix")) == Mix(90, 5, 5, 0)
    for bad, says in (("live=-1", "must not be negative"), ("live", "KIND=WEIGHT"),
                      ("live=x", "whole number"), ("live=0", "positive weight")):  # fmt: skip
        with pytest.raises(ConfigError, match=says):
            parse_mix(bad)
    rng = random.Random(1)
    assert {kind_picker(Mix(0, 0, 0, 2), rng).draw() for _ in range(50)} == {"live"}
    drawn = Counter(kind_picker(Mix(1, 0, 0, 1), rng).draw() for _ in range(2000))
    assert set(drawn) == {"text", "live"} and 800 < drawn["live"] < 1200


def test_topology_gives_every_conversation_distinct_members() -> None:
    topology = build_topology(config())
    assert [len(m) for m in topology.conversations] == [2] * 10 + [10] * 3 + [40]
    for members in topology.conversations:
        assert len(set(members)) == len(members)
        assert all(0 <= u < 40 for u in members)
    assert sorted(d for u in range(40) for d in topology.devices_of(u)) == list(range(100))
    assert build_topology(config()) == topology  # deterministic for a seed


def test_cid_carries_run_key_and_intended_time() -> None:
    cid = make_cid("ab12", 3, 4567, 123456789)
    tag = parse_cid(cid)
    assert tag is not None
    assert (tag.run, tag.key, tag.intended_us) == ("ab12", message_key(3, 4567), 123456789)
    for other in (None, "hello", "a.b.c.d", "x.1.2", "ab12.3.4.5.x", "a.1.2.3.4.5"):
        assert parse_cid(other) is None
    # Devices spread over nodes: the sender's node rides along.
    spread = parse_cid(make_cid("ab12", 3, 4567, 123456789, node=1))
    assert spread is not None and spread.node == 1 and spread.key == tag.key
    assert tag.node is None


def test_constant_arrivals_are_evenly_spaced_and_bounded() -> None:
    times = list(arrivals(4.0, 10.0, 11.0, "constant", seed=1))
    assert times == [10.0, 10.25, 10.5, 10.75]
    poisson = list(arrivals(100.0, 0.0, 10.0, "poisson", seed=1))
    assert all(0.0 <= t < 10.0 for t in poisson)
    assert poisson == sorted(poisson)


def test_loss_check_counts_missing_and_unexpected_exactly() -> None:
    received = Received()
    for n in (0, 1, 5, 900):
        assert received.add(message_key(0, n))
    assert not received.add(message_key(0, 5))  # a repeat
    received.add(message_key(1, 2))
    expected = {0: bitset([0, 1, 2, 5]), 1: bitset([2, 3])}
    result = check_device(expected, received.as_ints(), sample=10, unsettled={})
    assert (result.expected, result.received, result.lost, result.unexpected) == (6, 4, 2, 1)
    assert sorted(result.lost_sample) == sorted([message_key(0, 2), message_key(1, 3)])
    assert result.unexpected_sample == [message_key(0, 900)]


def test_an_unsettled_send_received_is_not_unexpected() -> None:
    received = Received()
    for n in (0, 7):
        received.add(message_key(0, n))
    # 7 was written but not acknowledged when the run ended: stored or not, nobody knows.
    result = check_device({0: bitset([0])}, received.as_ints(), sample=10, unsettled={0: 1 << 7})
    assert (result.expected, result.received, result.lost, result.unexpected) == (1, 1, 0, 0)


def test_send_ledger_expects_acked_sends_and_leaves_unacked_ones_unsettled() -> None:
    ledger = SendLedger()
    numbers = [ledger.schedule(conversation) for conversation in (7, 7, 8, 8)]
    ledger.written(numbers[0])
    assert ledger.acked(numbers[0]) and not ledger.acked(numbers[0])
    ledger.written(numbers[1])
    ledger.refused(numbers[2], "not_member")
    assert ledger.state[numbers[0]] == ACKED and ledger.state[numbers[2]] == REFUSED
    assert ledger.by_conversation(ACKED) == {7: [0]}
    assert ledger.by_conversation(SCHEDULED, WRITTEN) == {7: [1], 8: [3]}
    assert ledger.refusals == {"not_member": 1}


def _tick(t: float, sent: int, delivered: int, p99: float | None) -> Tick:
    return Tick(t, "send", 10, sent, delivered, 0.0, 0.0, None, p99, p99, 0, 0.0, None, 0.0)


def test_a_plain_progress_line_covers_the_seconds_since_the_previous_one() -> None:
    out = io.StringIO()  # not a terminal: a line every 5 s
    display = Display(enabled=True, stream=out, devices=10)
    display.status(_tick(10.0, sent=100, delivered=1000, p99=5.0))
    display.status(_tick(11.0, sent=150, delivered=1500, p99=80.0))
    display._last_plain = 0.0  # as if 5 s had passed
    display.status(_tick(15.0, sent=300, delivered=3000, p99=None))  # a quiet last second
    first, second = out.getvalue().splitlines()
    assert "sent 100 " in first
    assert "sent 300 (40/s)" in second and "delivered 3,000 (400/s)" in second
    assert "p99 80.0 ms" in second


EXPOSITION = """# HELP obrol_delivery_latency_seconds x
# TYPE obrol_delivery_latency_seconds histogram
obrol_delivery_latency_seconds_bucket{{le="0.001"}} {a}
obrol_delivery_latency_seconds_bucket{{le="0.01"}} {b}
obrol_delivery_latency_seconds_bucket{{le="0.1"}} {c}
obrol_delivery_latency_seconds_bucket{{le="+Inf"}} {c}
obrol_delivery_latency_seconds_count {c}
obrol_delivery_latency_seconds_sum {s}
"""


def test_server_side_percentiles_come_from_the_difference_of_two_scrapes() -> None:
    before = parse(EXPOSITION.format(a=10, b=10, c=10, s=0.005))
    # Since then: 100 observations, 50 in (1 ms, 10 ms], 50 in (10 ms, 100 ms].
    after = parse(EXPOSITION.format(a=10, b=60, c=110, s=2.755))
    delivery = between(before, after)["delivery_ms"]  # type: ignore[index]
    assert delivery["count"] == 100
    assert delivery["p50"] == pytest.approx(10.0)  # the top of the first bucket used
    assert delivery["p90"] == pytest.approx(10 + 90 * 0.8)  # interpolated in the second
    assert delivery["mean"] == pytest.approx(27.5)
    assert between(before, None) is None
    nothing = between(after, after)["delivery_ms"]  # type: ignore[index]
    assert nothing["count"] == 0 and nothing["p99"] is None
