"""The `erased` frame (PROTOCOL.md 6.9): tombstones, fanned out live after the erasure's
commit and replayed by catch-up.

A tombstone has a stream position, so it must reach each connection in position order
with the messages: whoever writes tombstones holds `Hub.stream_order` (which the committer
holds around each commit and its fan-out) from before its transaction until it has fanned
them out (`announce_erased`), so no message committed after them is published first.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from protocol import Erased, encode
from protocol.frames_live import ERASED_REASONS, ErasedReason
from server.gateway.hub import Hub
from storage.tombstones import IDS_PER_GROUP, ErasedGroup, Tombstone

REASONS: dict[str, ErasedReason] = {r: r for r in ERASED_REASONS}


def erased_frame(conversation: bytes, ids: list[bytes], reason: str, pos: int, at_ms: int) -> bytes:
    return encode(
        Erased(conv=conversation, ids=tuple(ids), reason=REASONS[reason], pos=pos, at=at_ms)
    )


def announce_erased(hub: Hub, groups: Iterable[ErasedGroup]) -> int:
    """Fan each group out (one frame, encoded once) to its recipients' live connections;
    returns how many connections they were handed to. Call it holding `hub.stream_order`."""
    handed = 0
    for g in groups:
        at = int(g.at.timestamp() * 1000)
        frame = erased_frame(g.conversation_id.bytes, [i.bytes for i in g.ids], g.reason, g.pos, at)
        handed += hub.fan_out(g.accounts, g.pos, frame)
    return handed


def catch_up_frames(tombstones: list[Tombstone]) -> Iterator[bytes]:
    """Consecutive tombstones (of one catch-up page, all meant for the device) of the same
    conversation, reason and time as one frame each."""
    run: list[Tombstone] = []
    for t in tombstones:
        if run and (
            (t.conversation_id, t.reason, t.erased_at)
            != (run[0].conversation_id, run[0].reason, run[0].erased_at)
            or len(run) == IDS_PER_GROUP
        ):
            yield _frame(run)
            run = []
        run.append(t)
    if run:
        yield _frame(run)


def _frame(run: list[Tombstone]) -> bytes:
    first, last = run[0], run[-1]
    at = int(first.erased_at.timestamp() * 1000)
    ids = [t.message_id.bytes for t in run]
    return erased_frame(first.conversation_id.bytes, ids, first.reason, last.pos, at)
