"""Latency histograms (HDR) and the counters a worker keeps.

Latencies are recorded in microseconds, from 1 µs to one hour with 3 significant digits
(HdrHistogram): recording costs about a microsecond and memory stays fixed however many
deliveries there are. Histograms travel between processes in HdrHistogram's compressed
encoding and are merged exactly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIGNIFICANT_DIGITS = 3
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}


class Latency:
    """A latency distribution in microseconds; values beyond an hour count as an hour."""

    def __init__(self) -> None:
        self._h = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)

    def record_us(self, value_us: int) -> None:
        self._h.record_value(min(max(value_us, LOWEST_US), HIGHEST_US))

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def merge(self, other: Latency) -> None:
        self._h.add(other._h)

    def encode(self) -> bytes:
        """Compressed form (for the link between processes)."""
        encoded: bytes = self._h.encode()
        return encoded

    @classmethod
    def decode(cls, data: bytes) -> Latency:
        latency = cls()
        latency._h = HdrHistogram.decode(data)
        return latency

    def percentile_ms(self, percentile: float) -> float:
        return float(self._h.get_value_at_percentile(percentile)) / 1000

    def max_ms(self) -> float:
        return float(self._h.get_max_value()) / 1000

    def summary_ms(self) -> dict[str, float | None]:
        """`p50`, `p90`, `p99`, `p999`, `max` and `mean` in milliseconds (None if empty)."""
        if self.count == 0:
            return {name: None for name in (*PERCENTILES, "max", "mean")}
        summary: dict[str, float | None] = {
            name: round(self.percentile_ms(p), 3) for name, p in PERCENTILES.items()
        }
        summary["max"] = round(self.max_ms(), 3)
        summary["mean"] = round(float(self._h.get_mean_value()) / 1000, 3)
        return summary

    def distribution_ms(self) -> list[tuple[float, float]]:
        """(percentile, latency ms) points for a percentile plot, from p0 to the maximum."""
        if self.count == 0:
            return []
        points: list[tuple[float, float]] = []
        for item in self._h.get_percentile_iterator(5):
            points.append((float(item.percentile_level_iterated_to), item.value_iterated_to / 1000))
        return points


@dataclass
class Counts:
    """What a worker counts; sent to the coordinator as deltas and summed there."""

    connected: int = 0
    """Devices currently established and caught up (`synced`)."""
    connects: int = 0
    """Handshakes completed (first connections and reconnections)."""
    sent: int = 0
    acked: int = 0
    delivered: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def as_wire(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "connects": self.connects,
            "sent": self.sent,
            "acked": self.acked,
            "delivered": self.delivered,
            "errors": dict(self.errors),
        }
