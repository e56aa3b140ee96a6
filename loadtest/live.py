"""One device's live-location sharing (the traffic mix's `live` kind), without I/O.

A `live` pick for a conversation becomes, when the device writes its next batch, a
`live_pos` in the device's session for that conversation, or a `live_start` (scope the
conversation, for an hour) when it has none; the `live_ok` brings the session id and the
first update follows. Sessions live on the server, not on a connection (PROTOCOL.md §6.6),
so they are kept across reconnects; a start whose answer was lost with its connection is
forgotten and the next pick starts again. Every session is stopped (`live_stop`) when the
run ends, and the stop is settled when its `live_end` comes back (the sharer's own devices
are in the audience of their session's end).

Updates are ephemeral `msg` frames without `cid`, `pos` or `seq`: they never enter the
exact loss check of stored messages and are only counted (`LiveCounts`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from loadtest.observe import TEMPORARY_ERRORS, LiveCounts
from protocol import Err, ErrorCode, LiveEnd, LiveOk, LivePos, LiveStart, LiveStop

SESSION_S = 3600
"""How long a session is asked for (the server may cap it)."""
LIVE_FRAME_TYPES = frozenset({LiveStart.TYPE, LivePos.TYPE, LiveStop.TYPE})
ORIGIN = (-6.2, 106.816666)
STEP_DEG = 1e-5
"""Each update moves about a metre from the previous one, and back after STEPS of them."""
STEPS = 1000
ACCURACY_M = 8.0

LiveFrame = LiveStart | LivePos | LiveStop


@dataclass(frozen=True, slots=True)
class Target:
    """A conversation a device shares its position with."""

    index: int
    conv: bytes


class LiveSharing:
    """The live sessions of one device, what it owes the server, and what it heard back.

    `pick` records a wish; `take` turns wishes into frames when the device writes; `on_ok`,
    `on_err`, `on_end` apply the server's answers; `on_connection` gives up on the answers
    the last connection took with it; `close` stops everything.
    """

    def __init__(self, device: int, counts: LiveCounts) -> None:
        self._device = device
        self._counts = counts
        self._wanted: dict[int, Target] = {}
        """Conversations an update is owed to, in pick order."""
        self._sessions: dict[int, bytes] = {}
        """Conversation index -> session id."""
        self._starting: dict[str, Target] = {}
        """`live_start` written, answer awaited: cid -> conversation."""
        self._stops: list[bytes] = []
        self._stopping: set[bytes] = set()
        """`live_stop` written, `live_end` awaited."""
        self._started = 0
        self._steps: dict[int, int] = {}
        self._closing = False

    # -- what the device writes ------------------------------------------------------------

    def pick(self, target: Target) -> None:
        """The mix picked `live` for this device in `target`'s conversation."""
        self._counts.picks += 1
        if self._closing:
            return
        if target.index in self._wanted or self._is_starting(target.index):
            self._counts.merged += 1
            return
        self._wanted[target.index] = target

    @property
    def unsettled(self) -> int:
        """Frames owed to the server (updates, starts, stops), and starts and stops whose
        answer has not come yet."""
        return len(self._wanted) + len(self._stops) + len(self._starting) + len(self._stopping)

    @property
    def has_frames(self) -> bool:
        return bool(self._wanted or self._stops)

    def take(self, limit: int) -> list[LiveFrame]:
        """Up to `limit` frames to write now (counted as written)."""
        frames: list[LiveFrame] = []
        counts = self._counts
        while self._stops and len(frames) < limit:
            ending = self._stops.pop()
            frames.append(LiveStop(id=ending))
            self._stopping.add(ending)
            counts.stops += 1
        while self._wanted and len(frames) < limit:
            index = next(iter(self._wanted))
            target = self._wanted.pop(index)
            session = self._sessions.get(index)
            if session is not None:
                frames.append(self._update(index, session))
                counts.updates_sent += 1
                counts.sent_by_conversation[index] += 1
            elif self._is_starting(index):
                counts.merged += 1  # the update follows the `live_ok`
            else:
                self._started += 1
                cid = f"live.{self._device}.{self._started}"
                until = int(time.time() * 1000) + SESSION_S * 1000
                frames.append(
                    LiveStart(cid=cid, conv=target.conv, scope="conversation", until=until)
                )
                self._starting[cid] = target
                counts.starts += 1
        return frames

    def _update(self, index: int, session: bytes) -> LivePos:
        """The next position in `index`'s session: a few metres from the last one."""
        step = self._steps[index] = (self._steps.get(index, -1) + 1) % STEPS
        offset = (step if step < STEPS // 2 else STEPS - step) * STEP_DEG
        lat, lon = ORIGIN
        return LivePos(id=session, lat=lat + offset, lon=lon + offset, acc=ACCURACY_M)

    def _is_starting(self, index: int) -> bool:
        return any(t.index == index for t in self._starting.values())

    # -- what the server says ----------------------------------------------------------------

    def on_ok(self, frame: LiveOk) -> None:
        """A session started: keep it and owe it its first update (or stop it, if the run
        is ending or the start was given up on)."""
        target = self._starting.pop(frame.cid, None)
        if target is None or self._closing or target.index in self._sessions:
            self._stops.append(frame.id)
            return
        self._counts.started += 1
        self._sessions[target.index] = frame.id
        self._wanted.setdefault(target.index, target)

    def on_err(self, frame: Err) -> bool:
        """Apply an `err` about a live frame; False if it is about something else.

        A refused start is counted and forgotten (the next pick starts again). A refused
        update (`err` has no `ref`: which session is not said) ends every session of the
        device but for a temporary refusal: they are stopped, and the next pick of each
        conversation starts a new one.
        """
        code = frame.code.value
        if frame.ref_type == LiveStart.TYPE:
            if frame.ref is not None:
                self._starting.pop(frame.ref, None)
            self._counts.start_refusals[code] += 1
            return True
        if frame.ref_type == LivePos.TYPE:
            self._counts.update_refusals[code] += 1
            if frame.code not in TEMPORARY_ERRORS:
                self._stops.extend(self._sessions.values())
                self._sessions.clear()
            return True
        if frame.ref_type == LiveStop.TYPE:
            # The session had ended already; which one is not said: wait for none.
            self._counts.stop_refusals[code] += 1
            self._stopping.clear()
            return True
        if frame.ref_type is None and frame.code is ErrorCode.RATE_LIMITED:
            # A whole batch was refused: starts and stops in it will never be answered.
            self._answers_lost()
        return False

    def on_end(self, frame: LiveEnd) -> None:
        """Someone's session in a conversation of ours ended; if it was ours, forget it."""
        self._counts.ends_received += 1
        if frame.id in self._stopping:
            self._stopping.remove(frame.id)
            self._counts.stops_confirmed += 1
            return
        for index, session in self._sessions.items():
            if session == frame.id:
                del self._sessions[index]
                return

    def on_update(self) -> None:
        self._counts.updates_received += 1

    def on_connection(self) -> None:
        """A new connection: answers to starts and stops written on the last one are lost."""
        self._answers_lost()

    def _answers_lost(self) -> None:
        """Starts and stops written will not be answered. The next pick of a start's
        conversation starts again (a late `live_ok` for the old one is stopped); the stops
        are written again (one the first stop ended is refused `live_session_ended`,
        counted in `stop_refusals`)."""
        self._counts.starts_unanswered += len(self._starting)
        self._starting.clear()
        self._stops.extend(self._stopping)
        self._stopping.clear()

    def close(self) -> None:
        """The run ends: stop every session (and any that starts still bring)."""
        self._closing = True
        self._wanted.clear()
        self._stops.extend(self._sessions.values())
        self._sessions.clear()
