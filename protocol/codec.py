"""Frames to msgpack bytes and back.

A batch (the plaintext of one encrypted WebSocket message) is one or more msgpack maps
concatenated. `encode` turns one frame into bytes; encode a `Msg` once and append the same
bytes to every recipient's pending batch. The decoders read a whole batch under strict
limits and return its frames in order.

Contract: the `decode_*` functions raise nothing but `RemoteProtocolError`, whatever the
bytes. A batch that cannot be split into msgpack values (bad msgpack, truncated value, limit
exceeded, duplicate map key, too many frames) is refused whole. A value that is not a valid
frame is refused by the strict decoders; the `_lenient` variant returns the error in its
place, so the server can answer it with an `err` frame and still act on the other frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgpack  # type: ignore[import-untyped, unused-ignore]

from protocol import frames as f
from protocol import frames_live as fl
from protocol.codes import ErrorCode
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.fields import MAX_THUMB_BYTES, check_cid, invalid
from protocol.unpack import UnpackLimits, unpack_values

Wire = dict[Any, Any]
F = TypeVar("F", f.ClientFrame, f.ServerFrame)
T = TypeVar("T")


CLIENT_TO_SERVER_LIMITS = UnpackLimits(
    max_bytes=128 * 1024,
    max_values=256,
    max_str_bytes=65_536,
    max_bin_bytes=MAX_THUMB_BYTES,
    max_array_len=1_024,
    max_map_len=16,
)
"""What the server accepts in one batch from a client (bytes, frames, per-value sizes)."""

SERVER_TO_CLIENT_LIMITS = UnpackLimits(
    max_bytes=1024 * 1024,
    max_values=8_192,
    max_str_bytes=65_536,
    max_bin_bytes=MAX_THUMB_BYTES,
    max_array_len=1_024,
    max_map_len=16,
)
"""What a client accepts in one batch from the server; the gateway splits bigger flushes."""


# --- encoding -----------------------------------------------------------------------------


def _consent_to_wire(c: f.Consent) -> Wire:
    wire: Wire = {
        "purpose": c.purpose,
        "scope": c.scope if isinstance(c.scope, str) else list(c.scope),
        "retention": c.retention,
    }
    if c.expires_at is not None:
        wire["expires_at"] = c.expires_at
    return wire


def _body_to_wire(body: f.Body) -> Wire:
    if isinstance(body, f.TextBody):
        return {"text": body.text}
    if isinstance(body, f.FileBody):
        wire: Wire = {
            "file_id": body.file_id,
            "name": body.name,
            "size": body.size,
            "mime": body.mime,
        }
        if body.thumb is not None:
            wire["thumb"] = body.thumb
        return wire
    if isinstance(body, f.LocationBody):
        wire = {"lat": body.lat, "lon": body.lon, "acc": body.acc}
        if body.live_until is not None:
            wire["live_until"] = body.live_until
        return wire
    return {"event": body.event, "text": body.text}


def _optional(wire: Wire, key: str, value: object) -> Wire:
    if value is not None:
        wire[key] = value
    return wire


def _send_to_wire(x: f.Send) -> Wire:
    wire: Wire = {"t": "send", "cid": x.cid, "conv": x.conv, "kind": x.body.KIND.value}
    wire["body"] = _body_to_wire(x.body)
    if x.consent is not None:
        wire["consent"] = _consent_to_wire(x.consent)
    return wire


def _msg_to_wire(x: f.Msg) -> Wire:
    wire: Wire = {"t": "msg", "id": x.id, "conv": x.conv}
    _optional(wire, "seq", x.seq)
    _optional(wire, "pos", x.pos)
    _optional(wire, "from", x.sender)
    _optional(wire, "dev", x.sender_device)
    wire["kind"] = x.body.KIND.value
    wire["body"] = _body_to_wire(x.body)
    if x.consent is not None:
        wire["consent"] = _consent_to_wire(x.consent)
    wire["at"] = x.sent_at
    return _optional(wire, "cid", x.cid)


def _sent_to_wire(x: f.Sent) -> Wire:
    wire: Wire = {"t": "sent", "cid": x.cid, "id": x.id, "conv": x.conv}
    _optional(wire, "seq", x.seq)
    _optional(wire, "pos", x.pos)
    wire["at"] = x.sent_at
    return wire


def _err_to_wire(x: f.Err) -> Wire:
    wire: Wire = {"t": "err", "code": x.code.value, "msg": x.message}
    _optional(wire, "ref", x.ref)
    return _optional(wire, "rt", x.ref_type)


def _push_reg_to_wire(x: f.PushRegister) -> Wire:
    wire: Wire = {"t": "push_reg", "cid": x.cid, "provider": x.provider, "token": x.token}
    _optional(wire, "env", x.env)
    _optional(wire, "topic", x.topic)
    _optional(wire, "project", x.project)
    if x.preview:
        wire["preview"] = True
    return wire


def _consents_to_wire(x: fl.Consents) -> Wire:
    grants = []
    for g in x.grants:
        grant: Wire = {"purpose": g.purpose, "on": g.on}
        _optional(grant, "at", g.at)
        grant["off"] = g.off
        grants.append(grant)
    return {"t": "consents", "cid": x.cid, "grants": grants}


_ENCODERS: dict[type[Any], Callable[[Any], Wire]] = {
    f.Send: _send_to_wire,
    f.Ack: lambda x: {"t": "ack", "pos": x.pos},
    f.Sync: lambda x: {"t": "sync", "after": x.after},
    f.Receipt: lambda x: {"t": "receipt", "conv": x.conv, "id": x.id, "status": x.status.value},
    f.Typing: lambda x: {"t": "typing", "conv": x.conv, "on": x.on},
    f.Ping: lambda x: {"t": "ping"},
    f.PushRegister: _push_reg_to_wire,
    f.PushUnregister: lambda x: {"t": "push_unreg", "cid": x.cid},
    f.Msg: _msg_to_wire,
    f.Sent: _sent_to_wire,
    f.Err: _err_to_wire,
    f.ReceiptNotice: lambda x: {
        "t": "receipt",
        "conv": x.conv,
        "id": x.id,
        "status": x.status.value,
        "who": x.who,
        "at": x.at,
    },
    f.TypingNotice: lambda x: {"t": "typing", "conv": x.conv, "who": x.who, "on": x.on},
    f.Synced: lambda x: {"t": "synced", "pos": x.pos},
    f.Resync: lambda x: {"t": "resync"},
    f.Pong: lambda x: {"t": "pong"},
    f.PushOk: lambda x: {"t": "push_ok", "cid": x.cid},
    fl.ConsentGet: lambda x: {"t": "consent_get", "cid": x.cid},
    fl.ConsentSet: lambda x: {"t": "consent_set", "cid": x.cid, "purpose": x.purpose, "on": x.on},
    fl.Consents: _consents_to_wire,
    fl.ConsentRevoked: lambda x: {
        "t": "consent_revoked",
        "who": x.who,
        "purpose": x.purpose,
        "conv": x.conv,
        "ids": list(x.ids),
        "at": x.at,
    },
    fl.Erased: lambda x: {
        "t": "erased",
        "conv": x.conv,
        "ids": list(x.ids),
        "reason": x.reason,
        "pos": x.pos,
        "at": x.at,
    },
    fl.LiveStart: lambda x: {
        "t": "live_start",
        "cid": x.cid,
        "conv": x.conv,
        "scope": x.scope if isinstance(x.scope, str) else list(x.scope),
        "until": x.until,
    },
    fl.LivePos: lambda x: {"t": "live_pos", "id": x.id, "lat": x.lat, "lon": x.lon, "acc": x.acc},
    fl.LiveStop: lambda x: {"t": "live_stop", "id": x.id},
    fl.LiveOk: lambda x: {"t": "live_ok", "cid": x.cid, "id": x.id, "until": x.until},
    fl.LiveEnd: lambda x: {
        "t": "live_end",
        "id": x.id,
        "conv": x.conv,
        "who": x.who,
        "reason": x.reason,
    },
    f.PolicyNotice: lambda x: {
        "t": "policy",
        "version": x.version,
        "material": x.material,
        "at": x.at,
    },
    f.OrgNotice: lambda x: _optional(
        {"t": "notice", "id": x.id, "kind": x.kind, "title": x.title, "text": x.text, "at": x.at},
        "ends_at",
        x.ends_at,
    ),
}


def encode(frame: f.Frame) -> bytes:
    """Return the msgpack bytes of one frame (a map, keys in PROTOCOL.md order).

    Frames validate themselves when built, so this only maps and packs. Raises
    `LocalProtocolError` if `frame` is not a frame.
    """
    try:
        to_wire = _ENCODERS[type(frame)]
    except KeyError:
        raise LocalProtocolError(ErrorCode.INTERNAL, f"not a frame: {frame!r}") from None
    return msgpack.packb(to_wire(frame), use_bin_type=True)  # type: ignore[no-any-return, unused-ignore]


def encode_batch(frames: Iterable[f.Frame]) -> bytes:
    """Return the batch plaintext carrying `frames` in order (their encodings concatenated)."""
    return b"".join(encode(frame) for frame in frames)


# --- decoding -----------------------------------------------------------------------------


def _fields(
    wire: Wire, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> None:
    """Refuse a map that lacks a required key or has a key not listed."""
    for key in required:
        if key not in wire:
            raise invalid(f"{where}{key}", "missing", ErrorCode.MISSING_FIELD)
    if len(wire) > len(required):
        extra = wire.keys() - required - set(optional)
        if extra:
            raise invalid(
                f"{where}{sorted(map(repr, extra))[0]:.40}", "unknown", ErrorCode.UNKNOWN_FIELD
            )


def _map(value: object, name: str, code: ErrorCode = ErrorCode.INVALID_FIELD) -> Wire:
    if type(value) is not dict:
        raise invalid(name, "must be a map", code)
    return value


def _consent_from_wire(value: object) -> f.Consent | None:
    if value is None:
        return None
    wire = _map(value, "consent", ErrorCode.CONSENT_INVALID)
    _fields(wire, "consent.", ("purpose", "scope", "retention"), ("expires_at",))
    scope = wire["scope"]
    return f.Consent(
        purpose=wire["purpose"],
        scope=tuple(scope) if type(scope) is list else scope,
        retention=wire["retention"],
        expires_at=wire.get("expires_at"),
    )


def _body_from_wire(kind: object, value: object, *, system_allowed: bool) -> f.Body:
    wire = _map(value, "body")
    if kind == "text":
        _fields(wire, "body.", ("text",))
        return f.TextBody(text=wire["text"])
    if kind == "file":
        _fields(wire, "body.", ("file_id", "name", "size", "mime"), ("thumb",))
        return f.FileBody(
            file_id=wire["file_id"],
            name=wire["name"],
            size=wire["size"],
            mime=wire["mime"],
            thumb=wire.get("thumb"),
        )
    if kind == "location":
        _fields(wire, "body.", ("lat", "lon", "acc"), ("live_until",))
        return f.LocationBody(
            lat=wire["lat"], lon=wire["lon"], acc=wire["acc"], live_until=wire.get("live_until")
        )
    if kind == "system" and system_allowed:
        _fields(wire, "body.", ("event", "text"))
        return f.SystemBody(event=wire["event"], text=wire["text"])
    allowed = "text, file, location" + (", system" if system_allowed else "")
    raise invalid("kind", f"must be one of: {allowed}")


def _send_from_wire(w: Wire) -> f.Send:
    _fields(w, "", ("t", "cid", "conv", "kind", "body"), ("consent",))
    body = _body_from_wire(w["kind"], w["body"], system_allowed=False)
    assert not isinstance(body, f.SystemBody)
    consent = _consent_from_wire(w.get("consent"))
    return f.Send(cid=w["cid"], conv=w["conv"], body=body, consent=consent)


def _msg_from_wire(w: Wire) -> f.Msg:
    _fields(
        w,
        "",
        ("t", "id", "conv", "kind", "body", "at"),
        ("seq", "pos", "from", "dev", "consent", "cid"),
    )
    return f.Msg(
        id=w["id"],
        conv=w["conv"],
        seq=w.get("seq"),
        pos=w.get("pos"),
        sender=w.get("from"),
        sender_device=w.get("dev"),
        body=_body_from_wire(w["kind"], w["body"], system_allowed=True),
        consent=_consent_from_wire(w.get("consent")),
        sent_at=w["at"],
        cid=w.get("cid"),
    )


def _decoder(
    cls: Callable[..., T], required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> Callable[[Wire], T]:
    """A decoder for a flat frame whose wire keys are its field names (plus "t")."""
    keys = required + optional

    def decode(w: Wire) -> T:
        _fields(w, "", ("t", *required), optional)
        return cls(**{key: w.get(key) for key in keys})

    return decode


def _sent_from_wire(w: Wire) -> f.Sent:
    _fields(w, "", ("t", "cid", "id", "conv", "at"), ("seq", "pos"))
    return f.Sent(
        cid=w["cid"],
        id=w["id"],
        conv=w["conv"],
        seq=w.get("seq"),
        pos=w.get("pos"),
        sent_at=w["at"],
    )


def _push_reg_from_wire(w: Wire) -> f.PushRegister:
    _fields(w, "", ("t", "cid", "provider", "token"), ("env", "topic", "project", "preview"))
    return f.PushRegister(
        cid=w["cid"],
        provider=w["provider"],
        token=w["token"],
        env=w.get("env"),
        topic=w.get("topic"),
        project=w.get("project"),
        preview=w.get("preview", False),
    )


def _err_from_wire(w: Wire) -> f.Err:
    _fields(w, "", ("t", "code", "msg"), ("ref", "rt"))
    return f.Err(code=w["code"], message=w["msg"], ref=w.get("ref"), ref_type=w.get("rt"))


def _list(value: object, name: str) -> list[Any]:
    if type(value) is not list:
        raise invalid(name, "must be an array")
    return value


def _live_start_from_wire(w: Wire) -> fl.LiveStart:
    _fields(w, "", ("t", "cid", "conv", "scope", "until"))
    scope = w["scope"]
    return fl.LiveStart(
        cid=w["cid"],
        conv=w["conv"],
        scope=tuple(scope) if type(scope) is list else scope,
        until=w["until"],
    )


def _grant_from_wire(value: object) -> fl.GrantState:
    wire = _map(value, "grants[]")
    _fields(wire, "grants[].", ("purpose", "on", "off"), ("at",))
    return fl.GrantState(purpose=wire["purpose"], on=wire["on"], at=wire.get("at"), off=wire["off"])


def _consents_from_wire(w: Wire) -> fl.Consents:
    _fields(w, "", ("t", "cid", "grants"))
    grants = tuple(_grant_from_wire(g) for g in _list(w["grants"], "grants"))
    return fl.Consents(cid=w["cid"], grants=grants)


def _consent_revoked_from_wire(w: Wire) -> fl.ConsentRevoked:
    _fields(w, "", ("t", "who", "purpose", "conv", "ids", "at"))
    return fl.ConsentRevoked(
        who=w["who"],
        purpose=w["purpose"],
        conv=w["conv"],
        ids=tuple(_list(w["ids"], "ids")),
        at=w["at"],
    )


def _erased_from_wire(w: Wire) -> fl.Erased:
    _fields(w, "", ("t", "conv", "ids", "reason", "pos", "at"))
    return fl.Erased(
        conv=w["conv"],
        ids=tuple(_list(w["ids"], "ids")),
        reason=w["reason"],
        pos=w["pos"],
        at=w["at"],
    )


CLIENT_FRAME_DECODERS: dict[str, Callable[[Wire], f.ClientFrame]] = {
    "send": _send_from_wire,
    "ack": _decoder(f.Ack, ("pos",)),
    "sync": _decoder(f.Sync, ("after",)),
    "receipt": _decoder(f.Receipt, ("conv", "id", "status")),
    "typing": _decoder(f.Typing, ("conv", "on")),
    "ping": _decoder(f.Ping, ()),
    "push_reg": _push_reg_from_wire,
    "push_unreg": _decoder(f.PushUnregister, ("cid",)),
    "consent_get": _decoder(fl.ConsentGet, ("cid",)),
    "consent_set": _decoder(fl.ConsentSet, ("cid", "purpose", "on")),
    "live_start": _live_start_from_wire,
    "live_pos": _decoder(fl.LivePos, ("id", "lat", "lon", "acc")),
    "live_stop": _decoder(fl.LiveStop, ("id",)),
}

SERVER_FRAME_DECODERS: dict[str, Callable[[Wire], f.ServerFrame]] = {
    "msg": _msg_from_wire,
    "sent": _sent_from_wire,
    "err": _err_from_wire,
    "receipt": _decoder(f.ReceiptNotice, ("conv", "id", "status", "who", "at")),
    "typing": _decoder(f.TypingNotice, ("conv", "who", "on")),
    "synced": _decoder(f.Synced, ("pos",)),
    "resync": _decoder(f.Resync, ()),
    "pong": _decoder(f.Pong, ()),
    "push_ok": _decoder(f.PushOk, ("cid",)),
    "consents": _consents_from_wire,
    "consent_revoked": _consent_revoked_from_wire,
    "erased": _erased_from_wire,
    "live_ok": _decoder(fl.LiveOk, ("cid", "id", "until")),
    "live_end": _decoder(fl.LiveEnd, ("id", "conv", "who", "reason")),
    "policy": _decoder(f.PolicyNotice, ("version", "material", "at")),
    "notice": _decoder(f.OrgNotice, ("id", "kind", "title", "text", "at"), ("ends_at",)),
}


def decode_frame(value: object, decoders: dict[str, Callable[[Wire], F]]) -> F:
    """Build the frame a decoded msgpack value describes, using one direction's decoders.

    Raises `RemoteProtocolError` (with `ref`/`ref_type` filled in when they can be read).
    """
    if type(value) is not dict:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "a frame must be a msgpack map")
    frame_type = value.get("t")
    if frame_type is None:
        raise RemoteProtocolError(ErrorCode.MISSING_FIELD, "t: missing (the frame type)")
    decode = decoders.get(frame_type) if type(frame_type) is str else None
    if decode is None:
        raise RemoteProtocolError(
            ErrorCode.UNKNOWN_FRAME_TYPE, f"t: unknown frame type {frame_type!r:.40}"
        )
    try:
        return decode(value)
    except LocalProtocolError as error:
        raise RemoteProtocolError(
            error.code, error.message, ref=_readable_cid(value), ref_type=frame_type
        ) from None


def _readable_cid(wire: Wire) -> str | None:
    try:
        return check_cid("cid", wire.get("cid"))
    except LocalProtocolError:
        return None


def decode_client_batch(
    data: bytes, limits: UnpackLimits = CLIENT_TO_SERVER_LIMITS
) -> list[f.ClientFrame]:
    """Return the frames of a batch a client sent, in order. Raises `RemoteProtocolError`."""
    return [decode_frame(v, CLIENT_FRAME_DECODERS) for v in unpack_values(data, limits)]


def decode_client_batch_lenient(
    data: bytes, limits: UnpackLimits = CLIENT_TO_SERVER_LIMITS
) -> list[f.ClientFrame | RemoteProtocolError]:
    """Like `decode_client_batch`, but an invalid frame yields its error in its place.

    Still raises `RemoteProtocolError` when the batch itself cannot be read (the connection
    should then be closed with the error's `close_code`).
    """
    results: list[f.ClientFrame | RemoteProtocolError] = []
    for value in unpack_values(data, limits):
        try:
            results.append(decode_frame(value, CLIENT_FRAME_DECODERS))
        except RemoteProtocolError as error:
            results.append(error)
    return results


def decode_server_batch(
    data: bytes, limits: UnpackLimits = SERVER_TO_CLIENT_LIMITS
) -> list[f.ServerFrame]:
    """Return the frames of a batch the server sent, in order. Raises `RemoteProtocolError`."""
    return [decode_frame(v, SERVER_FRAME_DECODERS) for v in unpack_values(data, limits)]


def decode_server_frame(value: object) -> f.ServerFrame:
    """One server frame from its already unpacked msgpack value (for readers that split a
    batch themselves). Raises `RemoteProtocolError`."""
    return decode_frame(value, SERVER_FRAME_DECODERS)


# --- stored form --------------------------------------------------------------------------
# The server stores a message's body and consent tag as their msgpack bytes and rebuilds
# `msg` frames from them for catch-up.

_STORED_LIMITS = UnpackLimits(
    max_bytes=CLIENT_TO_SERVER_LIMITS.max_bytes,
    max_values=1,
    max_str_bytes=CLIENT_TO_SERVER_LIMITS.max_str_bytes,
    max_bin_bytes=CLIENT_TO_SERVER_LIMITS.max_bin_bytes,
    max_array_len=CLIENT_TO_SERVER_LIMITS.max_array_len,
    max_map_len=CLIENT_TO_SERVER_LIMITS.max_map_len,
)


def encode_body(body: f.Body) -> bytes:
    """The msgpack bytes of a message body (the map under `body` on the wire)."""
    return msgpack.packb(_body_to_wire(body), use_bin_type=True)  # type: ignore[no-any-return, unused-ignore]


def encode_consent(consent: f.Consent) -> bytes:
    """The msgpack bytes of a consent tag (the map under `consent` on the wire)."""
    return msgpack.packb(_consent_to_wire(consent), use_bin_type=True)  # type: ignore[no-any-return, unused-ignore]


def _one_value(data: bytes) -> object:
    values = unpack_values(data, _STORED_LIMITS)
    if len(values) != 1:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "expected exactly one value")
    return values[0]


def decode_body(kind: str, data: bytes) -> f.Body:
    """A body from `encode_body` bytes; raises `RemoteProtocolError` if they are not one."""
    value = _one_value(data)
    try:
        return _body_from_wire(kind, value, system_allowed=True)
    except LocalProtocolError as error:
        raise RemoteProtocolError(error.code, error.message) from None


def decode_consent(data: bytes) -> f.Consent:
    """A consent tag from `encode_consent` bytes; raises `RemoteProtocolError` otherwise."""
    try:
        consent = _consent_from_wire(_one_value(data))
    except LocalProtocolError as error:
        raise RemoteProtocolError(error.code, error.message) from None
    if consent is None:
        raise RemoteProtocolError(ErrorCode.CONSENT_INVALID, "no consent tag")
    return consent
