"""The push side of a run: reading the stand-in's records, waiting for the pushes still
due, the server's push counters, and the report's `push` section.

The stand-in's recording API (`GET /_standin/received?since=N`) is read once a second
while the run goes on (live progress) and then until every phone that should have been
woken has an alert for its latest message, or until `--drain-timeout` seconds pass without
a new record. Records from before the run (a stand-in given by `--standin-url` that served
earlier runs) are skipped. On each read the CPU of the stand-in, the server and its
database (when they are ours) is sampled, to say who limited the push rate.
"""

from __future__ import annotations

import logging
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from loadtest.config import RunConfig
from loadtest.phones import PROVIDERS, push_token
from loadtest.procstats import machine_busy_s, postmaster_pid, sample, tree_cpu_s
from loadtest.push_check import (
    SentMessage,
    check_pushes,
    messages_per_phone,
    per_second,
    read_push,
    verdict,
)
from loadtest.standin_proc import Standin
from loadtest.topology import Topology

logger = logging.getLogger(__name__)

POLL_S = 0.5
REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class CpuSample:
    at: float  # epoch seconds, the stand-in's clock
    standin_cpu_s: float | None
    server_cpu_s: float | None
    db_cpu_s: float | None
    machine_busy_s: float


class PushWatch:
    """What the stand-in recorded for this run, read as it comes."""

    def __init__(self, standin: Standin, server_pid: int | None, data_dir: Path | None) -> None:
        self.standin = standin
        self.server_pid = server_pid
        self.data_dir = data_dir
        self.records: list[dict[str, Any]] = []
        self.accepted = 0  # accepted APNs/FCM pushes among the records
        self.alerts_seen: set[tuple[str, str]] = set()  # (token, m) of every accepted alert
        self.samples: list[CpuSample] = []
        self.error: str | None = None
        self.started_at = time.time()
        self._skip = 0  # records from before the run
        self._lock = trio.Lock()  # one read at a time: each continues where the last ended
        self._client = httpx.AsyncClient(
            base_url=standin.url,
            http2=True,
            verify=ssl.create_default_context(cafile=str(standin.ca_file)),
            timeout=REQUEST_TIMEOUT_S,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def start(self) -> None:
        """Skip whatever the stand-in recorded before now."""
        self._skip = len(await self._read(0))
        self.started_at = time.time()

    async def _read(self, since: int) -> list[dict[str, Any]]:
        response = await self._client.get("/_standin/received", params={"since": str(since)})
        response.raise_for_status()
        records: list[dict[str, Any]] = response.json()
        return records

    async def poll(self) -> int:
        """Read the new records (and sample CPU); returns how many came. A stand-in that
        cannot be read is remembered in `error` (the check then says incomplete)."""
        async with self._lock:
            try:
                new = await self._read(self._skip + len(self.records))
            except (httpx.HTTPError, ValueError) as exc:
                self.error = f"the stand-in's records could not be read: {exc!r}"
                logger.warning("%s", self.error)
                return 0
            self.records += new
        for record in new:
            push = read_push(record)
            if push is not None:
                self.accepted += 1
                if push.alert and push.message_id is not None:
                    self.alerts_seen.add((push.token, push.message_id))
        self._sample()
        return len(new)

    def _sample(self) -> None:
        standin = None if self.standin.pid is None else sample(self.standin.pid)
        server = None if self.server_pid is None else sample(self.server_pid)
        postmaster = None if self.data_dir is None else postmaster_pid(self.data_dir)
        self.samples.append(
            CpuSample(
                at=time.time(),
                standin_cpu_s=None if standin is None else standin.cpu_s,
                server_cpu_s=None if server is None else server.cpu_s,
                db_cpu_s=None if postmaster is None else tree_cpu_s(postmaster),
                machine_busy_s=machine_busy_s(),
            )
        )

    async def follow(self) -> None:
        """Poll once a second until cancelled (for the live figures)."""
        while True:
            await self.poll()
            await trio.sleep(1.0)

    async def wait_for(
        self, latest: Mapping[str, str], idle_timeout_s: float, stop: trio.Event
    ) -> float:
        """Until every token in `latest` has an alert naming its message, `idle_timeout_s`
        passes without a new record, or `stop` is set; returns the seconds waited."""
        started = time.monotonic()
        last_news = started
        while not stop.is_set():
            if await self.poll():
                last_news = time.monotonic()
            if all((token, m) in self.alerts_seen for token, m in latest.items()):
                break
            if time.monotonic() - last_news > idle_timeout_s or self.error is not None:
                break
            with trio.move_on_after(POLL_S):
                await stop.wait()
        return time.monotonic() - started

    def cpu_while_pushing(self, first_at: float | None, last_at: float | None) -> dict[str, Any]:
        """Cores used by the stand-in, the server, its database and the whole machine from
        the first to the last accepted push (samples at least 2 s apart, else None)."""
        inside = [s for s in self.samples if first_at is not None and last_at is not None
                  and first_at <= s.at <= last_at + 1.0]  # fmt: skip
        if len(inside) < 2 or inside[-1].at - inside[0].at < 2.0:
            return {"standin": None, "server": None, "db": None, "machine": None, "window_s": None}
        a, b = inside[0], inside[-1]
        wall = b.at - a.at

        def util(x: float | None, y: float | None) -> float | None:
            return None if x is None or y is None else round((y - x) / wall, 3)

        return {
            "standin": util(a.standin_cpu_s, b.standin_cpu_s),
            "server": util(a.server_cpu_s, b.server_cpu_s),
            "db": util(a.db_cpu_s, b.db_cpu_s),
            "machine": util(a.machine_busy_s, b.machine_busy_s),
            "window_s": round(wall, 1),
        }


async def server_push_stats(
    client: httpx.AsyncClient, operator_token: str | None
) -> dict[str, Any] | None:
    """`GET /v1/operator/push` (this server process's push counters) with the server's
    operator token; None without one, or if it cannot be read."""
    if operator_token is None:
        return None
    try:
        response = await client.get(
            "/v1/operator/push", headers={"Authorization": f"Bearer {operator_token}"}
        )
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        logger.warning("the server's push counters could not be read: %r", exc)
        return None


def stored_messages(sent_reports: Sequence[Mapping[str, Any] | None]) -> list[SentMessage]:
    """The stored messages every worker reported (`sent` messages' `messages`)."""
    return [
        SentMessage(int(conv), int(sender), int(pos), str(uuid.UUID(bytes=bytes(mid))), int(at))
        for sent in sent_reports
        if sent is not None
        for conv, sender, pos, mid, at in sent.get("messages", [])
    ]


@dataclass(frozen=True, slots=True)
class PushRun:
    """What the push check needs to know of the run."""

    config: RunConfig
    topology: Topology
    device_ids: list[uuid.UUID]  # by device index
    phones: dict[int, str]  # device index -> provider
    origin: float  # epoch seconds of the run's time series' zero
    complete: bool  # every send settled, no worker lost, not interrupted


async def check_run_pushes(
    run: PushRun,
    watch: PushWatch,
    messages: list[SentMessage],
    client: httpx.AsyncClient,
    stop: trio.Event,
) -> dict[str, Any]:
    """Wait for the pushes still due, read the server's push counters (through `client`,
    with the operator token, if known), check the records against the stored `messages`:
    the report's `push` section."""
    topology, ids = run.topology, run.device_ids
    user_of_phone = {d: topology.user_of(d) for d in run.phones}
    phones_of_user: dict[int, list[int]] = {}
    for phone, user in user_of_phone.items():
        phones_of_user.setdefault(user, []).append(phone)
    per_phone = messages_per_phone(messages, topology.conversations, phones_of_user)
    latest = {push_token(run.phones[d], ids[d]): m[-1].id for d, m in per_phone.items()}
    waited = await watch.wait_for(latest, run.config.drain_timeout_s, stop)
    stats = await server_push_stats(client, watch.standin.operator_token)
    device_of_token = {
        push_token(provider, ids[d]): d for d in range(topology.devices) for provider in PROVIDERS
    }
    check = check_pushes(
        messages, topology.conversations, user_of_phone, device_of_token, watch.records
    )
    counts = {} if stats is None else stats.get("this_process", {}).get("counts", {})
    complete = run.complete and watch.error is None and not stop.is_set()
    return {
        "share": run.config.push_share,
        **check.summary(),
        "phones_by_provider": dict(Counter(run.phones.values())),
        "grace_s": run.config.push_grace_s,
        "latency_from": "the sent frame's at (the server took the send, just before its commit)",
        "latency_to": "the stand-in recorded the push",
        "waited_after_drain_s": round(waited, 1),
        "moot": None if stats is None else counts.get("moot", 0),
        "server": stats,
        "cpu_while_pushing": watch.cpu_while_pushing(check.first_at, check.last_at),
        "per_second": per_second(watch.records, run.origin),
        "standin": {"url": watch.standin.url, "own": watch.standin.pid is not None},
        "standin_error": watch.error,
        "loss_check": verdict(check, complete=complete),
    }
