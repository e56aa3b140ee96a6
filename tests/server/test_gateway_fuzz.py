"""The gateway under a post-handshake fuzzer, over real sockets (loadtest/fuzz.py).

A seeded mutation loop with a budget of seconds (OBROL_FUZZ_SECONDS, default 12; more when
run by hand, see `python -m loadtest.fuzz --help`): every answer must be an `err` frame or
a documented close, the server (the in-process harness: any exception reaching its nursery
fails this test) keeps running, and a normal client still sends and receives afterwards.
"""

from __future__ import annotations

import os

import trio

from loadtest.fuzz import FuzzTarget, run_fuzz
from loadtest.fuzz_frames import FrameFuzzer
from protocol import Send, Sent, TextBody
from tests.harness import Harness
from tests.server.test_gateway_refusals import bystander_still_served, frames_until, setup

FUZZ_SECONDS = float(os.environ.get("OBROL_FUZZ_SECONDS", "12"))
FUZZ_SEED = int(os.environ.get("OBROL_FUZZ_SEED", "14"))


async def test_fuzzed_frames_get_errors_or_documented_closes(server: Harness) -> None:
    ann, _, conv, bystander = await setup(server)
    async with await server.connect(ann) as client:
        await client.send(Send(cid="real", conv=conv.bytes, body=TextBody(text="a real one")))
        sent = [f for f in await frames_until(client, Sent) if isinstance(f, Sent)]
    target = FuzzTarget(server.gateway_url, ann.identity(server.server_key), conv.bytes)

    report = await run_fuzz(
        target,
        seed=FUZZ_SEED,
        seconds=FUZZ_SECONDS,
        concurrency=4,
        message_ids=[sent[0].id],
    )

    assert report.violations == [], report.summary()
    assert report.connections >= 20, report.summary()  # it really ran
    assert report.outcomes["ended by the client"] > 0, report.summary()  # some stayed healthy
    assert sum(n for o, n in report.outcomes.items() if o.startswith("closed 4")) > 0
    await bystander_still_served(server, ann, conv, bystander)


def test_the_fuzzer_is_reproducible_from_its_seed() -> None:
    import random

    def draw(seed: str) -> list[object]:
        return list(FrameFuzzer(random.Random(seed), b"\x01" * 16, [b"\x02" * 16]).steps())

    assert draw("14:3") == draw("14:3")
    assert draw("14:3") != draw("14:4")


async def test_a_sync_racing_refusals_in_many_connections_at_once(server: Harness) -> None:
    # The race of issue 14 item 1, many connections of one device at a time.
    ann, _, conv, bystander = await setup(server)
    target = FuzzTarget(server.gateway_url, ann.identity(server.server_key), conv.bytes)
    with trio.fail_after(120):
        report = await run_fuzz(target, seed=FUZZ_SEED + 1, connections=60, concurrency=12)
    assert report.violations == [], report.summary()
    assert report.connections == 60
    await bystander_still_served(server, ann, conv, bystander)
