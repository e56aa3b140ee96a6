"""Sealing, at start-up and beside live traffic, what was stored before encryption at rest.

Runs once per start until every table is walked (`storage.legacy`: bounded batches, resumed
after a restart, a no-op once done). Counts are logged, never contents.
"""

from __future__ import annotations

import logging

import trio

from server.services import Services
from storage.errors import DatabaseUnavailableError
from storage.legacy import TABLES, LegacySealer

logger = logging.getLogger(__name__)

FILE_BATCH = 20  # blobs per batch: each may be large
RETRY_S = 5.0
PAUSE_S = 0.01  # between batches: live traffic goes first


async def seal_legacy_data(services: Services, scope: trio.CancelScope) -> None:
    """Seal every table's leftover plaintext, batch by batch, until done or `scope` is
    cancelled (the next start resumes). A database outage pauses it."""
    sealer = LegacySealer(services.db, services.keyring, services.blobs)
    with scope:
        for what in TABLES:
            batch = FILE_BATCH if what == "files" else services.settings.sweep_batch
            sealed = 0
            while True:
                try:
                    done = await sealer.seal_batch(what, batch)
                except DatabaseUnavailableError as exc:
                    logger.warning("sealing stored %s paused (database unavailable): %s", what, exc)
                    await trio.sleep(RETRY_S)
                    continue
                except Exception:  # a bug must not take the server down: retried next start
                    logger.exception("sealing stored %s failed; the next start resumes it", what)
                    return
                sealed += done.sealed
                if done.done:
                    break
                await trio.sleep(PAUSE_S)
            if sealed:
                logger.info("sealed %d values of %s stored before encryption at rest", sealed, what)
