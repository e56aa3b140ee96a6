"""One simulated device: an enrolled key, a real secure channel, a real client's behaviour.

A device connects with `DeviceState.reconnect` (handshake, `sync` from its cursor, resend of
its outbox), then runs two tasks on the connection: a receiver that applies every frame to
its `DeviceState` and records deliveries, and a sender that writes what the scheduler handed
it (batched) and pings when idle. When the connection ends - dropped by a reconnect storm,
closed by the server, broken - it reconnects, with backoff unless the drop was on purpose,
and gives up after a bounded number of failed attempts.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable

import trio

from loadtest.client import (
    ConnectError,
    ConnectionClosedError,
    DeviceState,
    GatewayClient,
    TlsVerificationError,
)
from loadtest.frames import CHECK_EVERY, MsgSeen, read_batch
from loadtest.ledger import SCHEDULED, WORKER_MASK, Received
from loadtest.live import LiveFrame, LiveSharing, Target
from loadtest.observe import TEMPORARY_ERRORS, Observations, now_us
from loadtest.schedule import KEY_WORKER_BITS, parse_cid
from protocol import (
    Erased,
    Err,
    LiveEnd,
    LiveOk,
    LocationBody,
    Msg,
    Ping,
    ProtocolError,
    Resync,
    Send,
    Sent,
    ServerFrame,
    Sync,
    Synced,
)

logger = logging.getLogger(__name__)

PERMANENT_CLOSE_CODES = frozenset({4002, 4003, 4004, 4005, 4011, 4012, 4013})
"""PROTOCOL.md §7.2: do not reconnect after these without the user's attention."""
CONNECT_TIMEOUT_S = 30.0
CONNECT_ATTEMPTS = 6
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 8.0
PING_AFTER_S = 25.0
"""Clients ping when they have sent nothing for 30 s (PROTOCOL.md §2); a margin below."""
MAX_FRAMES_PER_BATCH = 200
"""Below the 256 frames a client batch may hold (PROTOCOL.md §8)."""
RETRY_AFTER_S = 1.0
SEEN_IDS_KEPT = 50_000
"""DeviceState.seen is cleared past this: duplicates are counted by key, and a real client
drops old repeats by their position (<= cursor) anyway."""

CONNECTION_ERRORS = (
    ConnectError,
    ConnectionClosedError,
    ProtocolError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    OSError,
)


def describe(exc: BaseException) -> str:
    """A short error code for what ended a connection or an attempt."""
    if isinstance(exc, ConnectError):
        return exc.reason
    if isinstance(exc, ConnectionClosedError):
        return exc.reason if exc.reason and " " not in exc.reason else f"close_{exc.code}"
    if isinstance(exc, ProtocolError):
        return exc.code.value
    if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError):
        return "connection_lost"
    if isinstance(exc, OSError):
        return (
            "connection_refused"
            if isinstance(exc, ConnectionRefusedError)
            else f"os_error_{exc.errno}"
        )
    return "connect_timeout" if isinstance(exc, trio.TooSlowError) else type(exc).__name__


def is_permanent(exc: BaseException) -> bool:
    """Whether retrying is pointless: a refusal PROTOCOL.md says not to retry, a bad URL, or
    a TLS certificate we do not trust (retrying cannot change it)."""
    if isinstance(exc, TlsVerificationError):
        return True
    if isinstance(exc, ConnectionClosedError):
        return exc.code in PERMANENT_CLOSE_CODES
    if isinstance(exc, ProtocolError):
        return exc.close_code in PERMANENT_CLOSE_CODES
    return isinstance(exc, ValueError)


def is_live_update(frame: Msg) -> bool:
    """A live-location update (PROTOCOL.md §6.6): ephemeral, no `pos`, `live_until` set."""
    return (
        frame.pos is None
        and isinstance(frame.body, LocationBody)
        and frame.body.live_until is not None
    )


class SimDevice:
    """A device of the run. `run()` keeps it connected until cancelled or it gives up."""

    def __init__(
        self,
        index: int,
        state: DeviceState,
        url: str,
        obs: Observations,
        rng: random.Random,
        ssl_context: ssl.SSLContext | None = None,
        node: int | None = None,
    ) -> None:
        self.index = index
        self.state = state
        self.url = url
        self.node = node
        """Which of several nodes `url` is (None: a single one): its sends carry it, its
        deliveries are timed as same-node or cross-node."""
        self.ssl_context = ssl_context
        """Verifies the gateway's certificate for a wss:// `url` (None: system trust)."""
        self.obs = obs
        self.received = Received()
        self.unique_received = 0
        self.ever_connected = False
        self.connections = 0
        self.failed: str | None = None
        self._rng = rng
        self._pending: list[Send] = []
        self._retries: list[tuple[float, Send]] = []
        self._wake = trio.Event()
        self._need_sync = False
        self._sync_retry_at: float | None = None  # a refused `sync` goes again then
        self._catching_up = False
        self._live = False
        self._connection: trio.CancelScope | None = None
        self._dropped_at: float | None = None
        self._connect_started = 0.0
        self._connection_pos = 0
        """Highest position received on the current connection."""
        self._caught_up = Received()
        """Messages the current connection brought in catch-up (a live copy may follow)."""
        self.live = LiveSharing(index, obs.live)
        """Its live-location sessions (the mix's `live` kind)."""

    @property
    def connected(self) -> bool:
        return self._live

    def enqueue(self, send: Send) -> None:
        """Hand a send to the device; it is written as soon as the device is connected."""
        self._pending.append(send)
        self._wake.set()

    def enqueue_live(self, target: Target) -> None:
        """A live-location update for `target`'s conversation (a start first, if there is no
        session yet); written as soon as the device is connected."""
        self.live.pick(target)
        self._wake.set()

    def end_live(self) -> None:
        """The run ends: stop every live-location session of the device."""
        self.live.close()
        self._wake.set()

    @property
    def unwritten(self) -> list[Send]:
        return list(self._pending)

    def drop(self) -> bool:
        """Drop the connection now (reconnect storm); it reconnects at once. False if it
        was not connected."""
        if self._connection is None or not self._live:
            return False
        self._dropped_at = time.monotonic()
        self._connection.cancel()
        return True

    # -- connection loop -------------------------------------------------------------------

    async def run(self) -> None:
        failures = 0
        while True:
            self._connect_started = time.monotonic()
            if self.obs.first_connect_at is None:
                self.obs.first_connect_at = self._connect_started
            try:
                client = await self._connect()
            except (*CONNECTION_ERRORS, trio.TooSlowError, ValueError) as exc:
                failures += 1
                code = describe(exc)
                self.obs.counts.errors[f"connect:{code}"] += 1
                if is_permanent(exc) or failures >= CONNECT_ATTEMPTS:
                    self.failed = code
                    self._abandon_pending()
                    if not self.ever_connected:
                        self.obs.settled += 1
                    return
                await trio.sleep(self._backoff(failures))
                continue
            failures = 0
            self.connections += 1
            self.live.on_connection()
            self._connection_pos = 0
            self._caught_up = Received()
            self.obs.counts.connects += 1
            took = time.monotonic() - self._connect_started
            self.obs.handshake.record_us(int(took * 1e6))
            logger.debug(
                "device %d: connection %d in %.1f ms", self.index, self.connections, took * 1e3
            )
            self._catching_up = True  # reconnect() sent `sync`
            ended_by = await self._serve(client)
            if self._dropped_at is None and ended_by is not None:
                self.obs.disconnects += 1
                self.obs.counts.errors[f"disconnected:{describe(ended_by)}"] += 1
                if is_permanent(ended_by):
                    # Refused after the handshake (revoked, deactivated, signed out, ...).
                    self.failed = describe(ended_by)
                    self._abandon_pending()
                    return
                await trio.sleep(self._backoff(1))

    async def _connect(self) -> GatewayClient:
        """One attempt to connect. Raises only the errors `run` counts: CONNECTION_ERRORS,
        trio.TooSlowError, ValueError (a bad URL: permanent)."""
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                return await self.state.reconnect(self.url, self.ssl_context)
        except (*CONNECTION_ERRORS, trio.TooSlowError, ValueError):
            raise
        except Exception as exc:
            # A failure the client did not map is a bug there, but one device's connect
            # must never take the worker (and the whole run) down: count it and retry.
            logger.exception("device %d: unexpected error while connecting", self.index)
            raise ConnectError(f"unexpected_{type(exc).__name__}") from exc

    def _abandon_pending(self) -> None:
        for send in self._pending:
            tag = parse_cid(send.cid)
            assert tag is not None
            self.obs.sends.abandon(tag.key >> KEY_WORKER_BITS)
        self._pending.clear()

    @property
    def outstanding(self) -> int:
        """Sends not yet written, or written and neither acknowledged nor refused; live
        frames not yet written, and live starts and stops not yet answered."""
        return (
            len(self._pending) + len(self.state.outbox) + len(self._retries) + self.live.unsettled
        )

    def _backoff(self, failures: int) -> float:
        delay: float = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** (failures - 1))
        return delay * (0.5 + self._rng.random() / 2)

    async def _serve(self, client: GatewayClient) -> BaseException | None:
        """Run the connection until it ends; what ended it (None: we did)."""
        ended: list[BaseException] = []

        async def guarded(
            work: Callable[[GatewayClient], Awaitable[None]], scope: trio.CancelScope
        ) -> None:
            try:
                await work(client)
            except CONNECTION_ERRORS as exc:
                ended.append(exc)
                scope.cancel()

        try:
            with trio.CancelScope() as scope:
                self._connection = scope
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(guarded, self._receive_loop, nursery.cancel_scope)
                    nursery.start_soon(guarded, self._send_loop, nursery.cancel_scope)
        finally:
            self._connection = None
            if self._live:
                self._live = False
                self.obs.counts.connected -= 1
            await client.aclose()  # shielded and bounded inside
        return ended[0] if ended else None

    # -- receiving -------------------------------------------------------------------------

    async def _receive_loop(self, client: GatewayClient) -> None:
        state = self.state
        live = self.live
        check = self.index % CHECK_EVERY == 0
        while True:
            frames = read_batch(await client.receive_plain(), check=check)
            at_us = now_us()
            for frame in frames:
                if isinstance(frame, MsgSeen):
                    if frame.live:  # ephemeral: counted, never in the loss check
                        live.on_update()
                        continue
                    self._on_msg(frame, at_us)
                    state.note_message(frame.id, frame.pos)
                elif type(frame) is Msg:
                    if is_live_update(frame):
                        live.on_update()
                        continue
                    self._on_msg(frame, at_us)
                    state.accept(frame)
                else:
                    self._on_frame(frame, at_us)
                    state.accept(frame)
            if live.has_frames:  # a session started or must be stopped
                self._wake.set()
            state.messages.clear()
            if len(state.seen) > SEEN_IDS_KEPT:
                state.seen.clear()

    def _on_frame(self, frame: ServerFrame, at_us: int) -> None:
        """Any frame but a `msg`."""
        obs = self.obs
        if type(frame) is Sent:
            obs.on_sent(frame, at_us)
        elif type(frame) is Err:
            if not self.live.on_err(frame):
                obs.on_err(frame)
                self._on_refusal(frame)
        elif type(frame) is LiveOk:
            self.live.on_ok(frame)
        elif type(frame) is LiveEnd:
            self.live.on_end(frame)
        elif type(frame) is Synced:
            self._on_synced()
        elif type(frame) is Erased:
            # A tombstone: not a delivery (outside the loss check), but it holds a position,
            # which must not go back on one connection either.
            if frame.pos < self._connection_pos:
                self.obs.out_of_order += 1
            self._connection_pos = max(self._connection_pos, frame.pos)
            self.obs.erased += len(frame.ids)
        elif type(frame) is Resync:
            obs.counts.errors["resync"] += 1
            self._need_sync = True
            self._wake.set()

    def _on_refusal(self, frame: Err) -> None:
        """A send refused: retried later with the same cid if the refusal is temporary,
        dropped from the outbox otherwise (PROTOCOL.md §6.2). A `sync` the server could not
        serve (its database unavailable) is sent again, as an app does."""
        if frame.ref_type == "sync" and frame.code in TEMPORARY_ERRORS:
            self._sync_retry_at = time.monotonic() + RETRY_AFTER_S
            self._wake.set()
            return
        send = None if frame.ref is None else self.state.outbox.pop(frame.ref, None)
        if send is not None and frame.code in TEMPORARY_ERRORS:
            self._retries.append((time.monotonic() + RETRY_AFTER_S, send))
            self._wake.set()

    def _on_msg(self, frame: Msg | MsgSeen, at_us: int) -> None:
        tag = parse_cid(frame.cid)
        if tag is None or tag.run != self.obs.run:
            self.obs.stale += 1
            return
        previous_pos = self._connection_pos
        if frame.pos is not None:
            self._connection_pos = max(previous_pos, frame.pos)
        if self.received.add(tag.key):
            self.unique_received += 1
            if frame.pos is not None and frame.pos <= previous_pos:
                # PROTOCOL.md §6.1: positions only grow on one connection. A client whose
                # cursor already passed this one would skip it after a reconnect.
                self.obs.out_of_order += 1
            if self._catching_up:
                self._caught_up.add(tag.key)
            cross = None if tag.node is None or self.node is None else tag.node != self.node
            self.obs.on_delivery(tag.intended_us, at_us, self._catching_up, cross)
            return
        duplicates = self.obs.duplicates
        if self._catching_up:
            duplicates.catch_up += 1
            kind = "in catch-up"
        elif tag.key in self._caught_up:
            duplicates.switch += 1
            kind = "live, after its catch-up copy"
        elif frame.id in self.state.seen or (
            frame.pos is not None and frame.pos <= self.state.cursor
        ):
            duplicates.live += 1
            kind = "live, twice"
        else:
            duplicates.stored_twice += 1
            kind = "under a second id"
        logger.info(
            "device %d: message %d.%d again (%s; pos %s, cursor %d, connection %d)",
            self.index,
            tag.key & WORKER_MASK,
            tag.key >> KEY_WORKER_BITS,
            kind,
            frame.pos,
            self.state.cursor,
            self.connections,
        )

    def _on_synced(self) -> None:
        self._catching_up = False
        if self._live:
            return
        self._live = True
        self.obs.counts.connected += 1
        now = time.monotonic()
        if not self.ever_connected:
            self.ever_connected = True
            self.obs.settled += 1
            self.obs.last_ready_at = now
            self.obs.ready.record_us(int((now - self._connect_started) * 1e6))
        if self._dropped_at is not None:
            self.obs.storm_ready.record_us(int((now - self._dropped_at) * 1e6))
            self._dropped_at = None

    # -- sending ---------------------------------------------------------------------------

    def _due_retries(self) -> float:
        """Move retries that are due to the pending sends; seconds until the next one."""
        now = time.monotonic()
        due = [send for at, send in self._retries if at <= now]
        if due:
            self._pending.extend(due)
            self._retries = [(at, send) for at, send in self._retries if at > now]
        waits = [at - now for at, _ in self._retries]
        if self._sync_retry_at is not None:
            if self._sync_retry_at <= now:
                self._sync_retry_at = None
                self._need_sync = True
            else:
                waits.append(self._sync_retry_at - now)
        return min(waits, default=PING_AFTER_S)

    async def _send_loop(self, client: GatewayClient) -> None:
        while True:
            next_retry = self._due_retries()
            if not self._pending and not self._need_sync and not self.live.has_frames:
                wait = min(PING_AFTER_S, next_retry)
                with trio.move_on_after(wait) as idle:
                    await self._wake.wait()
                self._wake = trio.Event()
                if idle.cancelled_caught and wait >= PING_AFTER_S:
                    await client.send(Ping())
                    continue
                if idle.cancelled_caught:
                    continue
            frames: list[Sync | Send | LiveFrame] = []
            if self._need_sync:
                self._need_sync = False
                self._catching_up = True
                frames.append(Sync(after=self.state.cursor))
            batch = self._pending[:MAX_FRAMES_PER_BATCH]
            del self._pending[: len(batch)]
            sends = self.obs.sends
            for send in batch:
                # In the outbox, a send is as good as written: a reconnect resends it.
                self.state.outbox[send.cid] = send
                tag = parse_cid(send.cid)
                assert tag is not None
                n = tag.key >> KEY_WORKER_BITS
                if sends.state[n] == SCHEDULED:
                    self.obs.counts.sent += 1
                    sends.written(n)
            frames += self.live.take(MAX_FRAMES_PER_BATCH - len(batch) - len(frames))
            if frames or batch:
                await client.send(*frames, *batch)
