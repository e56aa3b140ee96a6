"""FCM HTTP v1 wire format: a `Push` as a `messages:send` body, and Google's answer as a
`Result`. No I/O here.

The message is minimal by construction: the token, string `data` ("c", "m", "badge",
"kind"; for an organization's notice "n" and "k", its id and kind, never its text) and
the `android` block (collapse key, priority, ttl, and for an alert the notification). The
generic alert is `body_loc_key` alone: the Android SDK shows a literal `body` in preference
to the localized one, so a fallback body would never be localized.

Google's answer ("Firebase Cloud Messaging: ErrorCode"): the `errorCode` in
`error.details[]` (type `google.firebase.fcm.v1.FcmError`) says what happened; without one we
fall back to the HTTP status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from push.fcm_auth import PROJECT_ID
from push.providers import Outcome, Push, PushKind, Result
from push.timing import parse_retry_after, seconds_left

ALERT_BODY_LOC_KEY = "new_message"  # the app's string resource for "New message"
NOTICE_BODY_LOC_KEYS = {  # an organization's notice, per kind (see apns_wire.NOTICE_LOC_KEYS)
    "service_ending": "notice_service_ending",
    "security_incident": "notice_security_incident",
}
MAX_TOKEN_CHARS = 4096

_DISABLE_CODES = frozenset(
    {
        "UNREGISTERED",  # the app was uninstalled or the token expired
        # The token was registered for another Firebase project (sender) than ours, e.g. a
        # build of the app pointed at another project: we can never send to it.
        "SENDER_ID_MISMATCH",
    }
)
_RETRY_CODES = frozenset(
    {
        "QUOTA_EXCEEDED",  # 429
        "UNAVAILABLE",  # 503
        "INTERNAL",  # 500
        "THIRD_PARTY_AUTH_ERROR",  # 401: FCM's APNs/web-push credentials, an operator's fix
        "APNS_AUTH_ERROR",  # its former name
    }
)


@dataclass(frozen=True, slots=True)
class FcmRequest:
    project: str
    body: dict[str, Any]


def message(push: Push, now: float) -> dict[str, Any]:
    """The `message` object for `push` (its ttl counted from `now`)."""
    data = {"badge": str(push.badge), "kind": push.kind.value}
    if push.conversation_id is not None:
        data["c"] = str(push.conversation_id)
    if push.message_id is not None:
        data["m"] = str(push.message_id)
    if push.kind is PushKind.NOTICE:
        data["n"] = str(push.notice_id)
        data["k"] = push.notice_kind or ""
    shown = push.kind in (PushKind.ALERT, PushKind.NOTICE)
    android: dict[str, Any] = {"priority": "HIGH" if shown else "NORMAL"}
    if push.collapse_id is not None:
        android["collapse_key"] = push.collapse_id
    time_to_live = seconds_left(push.expires_at, now)
    if time_to_live is not None:
        android["ttl"] = f"{time_to_live}s"
    if push.kind is PushKind.NOTICE:
        android["notification"] = {
            "body_loc_key": NOTICE_BODY_LOC_KEYS.get(push.notice_kind or "", "notice"),
            "notification_count": push.badge,
        }
    elif push.kind is PushKind.ALERT:
        notification: dict[str, Any] = {}
        if push.title is not None:
            notification["title"] = push.title
        if push.body is not None:
            notification["body"] = push.body
        else:
            notification["body_loc_key"] = ALERT_BODY_LOC_KEY
        notification["notification_count"] = push.badge
        android["notification"] = notification
    return {"token": push.target.token, "data": data, "android": android}


def render(push: Push, *, default_project: str, now: float) -> FcmRequest | Result:
    """The request for `push`, or the `Result` that makes sending it pointless (a wrong
    provider, bad project or expired push: DEAD_LETTER; an empty or absurd token: DISABLE)."""
    target = push.target
    if target.provider != "fcm":
        return Result(Outcome.DEAD_LETTER, None, "wrong_provider")
    project = target.project or default_project
    if not PROJECT_ID.fullmatch(project):
        return Result(Outcome.DEAD_LETTER, None, "bad_project")
    if not target.token or len(target.token) > MAX_TOKEN_CHARS:
        return Result(Outcome.DISABLE, None, "bad_token")
    time_to_live = seconds_left(push.expires_at, now)
    if time_to_live is not None and time_to_live <= 0:
        return Result(Outcome.DEAD_LETTER, None, "expired")
    return FcmRequest(project, {"message": message(push, now)})


def _error_code(body: bytes) -> tuple[bool, str | None]:
    """`(is_google_error, code)`: whether `body` is a Google JSON error, and its FCM
    `errorCode` (else its canonical `status`), if any."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return False, None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return False, None
    details = error.get("details")
    if isinstance(details, list):
        for detail in details:
            if isinstance(detail, dict) and isinstance(detail.get("errorCode"), str):
                return True, str(detail["errorCode"])
    status = error.get("status")
    return True, status if isinstance(status, str) else None


def classify(status: int, body: bytes, retry_after: str | None, now: float) -> Result:
    """FCM's answer to one `messages:send` as a `Result`.

    A 401 is RETRY here; the provider refreshes its access token and sends once more first.
    """
    if status == 200:
        return Result(Outcome.ACCEPTED, status, "accepted")
    retryable_status = status >= 500 or status in (401, 403, 429)
    client_error = 400 <= status < 500
    is_error, code = _error_code(body)
    reason = code or f"http_{status}"
    if not is_error:
        reason = "bad_provider_answer"
        outcome = Outcome.DEAD_LETTER if client_error and not retryable_status else Outcome.RETRY
    elif code in _DISABLE_CODES or (status == 404 and code in (None, "NOT_FOUND")):
        outcome = Outcome.DISABLE
    elif code in _RETRY_CODES or (code != "INVALID_ARGUMENT" and retryable_status):
        outcome = Outcome.RETRY
    elif code == "INVALID_ARGUMENT" or client_error:
        outcome = Outcome.DEAD_LETTER
    else:
        outcome, reason = Outcome.RETRY, "bad_provider_answer"
    if outcome is not Outcome.RETRY:
        return Result(outcome, status, reason)
    return Result(outcome, status, reason, parse_retry_after(retry_after, now))
