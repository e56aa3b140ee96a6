"""What travels the bus between processes, and its encoding (msgpack, one message a batch).

A bus message is one `Announcement`: the process it comes from, the highest stream position
that process committed (0: none new), and the live-only events it produced since its last
message, in the order it produced them. Stored messages never travel the bus themselves:
a receiver reads them from the store by position range (server/gateway/stream.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from protocol.errors import ObrolError


class BusFormatError(ObrolError):
    """A bus message that does not decode (another version, or not ours)."""


@dataclass(frozen=True, slots=True)
class LiveFrame:
    """A live-only frame (typing, receipt, ephemeral message, consent_revoked, live_end,
    notice) for the live connections of these accounts."""

    accounts: tuple[uuid.UUID, ...]
    frame: bytes


@dataclass(frozen=True, slots=True)
class OrgFrame:
    """A live-only frame for every live connection of an organization."""

    org_id: uuid.UUID
    frame: bytes


@dataclass(frozen=True, slots=True)
class PolicyPublished:
    org_id: uuid.UUID
    policy_id: int
    material: bool
    frame: bytes


@dataclass(frozen=True, slots=True)
class PolicyAccepted:
    account_id: uuid.UUID
    policy_id: int


@dataclass(frozen=True, slots=True)
class DeviceClosed:
    """A device was revoked (or signed out): its connections close everywhere."""

    device_id: uuid.UUID
    signed_out: bool


@dataclass(frozen=True, slots=True)
class AccountClosed:
    """An account was deactivated (or now waits for a guardian's consent)."""

    account_id: uuid.UUID
    guardian_consent_required: bool


@dataclass(frozen=True, slots=True)
class KeyForgotten:
    """An account's data key was destroyed: no process may keep it in its cache."""

    account_id: uuid.UUID


Event = (
    LiveFrame
    | OrgFrame
    | PolicyPublished
    | PolicyAccepted
    | DeviceClosed
    | AccountClosed
    | KeyForgotten
)


@dataclass(frozen=True, slots=True)
class Announcement:
    origin: bytes  # 16 random bytes naming the sending process
    pos: int  # the stream reached this position (0: no news)
    events: tuple[Event, ...]


def _id(value: Any) -> uuid.UUID:
    return uuid.UUID(bytes=bytes(value))


# Per event type: its number on the wire, its fields as msgpack values, and back.
_CODECS: dict[type, tuple[int, Callable[[Any], list[Any]], Callable[[list[Any]], Event]]] = {
    LiveFrame: (
        0,
        lambda e: [b"".join(a.bytes for a in e.accounts), e.frame],
        lambda f: LiveFrame(_uuids(f[0]), bytes(f[1])),
    ),
    OrgFrame: (
        1,
        lambda e: [e.org_id.bytes, e.frame],
        lambda f: OrgFrame(_id(f[0]), bytes(f[1])),
    ),
    PolicyPublished: (
        2,
        lambda e: [e.org_id.bytes, e.policy_id, e.material, e.frame],
        lambda f: PolicyPublished(_id(f[0]), int(f[1]), bool(f[2]), bytes(f[3])),
    ),
    PolicyAccepted: (
        3,
        lambda e: [e.account_id.bytes, e.policy_id],
        lambda f: PolicyAccepted(_id(f[0]), int(f[1])),
    ),
    DeviceClosed: (
        4,
        lambda e: [e.device_id.bytes, e.signed_out],
        lambda f: DeviceClosed(_id(f[0]), bool(f[1])),
    ),
    AccountClosed: (
        5,
        lambda e: [e.account_id.bytes, e.guardian_consent_required],
        lambda f: AccountClosed(_id(f[0]), bool(f[1])),
    ),
    KeyForgotten: (6, lambda e: [e.account_id.bytes], lambda f: KeyForgotten(_id(f[0]))),
}
_DECODERS = {number: decode for number, _, decode in _CODECS.values()}


def _event(event: Event) -> list[Any]:
    number, encode, _ = _CODECS[type(event)]
    return [number, *encode(event)]


def encode_announcement(announcement: Announcement) -> bytes:
    packed: bytes = msgpack.packb(
        [1, announcement.origin, announcement.pos, [_event(e) for e in announcement.events]],
        use_bin_type=True,
    )
    return packed


def _uuids(data: bytes) -> tuple[uuid.UUID, ...]:
    if len(data) % 16:
        raise BusFormatError("an account list is not a whole number of ids")
    return tuple(uuid.UUID(bytes=data[i : i + 16]) for i in range(0, len(data), 16))


def _decode_event(item: list[Any]) -> Event:
    kind, *fields = item
    decode = _DECODERS.get(kind)
    if decode is None:
        raise BusFormatError(f"unknown bus event kind {kind!r}")
    return decode(fields)


def decode_announcement(data: bytes) -> Announcement:
    """Raises BusFormatError for anything but a message `encode_announcement` made."""
    try:
        version, origin, pos, events = msgpack.unpackb(data, raw=False)
        if version != 1:
            raise BusFormatError(f"bus message version {version!r}")
        return Announcement(bytes(origin), int(pos), tuple(_decode_event(e) for e in events))
    except BusFormatError:
        raise
    except Exception as exc:
        raise BusFormatError(f"undecodable bus message: {exc}") from None
