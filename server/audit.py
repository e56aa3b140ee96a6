"""The server's side of the audit log: signed checkpoints and pruning.

Every server process runs `run_checkpointer`: about once a second it signs the chain's
head with the server identity key if `audit_checkpoint_entries` entries are unsigned or
the oldest unsigned one is `audit_checkpoint_interval_s` old (two processes signing the
same head make one checkpoint), and once more when the server stops. The retention sweeper
calls `prune_audit`: entries older than `audit_retention_days` go, up to the newest
checkpoint older than that (storage.audit.AuditStore.prune).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import trio
from nacl.signing import SigningKey

from server.services import Services
from storage.audit import AuditStore, CheckpointRule
from storage.audit_chain import Checkpoint
from storage.errors import DatabaseUnavailableError
from storage.outages import OutageLog

logger = logging.getLogger(__name__)

POLL_S = 1.0  # how often a process looks whether a checkpoint is due
FINAL_CHECKPOINT_S = 5.0  # the last checkpoint at shutdown gives up after this


async def sign_head(
    audit: AuditStore, key: SigningKey, rule: CheckpointRule, at: datetime
) -> Checkpoint | None:
    """Sign the chain's head with `key` if `rule` says a checkpoint is due."""

    def sign(message: bytes) -> bytes:
        return bytes(key.sign(message).signature)

    return await audit.checkpoint(sign, bytes(key.verify_key), rule, at)


async def checkpoint(services: Services, *, force: bool = False) -> Checkpoint | None:
    """Sign the chain's head if a checkpoint is due (always, if anything is unsigned, with
    `force`). None if nothing was signed."""
    settings = services.settings
    rule = CheckpointRule(
        settings.audit_checkpoint_entries, settings.audit_checkpoint_interval_s, force
    )
    return await sign_head(services.audit, services.identity, rule, services.clock())


async def run_checkpointer(services: Services, stop: trio.Event) -> None:
    """Sign checkpoints as they fall due until `stop` is set, then sign what is left."""
    outage = OutageLog(logger, "audit checkpoints")
    poll_s = min(POLL_S, services.settings.audit_checkpoint_interval_s)
    while not stop.is_set():
        try:
            made = await checkpoint(services)
        except DatabaseUnavailableError as exc:
            outage.failed(1, exc)
        else:
            outage.succeeded()
            if made is not None:
                logger.debug("audit checkpoint signed at seq %d", made.seq)
        with trio.move_on_after(poll_s):
            await stop.wait()
    with trio.move_on_after(FINAL_CHECKPOINT_S) as scope:
        scope.shield = True
        try:
            await checkpoint(services, force=True)
        except DatabaseUnavailableError as exc:
            logger.warning("no audit checkpoint at shutdown (database unavailable): %s", exc)


async def prune_audit(services: Services, now: datetime) -> int:
    """Delete the entries past `audit_retention_days`, up to a checkpoint; how many (the
    retention schedule's `audit_log` rule, server/retention.py)."""
    settings = services.settings
    cutoff = now - timedelta(days=settings.audit_retention_days)
    return await services.audit.prune(cutoff, now, settings.sweep_batch)
