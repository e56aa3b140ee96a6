"""Every frame of the encrypted phase, as frozen dataclasses that validate themselves.

Building a frame with contents the protocol forbids raises `LocalProtocolError`, so a frame
that exists is a frame that may go on the wire. `protocol.codec` maps frames to and from
msgpack maps; PROTOCOL.md lists the wire keys, types and limits of each.

Client -> server: `Send`, `Ack`, `Sync`, `Receipt`, `Typing`, `Ping`, `PushRegister`,
`PushUnregister`, and (protocol.frames_live) consent and live-location frames.
Server -> client: `Msg`, `Sent`, `Err`, `ReceiptNotice`, `TypingNotice`, `Synced`, `Resync`,
`Pong`, `PushOk`, `PolicyNotice`, `OrgNotice`, and (protocol.frames_live) consent and live-location
frames. `Receipt`/`ReceiptNotice` and `Typing`/`TypingNotice` share a wire type ("receipt",
"typing") but carry different fields in each direction.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar, Literal

from protocol.codes import ErrorCode
from protocol.errors import ProtocolError
from protocol.fields import (
    MAX_ACCURACY_M,
    MAX_ERR_MESSAGE_CHARS,
    MAX_FILE_NAME_CHARS,
    MAX_RETENTION_S,
    MAX_TEXT_CHARS,
    MAX_THUMB_BYTES,
    Scope,
    check_bool,
    check_bytes,
    check_cid,
    check_enum,
    check_float,
    check_id,
    check_identifier,
    check_int,
    check_mime,
    check_optional_int,
    check_policy_version,
    check_scope,
    check_text,
    invalid,
)
from protocol.frames_live import (
    ConsentGet,
    ConsentRevoked,
    Consents,
    ConsentSet,
    Erased,
    LiveEnd,
    LiveOk,
    LivePos,
    LiveStart,
    LiveStop,
)


class MessageKind(enum.StrEnum):
    """What a message carries; clients may send all but `system`."""

    TEXT = "text"
    FILE = "file"
    LOCATION = "location"
    SYSTEM = "system"


class ReceiptStatus(enum.StrEnum):
    """How far a message got on a recipient's device."""

    DELIVERED = "delivered"
    READ = "read"


Retention = Literal["ephemeral", "default", "until_withdrawn"] | int
"""How long a consent-tagged message is kept: never stored, org default, or seconds."""


# The retention words a consent tag may carry besides a number of seconds: `ephemeral`
# (never stored), `default` (the organization's retention), `until_withdrawn` (stored until
# the sender withdraws the grant of the tag's purpose).
RETENTION_WORDS = ("ephemeral", "default", "until_withdrawn")


@dataclass(frozen=True, slots=True, kw_only=True)
class Consent:
    """The consent tag every `file` and `location` message carries."""

    purpose: str
    scope: Scope
    retention: Retention
    expires_at: int | None = None

    def __post_init__(self) -> None:
        bad = ErrorCode.CONSENT_INVALID
        check_identifier("consent.purpose", self.purpose, bad)
        check_scope("consent.scope", self.scope, bad)
        if not (type(self.retention) is str and self.retention in RETENTION_WORDS):
            check_int("consent.retention", self.retention, 1, MAX_RETENTION_S, bad)
        if self.expires_at is not None:
            check_int("consent.expires_at", self.expires_at, code=bad)

    @property
    def ephemeral(self) -> bool:
        """True when the message must never be written to disk."""
        return self.retention == "ephemeral"


@dataclass(frozen=True, slots=True, kw_only=True)
class TextBody:
    """A chat text of 1..16,000 characters."""

    KIND: ClassVar[MessageKind] = MessageKind.TEXT
    text: str

    def __post_init__(self) -> None:
        check_text("body.text", self.text, min_len=1, max_len=MAX_TEXT_CHARS)


@dataclass(frozen=True, slots=True, kw_only=True)
class FileBody:
    """A reference to an uploaded blob, with what a client needs to show it."""

    KIND: ClassVar[MessageKind] = MessageKind.FILE
    file_id: bytes
    name: str
    size: int
    mime: str
    thumb: bytes | None = None

    def __post_init__(self) -> None:
        check_id("body.file_id", self.file_id)
        check_text("body.name", self.name, min_len=1, max_len=MAX_FILE_NAME_CHARS, controls=False)
        check_int("body.size", self.size)
        check_mime("body.mime", self.mime)
        if self.thumb is not None:
            check_bytes("body.thumb", self.thumb, min_len=1, max_len=MAX_THUMB_BYTES)


@dataclass(frozen=True, slots=True, kw_only=True)
class LocationBody:
    """A point with accuracy in metres; `live_until` (unix ms) makes it a live share."""

    KIND: ClassVar[MessageKind] = MessageKind.LOCATION
    lat: float
    lon: float
    acc: float
    live_until: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "lat", check_float("body.lat", self.lat, -90.0, 90.0))
        object.__setattr__(self, "lon", check_float("body.lon", self.lon, -180.0, 180.0))
        object.__setattr__(self, "acc", check_float("body.acc", self.acc, 0.0, MAX_ACCURACY_M))
        check_optional_int("body.live_until", self.live_until)


@dataclass(frozen=True, slots=True, kw_only=True)
class SystemBody:
    """A notice from the service itself (member joined, security notice, ...)."""

    KIND: ClassVar[MessageKind] = MessageKind.SYSTEM
    event: str
    text: str

    def __post_init__(self) -> None:
        check_identifier("body.event", self.event)
        check_text("body.text", self.text, min_len=0, max_len=MAX_TEXT_CHARS)


Body = TextBody | FileBody | LocationBody | SystemBody
SendBody = TextBody | FileBody | LocationBody
_SEND_BODIES = (TextBody, FileBody, LocationBody)
_ALL_BODIES = (TextBody, FileBody, LocationBody, SystemBody)


def _check_consent_rule(body: Body, consent: Consent | None) -> None:
    """File and location messages must carry a consent tag; text and system ones must not."""
    if consent is not None and not isinstance(consent, Consent):
        raise invalid("consent", "must be a consent tag", ErrorCode.CONSENT_INVALID)
    needs_consent = body.KIND in (MessageKind.FILE, MessageKind.LOCATION)
    if needs_consent and consent is None:
        raise invalid(
            "consent", f"{body.KIND} messages need a consent tag", ErrorCode.CONSENT_REQUIRED
        )
    if not needs_consent and consent is not None:
        raise invalid(
            "consent",
            f"{body.KIND} messages must not carry a consent tag",
            ErrorCode.CONSENT_INVALID,
        )


# --- client -> server ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    """Post a message. `cid` makes the send idempotent per device."""

    TYPE: ClassVar[str] = "send"
    cid: str
    conv: bytes
    body: SendBody
    consent: Consent | None = None

    def __post_init__(self) -> None:
        check_cid("cid", self.cid)
        check_id("conv", self.conv)
        if not isinstance(self.body, _SEND_BODIES):
            raise invalid("body", "must be a text, file or location body")
        _check_consent_rule(self.body, self.consent)

    @property
    def kind(self) -> MessageKind:
        """The message kind, given by the body type."""
        return self.body.KIND


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """The device has durably processed everything up to stream position `pos`."""

    TYPE: ClassVar[str] = "ack"
    pos: int

    def __post_init__(self) -> None:
        check_int("pos", self.pos)


@dataclass(frozen=True, slots=True, kw_only=True)
class Sync:
    """Send me every message after stream position `after`, then `synced`."""

    TYPE: ClassVar[str] = "sync"
    after: int

    def __post_init__(self) -> None:
        check_int("after", self.after)


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    """This device's account has received or read message `id`."""

    TYPE: ClassVar[str] = "receipt"
    conv: bytes
    id: bytes
    status: ReceiptStatus

    def __post_init__(self) -> None:
        check_id("conv", self.conv)
        check_id("id", self.id)
        object.__setattr__(self, "status", check_enum("status", self.status, ReceiptStatus))


@dataclass(frozen=True, slots=True, kw_only=True)
class Typing:
    """The user started (`on`) or stopped typing in `conv`."""

    TYPE: ClassVar[str] = "typing"
    conv: bytes
    on: bool

    def __post_init__(self) -> None:
        check_id("conv", self.conv)
        check_bool("on", self.on)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """Keep-alive; answered by `pong`."""

    TYPE: ClassVar[str] = "ping"


@dataclass(frozen=True, slots=True, kw_only=True)
class PushRegister:
    """Register this device's push token (replacing any earlier one); answered by
    `push_ok` with the same `cid`, or an `err` pointing at it. The server checks the token's
    form and that it sends for the provider (and APNs topic / FCM project)."""

    TYPE: ClassVar[str] = "push_reg"
    cid: str
    provider: str
    token: str
    env: str | None = None
    topic: str | None = None
    project: str | None = None
    preview: bool = False

    def __post_init__(self) -> None:
        check_cid("cid", self.cid)
        check_identifier("provider", self.provider)
        check_text("token", self.token, min_len=1, max_len=4096, controls=False)
        for name in ("env", "topic", "project"):
            value = getattr(self, name)
            if value is not None:
                check_text(name, value, min_len=1, max_len=155, controls=False)
        check_bool("preview", self.preview)


@dataclass(frozen=True, slots=True, kw_only=True)
class PushUnregister:
    """Stop push notifications to this device; answered by `push_ok`."""

    TYPE: ClassVar[str] = "push_unreg"
    cid: str

    def __post_init__(self) -> None:
        check_cid("cid", self.cid)


# --- server -> client ---------------------------------------------------------------------


def _check_position(seq: object, pos: object) -> None:
    if seq is None and pos is None:
        return
    check_int("seq", seq, 1)
    check_int("pos", pos, 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Msg:
    """A message delivered to a device.

    `seq` (per conversation) and `pos` (global stream) are None exactly when the consent's
    retention is "ephemeral": such messages are never stored, so never replayed or acked.
    `sender` and `sender_device` are None only on `system` messages.
    """

    TYPE: ClassVar[str] = "msg"
    id: bytes
    conv: bytes
    seq: int | None
    pos: int | None
    sender: bytes | None
    sender_device: bytes | None
    body: Body
    consent: Consent | None
    sent_at: int
    cid: str | None = None

    def __post_init__(self) -> None:
        check_id("id", self.id)
        check_id("conv", self.conv)
        if not isinstance(self.body, _ALL_BODIES):
            raise invalid("body", "must be a message body")
        _check_consent_rule(self.body, self.consent)
        _check_position(self.seq, self.pos)
        ephemeral = self.consent is not None and self.consent.ephemeral
        if (self.pos is None) != ephemeral:
            raise invalid("pos", "must be nil for ephemeral messages and only for them")
        system = self.body.KIND is MessageKind.SYSTEM
        for name, value in (("from", self.sender), ("dev", self.sender_device)):
            if value is not None or not system:
                check_id(name, value)
        check_int("at", self.sent_at)
        if self.cid is not None:
            check_cid("cid", self.cid)

    @property
    def kind(self) -> MessageKind:
        """The message kind, given by the body type."""
        return self.body.KIND


@dataclass(frozen=True, slots=True, kw_only=True)
class Sent:
    """The send `cid` is committed as message `id` (nil seq/pos: ephemeral, not stored)."""

    TYPE: ClassVar[str] = "sent"
    cid: str
    id: bytes
    conv: bytes
    seq: int | None
    pos: int | None
    sent_at: int

    def __post_init__(self) -> None:
        check_cid("cid", self.cid)
        check_id("id", self.id)
        check_id("conv", self.conv)
        _check_position(self.seq, self.pos)
        check_int("at", self.sent_at)


@dataclass(frozen=True, slots=True, kw_only=True)
class Err:
    """The server refuses something; `ref` is the cid and `ref_type` the frame type at fault."""

    TYPE: ClassVar[str] = "err"
    code: ErrorCode
    message: str
    ref: str | None = None
    ref_type: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", check_enum("code", self.code, ErrorCode))
        check_text("msg", self.message, min_len=0, max_len=MAX_ERR_MESSAGE_CHARS)
        if self.ref is not None:
            check_cid("ref", self.ref)
        if self.ref_type is not None:
            check_identifier("rt", self.ref_type)

    @classmethod
    def from_error(cls, error: ProtocolError) -> Err:
        """The `err` frame that reports `error` to the peer (message cut to the limit)."""
        return cls(
            code=error.code,
            message=error.message[:MAX_ERR_MESSAGE_CHARS],
            ref=error.ref,
            ref_type=error.ref_type,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiptNotice:
    """Account `who` has received or read message `id` (at unix ms `at`)."""

    TYPE: ClassVar[str] = "receipt"
    conv: bytes
    id: bytes
    status: ReceiptStatus
    who: bytes
    at: int

    def __post_init__(self) -> None:
        check_id("conv", self.conv)
        check_id("id", self.id)
        object.__setattr__(self, "status", check_enum("status", self.status, ReceiptStatus))
        check_id("who", self.who)
        check_int("at", self.at)


@dataclass(frozen=True, slots=True, kw_only=True)
class TypingNotice:
    """Account `who` started or stopped typing in `conv`."""

    TYPE: ClassVar[str] = "typing"
    conv: bytes
    who: bytes
    on: bool

    def __post_init__(self) -> None:
        check_id("conv", self.conv)
        check_id("who", self.who)
        check_bool("on", self.on)


@dataclass(frozen=True, slots=True, kw_only=True)
class Synced:
    """Catch-up is complete up to stream position `pos`; live traffic follows."""

    TYPE: ClassVar[str] = "synced"
    pos: int

    def __post_init__(self) -> None:
        check_int("pos", self.pos)


@dataclass(frozen=True, slots=True, kw_only=True)
class Resync:
    """You fell behind and live traffic to you stopped: send `sync` from your cursor."""

    TYPE: ClassVar[str] = "resync"


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    """Answer to `ping`."""

    TYPE: ClassVar[str] = "pong"


@dataclass(frozen=True, slots=True, kw_only=True)
class PushOk:
    """The `push_reg` or `push_unreg` with this `cid` is done."""

    TYPE: ClassVar[str] = "push_ok"
    cid: str

    def __post_init__(self) -> None:
        check_cid("cid", self.cid)


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyNotice:
    """The organization published privacy-policy version `version` at unix ms `at`. With
    `material`, the account must accept it (over the HTTP API) before it may send again."""

    TYPE: ClassVar[str] = "policy"
    version: str
    material: bool
    at: int

    def __post_init__(self) -> None:
        check_policy_version("version", self.version)
        check_bool("material", self.material)
        check_int("at", self.at)


NOTICE_KINDS = ("service_ending", "security_incident")
NoticeKind = Literal["service_ending", "security_incident"]
MAX_NOTICE_TITLE_CHARS = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class OrgNotice:
    """A notice from the organization's admins, sent at unix ms `at`: the service ends at
    `ends_at` (ms; present exactly for `service_ending`), or a security incident happened.
    Stored: `GET /v1/me/notices` lists it as well."""

    TYPE: ClassVar[str] = "notice"
    id: bytes
    kind: NoticeKind
    title: str
    text: str
    at: int
    ends_at: int | None = None

    def __post_init__(self) -> None:
        check_id("id", self.id)
        if self.kind not in NOTICE_KINDS:
            raise invalid("kind", f"must be one of: {', '.join(NOTICE_KINDS)}")
        check_text("title", self.title, min_len=1, max_len=MAX_NOTICE_TITLE_CHARS, controls=False)
        check_text("text", self.text, min_len=1, max_len=MAX_TEXT_CHARS)
        check_int("at", self.at)
        check_optional_int("ends_at", self.ends_at)
        if (self.kind == "service_ending") != (self.ends_at is not None):
            raise invalid("ends_at", "must be present exactly for a service_ending notice")


ClientFrame = (
    Send
    | Ack
    | Sync
    | Receipt
    | Typing
    | Ping
    | PushRegister
    | PushUnregister
    | ConsentGet
    | ConsentSet
    | LiveStart
    | LivePos
    | LiveStop
)
ServerFrame = (
    Msg
    | Sent
    | Err
    | ReceiptNotice
    | TypingNotice
    | Synced
    | Resync
    | Pong
    | PushOk
    | Consents
    | ConsentRevoked
    | Erased
    | LiveOk
    | LiveEnd
    | PolicyNotice
    | OrgNotice
)
Frame = ClientFrame | ServerFrame
