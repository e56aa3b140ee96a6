"""The retention sweeper: erases consent-tagged messages whose clock ran out (their rows,
receipts, file rows and blobs), ends live-location sessions whose time is up, and prunes
audit-log entries past `audit_retention_days` (up to a signed checkpoint: server.audit).

Every server process runs one. Each pass works in bounded transactions (`sweep_batch` rows,
oldest first, rows another process holds skipped): no long lock, no pause of live traffic.
It logs what it erased as counts, never contents.
"""

from __future__ import annotations

import logging

import trio

from server.audit import prune_audit
from server.gateway.announce import announce_live_end
from server.services import Services
from storage.errors import DatabaseUnavailableError
from storage.outages import OutageLog

logger = logging.getLogger(__name__)


async def sweep_once(services: Services) -> tuple[int, int, int]:
    """One pass: (messages erased, files erased, live sessions ended)."""
    now, batch = services.clock(), services.settings.sweep_batch
    messages = files = sessions = 0
    while True:
        ended = await services.live.expire(now, batch)
        await announce_live_end(services, ended)
        sessions += len(ended)
        if len(ended) < batch:
            break
    while True:
        erasure = await services.erasure.erase_expired(now, batch)
        for file_id in erasure.files:
            await services.blobs.delete(file_id)
        messages += len(erasure.messages)
        files += len(erasure.files)
        if len(erasure.messages) < batch:
            break
    return messages, files, sessions


async def run_sweeper(services: Services) -> None:
    """Sweep every `sweep_interval_s` until cancelled; a database outage is logged (throttled)
    and the next pass tries again."""
    outage = OutageLog(logger, "retention sweeper")
    while True:
        try:
            messages, files, sessions = await sweep_once(services)
            audit_entries = await prune_audit(services)
        except DatabaseUnavailableError as exc:
            outage.failed(1, exc)
        else:
            outage.succeeded()
            if messages or files or sessions:
                logger.info(
                    "sweeper: %d expired messages and %d files erased, %d live sessions ended",
                    messages,
                    files,
                    sessions,
                )
            if audit_entries:
                logger.info("sweeper: %d audit entries past their retention pruned", audit_entries)
        await trio.sleep(services.settings.sweep_interval_s)
