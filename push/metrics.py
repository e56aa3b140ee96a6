"""This process's push counters and commit-to-provider latency (for the admin endpoint),
and the same as Prometheus metrics (server.metrics serves them), with the outbox's depth."""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge, Histogram

from storage.errors import DatabaseUnavailableError

if TYPE_CHECKING:
    from storage.push_outbox import PushOutbox

logger = logging.getLogger(__name__)

LATENCY_WINDOW = 10_000  # the latest accepted pushes the percentiles are taken over

JOBS = PromCounter(
    "obrol_push_jobs",
    "Push jobs by result (queued, sent, moot, retried, failed, dead_lettered, disabled) and "
    "provider (any: counted before a provider is known)",
    ["result", "provider"],
)
COMMIT_TO_PROVIDER_SECONDS = Histogram(
    "obrol_push_commit_to_provider_seconds",
    "From the message's commit to the provider accepting its alert push",
    buckets=(0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0),
)
# Every process samples the same database, so across workers the highest sample counts.
OUTBOX_PENDING = Gauge(
    "obrol_push_outbox_pending", "Push jobs in the outbox", multiprocess_mode="max"
)
OUTBOX_DUE = Gauge(
    "obrol_push_outbox_due", "Push jobs due now and not leased", multiprocess_mode="max"
)
OUTBOX_OLDEST_DUE = Gauge(
    "obrol_push_outbox_oldest_due_seconds",
    "How long the most overdue unleased push job has waited",
    multiprocess_mode="max",
)
OUTBOX_DEAD = Gauge("obrol_push_dead_letters", "Dead-lettered push jobs", multiprocess_mode="max")
OUTBOX_SAMPLE_S = 15.0


@dataclass
class PushMetrics:
    """Counters since start-up, per provider where it matters.

    queued: jobs claimed with a push to send; sent: accepted by the provider; moot: skipped
    because the device had the message already; retried / failed (dead-lettered for a
    refusal) / dead_lettered (all dead letters, refusals and exhausted retries) / disabled
    (tokens the provider said are dead).
    """

    counts: Counter[str] = field(default_factory=Counter)
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def add(self, name: str, n: int = 1, provider: str | None = None) -> None:
        if n:
            self.counts[name] += n
            if provider is not None:
                self.counts[f"{name}.{provider}"] += n
            JOBS.labels(name, provider or "any").inc(n)

    def accepted_after(self, seconds: float) -> None:
        self.latencies_s.append(max(seconds, 0.0))
        COMMIT_TO_PROVIDER_SECONDS.observe(max(seconds, 0.0))

    def latency_percentiles(self) -> dict[str, float | None]:
        ordered = sorted(self.latencies_s)

        def at(q: float) -> float | None:
            if not ordered:
                return None
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)

        return {"p50": at(0.5), "p99": at(0.99), "max": ordered[-1] if ordered else None}

    def snapshot(self) -> dict[str, Any]:
        return {
            "counts": dict(sorted(self.counts.items())),
            "commit_to_provider_s": self.latency_percentiles(),
            "latency_samples": len(self.latencies_s),
        }


async def sample_outbox(outbox: PushOutbox, stop: trio.Event) -> None:
    """Keep the outbox gauges current (every OUTBOX_SAMPLE_S) until `stop` is set; a
    database outage leaves the last sample (/healthz says the database is down)."""
    while not stop.is_set():
        try:
            state = await outbox.state()
        except DatabaseUnavailableError:
            pass
        else:
            OUTBOX_PENDING.set(state.pending)
            OUTBOX_DUE.set(state.due)
            OUTBOX_OLDEST_DUE.set(state.oldest_due_s)
            OUTBOX_DEAD.set(state.dead_letters)
        with trio.move_on_after(OUTBOX_SAMPLE_S):
            await stop.wait()
