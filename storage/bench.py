"""Measure the storage bridge: one trio -> asyncio -> PostgreSQL hop per operation.

    python -m storage.bench [--database-url URL] [--ops N] [--concurrency C]

Without a URL it starts a throwaway embedded cluster. Prints the median, p99 and maximum of a
`SELECT 1` transaction sequentially, with C concurrent callers, and with C callers while a
trio task keeps the CPU busy (the case the bridge's GIL hand-off exists for), and the
process's CPU time per operation (both threads; the busy case includes the busy task).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from storage.bridge import AsyncioBridge
from storage.database import Database
from storage.embedded import EmbeddedPostgres


async def _select_one(conn: Any) -> None:
    await conn.fetchval("SELECT 1")


def _summary(name: str, samples: list[float], wall_s: float, cpu_s: float) -> str:
    samples.sort()
    p50 = statistics.median(samples) * 1e6
    p99 = samples[int(len(samples) * 0.99) - 1] * 1e6
    worst = samples[-1] * 1e6
    rate = len(samples) / wall_s
    return (
        f"{name:<28} ops={len(samples):>6}  p50={p50:7.0f} us  p99={p99:8.0f} us  "
        f"max={worst:8.0f} us  {rate:8.0f} ops/s  {cpu_s / len(samples) * 1e6:5.0f} CPU-us/op"
    )


async def _measure(db: Database, ops: int, concurrency: int) -> tuple[list[float], float, float]:
    """(each operation's latency, wall seconds, this process's CPU seconds: both threads)"""
    samples: list[float] = []

    async def worker(count: int) -> None:
        for _ in range(count):
            start = time.perf_counter()
            await db.transaction(_select_one)
            samples.append(time.perf_counter() - start)

    began, cpu = time.perf_counter(), time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker, ops // concurrency)
    return samples, time.perf_counter() - began, time.process_time() - cpu


async def _busy(stop: trio.Event) -> None:
    """A trio task that burns CPU in 1 ms slices, like a loaded gateway would."""
    while not stop.is_set():
        end = time.perf_counter() + 0.001
        while time.perf_counter() < end:
            pass
        await trio.lowlevel.checkpoint()


async def run(url: str, ops: int, concurrency: int) -> None:
    bridge = AsyncioBridge()
    bridge.start()
    db = await Database.connect(bridge, url, pool_size=concurrency)
    try:
        await _measure(db, 200, 1)  # warm-up
        print(_summary("sequential", *await _measure(db, ops, 1)))
        print(_summary(f"{concurrency} concurrent", *await _measure(db, ops, concurrency)))
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_busy, stop)
            measured = await _measure(db, ops, concurrency)
            stop.set()
        print(_summary(f"{concurrency} concurrent + busy trio", *measured))
    finally:
        await db.close()
        bridge.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url")
    parser.add_argument("--ops", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    print(
        f"python {sys.version.split()[0]}, "
        f"switch interval {sys.getswitchinterval()} s (before start)"
    )
    if args.database_url:
        trio.run(run, args.database_url, args.ops, args.concurrency)
        return
    folder = Path(tempfile.mkdtemp(prefix="obrol-bench-"))
    folder.chmod(0o711)
    pg = EmbeddedPostgres(folder / "pg", durable=False)
    try:
        trio.run(run, pg.start(), args.ops, args.concurrency)
    finally:
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
