"""APNs wire format: a `Push` as an aioapns request, and Apple's answer as a `Result`.

No I/O here. Apple's references: "Generating a remote notification" (the payload keys),
"Sending notification requests to APNs" (the headers) and "Handling notification responses
from APNs" (the statuses and reasons classified below).

The payload is minimal by construction: the `aps` dictionary, the conversation id `c` and the
message id `m`, nothing else; a notice's push carries the notice id `n` and its kind `k`
instead, with a loc-key for the kind (never the notice's title or text). Two choices
follow Apple's documentation rather than habit:
- The generic alert is `{"loc-key": "NEW_MESSAGE"}` with no `body`: `loc-key` is used
  *instead of* `body` and must name a key in the app's Localizable.strings, so the app ships
  that string; sending both would leave which one shows up to the device.
- A badge-only push is push type `alert` at priority 5 with `{"aps": {"badge": n}}`. Apple
  reserves push type `background` (with `content-available`) for pushes that change nothing
  the user sees, says their `aps` must not hold `alert`, `badge` or `sound`, and throttles them
  to a few an hour; the `alert` push type is the one for "an alert, badge, or sound".
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from aioapns.common import NotificationRequest, PushType

from push.providers import Outcome, Push, PushKind, Result, Target
from push.timing import seconds_left

MAX_PAYLOAD_BYTES = 4096  # Apple's limit for every push type but VoIP
ALERT_LOC_KEY = "NEW_MESSAGE"  # the app's Localizable.strings key for "New message"
# An organization's notice, per kind: "Your organization's service is ending" and "Security
# notice from your organization", say; the app fetches the notice itself by its id (`n`).
NOTICE_LOC_KEYS = {
    "service_ending": "NOTICE_SERVICE_ENDING",
    "security_incident": "NOTICE_SECURITY_INCIDENT",
}
NOTICE_THREAD_ID = "notices"
PRIORITY_IMMEDIATE = 10
PRIORITY_CONSERVE_POWER = 5
ENVIRONMENTS = ("production", "sandbox")

# Device tokens are hex (64 digits today; Apple says they may grow). Anything else would end
# up in the request path, and Apple could only answer BadDeviceToken.
_DEVICE_TOKEN = re.compile(r"[0-9a-fA-F]{64,200}")

# 400 reasons that mean this token can never be delivered to under our topic.
_DEAD_TOKEN_REASONS = frozenset(
    {
        "BadDeviceToken",  # not a token APNs issued (or one from the other environment)
        # The token belongs to another app (bundle id) than the topic we send under: e.g. a
        # registration from another build flavour. It can never reach this app, so retrying
        # is pointless. (If our configured topic were wrong, every token would fail this way;
        # the app registers its token again at launch, which heals that once fixed.)
        "DeviceTokenNotForTopic",
    }
)


def environment_of(target: Target) -> str | None:
    """The APNs environment a target lives in ("production" by default); None if unknown."""
    environment = target.environment or "production"
    return environment if environment in ENVIRONMENTS else None


def payload(push: Push) -> dict[str, Any]:
    """The JSON payload for `push`: ids and counts, plus title/body only where opted in."""
    aps: dict[str, Any]
    if push.kind is PushKind.NOTICE:
        loc_key = NOTICE_LOC_KEYS.get(push.notice_kind or "", "NOTICE")
        aps = {
            "alert": {"loc-key": loc_key},
            "badge": push.badge,
            "sound": "default",
            "thread-id": NOTICE_THREAD_ID,
        }
        return {"aps": aps, "n": str(push.notice_id), "k": push.notice_kind}
    if push.kind is PushKind.ALERT:
        alert: dict[str, str] = {}
        if push.title is not None:
            alert["title"] = push.title
        if push.body is not None:
            alert["body"] = push.body
        else:
            alert["loc-key"] = ALERT_LOC_KEY
        aps = {"alert": alert, "badge": push.badge, "sound": "default"}
        if push.conversation_id is not None:
            aps["thread-id"] = str(push.conversation_id)
    else:
        aps = {"badge": push.badge}
    message: dict[str, Any] = {"aps": aps}
    if push.conversation_id is not None:
        message["c"] = str(push.conversation_id)
    if push.message_id is not None:
        message["m"] = str(push.message_id)
    return message


def encoded_size(message: dict[str, Any]) -> int:
    """The payload's size in bytes, encoded exactly as aioapns encodes it."""
    return len(json.dumps(message, ensure_ascii=False).encode())


def render(push: Push, *, default_topic: str, now: float) -> NotificationRequest | Result:
    """The aioapns request for `push`, or the `Result` that makes sending it pointless.

    Never raises for a bad push: a wrong provider, an unknown environment, an expired push or
    an oversized payload is a DEAD_LETTER; a malformed token is a DISABLE.
    """
    target = push.target
    if target.provider != "apns":
        return Result(Outcome.DEAD_LETTER, None, "wrong_provider")
    if environment_of(target) is None:
        return Result(Outcome.DEAD_LETTER, None, "bad_environment")
    if not _DEVICE_TOKEN.fullmatch(target.token):
        return Result(Outcome.DISABLE, None, "bad_token")
    time_to_live = seconds_left(push.expires_at, now)
    if time_to_live is not None and time_to_live <= 0:
        return Result(Outcome.DEAD_LETTER, None, "expired")
    message = payload(push)
    if encoded_size(message) > MAX_PAYLOAD_BYTES:
        return Result(Outcome.DEAD_LETTER, None, "payload_too_large")
    alert = push.kind in (PushKind.ALERT, PushKind.NOTICE)
    return NotificationRequest(
        device_token=target.token,
        message=message,
        notification_id=str(push.push_id),
        # aioapns turns this back into `apns-expiration` = its clock + time_to_live, so the
        # header is `expires_at` to within the second its clock may have moved on.
        time_to_live=time_to_live,
        priority=PRIORITY_IMMEDIATE if alert else PRIORITY_CONSERVE_POWER,
        collapse_key=push.collapse_id,
        push_type=PushType.ALERT,
        apns_topic=target.topic or default_topic,
    )


def _timestamp(value: object) -> datetime | None:
    """Apple's `timestamp` (milliseconds since the epoch) as a UTC datetime, if it is one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def classify(
    status: str | None,
    reason: str | None,
    timestamp: object = None,
    retry_after_s: float | None = None,
) -> Result:
    """Apple's answer (HTTP status, JSON `reason` and `timestamp`) as a `Result`.

    `reason` None means the error answer had no JSON body with a reason: that is
    "bad_provider_answer", retried when the status says the trouble is Apple's or ours to fix
    (5xx, 429, 403), dead-lettered for other 4xx.
    """
    try:
        code = int(status or "")
    except ValueError:
        return Result(Outcome.RETRY, None, "bad_provider_answer")
    if code == 200:
        return Result(Outcome.ACCEPTED, code, "accepted")
    # Credentials or clock trouble (InvalidProviderToken, ExpiredProviderToken, ...) is ours
    # to fix, and the worker dead-letters after its last attempt; 429 and 5xx are Apple's.
    retryable = code in (403, 429) or code >= 500
    client_error = 400 <= code < 500
    when: datetime | None = None
    if not reason:
        reason = "bad_provider_answer"
        outcome = Outcome.DEAD_LETTER if client_error and not retryable else Outcome.RETRY
    elif code == 410:  # Unregistered, ExpiredToken: the token is no longer valid for the topic
        outcome, when = Outcome.DISABLE, _timestamp(timestamp)
    elif code == 400 and reason in _DEAD_TOKEN_REASONS:
        outcome = Outcome.DISABLE
    elif retryable:
        outcome = Outcome.RETRY
    elif client_error:  # other 400s, 404 BadPath, 405, 413 PayloadTooLarge: for good
        outcome = Outcome.DEAD_LETTER
    else:
        outcome, reason = Outcome.RETRY, "bad_provider_answer"
    return Result(
        outcome,
        code,
        reason,
        retry_after_s=retry_after_s if outcome is Outcome.RETRY else None,
        provider_timestamp=when,
    )
