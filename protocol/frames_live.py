"""Frames for consent grants, live location and erasures (PROTOCOL.md 5.1, 5.2, 6.4, 6.9).

Client -> server: `ConsentGet`, `ConsentSet`, `LiveStart`, `LivePos`, `LiveStop`.
Server -> client: `Consents`, `ConsentRevoked`, `Erased`, `LiveOk`, `LiveEnd`.
Like every frame, they validate themselves when built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from protocol.fields import (
    MAX_ACCURACY_M,
    MAX_SCOPE_MEMBERS,
    Scope,
    check_bool,
    check_cid,
    check_float,
    check_id,
    check_identifier,
    check_int,
    check_optional_int,
    check_scope,
    invalid,
)

LiveEndReason = Literal["stopped", "expired", "withdrawn"]
LIVE_END_REASONS = ("stopped", "expired", "withdrawn")
ErasedReason = Literal["deleted_by_sender", "consent_withdrawn", "retention", "account_cancelled"]
ERASED_REASONS: tuple[ErasedReason, ...] = (
    "deleted_by_sender",
    "consent_withdrawn",
    "retention",
    "account_cancelled",
)

# --- consent grants -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsentGet:
    """Tell me my consent grants; answered by `consents`."""

    TYPE: ClassVar[str] = "consent_get"
    cid: str

    def __post_init__(self) -> None:
        check_cid("cid", self.cid)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsentSet:
    """Grant (`on`) or withdraw my consent for `purpose`; answered by `consents`."""

    TYPE: ClassVar[str] = "consent_set"
    cid: str
    purpose: str
    on: bool

    def __post_init__(self) -> None:
        check_cid("cid", self.cid)
        check_identifier("purpose", self.purpose)
        check_bool("on", self.on)


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantState:
    """One purpose in a `consents` frame."""

    purpose: str
    on: bool  # granted now
    at: int | None  # ms of the last change; None: never decided
    off: bool  # the organization switched the purpose off

    def __post_init__(self) -> None:
        check_identifier("grants[].purpose", self.purpose)
        check_bool("grants[].on", self.on)
        check_optional_int("grants[].at", self.at)
        check_bool("grants[].off", self.off)


@dataclass(frozen=True, slots=True, kw_only=True)
class Consents:
    """The account's grants, every purpose, answering the `consent_get`/`consent_set` `cid`."""

    TYPE: ClassVar[str] = "consents"
    cid: str
    grants: tuple[GrantState, ...]

    def __post_init__(self) -> None:
        check_cid("cid", self.cid)
        if type(self.grants) is not tuple or not all(
            isinstance(g, GrantState) for g in self.grants
        ):
            raise invalid("grants", "must be a list of grant maps")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsentRevoked:
    """`who` withdrew consent for `purpose` at `at`: stop showing what they shared under it
    in conversation `conv`; `ids` are the stored messages erased with it (maybe none)."""

    TYPE: ClassVar[str] = "consent_revoked"
    who: bytes
    purpose: str
    conv: bytes
    ids: tuple[bytes, ...]
    at: int

    def __post_init__(self) -> None:
        check_id("who", self.who)
        check_identifier("purpose", self.purpose)
        check_id("conv", self.conv)
        if type(self.ids) is not tuple or len(self.ids) > MAX_SCOPE_MEMBERS:
            raise invalid("ids", f"must be a list of 0..{MAX_SCOPE_MEMBERS} message ids")
        for message_id in self.ids:
            check_id("ids[]", message_id)
        check_int("at", self.at)


@dataclass(frozen=True, slots=True, kw_only=True)
class Erased:
    """The stored messages `ids` of conversation `conv` were erased at `at` (why: `reason`):
    delete them. `pos`: the stream position of the last of their tombstones (a cursor)."""

    TYPE: ClassVar[str] = "erased"
    conv: bytes
    ids: tuple[bytes, ...]
    reason: ErasedReason
    pos: int
    at: int

    def __post_init__(self) -> None:
        check_id("conv", self.conv)
        if type(self.ids) is not tuple or not 1 <= len(self.ids) <= MAX_SCOPE_MEMBERS:
            raise invalid("ids", f"must be a list of 1..{MAX_SCOPE_MEMBERS} message ids")
        for message_id in self.ids:
            check_id("ids[]", message_id)
        if self.reason not in ERASED_REASONS:
            raise invalid("reason", f"must be one of: {', '.join(ERASED_REASONS)}")
        check_int("pos", self.pos, 1)
        check_int("at", self.at)


# --- live location ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveStart:
    """Start sharing my position live with `conv` (or `scope` in it) until `until` (ms);
    answered by `live_ok` (with the session id and the `until` granted) or `err`."""

    TYPE: ClassVar[str] = "live_start"
    cid: str
    conv: bytes
    scope: Scope
    until: int

    def __post_init__(self) -> None:
        check_cid("cid", self.cid)
        check_id("conv", self.conv)
        check_scope("scope", self.scope)
        check_int("until", self.until)


@dataclass(frozen=True, slots=True, kw_only=True)
class LivePos:
    """A position update in live session `id` (never stored)."""

    TYPE: ClassVar[str] = "live_pos"
    id: bytes
    lat: float
    lon: float
    acc: float

    def __post_init__(self) -> None:
        check_id("id", self.id)
        object.__setattr__(self, "lat", check_float("lat", self.lat, -90.0, 90.0))
        object.__setattr__(self, "lon", check_float("lon", self.lon, -180.0, 180.0))
        object.__setattr__(self, "acc", check_float("acc", self.acc, 0.0, MAX_ACCURACY_M))


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveStop:
    """End live session `id`."""

    TYPE: ClassVar[str] = "live_stop"
    id: bytes

    def __post_init__(self) -> None:
        check_id("id", self.id)


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveOk:
    """Your `live_start` `cid` is session `id`, live until `until` (ms; maybe sooner than
    asked: the server caps a session's length)."""

    TYPE: ClassVar[str] = "live_ok"
    cid: str
    id: bytes
    until: int

    def __post_init__(self) -> None:
        check_cid("cid", self.cid)
        check_id("id", self.id)
        check_int("until", self.until)


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveEnd:
    """`who`'s live session `id` in `conv` ended: `stopped`, `expired` or `withdrawn`."""

    TYPE: ClassVar[str] = "live_end"
    id: bytes
    conv: bytes
    who: bytes
    reason: LiveEndReason

    def __post_init__(self) -> None:
        check_id("id", self.id)
        check_id("conv", self.conv)
        check_id("who", self.who)
        if self.reason not in LIVE_END_REASONS:
            raise invalid("reason", f"must be one of: {', '.join(LIVE_END_REASONS)}")
