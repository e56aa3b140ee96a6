"""A worker process: simulates its share of the devices, step by step as the coordinator says.

    coordinator -> worker   plan, ramp, go, stop, expect
    worker -> coordinator   progress (every second), ramped, sent, final

Run as `python -m loadtest.worker`, with the link on stdin/stdout (stdout is then pointed at
stderr, so a stray print cannot corrupt the link). A worker exits when told it is done or
when the coordinator goes away.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from loadtest.client import DeviceIdentity, DeviceState, client_ssl_context
from loadtest.config import Mix
from loadtest.device import CONNECT_ATTEMPTS, CONNECT_TIMEOUT_S, SimDevice
from loadtest.ledger import ABANDONED, ACKED, REFUSED, SCHEDULED, WRITTEN, bitset, check_device
from loadtest.link import Link, LinkClosedError
from loadtest.observe import Observations
from loadtest.schedule import WeightedChoice
from loadtest.traffic import Bodies, Conversation, Traffic

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 1.0
LOOP_PROBE_S = 0.005
POLL_S = 0.05
LOST_SAMPLE = 5


class Inbox:
    """Messages from the coordinator, waited for by type."""

    def __init__(self) -> None:
        self._messages: dict[str, dict[str, Any]] = {}
        self._changed = trio.Event()
        self.stopped = trio.Event()

    def put(self, message: dict[str, Any]) -> None:
        self._messages[message["t"]] = message
        if message["t"] == "stop":
            self.stopped.set()
        self._changed.set()
        self._changed = trio.Event()

    async def wait(self, kind: str, *, stoppable: bool = True) -> dict[str, Any] | None:
        """The message of `kind`, or None if the run was stopped first (and `stoppable`)."""
        while kind not in self._messages:
            if stoppable and self.stopped.is_set():
                return None
            await self._changed.wait()
        return self._messages[kind]


@dataclass
class Plan:
    worker: int
    run: str
    gateway_url: str
    ca_file: str | None
    server_key: bytes
    seed: int
    cursor: int
    ramp_rate: float
    rate: float
    arrival: str
    mix: Mix
    text_chars: int
    devices: list[tuple[int, bytes, bytes, int]]
    conversations: list[Conversation]
    user_conversations: dict[int, list[int]]
    slots: list[tuple[int, int]]
    drain_timeout_s: float
    push: bool = False
    """Report every stored send's id, position and time (for the push check)."""

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> Plan:
        return cls(
            worker=m["worker"],
            run=m["run"],
            gateway_url=m["gateway_url"],
            ca_file=m["ca_file"],
            server_key=m["server_key"],
            seed=m["seed"],
            cursor=m["cursor"],
            ramp_rate=m["ramp_rate"],
            rate=m["rate"],
            arrival=m["arrival"],
            mix=Mix(*m["mix"]),
            text_chars=m["text_chars"],
            devices=[(int(i), bytes(d), bytes(k), int(u)) for i, d, k, u in m["devices"]],
            conversations=[Conversation(*c) for c in m["conversations"]],
            user_conversations={int(u): list(c) for u, c in m["user_conversations"].items()},
            slots=[(c, u) for c, u in m["slots"]],
            drain_timeout_s=m["drain_timeout_s"],
            push=bool(m.get("push", False)),
        )


class Worker:
    def __init__(self, plan: Plan, link: Link) -> None:
        self.plan = plan
        self.link = link
        self.inbox = Inbox()
        self.obs = Observations(plan.run, plan.worker)
        self.obs.sends.keep_stored = plan.push
        self.rng = random.Random(plan.seed * 1000 + plan.worker)  # noqa: S311 (a simulation)
        self.phase = "ramp"
        self.devices: list[SimDevice] = []
        self.by_user: dict[int, list[SimDevice]] = {}
        # One context for every device of the worker; checked readable by the coordinator.
        ssl_context = None
        if plan.gateway_url.startswith("wss://"):
            ssl_context = client_ssl_context(None if plan.ca_file is None else Path(plan.ca_file))
        # Several nodes (--gateway-url a,b,...): each device always goes to the same one.
        nodes = plan.gateway_url.split(",")
        for index, device_id, secret, user in plan.devices:
            identity = DeviceIdentity(uuid.UUID(bytes=device_id), secret, plan.server_key)
            state = DeviceState(identity, cursor=plan.cursor)
            node = index % len(nodes)
            device = SimDevice(
                index,
                state,
                nodes[node],
                self.obs,
                self.rng,
                ssl_context,
                None if len(nodes) == 1 else node,
            )
            self.devices.append(device)
            self.by_user.setdefault(user, []).append(device)
        self.user_of = {index: user for index, _, _, user in plan.devices}
        self.results: dict[str, Any] = {}
        self.expectations: dict[int, dict[int, int]] = {}
        self.unsettled: dict[int, dict[int, int]] = {}

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._listen, nursery.cancel_scope)
            nursery.start_soon(self._report_progress)
            async with trio.open_nursery() as devices:
                await self._ramp(devices)
                # Long-lived objects (devices, keys, channels) are never collected: keep the
                # cyclic GC from scanning them again and again during the run.
                gc.collect()
                gc.freeze()
                await self.link.send({"t": "ramped", "connected": self.obs.counts.connected})
                go = await self.inbox.wait("go")
                if go is not None:
                    self.phase = "send"
                    await self._send_phase(go)
                self.phase = "drain"
                for device in self.devices:
                    device.end_live()  # written while the drain waits for acks
                await self._wait_for_acks()
                unsettled = self.obs.sends.by_conversation(SCHEDULED, WRITTEN)
                self.results["unsettled"] = sum(map(len, unsettled.values()))
                await self.link.send(
                    {
                        "t": "sent",
                        "by_conversation": self.obs.sends.by_conversation(ACKED),
                        "unsettled": unsettled,
                        "messages": self.obs.sends.stored_messages(),
                    }
                )
                expect = await self.inbox.wait("expect", stoppable=False)
                if expect is not None:
                    await self._drain(expect)
                    self.results["loss"] = self._check()
                    self.results["soak"] = await self._soak(expect["soak_s"])
                self.results["connected_at_end"] = self.obs.counts.connected
                self.phase = "close"
                devices.cancel_scope.cancel()
            await self.link.send(self._final())
            nursery.cancel_scope.cancel()

    async def _listen(self, everything: trio.CancelScope) -> None:
        try:
            while True:
                self.inbox.put(await self.link.receive())
        except LinkClosedError:
            logger.warning("worker %d: the coordinator went away; stopping", self.plan.worker)
            everything.cancel()

    async def _report_progress(self) -> None:
        while True:
            await trio.sleep(PROGRESS_INTERVAL_S)
            interval, deliveries = self.obs.take_interval()
            await self.link.send(
                {
                    "t": "progress",
                    "at": time.monotonic(),
                    "cpu_s": time.process_time(),
                    "phase": self.phase,
                    "counts": self.obs.counts.as_wire(),
                    "settled": self.obs.settled,
                    "interval": interval.encode(),
                    "interval_deliveries": deliveries,
                }
            )

    async def _ramp(self, nursery: trio.Nursery) -> None:
        """Start each device at its slot of the global ramp; wait until every device is
        connected or has given up."""
        ramp = await self.inbox.wait("ramp")
        if ramp is None:
            return
        start = ramp["start"]
        for device in sorted(self.devices, key=lambda d: d.index):  # the global ramp order
            delay = start + device.index / self.plan.ramp_rate - time.monotonic()
            if delay > 0:
                await trio.sleep(delay)
            if self.inbox.stopped.is_set():
                return
            nursery.start_soon(device.run)
        with trio.move_on_after(CONNECT_TIMEOUT_S * CONNECT_ATTEMPTS):
            while self.obs.settled < len(self.devices) and not await self._stopped_within(POLL_S):
                pass

    async def _send_phase(self, go: dict[str, Any]) -> None:
        """Send from `go["start"]` to `go["end"]` (and storm on time), unless stopped."""
        with trio.move_on_after(max(0.0, go["start"] - time.monotonic())):
            await self.inbox.stopped.wait()
        cpu, wall = time.process_time(), time.monotonic()
        try:
            await self._send(go)
        finally:
            self.results["send_phase"] = {
                "cpu_s": time.process_time() - cpu,
                "wall_s": time.monotonic() - wall,
            }

    async def _send(self, go: dict[str, Any]) -> None:
        plan = self.plan
        by_index = {c.index: c for c in plan.conversations}
        slots = [(by_index[c], u) for c, u in plan.slots]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._stop_on_request, nursery.cancel_scope)
            if slots:
                traffic = Traffic(
                    obs=self.obs,
                    rate=plan.rate,
                    arrival="constant" if plan.arrival == "constant" else "poisson",
                    mix=plan.mix,
                    slots=WeightedChoice(slots, [1 / c.size for c, _ in slots], self.rng),
                    devices_of_user=self.by_user,
                    bodies=Bodies(plan.text_chars, self.rng),
                    seed=plan.seed * 1000 + plan.worker,
                )
                nursery.start_soon(traffic.run, go["start"], go["end"])
            nursery.start_soon(self._watch_loop_lag)
            if go["storm_at"] is not None:
                nursery.start_soon(self._storm, go["storm_at"], go["storm_percent"])
            await trio.sleep(max(0.0, go["end"] - time.monotonic()))
            nursery.cancel_scope.cancel()

    async def _watch_loop_lag(self) -> None:
        """Record how late a short timer fires, for the whole send phase."""
        while True:
            due = time.monotonic() + LOOP_PROBE_S
            await trio.sleep(LOOP_PROBE_S)
            self.obs.loop_lag.record_us(int((time.monotonic() - due) * 1e6))

    async def _stopped_within(self, seconds: float) -> bool:
        """Wait up to `seconds` for a stop request; True if the run is stopped."""
        with trio.move_on_after(seconds):
            await self.inbox.stopped.wait()
        return self.inbox.stopped.is_set()

    async def _stop_on_request(self, scope: trio.CancelScope) -> None:
        await self.inbox.stopped.wait()
        scope.cancel()

    async def _storm(self, at: float, percent: float) -> None:
        await trio.sleep(max(0.0, at - time.monotonic()))
        connected = [d for d in self.devices if d.connected]
        chosen = self.rng.sample(connected, round(len(connected) * percent / 100))
        dropped = sum(1 for d in chosen if d.drop())
        self.results["storm"] = {"at": time.monotonic(), "dropped": dropped}
        logger.info("worker %d: storm dropped %d devices", self.plan.worker, dropped)

    async def _wait_for_acks(self) -> None:
        """Until every send handed to a device is acknowledged or refused, and its live
        sessions are stopped (`live_end` back) (bounded)."""
        stopped = self.inbox.stopped
        limit = STOPPED_WAIT_S if stopped.is_set() else self.plan.drain_timeout_s
        with trio.move_on_after(limit):
            while any(d.outstanding for d in self.devices if d.failed is None):
                await self._stopped_within(POLL_S)

    @staticmethod
    def _bits(by_conversation: dict[str, dict[str, list[int]]]) -> dict[int, dict[int, int]]:
        """Per conversation: per sending worker, the bitset of its sends there."""
        return {
            int(conv): {int(w): bitset(numbers) for w, numbers in by_worker.items()}
            for conv, by_worker in by_conversation.items()
        }

    def _per_device(self, by_conversation: dict[int, dict[int, int]]) -> dict[int, dict[int, int]]:
        """For each device that ever connected: per worker, the sends of its conversations."""
        result: dict[int, dict[int, int]] = {}
        for device in self.devices:
            if not device.ever_connected:
                continue
            wanted: dict[int, int] = {}
            for conv in self.plan.user_conversations.get(self.user_of[device.index], []):
                for worker, bits in by_conversation.get(conv, {}).items():
                    wanted[worker] = wanted.get(worker, 0) | bits
            result[device.index] = wanted
        return result

    def _device_expectations(self, expect: dict[str, Any]) -> dict[int, dict[int, int]]:
        """For each device that ever connected: per worker, what it must receive."""
        return self._per_device(self._bits(expect["by_conversation"]))

    async def _drain(self, expect: dict[str, Any]) -> None:
        """Until every device has every message it should, or the drain timeout."""
        self.expectations = self._device_expectations(expect)
        self.unsettled = self._per_device(self._bits(expect.get("unsettled", {})))
        counts = {i: sum(b.bit_count() for b in w.values()) for i, w in self.expectations.items()}

        def done(device: SimDevice) -> bool:
            if device.unique_received < counts[device.index]:
                return False
            if not any(self.unsettled.get(device.index, {}).values()):
                return True  # it can only have received what it should: the count says it all
            got = device.received.as_ints()  # unsettled ones may be among them: compare bits
            wanted = self.expectations[device.index]
            return not any(bits & ~got.get(w, 0) for w, bits in wanted.items())

        pending = [d for d in self.devices if d.index in counts]
        limit = STOPPED_WAIT_S if self.inbox.stopped.is_set() else expect["drain_timeout_s"]
        with trio.move_on_after(limit):
            while pending:
                pending = [d for d in pending if not done(d)]
                await self._stopped_within(POLL_S)

    def _check(self) -> dict[str, Any]:
        """The exact loss check of this worker's devices."""
        total = Counter[str]()
        lost_sample: list[list[int]] = []
        unexpected_sample: list[list[int]] = []
        for device in self.devices:
            wanted = self.expectations.get(device.index)
            if wanted is None:
                continue
            result = check_device(
                wanted, device.received.as_ints(), LOST_SAMPLE, self.unsettled.get(device.index, {})
            )
            total["expected"] += result.expected
            total["received"] += result.received
            total["lost"] += result.lost
            total["unexpected"] += result.unexpected
            if result.lost:
                total["devices_with_losses"] += 1
            lost_sample += [[device.index, key] for key in result.lost_sample]
            unexpected_sample += [[device.index, key] for key in result.unexpected_sample]
        failed = Counter(d.failed for d in self.devices if d.failed and not d.ever_connected)
        return {
            **{k: total[k] for k in ("expected", "received", "lost", "unexpected")},
            "devices_with_losses": total["devices_with_losses"],
            "devices_checked": len(self.expectations),
            "never_connected": dict(failed),
            "lost_sample": lost_sample[:20],
            "unexpected_sample": unexpected_sample[:20],
        }

    async def _soak(self, seconds: float) -> dict[str, Any] | None:
        """Keep every connection open and idle for `seconds`; count what was lost."""
        if seconds <= 0 or self.inbox.stopped.is_set():
            return None
        self.phase = "soak"
        before = self.obs.disconnects
        at_start = self.obs.counts.connected
        with trio.move_on_after(seconds):
            await self.inbox.stopped.wait()
        return {
            "connected_at_start": at_start,
            "connected_at_end": self.obs.counts.connected,
            "disconnects": self.obs.disconnects - before,
        }

    def _final(self) -> dict[str, Any]:
        obs = self.obs
        sends = obs.sends
        return {
            "t": "final",
            "counts": obs.counts.as_wire(),
            "latency": obs.total_latency().encode(),
            "latency_same_node": obs.same_node.encode(),
            "latency_cross_node": obs.cross_node.encode(),
            "ack_latency": obs.ack_latency.encode(),
            "handshake": obs.handshake.encode(),
            "ready": obs.ready.encode(),
            "storm_ready": obs.storm_ready.encode(),
            "schedule_lag": obs.schedule_lag.encode(),
            "loop_lag": obs.loop_lag.encode(),
            "duplicates": {
                "catch_up": obs.duplicates.catch_up,
                "switch": obs.duplicates.switch,
                "live": obs.duplicates.live,
                "stored_twice": obs.duplicates.stored_twice,
            },
            "stale": obs.stale,
            "erased": obs.erased,
            "live": obs.live.as_wire(),
            "out_of_order": obs.out_of_order,
            "catch_up_deliveries": obs.catch_up_deliveries,
            "disconnects": obs.disconnects,
            "first_connect_at": obs.first_connect_at,
            "last_ready_at": obs.last_ready_at,
            "last_delivery_at": obs.last_delivery_at,
            "sends": {
                "scheduled": len(sends.state),
                "unwritten": sends.count(SCHEDULED) + sends.count(ABANDONED),
                "unacked": sends.count(WRITTEN),
                "acked": sends.count(ACKED),
                "refused": sends.count(REFUSED),
                "refusals": dict(sends.refusals),
            },
            "cpu_s": time.process_time(),
            "cursor": max((d.state.cursor for d in self.devices), default=0),
            **self.results,
        }


GC_THRESHOLDS = (50_000, 20, 100)
"""Fewer young-generation collections: a worker allocates many short-lived frames."""
STOPPED_WAIT_S = 3.0
"""How long acks and deliveries are waited for after a run was interrupted."""


async def _main(link_in: int, link_out: int) -> None:
    link = Link(trio.lowlevel.FdStream(link_out), trio.lowlevel.FdStream(link_in))
    try:
        plan = Plan.from_wire(await link.receive())
        await Worker(plan, link).run()
    except LinkClosedError:
        logger.warning("the coordinator went away before the run ended")
    finally:
        await link.aclose()


def main() -> int:
    """Entry point of a worker process (`python -m loadtest.worker`)."""
    link_in, link_out = os.dup(0), os.dup(1)
    os.dup2(2, 1)  # print() now goes to the worker's log, never into the link
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("OBROL_LOADTEST_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(message)s",
    )
    gc.set_threshold(*GC_THRESHOLDS)
    trio.run(_main, link_in, link_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
