"""One log line when writes to the database start failing, one when they work again.

An outage makes every commit (and every cursor save) fail, often hundreds a second; a line
for each would bury everything else. `OutageLog` writes the first failure, then a summary at
most every `every_s` while it lasts, and one line when the next write succeeds.
"""

from __future__ import annotations

import logging

import trio


class OutageLog:
    """Throttled warnings about one kind of write (`what`), e.g. "commit"."""

    def __init__(self, logger: logging.Logger, what: str, *, every_s: float = 10.0) -> None:
        self._logger = logger
        self._what = what
        self._every_s = every_s
        self._since: float | None = None  # when the current outage began
        self._failures = 0  # writes failed in this outage
        self._items = 0  # items they carried (sends, cursors, ...)
        self._unlogged = 0  # failures since the last line
        self._logged_at = 0.0

    @property
    def in_outage(self) -> bool:
        return self._since is not None

    def failed(self, items: int, exc: BaseException) -> None:
        """A write of `items` items failed because the database is unavailable."""
        now = trio.current_time()
        self._failures += 1
        self._items += items
        self._unlogged += 1
        if self._since is None:
            self._since = self._logged_at = now
            self._unlogged = 0
            self._logger.warning("%s failed: %s", self._what, exc)
        elif now - self._logged_at >= self._every_s:
            self._logger.warning(
                "%s still failing after %.0f s (%d more failures): %s",
                self._what,
                now - self._since,
                self._unlogged,
                exc,
            )
            self._logged_at = now
            self._unlogged = 0

    def succeeded(self) -> None:
        """A write worked: if an outage was going on, say that it is over."""
        if self._since is None:
            return
        self._logger.warning(
            "%s works again after %.1f s; %d failed meanwhile (%d items refused or kept)",
            self._what,
            trio.current_time() - self._since,
            self._failures,
            self._items,
        )
        self._since = None
        self._failures = self._items = self._unlogged = 0
