"""The shape an FCM v1 send request must have, checked lightly, with Google's wording.

Two kinds of refusal, as Google makes them: the proto-JSON parser's ("Invalid JSON payload
received...", "Invalid value at ..."), which carry a BadRequest field violation, and FCM's
own validation ("Recipient of the message is not set.", a bad registration token), which
also carry an FcmError INVALID_ARGUMENT detail.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_PAYLOAD_BYTES = 4096
MAX_TTL_S = 28 * 24 * 3600
_REQUEST_FIELDS = frozenset({"message", "validate_only", "validateOnly"})
_MESSAGE_FIELDS = frozenset(
    {
        "name",
        "data",
        "notification",
        "android",
        "webpush",
        "apns",
        "fcm_options",
        "fcmOptions",
        "token",
        "topic",
        "condition",
    }
)
_ANDROID_FIELDS = frozenset(
    {
        "collapse_key",
        "collapseKey",
        "priority",
        "ttl",
        "restricted_package_name",
        "restrictedPackageName",
        "data",
        "notification",
        "fcm_options",
        "fcmOptions",
        "direct_boot_ok",
        "directBootOk",
        "bandwidth_constrained_ok",
        "bandwidthConstrainedOk",
        "restricted_satellite_ok",
        "restrictedSatelliteOk",
    }
)
_OBJECT_FIELDS = ("notification", "webpush", "apns", "fcm_options", "fcmOptions")
_RESERVED_DATA_KEYS = frozenset({"from", "notification", "message_type"})
_DURATION = re.compile(r"([0-9]{1,12})(\.[0-9]{1,9})?s")
_REGISTRATION_TOKEN = re.compile(r"[A-Za-z0-9_\-:.]{1,4096}")
_TOPIC = re.compile(r"(/topics/)?[a-zA-Z0-9\-_.~%]{1,900}")


class Invalid(Exception):
    """400 INVALID_ARGUMENT: `message` for the client, the offending `field` if known."""

    def __init__(self, message: str, field: str | None = None, *, fcm_error: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.fcm_error = fcm_error


def _unknown(name: str, where: str | None) -> Invalid:
    at = f" at '{where}'" if where else ""
    text = f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.'
    return Invalid(text, where)


def _bad_value(where: str, type_name: str, value: Any) -> Invalid:
    shown = json.dumps(value) if not isinstance(value, dict | list) else type(value).__name__
    return Invalid(f"Invalid value at '{where}' ({type_name}), {shown}", where)


def check_send_request(is_json: bool, body: Any) -> None:
    """Raise Invalid unless `body` is `{"message": {...}}` in FCM v1's shape."""
    if not is_json or not isinstance(body, dict):
        raise Invalid("Invalid JSON payload received. Expected an object.", "")
    for name in body:
        if name not in _REQUEST_FIELDS:
            raise _unknown(name, None)
    message = body.get("message")
    if message is None:
        raise Invalid("Recipient of the message is not set.", "message", fcm_error=True)
    if not isinstance(message, dict):
        raise _bad_value("message", "type.googleapis.com/google.firebase.fcm.v1.Message", message)
    for name in message:
        if name not in _MESSAGE_FIELDS:
            raise _unknown(name, "message")
    _check_target(message)
    _check_string_map(message.get("data"), "message.data")
    for name in _OBJECT_FIELDS:
        value = message.get(name)
        if value is not None and not isinstance(value, dict):
            raise _bad_value(f"message.{name}", "TYPE_MESSAGE", value)
    android = message.get("android")
    if android is not None:
        _check_android(android)
    size = len(json.dumps([message.get("data"), message.get("notification")]).encode())
    if size > MAX_PAYLOAD_BYTES:
        raise Invalid("Message is too big", "message", fcm_error=True)


def _check_target(message: dict[str, Any]) -> None:
    targets = [name for name in ("token", "topic", "condition") if message.get(name)]
    if not targets:
        raise Invalid("Recipient of the message is not set.", "message", fcm_error=True)
    if len(targets) > 1:
        raise Invalid(
            "Invalid value at 'message' (oneof), oneof field 'target' is already set. "
            f"Cannot set '{targets[1]}'",
            "message",
        )
    name = targets[0]
    value = message[name]
    if not isinstance(value, str):
        raise _bad_value(f"message.{name}", "TYPE_STRING", value)
    if name == "token" and not _REGISTRATION_TOKEN.fullmatch(value):
        raise Invalid(
            "The registration token is not a valid FCM registration token",
            "message.token",
            fcm_error=True,
        )
    if name == "topic" and not _TOPIC.fullmatch(value):
        raise Invalid("Invalid topic name", "message.topic", fcm_error=True)


def _check_string_map(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _bad_value(where, "TYPE_MESSAGE", value)
    for index, (key, item) in enumerate(value.items()):
        if not isinstance(item, str):
            raise _bad_value(f"{where}[{index}].value", "TYPE_STRING", item)
        if key in _RESERVED_DATA_KEYS or key.startswith(("google.", "gcm.")):
            raise Invalid(f"Invalid data payload key: {key}", where, fcm_error=True)


def _check_android(android: Any) -> None:
    if not isinstance(android, dict):
        raise _bad_value(
            "message.android", "type.googleapis.com/google.firebase.fcm.v1.AndroidConfig", android
        )
    for name in android:
        if name not in _ANDROID_FIELDS:
            raise _unknown(name, "message.android")
    priority = android.get("priority")
    if priority is not None and (
        not isinstance(priority, str) or priority.upper() not in ("NORMAL", "HIGH")
    ):
        raise _bad_value(
            "message.android.priority",
            "type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority",
            priority,
        )
    ttl = android.get("ttl")
    if ttl is not None:
        match = _DURATION.fullmatch(ttl) if isinstance(ttl, str) else None
        if match is None:
            raise _bad_value(
                "message.android.ttl", "type.googleapis.com/google.protobuf.Duration", ttl
            )
        if int(match.group(1)) > MAX_TTL_S:
            raise Invalid(
                f"The TTL ({ttl}) exceeds the maximum of {MAX_TTL_S}s",
                "message.android.ttl",
                fcm_error=True,
            )
    _check_string_map(android.get("data"), "message.android.data")
    for name in ("collapse_key", "collapseKey", "restricted_package_name"):
        value = android.get(name)
        if value is not None and not isinstance(value, str):
            raise _bad_value(f"message.android.{name}", "TYPE_STRING", value)
