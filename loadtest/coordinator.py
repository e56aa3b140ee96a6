"""One run from start to report: server, provisioning, worker processes, phases, loss check.

Phases: ramp (devices connect at `--ramp-rate`), send (open-loop for `--duration`, with the
reconnect storm inside it), drain (acks, then every expected delivery or the drain
timeout), soak (idle connections), close. The first Ctrl-C ends the current phase early and
still runs the loss check on what was sent; a second one stops at once. Either way the
report is written from what was measured.
"""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from loadtest.cache import ProvisionCache
from loadtest.client import client_ssl_context
from loadtest.config import RunConfig
from loadtest.device import CONNECT_ATTEMPTS, CONNECT_TIMEOUT_S
from loadtest.link import LinkClosedError
from loadtest.phones import choose_phones
from loadtest.pool import WorkerHandle, close_worker, start_worker, worker_plans
from loadtest.procstats import ServerWatch, machine_busy_s, raise_open_files_limit
from loadtest.progress import Aggregator, Display
from loadtest.provision import REQUEST_TIMEOUT_S, Api, Provisioned, b64url, provision
from loadtest.push import PushRun, PushWatch, check_run_pushes, stored_messages
from loadtest.push_provision import register_phones
from loadtest.server_metrics import Snapshot, merge, scrape
from loadtest.target import Target, cache_path_for, check_reachable, open_target
from loadtest.topology import Topology, build_topology, signature

TICK_S = 1.0
GO_DELAY_S = 1.0
SLACK_S = 60.0


@dataclass
class RunRecord:
    """Everything the report is made of."""

    config: RunConfig
    argv: list[str]
    started_at: float = field(default_factory=time.time)
    target: Target | None = None
    topology: Topology | None = None
    provisioned: Provisioned | None = None
    aggregator: Aggregator | None = None
    server: ServerWatch | None = None
    finals: list[dict[str, Any] | None] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)
    machine_busy: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    aborted: bool = False
    dead_workers: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    coordinator_cpu_s: float = 0.0
    phones: dict[int, str] = field(default_factory=dict)
    """Offline phones (device index -> provider), with --push-share."""
    push: dict[str, Any] | None = None
    """The report's push section (runs with --push-share)."""
    server_metrics: dict[str, Snapshot] = field(default_factory=dict)
    """The server's histograms (GET /metrics) at the phase marks (every node's, merged)."""
    node_metrics: dict[str, list[Snapshot]] = field(default_factory=dict)
    """With several nodes of ours: each node's histograms at the phase marks."""


def describe_load(config: RunConfig, topology: Topology) -> str:
    """One line saying what the run will do."""
    fan_out = topology.expected_deliveries_per_message()
    groups = ", ".join(f"{g.count}x{g.size}" for g in config.groups)
    weights = config.mix.weights
    live = (
        f", {config.mix.live / sum(weights):.0%} of them live-location updates"
        if config.mix.live
        else ""
    )
    return (
        f"load: {config.devices:,} devices of {config.users:,} users in "
        f"{len(topology.conversations):,} conversations ({groups} users); "
        f"{config.rate:g} messages/s ({config.arrival}{live}) for {config.duration_s:g} s, "
        f"~{fan_out:.1f} devices per message = ~{config.rate * fan_out:,.0f} deliveries/s; "
        f"ramp {config.ramp_rate:g} connections/s; {config.workers} worker(s)"
    )


class Coordinator:
    def __init__(self, record: RunRecord, display: Display) -> None:
        self.record = record
        self.config = record.config
        self.display = display
        self.handles: list[WorkerHandle] = []
        self.stop_requested = trio.Event()
        self.push_watch: PushWatch | None = None
        self._metrics_clients: list[httpx.AsyncClient] = []
        """Where the server's /metrics are read: each node's API, or the one."""

    async def run(self) -> None:
        config = self.config
        # Each device is a socket in a worker, and in our own server too.
        warning = raise_open_files_limit(config.devices + 1024)
        if warning is not None:
            self.display.note(f"warning: {warning}")
            self.record.notes.append(warning)
        async with open_target(config, self.display) as target:
            self.record.target = target
            # Separate contexts: httpx sets its own ALPN on the one it is given.
            async with httpx.AsyncClient(
                base_url=target.api_url,
                timeout=REQUEST_TIMEOUT_S,
                verify=client_ssl_context(target.ca_file),
            ) as client:
                await check_reachable(client, target, client_ssl_context(target.ca_file))
                topology = build_topology(config)
                self.record.topology = topology
                self.display.note(describe_load(config, topology))
                cache = ProvisionCache(cache_path_for(config))
                provisioned = await provision(
                    Api(client),
                    cache,
                    topology,
                    signature(config.users, config.groups, config.seed),
                    files=config.mix.file > 0,
                    fresh=config.fresh,
                    report=self.display.text,
                )
                self.record.provisioned = provisioned
                await self._register_phones(client, topology, cache, provisioned)
                created, reused = (
                    ", ".join(f"{n:,} {what}" for what, n in counts.items())
                    for counts in (provisioned.created, provisioned.reused)
                )
                self.display.note(
                    f"provisioned in {provisioned.seconds:.1f} s: created {created}; "
                    f"reused {reused}"
                )
            if target.nodes is not None:
                self.record.server = ServerWatch(
                    [server.pid for server in target.nodes.servers],
                    db_pid=target.nodes.database_pid,
                    bus_pid=target.nodes.bus_pid,
                )
            elif target.local is not None:
                self.record.server = ServerWatch([target.local.pid], target.local.data_dir)
            run = secrets.token_hex(4)  # tags this run's messages (in their cids)
            plans = worker_plans(config, topology, provisioned, target, run, self.record.phones)
            if target.standin is not None:
                self.push_watch = PushWatch(
                    target.standin,
                    None if target.local is None else target.local.pid,
                    None if target.local is None else target.local.data_dir,
                )
            try:
                if self.push_watch is not None:
                    await self.push_watch.start()
                async with AsyncExitStack() as clients:
                    for api_url in target.api_urls:
                        self._metrics_clients.append(
                            await clients.enter_async_context(
                                httpx.AsyncClient(
                                    base_url=api_url,
                                    timeout=REQUEST_TIMEOUT_S,
                                    verify=client_ssl_context(target.ca_file),
                                )
                            )
                        )
                    await self._drive(plans)
            finally:
                if self.push_watch is not None:
                    await self.push_watch.aclose()
            cursor = max((f.get("cursor", 0) for f in self.record.finals if f), default=0)
            entry = cache.entry(b64url(provisioned.server_key))
            entry.cursor = cursor
            cache.save()

    async def _register_phones(
        self,
        client: httpx.AsyncClient,
        topology: Topology,
        cache: ProvisionCache,
        provisioned: Provisioned,
    ) -> None:
        """Choose the offline phones and register their push tokens (and remove earlier
        runs' registrations of devices that are not phones now)."""
        config = self.config
        phones = choose_phones(config.devices, config.users, config.push_share, config.seed)
        self.record.phones = phones
        entry = cache.entry(b64url(provisioned.server_key))
        try:
            done = await register_phones(Api(client), entry, topology, phones, self.display.text)
        finally:
            cache.save()
        if phones or done.removed:
            self.display.note(
                f"push: {done.registered:,} offline phones registered "
                f"({sum(p == 'apns' for p in phones.values()):,} APNs, "
                f"{sum(p == 'fcm' for p in phones.values()):,} FCM)"
                + (f"; {done.removed:,} earlier registrations removed" if done.removed else "")
            )

    # -- workers ---------------------------------------------------------------------------

    async def _listen(self, handle: WorkerHandle, aggregator: Aggregator) -> None:
        try:
            while True:
                message = await handle.link.receive()
                kind = message["t"]
                if kind == "progress":
                    aggregator.add(handle.index, message)
                elif kind == "ramped":
                    handle.connected_after_ramp = message["connected"]
                    handle.ramped.set()
                elif kind == "sent":
                    handle.sent = message
                    handle.sent_event.set()
                elif kind == "final":
                    handle.final = message
                    handle.final_event.set()
                    return
        except LinkClosedError:
            if handle.final is None:
                self.record.dead_workers.append(handle.index)
                self.display.note(
                    f"worker {handle.index} exited unexpectedly; see {handle.log_path}"
                )
            handle.mark_dead()

    async def _broadcast(self, message: dict[str, Any]) -> None:
        for handle in self.handles:
            if not handle.died:
                try:
                    await handle.link.send(message)
                except LinkClosedError:
                    handle.mark_dead()

    async def _wait_all(self, events: Callable[[WorkerHandle], trio.Event], limit: float) -> None:
        with trio.move_on_after(limit) as scope:
            for handle in self.handles:
                await events(handle).wait()
        if scope.cancelled_caught:
            self.record.notes.append("a worker did not answer in time; its figures are missing")
            for handle in self.handles:
                if not events(handle).is_set():
                    handle.mark_dead()

    async def request_stop(self) -> None:
        """First Ctrl-C: end the current phase early; the loss check still runs."""
        self.record.interrupted = True
        self.record.times.setdefault("stopped", time.monotonic())
        self.stop_requested.set()
        await self._broadcast({"t": "stop"})

    def _mark(self, name: str) -> None:
        now = time.monotonic()
        self.record.times[name] = now
        self.record.machine_busy[name] = machine_busy_s()
        if self.record.server is not None:
            self.record.server.mark(name, now)

    async def _scrape(self, name: str) -> None:
        """Read the server's histograms at the phase mark `name`: every node's, merged,
        and each kept apart (once a scrape failed, the run goes on without them, with a
        note saying why)."""
        if not self._metrics_clients:
            return
        snapshots: list[Snapshot] = []
        for client in self._metrics_clients:
            got = await scrape(client, self.config.metrics_token)
            if isinstance(got, str):
                self._metrics_clients = []
                self.record.notes.append(f"no server-side latency: {got} ({client.base_url})")
                return
            snapshots.append(got)
        self.record.server_metrics[name] = merge(snapshots)
        if len(snapshots) > 1:
            self.record.node_metrics[name] = snapshots

    async def _ticker(self, aggregator: Aggregator) -> None:
        while True:
            await trio.sleep(TICK_S)
            if self.push_watch is not None:
                aggregator.pushes = self.push_watch.accepted
            tick = aggregator.tick()
            if self.record.server is not None:
                self.record.server.poll()
            self.display.status(tick)

    async def _drive(self, plans: list[dict[str, Any]]) -> None:
        config = self.config
        server = self.record.server
        aggregator = Aggregator(config.workers, None if server is None else server.cpu_now)
        self.record.aggregator = aggregator
        try:
            async with trio.open_nursery() as nursery:
                for index in range(config.workers):
                    self.handles.append(await start_worker(index, self.config.report_dir))
                for handle, plan in zip(self.handles, plans, strict=True):
                    nursery.start_soon(self._listen, handle, aggregator)
                    await handle.link.send(plan)
                nursery.start_soon(self._ticker, aggregator)
                if self.push_watch is not None:
                    nursery.start_soon(self.push_watch.follow)
                await self._phases(aggregator)
                if self.push_watch is not None:
                    aggregator.phase = "push"
                    await self._push_phase(self.push_watch)
                    aggregator.phase = "done"
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for handle in self.handles:
                    await close_worker(handle)
            self.record.finals = [h.final for h in self.handles]

    async def _phases(self, aggregator: Aggregator) -> None:
        config = self.config
        self._mark("ramp_start")
        await self._scrape("ramp_start")
        ramp_s = config.devices / config.ramp_rate
        await self._broadcast({"t": "ramp", "start": time.monotonic() + 0.5})
        await self._wait_all(
            lambda h: h.ramped, ramp_s + CONNECT_TIMEOUT_S * CONNECT_ATTEMPTS + SLACK_S
        )
        self._mark("ramp_end")
        await self._scrape("ramp_end")
        connected = sum(h.connected_after_ramp for h in self.handles)
        if connected == 0 and not self.stop_requested.is_set():
            self.record.aborted = True
            self.display.note("no device could connect: stopping")
            await self.request_stop()
        start = time.monotonic() + GO_DELAY_S
        end = start + config.duration_s
        storm = config.storm_time_s
        aggregator.phase = "send"
        await self._broadcast(
            {
                "t": "go",
                "start": start,
                "end": end,
                "storm_at": None if storm is None else start + storm,
                "storm_percent": config.storm_percent,
            }
        )
        self.record.times["send_start"] = start
        self.record.times["send_stop"] = end
        with trio.move_on_after(max(0.0, start - time.monotonic())):
            await self.stop_requested.wait()
        self._mark("send_start")
        await self._scrape("send_start")
        await self._wait_all(
            lambda h: h.sent_event, config.duration_s + config.drain_timeout_s + SLACK_S
        )
        self._mark("send_end")
        aggregator.phase = "drain"
        await self._send_expectations()
        if config.soak_s > 0:
            aggregator.phase = "drain+soak"
        await self._wait_all(
            lambda h: h.final_event, config.drain_timeout_s + config.soak_s + SLACK_S
        )
        self._mark("end")
        await self._scrape("end")
        aggregator.phase = "done"

    async def _push_phase(self, watch: PushWatch) -> None:
        """Wait for the pushes still due, then check what the stand-in recorded against
        the messages the server stored."""
        record = self.record
        assert record.topology is not None and record.provisioned is not None
        assert record.target is not None and record.aggregator is not None
        sent = [h.sent for h in self.handles]
        unsettled = sum(
            len(numbers) for s in sent if s is not None for numbers in s["unsettled"].values()
        )
        run = PushRun(
            config=self.config,
            topology=record.topology,
            device_ids=[device_id for device_id, _ in record.provisioned.devices],
            phones=record.phones,
            origin=time.time() - (time.monotonic() - record.aggregator.started),
            complete=not (unsettled or record.interrupted or record.dead_workers),
        )
        async with httpx.AsyncClient(
            base_url=record.target.api_url,
            timeout=REQUEST_TIMEOUT_S,
            verify=client_ssl_context(record.target.ca_file),
        ) as client:
            record.push = await check_run_pushes(
                run, watch, stored_messages(sent), client, self.stop_requested
            )
        self.display.note(
            f"push: {record.push['pushes_expected'] - record.push['lost']:,}/"
            f"{record.push['pushes_expected']:,} phones pushed their latest message, "
            f"{record.push['pushes_received']:,} pushes, lost {record.push['lost']:,}"
        )

    async def _send_expectations(self) -> None:
        """Tell each worker what every device of its conversations must have received."""
        merged: dict[int, dict[int, list[int]]] = {}
        unsettled: dict[int, dict[int, list[int]]] = {}
        for handle in self.handles:
            if handle.sent is None:
                continue
            for conv, numbers in handle.sent["by_conversation"].items():
                merged.setdefault(int(conv), {})[handle.index] = numbers
            for conv, numbers in handle.sent.get("unsettled", {}).items():
                unsettled.setdefault(int(conv), {})[handle.index] = numbers
        assert self.record.topology is not None
        member_of = self.record.topology.conversations_of_users()
        for handle in self.handles:
            if handle.died:
                continue
            users = [
                u
                for u in range(self.record.topology.users)
                if self.record.topology.worker_of_user(u) == handle.index
            ]
            convs = {c for u in users for c in member_of[u]}
            try:
                await handle.link.send(
                    {
                        "t": "expect",
                        "by_conversation": {c: merged[c] for c in convs if c in merged},
                        "unsettled": {c: unsettled[c] for c in convs if c in unsettled},
                        "drain_timeout_s": self.config.drain_timeout_s,
                        "soak_s": self.config.soak_s,
                    }
                )
            except LinkClosedError:
                handle.mark_dead()


async def run_load_test(record: RunRecord, display: Display) -> None:
    """Run, handling Ctrl-C: the first ends the run early, a second one at once."""
    coordinator = Coordinator(record, display)
    cpu_start = time.process_time()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals(scope: trio.CancelScope) -> None:
                async for _ in signals:
                    if not coordinator.handles or record.interrupted:
                        display.note("interrupted: stopping now")
                        record.interrupted = True
                        scope.cancel()
                        return
                    display.note(
                        "interrupted: finishing early and writing the report "
                        "(Ctrl-C again to stop at once)"
                    )
                    await coordinator.request_stop()

            with trio.CancelScope() as run_scope:
                nursery.start_soon(watch_signals, run_scope)
                await coordinator.run()
            nursery.cancel_scope.cancel()
    record.coordinator_cpu_s = time.process_time() - cpu_start
