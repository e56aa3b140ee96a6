"""How a provider logs a batch's results: push ids and outcomes, never tokens or payloads."""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence

from push.providers import Outcome, Push, Result


def log_results(
    logger: logging.Logger, service: str, pushes: Sequence[Push], results: Sequence[Result]
) -> None:
    """One warning per batch that had trouble (counts by outcome and reason), one info line
    per disabled token, the rest at debug."""
    trouble: collections.Counter[str] = collections.Counter()
    for push, result in zip(pushes, results, strict=True):
        if result.outcome is Outcome.ACCEPTED:
            continue
        trouble[f"{result.outcome.value}:{result.reason}"] += 1
        if result.outcome is Outcome.DISABLE:
            logger.info("%s push %s: token disabled (%s)", service, push.push_id, result.reason)
        else:
            logger.debug(
                "%s push %s: %s (%s %s)",
                service,
                push.push_id,
                result.outcome.value,
                result.status,
                result.reason,
            )
    if trouble:
        summary = ", ".join(f"{key} x{count}" for key, count in sorted(trouble.items()))
        logger.warning("%s batch of %d: %s", service, len(pushes), summary)
