"""The one bridge between trio (which owns the process) and asyncio (where asyncpg lives).

An asyncio event loop runs on one dedicated thread. trio code calls `await bridge.run(fn, *args)`:
the coroutine `fn(*args)` runs as one task on that loop, and the trio task sleeps until it
finishes, woken through `TrioToken.run_sync_soon`. One hop per operation: callers pass a whole
transaction as one coroutine function, never one hop per query.

Measured on this kind of machine (see BENCHMARKS.md), this was about 1.9x faster than
trio-asyncio under concurrency. What keeps it fast and fair:
- a `trio.CapacityLimiter` sized to the connection pool (kept by `storage.database.Database`),
  so the pool never queues inside asyncio;
- a GIL hand-off. The loop thread needs the GIL each time it wakes up (a call arrives,
  PostgreSQL answers). A thread waiting for the GIL asks the holder to drop it only after a
  whole switch interval without a release, and every brief release (trio polls epoll on each
  scheduler tick, each socket call releases the GIL) restarts that wait while the holder takes
  the GIL straight back. So a busy trio thread kept the loop thread off the GIL for seconds, at
  any switch interval. While calls are in flight and trio has run for `HOG_S` without resting,
  trio checks before each task step whether the loop thread has work (it is not blocked in its
  selector, its selector has events, or its timer is due) and, if so, waits without the GIL,
  for at most `MAX_PARK_S`, until the loop thread blocks again;
- `sys.setswitchinterval(0.001)`, set in `start()`, for the rest (CPU-bound asyncio work, and
  loop work while nothing is in flight).

Code on the loop must never block waiting for the trio thread (`trio.from_thread.run`): trio
waits up to `MAX_PARK_S` for the loop before each task step while calls are in flight.

Cancellation: a cancelled trio caller cancels the asyncio task and waits for it to unwind
before it raises `trio.Cancelled`, so a transaction is never left running behind our back.

No module outside `storage/` and `push/` needs to know asyncio exists.
"""

from __future__ import annotations

import asyncio
import math
import select
import selectors
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")

SWITCH_INTERVAL_S = 0.001
# The GIL hand-off (see `_GilHandoff`): once trio has run HOG_S without resting, it waits up to
# MAX_PARK_S before a task step for a loop thread that has work. An I/O wait of REST_S or more
# counts as a rest.
MAX_PARK_S = 0.002
HOG_S = 0.0002
REST_S = 0.00005


class BridgeClosedError(RuntimeError):
    """The bridge was used before `start()` or after `stop()`, or stopped under a call."""


class _TaskCancelledError(Exception):
    """Internal: the asyncio task ended cancelled (by our abort, or by the loop stopping)."""


class _LoopSelector(selectors.DefaultSelector):
    """The loop's selector, instrumented so the trio thread can tell whether the loop has work.

    `waiting` is true from the moment the loop thread blocks for I/O (or for a timer due at
    `wake_at`) until it runs Python again; `idle` is set each time such a wait begins.
    """

    def __init__(self) -> None:
        super().__init__()
        self.waiting = False
        self.wake_at = math.inf
        self.idle = threading.Event()
        # Readable when the loop's own epoll/kqueue has events, i.e. the loop thread is awake
        # or about to be. Without poll() (Windows) we only see loop threads that are running.
        self._probe: select.poll | None = None
        if hasattr(select, "poll") and sys.platform != "win32":
            self._probe = select.poll()
            self._probe.register(self.fileno(), select.POLLIN)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout > 0:
            self.wake_at = math.inf if timeout is None else time.monotonic() + timeout
            self.waiting = True
            self.idle.set()
        try:
            return super().select(timeout)
        finally:
            self.waiting = False

    def close(self) -> None:
        self._probe = None
        super().close()

    def has_work(self) -> bool:
        """True if the loop thread runs Python, or will as soon as it holds the GIL."""
        if not self.waiting or time.monotonic() >= self.wake_at:
            return True
        probe = self._probe
        return probe is not None and bool(probe.poll(0))


class _GilHandoff(trio.abc.Instrument):
    """Lets the loop thread run before a trio task step, when it has work and trio hogs the GIL.

    trio hogs the GIL when it has run for `HOG_S` without resting: neither an I/O wait of
    `REST_S` or more (long enough for a waiting loop thread to take the GIL) nor a wait for the
    loop thread here.
    """

    def __init__(self, bridge: AsyncioBridge) -> None:
        self.bridge = bridge
        self.in_flight = 0  # calls of this trio run waiting on the bridge
        self._wait_began = 0.0
        self._rested_at = time.perf_counter()

    def before_io_wait(self, timeout: float) -> None:
        self._wait_began = time.perf_counter()

    def after_io_wait(self, timeout: float) -> None:
        now = time.perf_counter()
        if now - self._wait_began >= REST_S:
            self._rested_at = now

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        selector = self.bridge._selector
        if not self.in_flight or selector is None:
            return
        if time.perf_counter() - self._rested_at < HOG_S:
            return
        selector.idle.clear()
        if selector.has_work():
            # Blocks without the GIL until the loop thread waits again (it sets `idle`).
            selector.idle.wait(MAX_PARK_S)
            self._rested_at = time.perf_counter()  # the loop thread had its turn


class AsyncioBridge:
    """An asyncio loop on its own thread, reachable from trio with one hop per call."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._selector: _LoopSelector | None = None
        self._handoff: trio.lowlevel.RunVar[_GilHandoff] = trio.lowlevel.RunVar(
            f"obrol_bridge_handoff_{id(self)}"
        )

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise BridgeClosedError("the asyncio bridge is not running")
        return self._loop

    def start(self) -> None:
        """Start the loop thread; returns once the loop runs."""
        if self._loop is not None:
            return
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        selector = _LoopSelector()
        loop = asyncio.SelectorEventLoop(selector)
        ready = threading.Event()

        def run_loop() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run_loop, name="obrol-asyncio", daemon=True)
        self._thread.start()
        ready.wait()
        self._selector = selector
        self._loop = loop

    def stop(self) -> None:
        """Stop the loop and join its thread. Pending asyncio work is abandoned."""
        loop, thread = self._loop, self._thread
        self._loop = self._thread = self._selector = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()

    def _current_handoff(self) -> _GilHandoff:
        """This trio run's hand-off instrument, installed on first use."""
        try:
            return self._handoff.get()
        except LookupError:
            handoff = _GilHandoff(self)
            trio.lowlevel.add_instrument(handoff)
            self._handoff.set(handoff)
            return handoff

    async def run(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run the coroutine `fn(*args)` on the asyncio loop and return its result.

        Raises whatever the coroutine raises. If the calling trio task is cancelled, the
        asyncio task is cancelled too and this waits for it to finish before raising.
        """
        loop = self.loop
        token = trio.lowlevel.current_trio_token()
        trio_task = trio.lowlevel.current_task()
        handle: dict[str, asyncio.Task[T]] = {}

        def on_done(task: asyncio.Task[T]) -> None:
            result: outcome.Outcome[T]
            if task.cancelled():
                result = outcome.Error(_TaskCancelledError())
            else:
                exc = task.exception()
                result = outcome.Error(exc) if exc is not None else outcome.Value(task.result())
            token.run_sync_soon(trio.lowlevel.reschedule, trio_task, result)

        def start() -> None:
            task = loop.create_task(fn(*args))
            handle["task"] = task
            task.add_done_callback(on_done)

        def abort(_: Callable[[], BaseException]) -> trio.lowlevel.Abort:
            # The asyncio side must unwind first; on_done reschedules us when it has.
            def cancel() -> None:
                task = handle.get("task")
                if task is not None:
                    task.cancel()

            loop.call_soon_threadsafe(cancel)
            return trio.lowlevel.Abort.FAILED

        handoff = self._current_handoff()
        handoff.in_flight += 1
        try:
            loop.call_soon_threadsafe(start)
            try:
                return await trio.lowlevel.wait_task_rescheduled(abort)  # type: ignore[no-any-return]
            except _TaskCancelledError:
                # Our abort cancelled it: the checkpoint raises trio.Cancelled. Otherwise the
                # loop itself went away under the call.
                await trio.lowlevel.checkpoint()
                raise BridgeClosedError("the asyncio bridge stopped during the call") from None
        finally:
            handoff.in_flight -= 1
