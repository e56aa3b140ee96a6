"""Offline phones (`--push-share P`): which devices they are, and their push tokens.

A phone is a provisioned device that registers a push token and never connects, so the
server can only reach it through APNs or FCM. Pure and deterministic for a given layout and
seed:

- Phones are taken only from users' second and later devices (device `d >= users`; a
  user's first device is `d == user`, see `loadtest/topology.py`), so every user keeps at
  least one connected device to send from. A share that would need more phones than that is
  refused by `check_config`.
- Which of those devices become phones is a shuffle seeded by `--seed`; a smaller share
  takes a prefix of the same order, so its phones are among a larger share's.
- Alternately APNs and FCM in that order: half each (APNs gets the odd one out).
- A token is derived from the device id, so a re-run registers the same token again.
"""

from __future__ import annotations

import hashlib
import random
import uuid

PROVIDERS = ("apns", "fcm")
TOKEN_LABEL = b"obrol loadtest push token "
FCM_PREFIX = "lt-fcm:"


def phone_count(devices: int, share: float) -> int:
    """How many of `devices` are phones for `share` (0..1), rounded to the nearest."""
    return round(devices * share)


def phone_capacity(devices: int, users: int) -> int:
    """The most phones a layout can have: every device but each user's first."""
    return max(devices - users, 0)


def choose_phones(devices: int, users: int, share: float, seed: int) -> dict[int, str]:
    """Device index -> provider ("apns" or "fcm") of every phone, in choice order.

    Raises ValueError if the share needs more phones than `phone_capacity` allows."""
    count = phone_count(devices, share)
    if count > phone_capacity(devices, users):
        raise ValueError(
            f"{count} phones needed, only {phone_capacity(devices, users)} second devices"
        )
    candidates = list(range(users, devices))
    random.Random(f"obrol loadtest phones {seed}").shuffle(candidates)  # noqa: S311 - a layout
    return {device: PROVIDERS[i % 2] for i, device in enumerate(candidates[:count])}


def push_token(provider: str, device_id: uuid.UUID) -> str:
    """The token a phone registers: 64 hex digits for APNs (what Apple issues today), an
    FCM-shaped registration token otherwise; the same for the same device every run."""
    digest = hashlib.sha256(TOKEN_LABEL + device_id.bytes).hexdigest()
    if provider == "apns":
        return digest
    return FCM_PREFIX + digest
