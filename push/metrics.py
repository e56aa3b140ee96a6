"""This process's push counters and commit-to-provider latency (for the admin endpoint)."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

LATENCY_WINDOW = 10_000  # the latest accepted pushes the percentiles are taken over


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

    def accepted_after(self, seconds: float) -> None:
        self.latencies_s.append(max(seconds, 0.0))

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
