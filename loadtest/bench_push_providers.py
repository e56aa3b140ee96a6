"""Pushes per second through each push provider (APNs via aioapns, FCM via
push/h2client.py) against the APNs+FCM stand-in.

One process sends: `-n` pushes per run, in batches of `--batch`, `--concurrency` batches in
flight (as the outbox worker would hand them over), after one warm-up batch (connections,
the FCM access token). The stand-in runs as its own process by default (`--standin process`),
so the figures are the clients' cost; `--standin inline` runs it on this process's trio loop.
Each run reports pushes/s, this process's CPU per push and the stand-in process's; the last
line per provider is the median of `--runs` runs. On a machine with few cores the stand-in
(pure-Python HTTP/2 too) competes with the clients: read the CPU figures with the rate. Run::

    .venv/bin/python -m loadtest.bench_push_providers -n 5000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import trio

from loadtest import procstats
from push.apns import ApnsProvider
from push.fcm import FcmProvider
from push.providers import Outcome, Provider, Push, PushKind, Target
from storage.bridge import AsyncioBridge


@dataclass(frozen=True)
class Endpoint:
    """Where the stand-in listens and the credentials it accepts."""

    port: int
    url: str
    pid: int | None  # the stand-in's process, when it runs as one
    ca_file: Path
    apns_key_file: Path
    apns_key_id: str
    apns_team_id: str
    apns_topic: str
    fcm_service_account_file: Path


@asynccontextmanager
async def standin_process(directory: Path) -> AsyncIterator[Endpoint]:
    """`python -m push.standin` on a free port, until the block exits."""
    command = [sys.executable, "-m", "push.standin", "--port", "0", "--dir", str(directory)]
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError("the stand-in exited before announcing itself")
                line += chunk
        announced = json.loads(line)
        yield Endpoint(
            port=urlsplit(announced["url"]).port or 443,
            url=announced["url"],
            pid=process.pid,
            ca_file=Path(announced["ca_file"]),
            apns_key_file=Path(announced["apns_key_file"]),
            apns_key_id=announced["apns_key_id"],
            apns_team_id=announced["apns_team_id"],
            apns_topic=announced["apns_topic"],
            fcm_service_account_file=Path(announced["fcm_service_account_file"]),
        )
    finally:
        process.terminate()
        with trio.move_on_after(10):
            await process.wait()


@asynccontextmanager
async def standin_inline(directory: Path) -> AsyncIterator[Endpoint]:
    """The stand-in on this process's trio loop (it then competes with the clients)."""
    from push.standin import running_standin  # noqa: PLC0415 - only this mode needs it

    async with running_standin(directory) as standin:
        c = standin.credentials
        yield Endpoint(
            port=standin.port,
            url=standin.url,
            pid=None,
            ca_file=Path(c.ca_file),
            apns_key_file=Path(c.apns_key_file),
            apns_key_id=c.apns_key_id,
            apns_team_id=c.apns_team_id,
            apns_topic=c.apns_topic,
            fcm_service_account_file=Path(c.fcm_service_account_file),
        )


def apns_push() -> Push:
    return _push(Target("apns", secrets.token_hex(32)))


def fcm_push() -> Push:
    return _push(Target("fcm", "bench:" + secrets.token_urlsafe(100)))


def _push(target: Target) -> Push:
    conversation = uuid.uuid4()
    return Push(
        push_id=uuid.uuid4(),
        target=target,
        kind=PushKind.ALERT,
        badge=3,
        conversation_id=conversation,
        message_id=uuid.uuid4(),
        collapse_id=str(conversation),
        expires_at=int(time.time()) + 3600,
    )


@dataclass(frozen=True)
class RunResult:
    pushes_per_s: float
    cpu_us_per_push: float  # this process (both threads: trio and the asyncio bridge)
    standin_cpu_us_per_push: float | None
    not_accepted: int


def _cpu_s(pid: int | None) -> float | None:
    if pid is None:
        return None
    sampled = procstats.sample(pid)
    return None if sampled is None else sampled.cpu_s


async def one_run(
    provider: Provider,
    make_push: Callable[[], Push],
    n: int,
    batch: int,
    concurrency: int,
    standin_pid: int | None = None,
) -> RunResult:
    """Send `n` fresh pushes; what it took."""
    pushes = [make_push() for _ in range(n)]
    batches = [pushes[i : i + batch] for i in range(0, n, batch)]
    limiter = trio.CapacityLimiter(concurrency)
    refused = 0

    async def send(chunk: list[Push]) -> None:
        nonlocal refused
        async with limiter:
            results = await provider.send(chunk)
        refused += sum(1 for r in results if r.outcome is not Outcome.ACCEPTED)

    standin_cpu = _cpu_s(standin_pid)
    cpu, wall = time.process_time(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        for chunk in batches:
            nursery.start_soon(send, chunk)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    standin_after = _cpu_s(standin_pid)
    standin_us = None
    if standin_cpu is not None and standin_after is not None:
        standin_us = (standin_after - standin_cpu) / n * 1e6
    return RunResult(n / wall, cpu / n * 1e6, standin_us, refused)


async def bench(args: argparse.Namespace) -> None:
    bridge = AsyncioBridge()
    bridge.start()
    opener = standin_process if args.standin == "process" else standin_inline
    try:
        with tempfile.TemporaryDirectory(prefix="obrol-bench-push-") as folder:
            async with opener(Path(folder)) as endpoint:
                providers: list[tuple[Provider, Callable[[], Push]]] = [
                    (
                        ApnsProvider(
                            bridge,
                            key_file=endpoint.apns_key_file,
                            key_id=endpoint.apns_key_id,
                            team_id=endpoint.apns_team_id,
                            default_topic=endpoint.apns_topic,
                            production_host="127.0.0.1",
                            port=endpoint.port,
                            ca_file=endpoint.ca_file,
                        ),
                        apns_push,
                    ),
                    (
                        FcmProvider(
                            service_account_file=endpoint.fcm_service_account_file,
                            base_url=endpoint.url,
                            ca_file=endpoint.ca_file,
                        ),
                        fcm_push,
                    ),
                ]
                print(
                    f"n={args.n} batch={args.batch} concurrency={args.concurrency} "
                    f"runs={args.runs} standin={args.standin}"
                )
                for provider, make_push in providers:
                    try:
                        await one_run(provider, make_push, args.batch, args.batch, 1)  # warm-up
                        rates = []
                        for run in range(1, args.runs + 1):
                            result = await one_run(
                                provider,
                                make_push,
                                args.n,
                                args.batch,
                                args.concurrency,
                                endpoint.pid,
                            )
                            rates.append(result.pushes_per_s)
                            standin = (
                                ""
                                if result.standin_cpu_us_per_push is None
                                else f" (stand-in {result.standin_cpu_us_per_push:.0f})"
                            )
                            print(
                                f"{provider.name} run {run}: {result.pushes_per_s:8.0f} "
                                f"pushes/s, {result.cpu_us_per_push:6.0f} CPU-µs/push"
                                f"{standin}, {result.not_accepted} not accepted"
                            )
                        print(f"{provider.name} median: {statistics.median(rates):8.0f} pushes/s")
                    finally:
                        await provider.aclose()
    finally:
        bridge.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_push_providers")
    parser.add_argument("-n", type=int, default=5000, help="pushes per run")
    parser.add_argument("--batch", type=int, default=500, help="pushes per provider.send call")
    parser.add_argument("--concurrency", type=int, default=4, help="batches in flight")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--standin", choices=("process", "inline"), default="process")
    trio.run(bench, parser.parse_args(argv))


if __name__ == "__main__":
    main()
