"""What the gateway fuzzer sends: valid frames, mutated frames and batches, and the steps of
one fuzzing connection. Pure and seeded: the same `random.Random` gives the same steps.

Frames are built as plain msgpack maps from PROTOCOL.md §5 (not through the protocol's frame
classes, which refuse invalid values), then mutated: keys dropped, added or retyped, numbers
out of range, strings, binaries, arrays and maps at and past §8's limits, deep nesting,
unknown frame types, non-map frames; and batches: too many frames, duplicate keys, extension
types, truncation, flipped bytes, garbage, empty, oversized.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]

_DEEP = "\x00deep\x00"  # a placeholder string, replaced by hand-packed nesting after packing
_DEEP_PACKED: bytes = msgpack.packb(_DEEP)

INTS = (-1, 0, 1, 2**31, 2**53 - 1, 2**53, 2**63 - 1, 2**64 - 1, -(2**63))
STRING_LENGTHS = (0, 1, 64, 65, 1_000, 65_536, 65_537)


@dataclass(frozen=True, slots=True)
class Step:
    """One thing the fuzzing client does.

    kind: `batch` (seal `data` and send it), `together` (seal each of `parts`, one write),
    `raw` (send `data` as a binary message without sealing), `text` (a text WebSocket
    message), `ws_ping` (a WebSocket ping), `final` (seal `data` FINAL: the client ends).
    """

    kind: str
    data: bytes = b""
    parts: tuple[bytes, ...] = ()


def nested_bytes(depth: int) -> bytes:
    """`depth` one-entry maps inside one another around a string, packed by hand (msgpack's
    packer stops near depth 500)."""
    return b"\x81\xa1k" * depth + b"\xa1x"


def pack(value: object) -> bytes:
    """msgpack bytes of `value`; the `_DEEP` placeholder becomes deep nesting."""
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


class FrameFuzzer:
    """Valid and mutated frames for one conversation, from one seeded generator."""

    def __init__(self, rng: random.Random, conv: bytes, message_ids: list[bytes]) -> None:
        self.rng = rng
        self.conv = conv
        self.message_ids = message_ids  # ids of real messages, for receipts
        self._cids = 0

    # -- valid frames --------------------------------------------------------------------

    def cid(self) -> str:
        self._cids += 1
        return f"fz-{self.rng.getrandbits(40):x}-{self._cids}"

    def valid(self) -> dict[str, Any]:
        """A frame the server accepts as it is."""
        r = self.rng
        choice = r.randrange(8)
        if choice == 0:
            return {"t": "ping"}
        if choice == 1:
            return {"t": "ack", "pos": r.choice((0, 1, r.randrange(1, 10**6), 2**53 - 1))}
        if choice == 2:
            return {"t": "sync", "after": r.choice((0, 2**53 - 1, r.randrange(10**6)))}
        if choice == 3:
            return {"t": "typing", "conv": self.conv, "on": r.random() < 0.5}
        if choice == 4 and self.message_ids:
            return {
                "t": "receipt",
                "conv": self.conv,
                "id": r.choice(self.message_ids),
                "status": r.choice(("delivered", "read")),
            }
        if choice == 5:
            return {
                "t": "send",
                "cid": self.cid(),
                "conv": self.conv,
                "kind": "location",
                "body": {"lat": -6.2, "lon": 106.8, "acc": 5.0},
                "consent": {
                    "purpose": "location_share",
                    "scope": "conversation",
                    "retention": "ephemeral",
                },
            }
        return {
            "t": "send",
            "cid": self.cid(),
            "conv": self.conv,
            "kind": "text",
            "body": {"text": "fuzz " + "x" * r.randrange(40)},
        }

    # -- values --------------------------------------------------------------------------

    def value(self) -> object:
        """Any msgpack value, often at or past a limit."""
        r = self.rng
        choice = r.randrange(12)
        if choice == 0:
            return r.choice(INTS)
        if choice == 1:
            return (
                "é" * r.choice(STRING_LENGTHS)
                if r.random() < 0.3
                else "s" * r.choice(STRING_LENGTHS)
            )
        if choice == 2:
            return bytes(r.choice((0, 15, 16, 17, 16_384, 16_385)))
        if choice == 3:
            return [0] * r.choice((0, 1, 1_024, 1_025))
        if choice == 4:
            return {f"k{i}": i for i in range(r.choice((0, 1, 16, 17)))}
        if choice == 5:
            return _DEEP
        if choice == 6:
            return r.choice((None, True, False, 1.5, float("nan"), float("inf"), -0.0))
        if choice == 7:
            return msgpack.ExtType(r.randrange(128), b"x")
        if choice == 8:
            return self.conv if r.random() < 0.5 else bytes(16)
        if choice == 9:
            return r.choice(("conversation", "ephemeral", "send", "", " ", "\x00", "\ud7ff"))
        if choice == 10:
            return [self.conv, b"\x01" * 16, "x"]
        return self.valid()

    # -- mutations -----------------------------------------------------------------------

    def mutated(self) -> object:
        """A frame with one to three mutations, or something that is no frame at all."""
        r = self.rng
        if r.random() < 0.05:
            return self.value()  # not a map
        frame: dict[Any, Any] = self.valid()
        for _ in range(r.randint(1, 3)):
            keys = list(frame)
            op = r.randrange(7)
            if op == 0 and keys:
                del frame[r.choice(keys)]
            elif op == 1:
                frame[r.choice(("x", "zz", "T", "t2", "body", "consent", "cid"))] = self.value()
            elif op == 2 and keys:
                frame[r.choice(keys)] = self.value()
            elif op == 3:
                frame["t"] = r.choice(("teleport", "", "SEND", "msg", "sent", 1, None, b"send"))
            elif op == 4 and isinstance(frame.get("body"), dict):
                body = frame["body"]
                body[r.choice([*body, "extra"])] = self.value()
            elif op == 5 and isinstance(frame.get("consent"), dict):
                consent = frame["consent"]
                consent[r.choice([*consent, "extra"])] = self.value()
            else:
                frame["t"] = _DEEP if r.random() < 0.5 else self.value()
        return frame

    def packed_frame(self, mutate: bool) -> bytes:
        frame = self.mutated() if mutate else self.valid()
        try:
            data = pack(frame)
        except (ValueError, OverflowError, TypeError):
            data = pack({"t": "ping"})
        if _DEEP_PACKED in data:
            depth = self.rng.choice((1, 2, 3, 4, 10, 100, 500, 1_000, 2_000, 20_000))
            data = data.replace(_DEEP_PACKED, nested_bytes(depth))
        return data

    def batch(self) -> bytes:
        """One batch plaintext: frames, mostly some of them mutated, or a broken batch."""
        r = self.rng
        choice = r.randrange(20)
        if choice == 0:
            return b""
        if choice == 1:
            return r.randbytes(r.randrange(1, 200))
        if choice == 2:  # too many frames
            return pack({"t": "ping"}) * r.choice((255, 256, 257, 400))
        if choice == 3:  # a duplicate key
            return b"\x82\xa1t\xa4ping\xa1t\xa4ping"
        if choice == 4:  # cut short
            data = self.packed_frame(False) + self.packed_frame(False)
            return data[: r.randrange(1, len(data))]
        if choice == 5:  # flipped bytes
            flipped = bytearray(self.packed_frame(False))
            for _ in range(r.randint(1, 4)):
                flipped[r.randrange(len(flipped))] ^= 1 << r.randrange(8)
            return bytes(flipped)
        if choice == 6:  # past the batch size limit
            return pack({"t": "typing", "conv": self.conv, "on": "x" * 65_536}) * 3
        frames = [self.packed_frame(r.random() < 0.6) for _ in range(r.randint(1, 6))]
        return b"".join(frames)

    # -- a connection's steps ------------------------------------------------------------

    def steps(self) -> list[Step]:
        """What one fuzzing connection does after its handshake."""
        r = self.rng
        steps: list[Step] = []
        for _ in range(r.randint(1, 8)):
            choice = r.randrange(40)
            if choice == 0:
                steps.append(Step("raw", r.randbytes(r.randrange(0, 80))))
            elif choice == 1:
                steps.append(Step("text", b"hello"))
            elif choice == 2:
                steps.append(Step("ws_ping"))
            elif choice == 3:
                steps.append(Step("final", pack({"t": "ping"})))
            elif choice < 12:
                # A valid request racing a refusal, in one write: sync or send first.
                first = pack(
                    {"t": "sync", "after": r.choice((0, 2**53 - 1))}
                    if r.random() < 0.7
                    else self.valid()
                )
                steps.append(Step("together", parts=(first, self.batch(), self.batch())))
            else:
                steps.append(Step("batch", self.batch()))
        return steps
