"""The `erased` frame (PROTOCOL.md 6.9): tombstones, fanned out live after the erasure's
commit and replayed by catch-up.

A tombstone has a stream position, so it must reach each connection in position order
with the messages. After the transaction that wrote them, `announce_erased` takes
`Hub.stream_order` (the lock of this process's stream feed, server/gateway/stream.py, which
fans out every commit): what lies below them that this process has not fanned out yet
goes first, read from the store, then they do, unless a commit of ours above them already
read them from the store (the feed reads tombstones with the messages). The transaction
itself holds no lock of ours, so live fan-out never waits for an erasure's statements.
Other processes read them from the store when the bus announces their positions (or their
timer finds them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from protocol import Erased, encode
from protocol.frames_live import ERASED_REASONS, ErasedReason
from server.gateway.hub import Hub
from storage.tombstones import IDS_PER_GROUP, ErasedGroup, Tombstone

REASONS: dict[str, ErasedReason] = {r: r for r in ERASED_REASONS}


def erased_frame(conversation: bytes, ids: list[bytes], reason: str, pos: int, at_ms: int) -> bytes:
    return encode(
        Erased(conv=conversation, ids=tuple(ids), reason=REASONS[reason], pos=pos, at=at_ms)
    )


def tombstone_frame(t: Tombstone) -> bytes:
    """The `erased` frame of one tombstone (as another process's feed reads it)."""
    at = int(t.erased_at.timestamp() * 1000)
    return erased_frame(t.conversation_id.bytes, [t.message_id.bytes], t.reason, t.pos, at)


async def announce_erased(hub: Hub, groups: Sequence[ErasedGroup]) -> int:
    """Fan each group out (one frame, encoded once) to its recipients' live connections,
    after whatever lies below them that this process has not fanned out yet, and tell the
    other processes; returns how many connections they were handed to. Call it after the
    transaction that wrote them committed."""
    if not groups:
        return 0
    last = max(g.pos for g in groups)
    if hub.bus is not None:
        hub.bus.announce(last)
    async with hub.stream_order:
        feed = hub.feed
        if feed is not None:
            first = min(g.pos - len(g.ids) + 1 for g in groups)
            if not await feed.fill(first - 1):
                return 0  # the store is unreadable now: the feed's timer fans them out later
            if feed.last >= last:
                return 0  # a commit of ours above them read them from the store already
        handed = 0
        for g in groups:
            at = int(g.at.timestamp() * 1000)
            ids = [i.bytes for i in g.ids]
            frame = erased_frame(g.conversation_id.bytes, ids, g.reason, g.pos, at)
            handed += hub.fan_out(g.accounts, g.pos, frame)
        if feed is not None:
            feed.last = max(feed.last, last)
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
