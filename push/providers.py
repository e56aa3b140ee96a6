"""What the outbox worker hands a push provider, and what it gets back.

The worker knows nothing of Apple or Google: it builds provider-neutral `Push` values and
turns each `Result` into outbox state in one place. Each provider (`push/apns.py`,
`push/fcm.py`) renders a `Push` into its own wire format and classifies its provider's answer
into an `Outcome`; it never touches the database.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from protocol.errors import ObrolError

PROVIDERS = ("apns", "fcm")


class PushConfigError(ObrolError):
    """A provider's credentials or settings are unusable; the message says which and why.

    Never carries the key material itself.
    """


class PushKind(StrEnum):
    ALERT = "alert"  # a visible notification (generic "New message" unless opted in), badge
    BADGE = "badge"  # badge only, nothing shown: do-not-disturb, a muted conversation, a read
    NOTICE = "notice"  # an organization's notice: a generic alert for its kind, never its text


@dataclass(frozen=True, slots=True)
class Target:
    """Where a push goes: one device's registration."""

    provider: str  # "apns" | "fcm"
    token: str  # APNs: 64 hex digits; FCM: the registration token
    environment: str | None = None  # APNs: "sandbox" | "production"
    topic: str | None = None  # APNs: the app's bundle id
    project: str | None = None  # FCM: the Firebase project id


@dataclass(frozen=True, slots=True)
class Push:
    """One notification for one device, already minimized: nothing here is message content
    unless the recipient opted in to previews on that device (`title`/`body`).

    `push_id` is stable across retries of the same job (APNs `apns-id`), so a provider that
    sees it twice can tell. `collapse_id` makes a burst to one device replace, not pile up.
    """

    push_id: uuid.UUID
    target: Target
    kind: PushKind
    badge: int
    conversation_id: uuid.UUID | None = None
    message_id: uuid.UUID | None = None
    collapse_id: str | None = None  # at most 64 bytes (Apple's limit)
    expires_at: int | None = None  # unix seconds; None: the provider's default
    title: str | None = None  # only with the device's preview opt-in
    body: str | None = None  # None: the generic, localizable "New message"
    notice_id: uuid.UUID | None = None  # kind NOTICE: which notice (the app fetches it)
    notice_kind: str | None = None  # ... "service_ending" | "security_incident"


class Outcome(StrEnum):
    ACCEPTED = "accepted"  # the provider took it
    RETRY = "retry"  # try again later (429, 5xx, timeout, connection trouble)
    DISABLE = "disable"  # the token is dead (410, BadDeviceToken, UNREGISTERED)
    DEAD_LETTER = "dead_letter"  # the provider refuses this push for good; retrying won't help


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    status: int | None  # the provider's HTTP status; None when no answer came
    reason: str  # the provider's reason (e.g. "Unregistered") or ours (e.g. "timeout")
    retry_after_s: float | None = None  # the provider asked us to wait this long
    provider_timestamp: datetime | None = None  # APNs: when the token stopped being valid


class Provider(Protocol):
    """One push service. `send` never raises for a push that failed: each push gets a
    `Result`, in the order given; it raises only when cancelled."""

    name: str

    async def send(self, pushes: Sequence[Push]) -> list[Result]: ...

    async def aclose(self) -> None: ...
