"""The outbox worker: claim due jobs, send them through their provider, record the outcome.

It knows nothing of Apple or Google: providers answer with `Result` values and this module
turns them into outbox state in one place (`PushOutbox.settle`). Several workers, in one
process or many, share the outbox safely: claims are leases taken with SKIP LOCKED.

Delivery is at least once. A push the provider accepted is settled right after; if this
process dies in between (or the database is away for longer than the lease), the job is
claimed again when the lease runs out and sent a second time, with the same apns-id and
collapse id, so the phone shows it once. Nothing acknowledged is ever lost.
"""

from __future__ import annotations

import contextlib
import logging
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import trio

from push.metrics import PushMetrics
from push.payload import build_push
from push.providers import Outcome, Provider, Push, Result
from storage.errors import DatabaseUnavailableError
from storage.outages import OutageLog
from storage.push_outbox import ClaimedJob, PushOutbox, Settlement

logger = logging.getLogger(__name__)

OUTAGE_POLL_S = 1.0  # how often a worker tries the database again while it is away


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    batch: int = 100  # jobs claimed at once
    settle_chunk: int = 50  # pushes sent and recorded together
    lease_s: float = 30.0  # a claim expires after this (a dead worker's jobs come back)
    idle_poll_s: float = 0.2  # how often an idle worker looks for due jobs
    max_attempts: int = 8  # then the job is dead-lettered
    backoff_base_s: float = 1.0  # retry n waits up to base * 2**n (full jitter) ...
    backoff_cap_s: float = 600.0  # ... but never more than this
    expiry_s: int = 24 * 3600  # a push the phone could not get is dropped by the provider
    results_keep_s: float = 24 * 3600  # push_results older than this are pruned
    prune_every_s: float = 600.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def backoff_s(attempts: int, config: WorkerConfig, retry_after_s: float | None) -> float:
    """Capped exponential backoff with full jitter, never sooner than the provider asked."""
    ceiling = min(config.backoff_cap_s, config.backoff_base_s * 2 ** min(attempts, 30))
    delay = random.uniform(0.5 * ceiling, ceiling)  # noqa: S311 - jitter, not a secret
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, config.backoff_cap_s))
    return delay


class PushWorker:
    def __init__(
        self,
        outbox: PushOutbox,
        providers: Mapping[str, Provider],
        unavailable: Mapping[str, str],
        config: WorkerConfig,
        metrics: PushMetrics,
        outage: OutageLog | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        """`unavailable`: providers that could not be set up, with why; their jobs are
        retried (an operator may fix the configuration) and then dead-lettered. `outage`:
        the database-outage log, shared by a process's workers (one line per outage)."""
        self._outbox = outbox
        self._providers = providers
        self._unavailable = unavailable
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._outage = outage or OutageLog(logger, "push outbox")

    async def run(self, stop: trio.Event) -> None:
        """Work until `stop` is set (the batch in flight is finished and recorded, so a
        restart re-sends nothing) or cancelled; database outages are waited out."""
        next_prune = 0.0
        while not stop.is_set():
            if trio.current_time() >= next_prune:
                next_prune = trio.current_time() + self._config.prune_every_s
                await self._prune()
            try:
                busy = await self._round()
            except DatabaseUnavailableError as exc:
                self._outage.failed(0, exc)
                busy, pause = False, OUTAGE_POLL_S
            except Exception:  # a bug must not take the server down: log, wait, go on
                logger.exception("push worker round failed; its jobs come back with the lease")
                busy, pause = False, OUTAGE_POLL_S
            else:
                pause = self._config.idle_poll_s
            if not busy:
                with trio.move_on_after(pause):
                    await stop.wait()

    async def _round(self) -> bool:
        """Claim and deliver one batch; True if there may be more due right now."""
        claim = await self._outbox.claim(self._config.batch, self._config.lease_s)
        self._outage.succeeded()
        self._metrics.add("moot", claim.moot)
        if claim.jobs:
            await self.deliver(claim.jobs)
        return claim.more

    async def deliver(self, jobs: Sequence[ClaimedJob]) -> None:
        """Send the claimed jobs' pushes, every provider and chunk at once; each chunk is
        settled as soon as its answers are in, so a slow push holds back only its chunk's
        record (what a crash right then would send again)."""
        now = self._clock()
        by_provider: dict[str, list[tuple[ClaimedJob, Push]]] = {}
        for job in jobs:
            push = build_push(job, now, self._config.expiry_s)
            by_provider.setdefault(push.target.provider, []).append((job, push))
        self._metrics.add("queued", len(jobs))
        size = self._config.settle_chunk
        async with trio.open_nursery() as nursery:
            for name, pairs in by_provider.items():
                for start in range(0, len(pairs), size):
                    nursery.start_soon(self._send_chunk, name, pairs[start : start + size])

    async def _send_chunk(self, name: str, pairs: list[tuple[ClaimedJob, Push]]) -> None:
        pushes = [push for _, push in pairs]
        provider = self._providers.get(name)
        if provider is None:
            reason = "provider_unusable" if name in self._unavailable else "provider_off"
            results = [Result(Outcome.RETRY, None, reason)] * len(pushes)
        else:
            results = await provider.send(pushes)
        done = self._clock()
        settled = [
            self._settlement(job, push, result, done)
            for (job, push), result in zip(pairs, results, strict=True)
        ]
        exhausted = set(await self._settle(settled))
        for (job, _), result in zip(pairs, results, strict=True):
            if result.outcome is Outcome.RETRY:
                counter = "dead_lettered" if job.device_id in exhausted else "retried"
                self._metrics.add(counter, 1, job.provider)
        if exhausted:
            logger.warning(
                "%d push jobs dead-lettered after %d attempts",
                len(exhausted),
                self._config.max_attempts,
            )

    def _settlement(
        self, job: ClaimedJob, push: Push, result: Result, done: datetime
    ) -> Settlement:
        provider = job.provider
        retry_at = None
        if result.outcome is Outcome.ACCEPTED:
            self._metrics.add("sent", 1, provider)
            if job.kind == "alert":
                self._metrics.accepted_after((done - job.queued_at).total_seconds())
        elif result.outcome is Outcome.RETRY:  # counted once settled: retried or dead
            delay = backoff_s(job.attempts, self._config, result.retry_after_s)
            retry_at = done + timedelta(seconds=delay)
        elif result.outcome is Outcome.DISABLE:
            self._metrics.add("disabled", 1, provider)
            logger.info("push token of device %s disabled: %s", job.device_id, result.reason)
        else:
            self._metrics.add("failed", 1, provider)
            self._metrics.add("dead_lettered", 1, provider)
            logger.warning(
                "push to device %s refused (%s %s): dead-lettered",
                job.device_id,
                result.status,
                result.reason,
            )
        return Settlement(
            device_id=job.device_id,
            pos=job.pos,
            lease=job.lease,
            token=job.token,
            kind=push.kind.value,
            outcome=result.outcome.value,
            status=result.status,
            reason=result.reason[:200],
            retry_at=retry_at,
            provider_timestamp=result.provider_timestamp,
            notice_id=job.notice_id,
        )

    async def _settle(self, settled: list[Settlement]) -> list[uuid.UUID]:
        """Record the outcomes; through a database outage, keep trying for most of the
        lease (after that the jobs are claimed again anyway, and re-sent)."""
        deadline = trio.current_time() + 0.8 * self._config.lease_s
        delay = 0.25
        while True:
            try:
                exhausted = await self._outbox.settle(settled, self._config.max_attempts)
            except DatabaseUnavailableError as exc:
                self._outage.failed(len(settled), exc)
                if trio.current_time() + delay > deadline:
                    logger.warning(
                        "could not record %d push results; their jobs will be sent again",
                        len(settled),
                    )
                    return []
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._outage.succeeded()
            return exhausted

    async def _prune(self) -> None:
        with contextlib.suppress(DatabaseUnavailableError):  # the next round tries again
            await self._outbox.prune_results(self._config.results_keep_s)
