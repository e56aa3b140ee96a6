"""Push values for the provider tests."""

from __future__ import annotations

import secrets
import uuid

from push.providers import Push, PushKind, Target


def apns_token() -> str:
    return secrets.token_hex(32)


def fcm_token() -> str:
    return "fcm:" + secrets.token_urlsafe(100)


def push(target: Target, **changes: object) -> Push:
    """An ALERT to `target` with fresh ids, changed by `changes`."""
    fields: dict[str, object] = {
        "push_id": uuid.uuid4(),
        "target": target,
        "kind": PushKind.ALERT,
        "badge": 2,
        "conversation_id": uuid.uuid4(),
        "message_id": uuid.uuid4(),
    }
    fields.update(changes)
    return Push(**fields)  # type: ignore[arg-type]
