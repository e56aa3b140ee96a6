"""The catch-up path: server CPU per message a device catches up from a backlog.

Starts its own server on the data folder of an earlier load test (its enrolled devices are
in `loadtest-cache.json`, and the messages of its runs are the backlog), then, `--devices`
at a time, connects devices that `sync` from 0 and receive everything they may see until
`synced`, `--rounds` times over. Reads the server's and PostgreSQL's CPU time from /proc
around each round. Run::

    obrol loadtest --devices 500 --users 500 --groups 500:1 --rate 100 --duration 30 \\
        --data-dir /tmp/obrol-g500          # once or more: the backlog
    .venv/bin/python -m loadtest.bench_catchup --data-dir /tmp/obrol-g500

To measure another tree's server with this script, run it by path from that tree's folder
(the server is started as `python -m server.cli` in the current folder).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import trio

from loadtest import procstats
from loadtest.bench_handshake import _identities
from loadtest.client import DeviceIdentity, connect
from loadtest.localserver import local_server
from protocol import Msg, Synced


async def catch_up(url: str, identity: DeviceIdentity) -> int:
    """Messages a fresh catch-up of the device delivers."""
    count = 0
    async with await connect(url, identity) as client:
        await client.sync(0)
        while True:
            for frame in await client.receive():
                if isinstance(frame, Msg):
                    count += 1
                elif isinstance(frame, Synced):
                    return count


async def measure_round(
    url: str, pid: int, postmaster: int | None, identities: list[DeviceIdentity]
) -> dict[str, float]:
    counts: list[int] = []

    async def one(identity: DeviceIdentity) -> None:
        counts.append(await catch_up(url, identity))

    before, db_before = procstats.sample(pid), procstats.tree_cpu_s(postmaster or 0)
    began = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for identity in identities:
            nursery.start_soon(one, identity)
    took = time.perf_counter() - began
    after, db_after = procstats.sample(pid), procstats.tree_cpu_s(postmaster or 0)
    assert before is not None and after is not None, "the server went away"
    messages = sum(counts)
    server_s = after.cpu_s - before.cpu_s
    db_s = (db_after or 0.0) - (db_before or 0.0)
    return {
        "messages": messages,
        "per_server_cpu_s": messages / server_s,
        "per_db_cpu_s": messages / db_s if db_s > 0 else 0.0,
        "per_s": messages / took,
    }


async def run(args: argparse.Namespace) -> None:
    log = args.data_dir / "bench-catchup-server.log"
    async with local_server(args.data_dir, log) as srv:
        identities, _ = _identities(args.data_dir, srv.server_key, args.devices)
        postmaster = procstats.postmaster_pid(args.data_dir)
        await catch_up(srv.gateway_url, identities[0])  # warm: caches, plans
        rounds = [
            await measure_round(srv.gateway_url, srv.pid, postmaster, identities)
            for _ in range(args.rounds)
        ]
    for r in rounds:
        print(
            f"{int(r['messages']):8d} messages  {r['per_server_cpu_s']:9.0f} per server CPU-s  "
            f"{r['per_db_cpu_s']:9.0f} per database CPU-s  {r['per_s']:9.0f} per s"
        )
    median = statistics.median(r["per_server_cpu_s"] for r in rounds)
    print(f"median: {median:.0f} caught-up messages per server CPU-s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--devices", type=int, default=10, help="devices catching up at once")
    parser.add_argument("--rounds", type=int, default=3)
    trio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
