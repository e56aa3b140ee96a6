"""The server's own view of a run: its Prometheus histograms (`GET /metrics`), read at the
phase marks, so a run the tester itself limits still shows the server's latency.

Percentiles come from the difference of two scrapes of a cumulative histogram (the
observations made between them), interpolated linearly inside the bucket that holds the
rank, as Prometheus's histogram_quantile does: good to the bucket's width, which the
server's buckets keep fine where delivery latency lives (1-25 ms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

# The histograms the report shows: report name -> metric name.
HISTOGRAMS = {
    "delivery_ms": "obrol_delivery_latency_seconds",
    "handshake_ms": "obrol_handshake_seconds",
    "commit_ms": "obrol_commit_seconds",
}


@dataclass
class Histogram:
    """Cumulative bucket counts by upper bound (seconds; +Inf last) and the sum."""

    buckets: list[tuple[float, float]] = field(default_factory=list)
    total: float = 0.0

    def minus(self, earlier: Histogram | None) -> Histogram:
        if earlier is None:
            return self
        before = dict(earlier.buckets)
        return Histogram(
            [(le, count - before.get(le, 0.0)) for le, count in self.buckets],
            self.total - earlier.total,
        )

    @property
    def count(self) -> float:
        return self.buckets[-1][1] if self.buckets else 0.0

    def quantile(self, q: float) -> float | None:
        """The q-quantile in seconds, or None without observations."""
        count = self.count
        if count <= 0:
            return None
        rank = q * count
        lower, below = 0.0, 0.0
        for le, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(le):
                    return lower  # past the last finite bucket: its bound is all we know
                inside = cumulative - below
                share = 0.0 if inside <= 0 else (rank - below) / inside
                return lower + (le - lower) * share
            lower, below = le, cumulative
        return lower

    def summary_ms(self) -> dict[str, Any]:
        def ms(q: float) -> float | None:
            value = self.quantile(q)
            return None if value is None else round(value * 1000, 2)

        return {
            "count": int(self.count),
            "p50": ms(0.5),
            "p90": ms(0.9),
            "p99": ms(0.99),
            "mean": None if not self.count else round(self.total / self.count * 1000, 2),
        }


Snapshot = dict[str, Histogram]


def parse(text: str) -> Snapshot:
    """The histograms of HISTOGRAMS in a text exposition."""
    wanted = set(HISTOGRAMS.values())
    found: Snapshot = {}
    for family in text_string_to_metric_families(text):
        if family.name not in wanted:
            continue
        histogram = Histogram()
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                histogram.buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_sum"):
                histogram.total = sample.value
        histogram.buckets.sort()
        found[family.name] = histogram
    return found


async def scrape(client: httpx.AsyncClient, token: str | None) -> Snapshot | str:
    """The server's histograms now, or why they could not be read."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = await client.get("/metrics", headers=headers)
    except httpx.HTTPError as exc:
        return f"GET /metrics failed: {exc!r}"
    if response.status_code != 200:
        return f"GET /metrics answered {response.status_code} (set --metrics-token?)"
    return parse(response.text)


def merge(snapshots: list[Snapshot]) -> Snapshot:
    """Several processes' histograms as one (their buckets summed: the same bounds)."""
    if len(snapshots) == 1:
        return snapshots[0]
    merged: Snapshot = {}
    for snapshot in snapshots:
        for metric, histogram in snapshot.items():
            total = merged.get(metric)
            if total is None:
                merged[metric] = Histogram(list(histogram.buckets), histogram.total)
                continue
            counts = dict(total.buckets)
            for le, count in histogram.buckets:
                counts[le] = counts.get(le, 0.0) + count
            merged[metric] = Histogram(sorted(counts.items()), total.total + histogram.total)
    return merged


def between(earlier: Snapshot | None, later: Snapshot | None) -> dict[str, Any] | None:
    """The report's server-side latencies: what was observed between two scrapes."""
    if later is None:
        return None
    result: dict[str, Any] = {}
    for name, metric in HISTOGRAMS.items():
        histogram = later.get(metric)
        if histogram is not None:
            result[name] = histogram.minus((earlier or {}).get(metric)).summary_ms()
    return result
