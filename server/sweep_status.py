"""What the retention sweeper erased: counts per rule, never contents (shown at /healthz)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from server.metrics import SWEEP_ERASED, SWEEP_FILES, SWEEP_PASSES


@dataclass(slots=True)
class Erased:
    """What a rule erased: rows (its own kind: messages, records, sessions...) and files."""

    rows: int = 0
    files: int = 0

    def add(self, other: Erased) -> None:
        self.rows += other.rows
        self.files += other.files


@dataclass
class SweepStatus:
    """This process's sweeper: how many passes, the last one, totals since start."""

    passes: int = 0
    last_started_at: datetime | None = None
    last_finished_at: datetime | None = None
    last: dict[str, Erased] = field(default_factory=dict)
    totals: dict[str, Erased] = field(default_factory=dict)
    failed_at: datetime | None = None  # the last pass that met a database outage

    def finished(self, started: datetime, finished: datetime, counts: dict[str, Erased]) -> None:
        self.passes += 1
        self.last_started_at, self.last_finished_at, self.last = started, finished, counts
        SWEEP_PASSES.inc()
        for name, erased in counts.items():
            self.totals.setdefault(name, Erased()).add(erased)
            SWEEP_ERASED.labels(name).inc(erased.rows)
            SWEEP_FILES.labels(name).inc(erased.files)

    def as_json(self) -> dict[str, Any]:
        def counts(by_rule: dict[str, Erased]) -> dict[str, dict[str, int]]:
            return {name: {"rows": e.rows, "files": e.files} for name, e in by_rule.items()}

        def iso(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "passes": self.passes,
            "last_pass": {
                "started_at": iso(self.last_started_at),
                "finished_at": iso(self.last_finished_at),
                "erased": counts(self.last),
            },
            "erased_since_start": counts(self.totals),
            "last_failed_at": iso(self.failed_at),
        }
