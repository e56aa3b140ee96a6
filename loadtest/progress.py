"""Live figures: the workers' progress merged once a second, shown on the terminal and kept
as the time series of the report.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from loadtest.metrics import Latency
from loadtest.procstats import machine_busy_s


@dataclass
class WorkerProgress:
    counts: dict[str, Any] = field(default_factory=dict)
    cpu_s: float = 0.0
    settled: int = 0
    phase: str = "start"


@dataclass
class Tick:
    """One second of the run, as the time series of the report keeps it."""

    t: float
    phase: str
    connected: int
    sent: int
    delivered: int
    deliveries_per_s: float
    sent_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    errors: int
    tester_cpu: float
    server_cpu: float | None
    machine_cpu: float
    pushes: int | None = None
    """Pushes the stand-in accepted so far (runs with --push-share)."""
    pushes_per_s: float | None = None


class Aggregator:
    """Sums the workers' latest totals and merges their interval histograms."""

    def __init__(self, workers: int, server_cpu: Callable[[], float | None] | None = None) -> None:
        """`server_cpu`: the CPU seconds of our own server so far (None: not ours)."""
        self.workers = [WorkerProgress() for _ in range(workers)]
        self.server_cpu = server_cpu
        self.started = time.monotonic()
        self.ticks: list[Tick] = []
        self._interval = Latency()
        self._interval_deliveries = 0
        self._last = (time.monotonic(), 0, 0, 0.0, self._server_cpu(), machine_busy_s())
        self.phase = "ramp"
        self.pushes: int | None = None  # set by the coordinator before each tick
        self._last_pushes = 0

    def _server_cpu(self) -> float | None:
        return None if self.server_cpu is None else self.server_cpu()

    def add(self, worker: int, message: dict[str, Any]) -> None:
        progress = self.workers[worker]
        progress.counts = message["counts"]
        progress.cpu_s = message["cpu_s"]
        progress.settled = message["settled"]
        progress.phase = message["phase"]
        self._interval.merge(Latency.decode(message["interval"]))
        self._interval_deliveries += message["interval_deliveries"]

    def total(self, name: str) -> int:
        return sum(int(w.counts.get(name, 0)) for w in self.workers)

    def errors(self) -> Counter[str]:
        errors: Counter[str] = Counter()
        for w in self.workers:
            errors.update(w.counts.get("errors", {}))
        return errors

    def settled(self) -> int:
        return sum(w.settled for w in self.workers)

    def tick(self) -> Tick:
        """Close the current second: rates, latency of the deliveries in it, CPU use."""
        now = time.monotonic()
        last_at, last_sent, last_delivered, last_tester, last_server, last_machine = self._last
        elapsed = max(now - last_at, 1e-6)
        sent, delivered = self.total("sent"), self.total("delivered")
        tester = sum(w.cpu_s for w in self.workers)
        server = self._server_cpu()
        machine = machine_busy_s()
        interval, self._interval = self._interval, Latency()
        self._interval_deliveries = 0
        summary = interval.summary_ms()
        tick = Tick(
            t=round(now - self.started, 3),
            phase=self.phase,
            connected=self.total("connected"),
            sent=sent,
            delivered=delivered,
            deliveries_per_s=round((delivered - last_delivered) / elapsed, 1),
            sent_per_s=round((sent - last_sent) / elapsed, 1),
            p50_ms=summary["p50"],
            p99_ms=summary["p99"],
            max_ms=summary["max"],
            errors=sum(self.errors().values()),
            tester_cpu=round(max(tester - last_tester, 0.0) / elapsed, 3),
            server_cpu=None
            if server is None or last_server is None
            else round((server - last_server) / elapsed, 3),
            machine_cpu=round((machine - last_machine) / elapsed, 3),
            pushes=self.pushes,
            pushes_per_s=None
            if self.pushes is None
            else round((self.pushes - self._last_pushes) / elapsed, 1),
        )
        self._last = (now, sent, delivered, tester, server, machine)
        self._last_pushes = self.pushes or 0
        self.ticks.append(tick)
        return tick


def _count(n: float) -> str:
    return f"{n:,.0f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


class Display:
    """One status line: rewritten in place on a terminal, printed every few seconds
    otherwise."""

    def __init__(self, enabled: bool, stream: TextIO | None = None, devices: int = 0) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.interactive = self.stream.isatty()
        self.devices = devices
        self._last_plain = 0.0
        self._width = 0
        # What the last plain line showed, and the worst p99 since: a plain line covers the
        # seconds since the previous one, not only the last (maybe quiet) second.
        self._plain_from: Tick | None = None
        self._plain_p99: float | None = None

    def note(self, text: str) -> None:
        """A message of its own line (clears the status line first)."""
        if not self.enabled:
            return
        self._clear()
        print(text, file=self.stream, flush=True)

    def status(self, tick: Tick) -> None:
        if not self.enabled:
            return
        if self.interactive:
            line = self._line(tick, tick.sent_per_s, tick.deliveries_per_s, tick.p99_ms)
            self._clear()
            self.stream.write(line)
            self.stream.flush()
            self._width = len(line)
            return
        if tick.p99_ms is not None:
            self._plain_p99 = max(self._plain_p99 or 0.0, tick.p99_ms)
        if time.monotonic() - self._last_plain < 5:
            return
        self._last_plain = time.monotonic()
        since = self._plain_from
        if since is None or tick.t <= since.t:
            sent_per_s, delivered_per_s = tick.sent_per_s, tick.deliveries_per_s
        else:
            sent_per_s = (tick.sent - since.sent) / (tick.t - since.t)
            delivered_per_s = (tick.delivered - since.delivered) / (tick.t - since.t)
        print(self._line(tick, sent_per_s, delivered_per_s, self._plain_p99), file=self.stream)
        self.stream.flush()
        self._plain_from, self._plain_p99 = tick, None

    def _line(
        self, tick: Tick, sent_per_s: float, delivered_per_s: float, p99: float | None
    ) -> str:
        return (
            f"{tick.t:6.1f}s {tick.phase:<6} conn {_count(tick.connected)}/{_count(self.devices)}"
            f"  sent {_count(tick.sent)} ({_count(sent_per_s)}/s)"
            f"  delivered {_count(tick.delivered)} ({_count(delivered_per_s)}/s)"
            f"  p99 {_ms(p99)}  errors {tick.errors}"
            + ("" if tick.pushes is None else f"  pushes {_count(tick.pushes)}")
        )

    def text(self, line: str) -> None:
        """A transient status text (provisioning progress)."""
        if not self.enabled:
            return
        if self.interactive:
            self._clear()
            self.stream.write(line)
            self.stream.flush()
            self._width = len(line)
        else:
            print(line, file=self.stream, flush=True)

    def _clear(self) -> None:
        if self.interactive and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0

    def done(self) -> None:
        if self.enabled:
            self._clear()
            self.stream.flush()
