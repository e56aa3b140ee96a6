"""The retention sweeper: runs every rule of the retention schedule (server/retention.py).

Every server process runs one. Each pass gives every rule a turn of bounded transactions
(`sweep_batch` rows each, oldest first, rows another process holds skipped): no long lock;
only message erasures take the stream lock, for their batch (their tombstones take stream
positions), so message commits wait at most one small batch. A rule with more left makes
the next pass start at once; otherwise the sweeper sleeps `sweep_interval_s`. It logs what
it erased as counts per rule, never contents, and keeps them in `services.sweep_status`
(/healthz).
"""

from __future__ import annotations

import logging

import trio

from server.retention import Rule, rules
from server.services import Services
from server.sweep_status import Erased
from server.sweeps import OrgMessagesSweep, OrphanBlobsSweep
from storage.errors import DatabaseUnavailableError
from storage.outages import OutageLog

logger = logging.getLogger(__name__)

LOG_EVERY_S = 10.0  # while a backlog lasts, at most one log line this often


async def sweep_once(
    services: Services, schedule: tuple[Rule, ...]
) -> tuple[dict[str, Erased], bool]:
    """One pass over `schedule`: what each rule erased, and whether any has more to do."""
    now = services.clock()
    counts: dict[str, Erased] = {}
    more = False
    for rule in schedule:
        if rule.sweep is None:
            continue
        erased, left = await rule.sweep(services, now)
        counts[rule.name] = erased
        more = more or left
    return counts, more


def _summary(counts: dict[str, Erased]) -> str:
    return ", ".join(
        f"{name} {e.rows}" + (f" (+{e.files} files)" if e.files else "")
        for name, e in counts.items()
        if e.rows or e.files
    )


async def run_sweeper(services: Services) -> None:
    """Sweep until cancelled; a database outage is logged (throttled) and the next pass,
    `sweep_interval_s` later, tries again. While a backlog is being worked off, one log line
    every LOG_EVERY_S sums up the passes since the last."""
    outage = OutageLog(logger, "retention sweeper")
    schedule = rules(OrgMessagesSweep(), OrphanBlobsSweep())
    status = services.sweep_status
    unlogged: dict[str, Erased] = {}
    logged_at = trio.current_time()
    while True:
        started = services.clock()
        more = False
        try:
            counts, more = await sweep_once(services, schedule)
        except DatabaseUnavailableError as exc:
            outage.failed(1, exc)
            status.failed_at = started
        else:
            outage.succeeded()
            status.finished(started, services.clock(), counts)
            for name, erased in counts.items():
                unlogged.setdefault(name, Erased()).add(erased)
        if not more or trio.current_time() - logged_at >= LOG_EVERY_S:
            erased_text = _summary(unlogged)
            if erased_text:
                logger.info("sweeper erased: %s%s", erased_text, "; more to do" if more else "")
            unlogged, logged_at = {}, trio.current_time()
        if more:
            await trio.lowlevel.checkpoint()
        else:
            await trio.sleep(services.settings.sweep_interval_s)
