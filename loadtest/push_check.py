"""The push loss check: which phones should have been woken, and whether they were.

Pure: messages in, stand-in records in, figures out. The expectation mirrors the server's
rules (PROTOCOL.md 6.5, `storage/push_outbox.enqueue_for_messages`): a stored message makes
a push for every registered device of every active member of its conversation except the
sender's own account. The load test's `file` and `location` messages are scoped to the
whole conversation and stored (never `ephemeral`), so no consent scope narrows that, and
nobody joins, leaves, mutes, reads or sets quiet hours during a run. Messages arriving
within a grace collapse into one push for the latest, so only the latest message (by stream
position) addressed to a phone is sure to have a push of its own:

- **lost**: a phone that was a recipient of at least one message but never got an alert
  whose `m` is its latest message (APNs payload `m`, FCM data `m`).
- **latency**: for every (phone, message) pair, from the message's commit to the first
  alert recorded for that phone whose `m` is that message or a later one: how long the
  message waited before its phone was woken. The commit time is the `sent` frame's `at`
  (the server's clock when it took the send, just before its group commit); the end is the
  stand-in's record time. Same machine, same wall clock. Messages later in a burst wait
  less than the grace (the burst is due a grace after its first message); **oldest
  latency** takes, per alert, only the oldest message it woke the phone for (what the
  server's own `commit_to_provider_s` measures from its side).
- **duplicates**: a second accepted push with the same `apns-id` (APNs) or the same
  (token, kind, `m`) (FCM). Delivery is at least once (PROTOCOL.md 6.5), so they are
  reported, not failed.
- **unexpected**: an alert to a phone about a message it should not hear of (its own
  account's, or of a conversation it is not in): fails the check.
- **to connected devices**: pushes to a token of a device of this run that is not a phone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loadtest.metrics import Latency

SERVICES = ("apns", "fcm")
LOST_SAMPLE = 10


@dataclass(frozen=True, slots=True)
class SentMessage:
    """A message the server acknowledged (`sent`), as the push check needs it."""

    conversation: int
    sender_user: int
    pos: int
    id: str  # the message id as a UUID string, as pushes carry it in `m`
    at_ms: int  # the `sent` frame's `at`


@dataclass(frozen=True, slots=True)
class Push:
    """One accepted push as recorded by the stand-in."""

    token: str
    alert: bool
    message_id: str | None
    key: tuple[str, ...]  # what makes it the same push twice
    at: float  # the stand-in's record time (seconds since the epoch)


def read_push(record: Mapping[str, Any]) -> Push | None:
    """The push in a stand-in record (`/_standin/received`), or None if it is not an
    accepted APNs or FCM push."""
    service = record.get("service")
    token = record.get("token")
    if service not in SERVICES or record.get("status") != 200 or not isinstance(token, str):
        return None
    payload = record.get("payload")
    at = float(record.get("at") or 0.0)
    if service == "apns":
        aps = payload.get("aps", {}) if isinstance(payload, dict) else {}
        m = payload.get("m") if isinstance(payload, dict) else None
        alert = isinstance(aps, dict) and "alert" in aps
        apns_id = str(record.get("headers", {}).get("apns-id", ""))
        return Push(token, alert, m if isinstance(m, str) else None, ("apns", apns_id), at)
    message = payload.get("message", {}) if isinstance(payload, dict) else {}
    data = message.get("data", {}) if isinstance(message, dict) else {}
    data = data if isinstance(data, dict) else {}
    m, kind = data.get("m"), str(data.get("kind", ""))
    m = m if isinstance(m, str) else None
    return Push(token, kind == "alert", m, ("fcm", token, kind, m or ""), at)


@dataclass
class PushCheck:
    phones: int = 0
    phones_expected: int = 0  # phones that were a recipient of at least one message
    messages_to_phones: int = 0  # (phone, message) pairs
    received: int = 0  # accepted pushes recorded for this run's tokens (alerts and badges)
    alerts: int = 0
    badge_updates: int = 0
    lost: int = 0
    duplicates: int = 0
    unexpected: int = 0
    stale: int = 0  # alerts about messages not of this run (an earlier run's backlog)
    to_connected_devices: int = 0
    unknown_tokens: int = 0  # accepted pushes to tokens that are not this run's
    refused: Counter[str] = field(default_factory=Counter)  # stand-in answers other than 200
    latency: Latency = field(default_factory=Latency)  # every (phone, message) pair
    oldest_latency: Latency = field(default_factory=Latency)  # per alert: its oldest message
    lost_sample: list[dict[str, Any]] = field(default_factory=list)
    first_at: float | None = None
    last_at: float | None = None

    def summary(self) -> dict[str, Any]:
        span = None
        if self.first_at is not None and self.last_at is not None:
            span = self.last_at - self.first_at
        return {
            "phones": self.phones,
            "messages_to_phones": self.messages_to_phones,
            "pushes_expected": self.phones_expected,
            "pushes_received": self.received,
            "alerts": self.alerts,
            "badge_updates": self.badge_updates,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "unexpected": self.unexpected,
            "stale": self.stale,
            "to_connected_devices": self.to_connected_devices,
            "unknown_tokens": self.unknown_tokens,
            "refused": dict(sorted(self.refused.items())),
            "pushes_per_s": None if not span else round(self.received / span, 1),
            "latency_ms": self.latency.summary_ms(),
            "oldest_latency_ms": self.oldest_latency.summary_ms(),
            "lost_sample": self.lost_sample,
        }


def messages_per_phone(
    messages: Iterable[SentMessage],
    conversations: Sequence[Sequence[int]],
    phones_of_user: Mapping[int, Sequence[int]],
) -> dict[int, list[SentMessage]]:
    """For each phone that should hear of something, its messages in position order."""
    per_phone: dict[int, list[SentMessage]] = {}
    for message in sorted(messages, key=lambda m: m.pos):
        for user in conversations[message.conversation]:
            if user == message.sender_user:
                continue  # the sender's whole account gets no push
            for phone in phones_of_user.get(user, ()):
                per_phone.setdefault(phone, []).append(message)
    return per_phone


def check_pushes(
    messages: Sequence[SentMessage],
    conversations: Sequence[Sequence[int]],
    user_of_phone: Mapping[int, int],
    device_of_token: Mapping[str, int],
    records: Iterable[Mapping[str, Any]],
) -> PushCheck:
    """Compare what the stand-in recorded with what the phones should have got.

    `user_of_phone`: every phone (device index) and its user; `device_of_token`: every
    token a device of this run could have registered, to tell a push to a connected device
    from one to a stranger."""
    phones_of_user: dict[int, list[int]] = {}
    for phone, user in user_of_phone.items():
        phones_of_user.setdefault(user, []).append(phone)
    per_phone = messages_per_phone(messages, conversations, phones_of_user)
    by_id = {m.id: m for m in messages}
    members = [frozenset(c) for c in conversations]
    check = PushCheck(phones=len(user_of_phone), phones_expected=len(per_phone))
    check.messages_to_phones = sum(map(len, per_phone.values()))
    seen: set[tuple[str, ...]] = set()
    pushed: dict[int, list[tuple[float, int]]] = {}  # phone -> (record time, position of m)
    for record in records:
        if record.get("service") in SERVICES and record.get("status") != 200:
            check.refused[str(record.get("status"))] += 1
        push = read_push(record)
        if push is None:
            continue
        device = device_of_token.get(push.token)
        if device is None:
            check.unknown_tokens += 1
            continue
        check.received += 1
        check.first_at = push.at if check.first_at is None else min(check.first_at, push.at)
        check.last_at = push.at if check.last_at is None else max(check.last_at, push.at)
        if device not in user_of_phone:
            check.to_connected_devices += 1
            continue
        if push.key in seen:
            check.duplicates += 1
            continue
        seen.add(push.key)
        if not push.alert:
            check.badge_updates += 1
            continue
        check.alerts += 1
        message = None if push.message_id is None else by_id.get(push.message_id)
        if message is None:
            check.stale += 1
            continue
        user = user_of_phone[device]
        if user == message.sender_user or user not in members[message.conversation]:
            check.unexpected += 1
            continue
        pushed.setdefault(device, []).append((push.at, message.pos))
    for phone, wanted in per_phone.items():
        _check_phone(check, phone, wanted, sorted(pushed.get(phone, [])))
    return check


def _check_phone(
    check: PushCheck, phone: int, wanted: list[SentMessage], pushes: list[tuple[float, int]]
) -> None:
    """Lost if no alert named the latest message; latency of every message to the first
    alert that covers it (names it or a later one)."""
    covered, index = 0, 0
    for at, pos in pushes:
        covered = max(covered, pos)
        first = index
        while index < len(wanted) and wanted[index].pos <= covered:
            check.latency.record_us(int((at - wanted[index].at_ms / 1000) * 1e6))
            index += 1
        if index > first:  # the messages this alert woke the phone for; the oldest waited most
            check.oldest_latency.record_us(int((at - wanted[first].at_ms / 1000) * 1e6))
    latest = wanted[-1]
    if not any(pos == latest.pos for _, pos in pushes):
        check.lost += 1
        if len(check.lost_sample) < LOST_SAMPLE:
            check.lost_sample.append({"device": phone, "message": latest.id, "pos": latest.pos})


def verdict(check: PushCheck, *, complete: bool) -> str:
    """failed: a phone's latest message never pushed, or a push about something it should
    not hear of; incomplete: the check could not cover everything (sends unsettled, the
    stand-in unreadable, nothing to check); passed otherwise."""
    if check.lost or check.unexpected:
        return "failed"
    if not complete or check.phones_expected == 0:
        return "incomplete"
    return "passed"


def per_second(records: Iterable[Mapping[str, Any]], origin: float) -> list[int]:
    """Accepted pushes per second of the stand-in's clock, from `origin` (epoch seconds)."""
    counts: Counter[int] = Counter()
    for record in records:
        push = read_push(record)
        if push is not None:
            counts[max(int(push.at - origin), 0)] += 1
    if not counts:
        return []
    return [counts.get(second, 0) for second in range(max(counts) + 1)]
