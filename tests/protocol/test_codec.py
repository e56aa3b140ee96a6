"""Frames on the wire: exact bytes, round trips, and every refusal a client can meet."""

from __future__ import annotations

import math
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest

from protocol import frames as f
from protocol.codec import (
    CLIENT_TO_SERVER_LIMITS,
    decode_client_batch,
    decode_client_batch_lenient,
    decode_server_batch,
    encode,
    encode_batch,
)
from protocol.codes import ErrorCode
from protocol.errors import LocalProtocolError, RemoteProtocolError
from tests.protocol.helpers import (
    CLIENT_FRAMES,
    CONV,
    LOCATION_CONSENT,
    MSG_ID,
    SERVER_FRAMES,
    TEXT,
)


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return, unused-ignore]


def client_error(data: bytes) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        decode_client_batch(data)
    return info.value


SEND_TEXT: dict[str, Any] = {
    "t": "send",
    "cid": "c1",
    "conv": CONV,
    "kind": "text",
    "body": {"text": "hi"},
}
SEND_LOCATION: dict[str, Any] = {
    "t": "send",
    "cid": "c2",
    "conv": CONV,
    "kind": "location",
    "body": {"lat": 1.5, "lon": 2.5, "acc": 3.0},
    "consent": {"purpose": "location_share", "scope": "conversation", "retention": "ephemeral"},
}


PUSH_REG: dict[str, Any] = {"t": "push_reg", "cid": "p", "provider": "apns", "token": "ab" * 32}


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of a wire map with keys replaced (value ... removes the key)."""
    result = {**base, **changes}
    return {k: v for k, v in result.items() if v is not ...}


def body(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return with_(base, body=with_(base["body"], **changes))


def consent(**changes: Any) -> dict[str, Any]:
    return with_(SEND_LOCATION, consent=with_(SEND_LOCATION["consent"], **changes))


def test_exact_bytes_of_small_frames() -> None:
    assert encode(f.Ping()) == b"\x81\xa1t\xa4ping"
    assert encode(f.Ack(pos=5)) == bytes.fromhex("82a174a361636ba3706f7305")
    assert encode(f.Send(cid="c1", conv=CONV, body=TEXT)) == pack(
        {"t": "send", "cid": "c1", "conv": CONV, "kind": "text", "body": {"text": "halo"}}
    )


def test_exact_bytes_of_the_policy_frame() -> None:
    """`policy` (server -> client): a new privacy-policy version, keys in PROTOCOL.md order."""
    notice = f.PolicyNotice(version="2026-01", material=True, at=1_767_225_600_000)
    wire = bytes.fromhex(
        "84a174a6706f6c696379"  # {"t": "policy",
        "a776657273696f6ea7323032362d3031"  # "version": "2026-01",
        "a86d6174657269616cc3"  # "material": true,
        "a26174cf0000019b76daa800"  # "at": 1767225600000}
    )
    assert encode(notice) == wire
    assert decode_server_batch(wire) == [notice]
    minor = f.PolicyNotice(version="v2", material=False, at=5)
    assert encode(minor) == bytes.fromhex(
        "84a174a6706f6c696379a776657273696f6ea27632a86d6174657269616cc2a2617405"
    )
    assert decode_server_batch(encode(minor)) == [minor]


POLICY: dict[str, Any] = {"t": "policy", "version": "2026-01", "material": True, "at": 1}


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (with_(POLICY, version=""), ErrorCode.INVALID_FIELD),
        (with_(POLICY, version="v 2"), ErrorCode.INVALID_FIELD),
        (with_(POLICY, version="-v2"), ErrorCode.INVALID_FIELD),
        (with_(POLICY, version="v" * 33), ErrorCode.INVALID_FIELD),
        (with_(POLICY, version=b"v2"), ErrorCode.INVALID_FIELD),
        (with_(POLICY, material=1), ErrorCode.INVALID_FIELD),
        (with_(POLICY, at=-1), ErrorCode.INVALID_FIELD),
        (with_(POLICY, material=...), ErrorCode.MISSING_FIELD),
        (with_(POLICY, text="..."), ErrorCode.UNKNOWN_FIELD),
    ],
)
def test_a_malformed_policy_frame_is_refused(wire: Any, code: ErrorCode) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_server_batch(pack(wire))
    assert info.value.code is code


def test_a_client_cannot_send_a_policy_frame() -> None:
    assert client_error(pack(POLICY)).code is ErrorCode.UNKNOWN_FRAME_TYPE


def test_exact_bytes_of_the_notice_frame() -> None:
    """`notice` (server -> client): keys in PROTOCOL.md order, `ends_at` only when present."""
    ending = f.OrgNotice(
        id=b"\x1d" * 16,
        kind="service_ending",
        title="Closing",
        text="Ends 1 Feb.",
        at=1_767_225_600_000,
        ends_at=1_769_904_000_000,
    )
    wire = bytes.fromhex(
        "87a174a66e6f74696365"  # {"t": "notice",
        "a26964c410"
        + "1d"
        * 16  # "id": 16 bytes,
        + "a46b696e64ae736572766963655f656e64696e67"  # "kind": "service_ending",
        "a57469746c65a7436c6f73696e67"  # "title": "Closing",
        "a474657874ab456e64732031204665622e"  # "text": "Ends 1 Feb.",
        "a26174cf0000019b76daa800"  # "at": 1767225600000,
        "a7656e64735f6174cf0000019c167fcc00"  # "ends_at": 1769904000000}
    )
    assert encode(ending) == wire
    assert decode_server_batch(wire) == [ending]
    incident = f.OrgNotice(
        id=b"\x1d" * 16, kind="security_incident", title="Leak", text="Change it.", at=5
    )
    assert encode(incident)[:1] == b"\x86"  # six keys: no ends_at
    assert decode_server_batch(encode(incident)) == [incident]


NOTICE: dict[str, Any] = {
    "t": "notice",
    "id": b"\x1d" * 16,
    "kind": "security_incident",
    "title": "Leak",
    "text": "Change it.",
    "at": 1,
}


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (with_(NOTICE, id=b"\x1d" * 15), ErrorCode.INVALID_FIELD),
        (with_(NOTICE, kind="maintenance"), ErrorCode.INVALID_FIELD),
        (with_(NOTICE, title=""), ErrorCode.INVALID_FIELD),
        (with_(NOTICE, title="a\nb"), ErrorCode.INVALID_FIELD),
        (with_(NOTICE, title="t" * 201), ErrorCode.INVALID_FIELD),
        (with_(NOTICE, text=""), ErrorCode.INVALID_FIELD),
        (with_(NOTICE, at=-1), ErrorCode.INVALID_FIELD),
        (with_(NOTICE, ends_at=10), ErrorCode.INVALID_FIELD),  # only for service_ending
        (with_(NOTICE, kind="service_ending"), ErrorCode.INVALID_FIELD),  # needs ends_at
        (with_(NOTICE, text=...), ErrorCode.MISSING_FIELD),
        (with_(NOTICE, version="v1"), ErrorCode.UNKNOWN_FIELD),
    ],
)
def test_a_malformed_notice_frame_is_refused(wire: Any, code: ErrorCode) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_server_batch(pack(wire))
    assert info.value.code is code


def test_a_client_cannot_send_a_notice_frame() -> None:
    assert client_error(pack(NOTICE)).code is ErrorCode.UNKNOWN_FRAME_TYPE


@pytest.mark.parametrize("frame", CLIENT_FRAMES, ids=repr)
def test_every_client_frame_round_trips(frame: f.ClientFrame) -> None:
    assert decode_client_batch(encode(frame)) == [frame]


@pytest.mark.parametrize("frame", SERVER_FRAMES, ids=repr)
def test_every_server_frame_round_trips(frame: f.ServerFrame) -> None:
    assert decode_server_batch(encode(frame)) == [frame]


def test_a_batch_is_the_concatenation_of_its_frames_in_order() -> None:
    assert decode_client_batch(encode_batch(CLIENT_FRAMES)) == CLIENT_FRAMES
    assert decode_server_batch(encode_batch(SERVER_FRAMES)) == SERVER_FRAMES


def test_absent_optional_fields_may_be_nil_and_numbers_may_be_integers() -> None:
    """What other msgpack encoders produce (JS writes 0.0 as 0) is accepted."""
    frames = decode_client_batch(pack(with_(SEND_TEXT, consent=None)))
    assert frames == [f.Send(cid="c1", conv=CONV, body=f.TextBody(text="hi"))]
    (send,) = decode_client_batch(pack(body(SEND_LOCATION, lat=0, lon=-180, acc=0)))
    assert isinstance(send, f.Send) and send.body == f.LocationBody(lat=0.0, lon=-180.0, acc=0.0)
    assert isinstance(send.body, f.LocationBody) and type(send.body.lat) is float


BAD_CLIENT_FRAMES: list[tuple[str, Any, ErrorCode]] = [
    ("unknown type", {"t": "nope"}, ErrorCode.UNKNOWN_FRAME_TYPE),
    ("type not a string", {"t": 5}, ErrorCode.UNKNOWN_FRAME_TYPE),
    ("server frame sent by a client", {"t": "pong"}, ErrorCode.UNKNOWN_FRAME_TYPE),
    ("no type", {"pos": 1}, ErrorCode.MISSING_FIELD),
    ("not a map", [1, 2], ErrorCode.MALFORMED_FRAME),
    ("missing field", {"t": "ack"}, ErrorCode.MISSING_FIELD),
    ("extra field", {"t": "ack", "pos": 1, "x": 2}, ErrorCode.UNKNOWN_FIELD),
    ("extra field on ping", {"t": "ping", "n": 1}, ErrorCode.UNKNOWN_FIELD),
    (
        "server-only field",
        {"t": "typing", "conv": CONV, "on": True, "who": CONV},
        ErrorCode.UNKNOWN_FIELD,
    ),
    ("negative int", {"t": "ack", "pos": -1}, ErrorCode.INVALID_FIELD),
    ("bool for int", {"t": "ack", "pos": True}, ErrorCode.INVALID_FIELD),
    ("float for int", {"t": "sync", "after": 1.0}, ErrorCode.INVALID_FIELD),
    ("int beyond 2**53-1", {"t": "ack", "pos": 2**53}, ErrorCode.INVALID_FIELD),
    ("int for bool", {"t": "typing", "conv": CONV, "on": 1}, ErrorCode.INVALID_FIELD),
    (
        "bad receipt status",
        {"t": "receipt", "conv": CONV, "id": MSG_ID, "status": "seen"},
        ErrorCode.INVALID_FIELD,
    ),
    ("str for a 16-byte id", with_(SEND_TEXT, conv="c" * 16), ErrorCode.INVALID_FIELD),
    ("15-byte id", with_(SEND_TEXT, conv=b"c" * 15), ErrorCode.INVALID_FIELD),
    ("bytes for cid", with_(SEND_TEXT, cid=b"c1"), ErrorCode.INVALID_FIELD),
    ("cid with a space", with_(SEND_TEXT, cid="c 1"), ErrorCode.INVALID_FIELD),
    ("cid too long", with_(SEND_TEXT, cid="c" * 65), ErrorCode.INVALID_FIELD),
    ("empty text", body(SEND_TEXT, text=""), ErrorCode.INVALID_FIELD),
    ("text too long", body(SEND_TEXT, text="x" * 16_001), ErrorCode.INVALID_FIELD),
    ("unknown kind", with_(SEND_TEXT, kind="video"), ErrorCode.INVALID_FIELD),
    ("system kind from a client", with_(SEND_TEXT, kind="system"), ErrorCode.INVALID_FIELD),
    ("body of another kind", with_(SEND_TEXT, kind="location"), ErrorCode.MISSING_FIELD),
    ("body not a map", with_(SEND_TEXT, body="hi"), ErrorCode.INVALID_FIELD),
    ("body extra key", body(SEND_TEXT, bold=True), ErrorCode.UNKNOWN_FIELD),
    (
        "text with consent",
        with_(SEND_TEXT, consent=SEND_LOCATION["consent"]),
        ErrorCode.CONSENT_INVALID,
    ),
    ("location without consent", with_(SEND_LOCATION, consent=...), ErrorCode.CONSENT_REQUIRED),
    ("location with nil consent", with_(SEND_LOCATION, consent=None), ErrorCode.CONSENT_REQUIRED),
    ("latitude above 90", body(SEND_LOCATION, lat=90.000001), ErrorCode.INVALID_FIELD),
    ("latitude below -90", body(SEND_LOCATION, lat=-91), ErrorCode.INVALID_FIELD),
    ("longitude above 180", body(SEND_LOCATION, lon=180.5), ErrorCode.INVALID_FIELD),
    ("negative accuracy", body(SEND_LOCATION, acc=-0.1), ErrorCode.INVALID_FIELD),
    ("NaN latitude", body(SEND_LOCATION, lat=math.nan), ErrorCode.INVALID_FIELD),
    ("infinite longitude", body(SEND_LOCATION, lon=math.inf), ErrorCode.INVALID_FIELD),
    ("string latitude", body(SEND_LOCATION, lat="1.5"), ErrorCode.INVALID_FIELD),
    ("consent not a map", with_(SEND_LOCATION, consent="yes"), ErrorCode.CONSENT_INVALID),
    ("consent bad purpose", consent(purpose="Location Share"), ErrorCode.CONSENT_INVALID),
    ("consent empty scope", consent(scope=[]), ErrorCode.CONSENT_INVALID),
    ("consent scope of strings", consent(scope=["alice"]), ErrorCode.CONSENT_INVALID),
    ("consent repeated member", consent(scope=[CONV, CONV]), ErrorCode.CONSENT_INVALID),
    ("consent zero retention", consent(retention=0), ErrorCode.CONSENT_INVALID),
    ("consent unknown retention", consent(retention="forever"), ErrorCode.CONSENT_INVALID),
    ("consent missing key", consent(scope=...), ErrorCode.MISSING_FIELD),
    ("consent unknown key", consent(why="x"), ErrorCode.UNKNOWN_FIELD),
    (
        "push_reg without token",
        {"t": "push_reg", "cid": "p", "provider": "apns"},
        (ErrorCode.MISSING_FIELD),
    ),
    ("push_reg empty token", PUSH_REG | {"token": ""}, ErrorCode.INVALID_FIELD),
    ("push_reg token with a newline", PUSH_REG | {"token": "ab\ncd"}, ErrorCode.INVALID_FIELD),
    (
        "push_reg provider not an identifier",
        PUSH_REG | {"provider": "APNS"},
        (ErrorCode.INVALID_FIELD),
    ),
    ("push_reg preview not a bool", PUSH_REG | {"preview": 1}, ErrorCode.INVALID_FIELD),
    ("push_reg unknown key", PUSH_REG | {"sound": "x"}, ErrorCode.UNKNOWN_FIELD),
]


@pytest.mark.parametrize(
    ("wire", "code"),
    [(w, c) for _, w, c in BAD_CLIENT_FRAMES],
    ids=[n for n, _, _ in BAD_CLIENT_FRAMES],
)
def test_invalid_client_frames_are_refused_with_their_code(wire: Any, code: ErrorCode) -> None:
    assert client_error(pack(wire)).code is code


def test_a_refused_send_names_its_cid_and_type() -> None:
    error = client_error(pack(with_(SEND_LOCATION, consent=...)))
    assert (error.ref, error.ref_type) == ("c2", "send")


BAD_BATCHES: list[tuple[str, bytes, ErrorCode]] = [
    ("empty", b"", ErrorCode.MALFORMED_FRAME),
    ("reserved byte", b"\xc1", ErrorCode.MALFORMED_FRAME),
    ("truncated frame", encode(f.Ping())[:-1], ErrorCode.MALFORMED_FRAME),
    (
        "valid frame then a cut one",
        encode(f.Ping()) + encode(f.Ack(pos=1))[:3],
        ErrorCode.MALFORMED_FRAME,
    ),
    ("invalid UTF-8", b"\x81\xa1t\xa2\xff\xfe", ErrorCode.MALFORMED_FRAME),
    ("duplicate key", b"\x82\xa1t\xa4ping\xa1t\xa4ping", ErrorCode.MALFORMED_FRAME),
    ("integer map key", pack({1: 2}), ErrorCode.MALFORMED_FRAME),
    ("extension type", pack({"t": msgpack.ExtType(1, b"x")}), ErrorCode.MALFORMED_FRAME),
    ("timestamp", b"\x81\xa1t\xd6\xff\x00\x00\x00\x00", ErrorCode.MALFORMED_FRAME),
    ("deep nesting", b"\x91" * 2000 + b"\xc0", ErrorCode.MALFORMED_FRAME),
    (
        "batch too big",
        encode(f.Ping()) * (CLIENT_TO_SERVER_LIMITS.max_bytes // 7 + 1),
        ErrorCode.FRAME_TOO_LARGE,
    ),
    ("too many frames", encode(f.Ping()) * 257, ErrorCode.FRAME_TOO_LARGE),
    ("string too long", pack(body(SEND_TEXT, text="x" * 65_537)), ErrorCode.FRAME_TOO_LARGE),
    ("thumbnail too big", pack({"t": "send", "thumb": b"x" * 16_385}), ErrorCode.FRAME_TOO_LARGE),
    ("map too long", pack({str(i): i for i in range(17)}), ErrorCode.FRAME_TOO_LARGE),
]


@pytest.mark.parametrize(
    ("data", "code"), [(d, c) for _, d, c in BAD_BATCHES], ids=[n for n, _, _ in BAD_BATCHES]
)
def test_unreadable_batches_are_refused_whole(data: bytes, code: ErrorCode) -> None:
    assert client_error(data).code is code
    with pytest.raises(RemoteProtocolError):
        decode_client_batch_lenient(data)


def test_lenient_decoding_keeps_good_frames_and_returns_errors_in_place() -> None:
    bad = pack(with_(SEND_LOCATION, cid="c9", consent=...))
    results = decode_client_batch_lenient(encode(f.Ping()) + bad + encode(f.Ack(pos=3)))
    assert results[0] == f.Ping() and results[2] == f.Ack(pos=3)
    error = results[1]
    assert isinstance(error, RemoteProtocolError)
    assert (error.code, error.ref, error.ref_type) == (ErrorCode.CONSENT_REQUIRED, "c9", "send")


def test_directions_are_not_confused() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_server_batch(encode(f.Typing(conv=CONV, on=True)))
    assert info.value.code is ErrorCode.MISSING_FIELD  # the server's typing frame names `who`
    with pytest.raises(RemoteProtocolError) as info:
        decode_server_batch(encode(f.Ping()))
    assert info.value.code is ErrorCode.UNKNOWN_FRAME_TYPE


def test_server_frames_are_checked_as_strictly() -> None:
    msg = pack(
        {
            "t": "msg",
            "id": MSG_ID,
            "conv": CONV,
            "seq": 1,
            "pos": 1,
            "from": CONV,
            "dev": CONV,
            "kind": "location",
            "body": SEND_LOCATION["body"],
            "at": 1,
        }
    )
    with pytest.raises(RemoteProtocolError) as info:
        decode_server_batch(msg)
    assert info.value.code is ErrorCode.CONSENT_REQUIRED
    with pytest.raises(RemoteProtocolError) as info:
        decode_server_batch(pack({"t": "err", "code": "no_such_code", "msg": ""}))
    assert info.value.code is ErrorCode.INVALID_FIELD


def test_building_an_invalid_frame_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError) as info:
        f.Send(cid="c1", conv=CONV, body=f.LocationBody(lat=0, lon=0, acc=0))
    assert info.value.code is ErrorCode.CONSENT_REQUIRED
    with pytest.raises(LocalProtocolError) as info:
        f.Send(cid="c1", conv=CONV, body=TEXT, consent=LOCATION_CONSENT)
    assert info.value.code is ErrorCode.CONSENT_INVALID
    with pytest.raises(LocalProtocolError):
        f.LocationBody(lat=91, lon=0, acc=0)
    with pytest.raises(LocalProtocolError):
        f.TextBody(text="\ud800")  # a lone surrogate cannot be encoded as UTF-8
    with pytest.raises(LocalProtocolError):
        f.FileBody(file_id=MSG_ID, name="a\nb", size=1, mime="text/plain")
    with pytest.raises(LocalProtocolError):
        encode("ping")  # type: ignore[arg-type]


def test_ephemeral_messages_and_only_they_have_no_position() -> None:
    fields: dict[str, Any] = dict(
        id=MSG_ID, conv=CONV, sender=CONV, sender_device=CONV, body=TEXT, consent=None, sent_at=1
    )
    with pytest.raises(LocalProtocolError):
        f.Msg(seq=None, pos=None, **fields)
    with pytest.raises(LocalProtocolError):
        f.Msg(seq=1, pos=None, **fields)
    with pytest.raises(LocalProtocolError):
        f.Msg(seq=0, pos=1, **fields)
    assert f.Msg(seq=1, pos=1, **fields).kind is f.MessageKind.TEXT


def test_every_refusal_can_be_reported_to_the_client_as_an_err_frame() -> None:
    """The server turns a frame error into an `err` the client can read back."""
    huge_key = {"t": "ack", "pos": 1, "k" * 60_000: 1}
    batch = pack(huge_key) + pack(with_(SEND_LOCATION, consent=...)) + pack({"t": "x" * 500})
    errors = decode_client_batch_lenient(batch)
    for error in errors:
        assert isinstance(error, RemoteProtocolError)
        err = f.Err.from_error(error)
        assert decode_server_batch(encode(err)) == [err]
        assert err.code is error.code and err.ref == error.ref
