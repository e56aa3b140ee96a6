"""How many frames a connection may send: a token bucket per connection.

A client gets `rate_per_s` frames a second on average and bursts of up to `burst`. A batch
that does not fit is refused whole (PROTOCOL.md §8): its sends are answered `rate_limited`
with their cids (retry later, same cid), the rest with one `rate_limited`; after
`strikes` refused batches in a row the connection is closed (4008).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FrameLimits:
    rate_per_s: float
    burst: int
    strikes: int = 3


DEFAULT_FRAME_LIMITS = FrameLimits(rate_per_s=200.0, burst=1000)


class FrameBudget:
    """One connection's bucket; time comes from the caller (trio.current_time())."""

    __slots__ = ("_last", "_limits", "_tokens", "strikes")

    def __init__(self, limits: FrameLimits, now: float) -> None:
        self._limits = limits
        self._tokens = float(limits.burst)
        self._last = now
        self.strikes = 0
        """Batches refused in a row."""

    def take(self, frames: int, now: float) -> bool:
        """Spend `frames` tokens if there are that many (True), else refuse (False)."""
        limits = self._limits
        self._tokens = min(limits.burst, self._tokens + (now - self._last) * limits.rate_per_s)
        self._last = now
        if frames <= self._tokens:
            self._tokens -= frames
            self.strikes = 0
            return True
        self.strikes += 1
        return False

    @property
    def exhausted(self) -> bool:
        """Refused often enough in a row to close the connection."""
        return self.strikes >= self._limits.strikes
