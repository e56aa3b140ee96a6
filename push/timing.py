"""Time arithmetic both providers share: a push's time to live, a provider's Retry-After."""

from __future__ import annotations

import email.utils
import math
from datetime import UTC

# A Retry-After beyond this is treated as this: a confused or hostile answer must not park a
# push for days. The outbox worker's own backoff still applies on top.
MAX_RETRY_AFTER_S = 3600.0


def seconds_left(expires_at: int | None, now: float) -> int | None:
    """Whole seconds from the second `now` is in until `expires_at` (unix seconds).

    Counted as aioapns counts (`int(time.time()) + time_to_live`), so its `apns-expiration`
    comes out as `expires_at` when its clock reads the same second. None when the push has no
    expiry (the provider's default applies); 0 or less when it has expired, which callers
    treat as "do not send".
    """
    if expires_at is None:
        return None
    return expires_at - math.floor(now)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from an HTTP Retry-After value (delta-seconds or an HTTP date).

    Returns None for a missing or unparsable value, never less than 0 and never more than
    `MAX_RETRY_AFTER_S`.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    seconds: float
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": UTC by RFC 5322
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
