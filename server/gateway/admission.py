"""FIFO admission for gateway handshakes.

A reconnect storm brings thousands of handshakes at once. Run together, every one of them
progresses a little at a time and most finish late (past the clients' connect timeout, so
they retry and add to the storm). Admission bounds the handshakes in progress to a number of
slots; the rest wait in arrival order (trio's CapacityLimiter is fair: a freed slot goes to
the task that has waited longest) for at most a queue deadline, after which the client is
told `busy` (PROTOCOL.md §7) and retries later. A slot holder that is slow to send its next
handshake message loses its slot at the per-step deadline (the listener enforces it), so
slow or stalled clients cannot keep others waiting.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import trio

from server.gateway.states import GatewayStats


class QueueTimeout(Exception):
    """No handshake slot came free within the queue deadline."""


class Admission:
    """At most `slots` handshakes in progress; others wait in arrival order for up to
    `queue_timeout_s` seconds."""

    def __init__(self, slots: int, queue_timeout_s: float, stats: GatewayStats) -> None:
        self._limiter = trio.CapacityLimiter(slots)
        self.queue_timeout_s = queue_timeout_s
        self._stats = stats  # handshakes_in_progress, _waiting, _refused_busy kept here

    @contextlib.asynccontextmanager
    async def slot(self, owner: object) -> AsyncIterator[None]:
        """Hold a handshake slot for the body of the `async with` (on behalf of `owner`, one
        slot per owner). Raises QueueTimeout, holding nothing, when none came free in time;
        trio.Cancelled passes through."""
        stats = self._stats
        stats.handshakes_waiting += 1
        try:
            with trio.move_on_after(self.queue_timeout_s) as queued:
                await self._limiter.acquire_on_behalf_of(owner)
        finally:
            stats.handshakes_waiting -= 1
        if queued.cancelled_caught:
            stats.handshakes_refused_busy += 1
            raise QueueTimeout
        stats.handshakes_in_progress += 1
        try:
            yield
        finally:
            stats.handshakes_in_progress -= 1
            self._limiter.release_on_behalf_of(owner)
