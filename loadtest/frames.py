"""Reading server batches in the tester, cheaply where it may.

A tester device receives as many messages as a whole team, so it spends most of its time
decoding. Devices picked for checking (`CHECK_EVERY`) read every frame with the reference
decoder, which checks every field against PROTOCOL.md; the others read `msg` frames for the
fields the tester uses (id, pos, cid, and whether it is a live-location update) and decode
any other frame in full. Decryption
is never skipped: every batch is opened by the device's own secure channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack  # type: ignore[import-untyped, unused-ignore]

from protocol import (
    SERVER_TO_CLIENT_LIMITS,
    ErrorCode,
    RemoteProtocolError,
    ServerFrame,
    decode_server_batch,
    decode_server_frame,
)

CHECK_EVERY = 8
"""One device in this many checks every frame it receives in full."""


@dataclass(frozen=True, slots=True)
class MsgSeen:
    """The fields of a `msg` frame the tester uses."""

    id: bytes
    pos: int | None
    cid: str | None
    live: bool = False
    """A live-location update: ephemeral (no `pos`), its body has `live_until`."""


def read_batch(plaintext: bytes, *, check: bool) -> list[ServerFrame | MsgSeen]:
    """The frames of an opened server batch; `msg` frames as `MsgSeen` unless `check`.

    Raises `RemoteProtocolError` for a batch that is not msgpack or a frame that fails
    its checks.
    """
    if check:
        return list(decode_server_batch(plaintext))
    frames: list[ServerFrame | MsgSeen] = []
    unpacker = msgpack.Unpacker(
        raw=False, max_buffer_size=max(SERVER_TO_CLIENT_LIMITS.max_bytes, len(plaintext))
    )
    unpacker.feed(plaintext)
    try:
        for value in unpacker:
            if type(value) is dict and value.get("t") == "msg":
                pos = value.get("pos")
                body = value.get("body") if pos is None else None
                live = type(body) is dict and "live_until" in body
                frames.append(MsgSeen(bytes(value["id"]), pos, value.get("cid"), live))
            else:
                frames.append(decode_server_frame(value))
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise RemoteProtocolError(
            ErrorCode.MALFORMED_FRAME, f"unreadable server batch ({type(exc).__name__})"
        ) from None
    return frames
