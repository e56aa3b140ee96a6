"""The bus between the processes (workers, nodes) that share one database.

A process tells the others two things: "the stream reached X" after each group commit
(`announce`: coalesced, only the highest position matters) and the live-only events it
produced (`share`). One sender task turns whatever accumulated into one bus message, so a
commit batch costs at most one message, and under load many batches share one.

A transport (PostgreSQL LISTEN/NOTIFY, NATS) implements `_send` and `_listen`; everything
else - batching, ignoring our own messages, reconnecting with a growing pause, health - is
here. Losing the transport never loses a stored message: receivers read stored messages
from the store by position, and catch up from the store when the bus comes back (the
`on_connected` callback) and on a timer meanwhile (server/gateway/stream.py).
"""

from __future__ import annotations

import logging
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable

import trio

from server.bus.events import (
    Announcement,
    BusFormatError,
    Event,
    decode_announcement,
    encode_announcement,
)
from server.metrics import BUS_UP
from storage.outages import OutageLog

logger = logging.getLogger(__name__)

RECONNECT_PAUSE_S = 0.2
RECONNECT_PAUSE_MAX_S = 5.0
MAX_EVENTS_PER_MESSAGE = 200
MAX_QUEUED_EVENTS = 100_000  # beyond this live-only events are dropped (counted, logged)

Receive = Callable[[Announcement], Awaitable[None]]
Connected = Callable[[], Awaitable[None]]


class Bus(ABC):
    """One process's end of the bus."""

    name = "bus"

    def __init__(self) -> None:
        self.origin = os.urandom(16)
        self._up = False
        self.sent = 0  # bus messages sent
        self.received = 0  # bus messages from other processes
        self.dropped = 0  # live-only events dropped (queue full, or the send failed)
        self.reconnects = 0
        self._pos = 0  # the highest position to announce
        self._announced = 0
        self._events: list[Event] = []
        self._wake = trio.Event()
        self._sends = OutageLog(logger, f"{self.name} sends")

    # -- what this process tells the others ---------------------------------------------

    def announce(self, pos: int) -> None:
        """The stream reached `pos` by a commit of ours. Never waits."""
        if pos > self._pos:
            self._pos = pos
            self._wake.set()

    def share(self, event: Event) -> None:
        """A live-only event for the other processes. Never waits."""
        if len(self._events) >= MAX_QUEUED_EVENTS:
            self.dropped += 1
            return
        self._events.append(event)
        self._wake.set()

    @property
    def up(self) -> bool:
        """Listening now."""
        return self._up

    @up.setter
    def up(self, value: bool) -> None:
        self._up = value
        BUS_UP.set(1 if value else 0)

    @property
    def healthy(self) -> bool:
        return self.up

    # -- running ----------------------------------------------------------------------------

    async def run(
        self,
        receive: Receive,
        on_connected: Connected,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Send and receive until cancelled. `receive` gets every message of another
        process, in order; `on_connected` runs each time the transport (re)connects, before
        the messages that follow (to catch up with what was missed)."""
        inbox_send, inbox = trio.open_memory_channel[bytes](math.inf)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sender)
            nursery.start_soon(self._dispatch, inbox, receive)
            await nursery.start(self._stay_connected, inbox_send, on_connected)
            task_status.started()

    async def _stay_connected(
        self,
        inbox: trio.MemorySendChannel[bytes],
        on_connected: Connected,
        *,
        task_status: trio.TaskStatus[None],
    ) -> None:
        """Listen; whenever the transport goes away, say so and connect again (a growing
        pause between tries). Reports started after the first try, whatever its result:
        a process serves without a bus (it catches up from the store meanwhile)."""
        pause_s = RECONNECT_PAUSE_S
        started = False

        def deliver(payload: bytes) -> None:
            inbox.send_nowait(payload)

        async def connected() -> None:
            nonlocal pause_s, started
            if not started:
                started = True
                task_status.started()
            if self.reconnects:
                logger.warning("%s connected again; catching up from the store", self.describe())
            self.up = True
            pause_s = RECONNECT_PAUSE_S
            await on_connected()

        while True:
            try:
                await self._listen(deliver, connected)
                problem = "connection closed"
            except Exception as exc:
                problem = str(exc) or type(exc).__name__
            was_up, self.up = self.up, False
            if not started:
                started = True
                task_status.started()
            if was_up:
                logger.error(
                    "%s connection lost (%s); reconnecting, catching up from the store meanwhile",
                    self.describe(),
                    problem,
                )
            elif self.reconnects % 50 == 0:
                logger.error("%s unreachable (%s); trying again", self.describe(), problem)
            self.reconnects += 1
            await trio.sleep(pause_s)
            pause_s = min(pause_s * 2, RECONNECT_PAUSE_MAX_S)

    async def _sender(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._pos > self._announced or self._events:
                pos = self._pos if self._pos > self._announced else 0
                events = self._events[:MAX_EVENTS_PER_MESSAGE]
                del self._events[:MAX_EVENTS_PER_MESSAGE]
                payload = encode_announcement(Announcement(self.origin, pos, tuple(events)))
                try:
                    await self._send(payload)
                except Exception as exc:  # the others catch up from the store on a timer
                    self._sends.failed(1, exc)
                    self.dropped += len(events)
                else:
                    self._sends.succeeded()
                    self.sent += 1
                self._announced = max(self._announced, pos)

    async def _dispatch(self, inbox: trio.MemoryReceiveChannel[bytes], receive: Receive) -> None:
        async for payload in inbox:
            try:
                announcement = decode_announcement(await self._resolve(payload))
            except BusFormatError as exc:
                logger.warning("%s: a message was dropped: %s", self.name, exc)
                continue
            except Exception as exc:
                logger.warning("%s: a message could not be read: %s", self.name, exc)
                continue
            if announcement.origin == self.origin:
                continue
            self.received += 1
            await receive(announcement)

    # -- the transport ----------------------------------------------------------------------

    async def _resolve(self, payload: bytes) -> bytes:
        """The bus message a received payload stands for (a transport may send large ones
        apart)."""
        return payload

    @abstractmethod
    async def _send(self, payload: bytes) -> None:
        """Send one bus message to every process (ours included is fine); raises on failure."""

    @abstractmethod
    async def _listen(self, deliver: Callable[[bytes], None], connected: Connected) -> None:
        """Connect, await `connected()` once listening, pass every received payload to
        `deliver` (from trio, in order), and return or raise when the connection is lost."""

    def describe(self) -> str:
        return self.name
