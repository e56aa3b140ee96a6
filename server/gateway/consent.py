"""The consent rules a tagged `send` must meet before the store is asked.

Which purpose covers which kind of message, and what a tag's retention means for the
stored row. Whether the sender holds the grant and whether the scope names members is
decided by the store, in the transaction that writes the message (storage/messages.py), so
a withdrawal takes effect for the very next frame.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from protocol import Consent
from protocol.fields import Scope

# The one purpose that covers each kind of tagged message.
PURPOSE_FOR_KIND = {"location": "location_share", "file": "media_share"}


@dataclass(frozen=True, slots=True)
class Retention:
    erase_at: datetime | None  # when the sweeper erases it (None: the org's retention)
    until_withdrawn: bool  # erased when the sender withdraws the grant


def purpose_mismatch(kind: str, consent: Consent) -> str | None:
    """Why the tag's purpose cannot cover a `kind` message, or None if it can."""
    wanted = PURPOSE_FOR_KIND[kind]
    if consent.purpose != wanted:
        return f"a {kind} message is tagged with the purpose {wanted}"
    return None


def retention(consent: Consent, sent_at: datetime) -> Retention:
    """What a stored (not ephemeral) message's tag says about erasing it: a number of
    seconds after it was sent, or the tag's own expiry, whichever comes first."""
    ends = []
    if isinstance(consent.retention, int):
        ends.append(sent_at + timedelta(seconds=consent.retention))
    if consent.expires_at is not None:
        ends.append(datetime.fromtimestamp(consent.expires_at / 1000, UTC))
    return Retention(min(ends) if ends else None, consent.retention == "until_withdrawn")


def scope_accounts(scope: Scope) -> tuple[uuid.UUID, ...] | None:
    """The accounts a scope names (None: the whole conversation)."""
    return None if scope == "conversation" else tuple(uuid.UUID(bytes=a) for a in scope)
