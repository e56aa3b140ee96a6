"""The one bridge between trio (which owns the process) and asyncio (where asyncpg lives).

An asyncio event loop runs on one dedicated thread. trio code calls `await bridge.run(fn, *args)`:
the coroutine `fn(*args)` runs as one task on that loop, and the trio task sleeps until it
finishes, woken through `TrioToken.run_sync_soon`. One hop per operation: callers pass a whole
transaction as one coroutine function, never one hop per query.

Measured on this kind of machine (see BENCHMARKS.md), this was about 1.9x faster than
trio-asyncio under concurrency. Two things keep it fast and fair:
- `sys.setswitchinterval(0.001)`, set in `start()`, stops trio CPU load from starving the
  asyncio thread of the GIL (CPython's convoy effect);
- a `trio.CapacityLimiter` sized to the connection pool (kept by `storage.database.Database`),
  so the pool never queues inside asyncio.

Cancellation: a cancelled trio caller cancels the asyncio task and waits for it to unwind
before it raises `trio.Cancelled`, so a transaction is never left running behind our back.

No module outside `storage/` and `push/` needs to know asyncio exists.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")

SWITCH_INTERVAL_S = 0.001


class BridgeClosedError(RuntimeError):
    """The bridge was used before `start()` or after `stop()`, or stopped under a call."""


class _TaskCancelledError(Exception):
    """Internal: the asyncio task ended cancelled (by our abort, or by the loop stopping)."""


class AsyncioBridge:
    """An asyncio loop on its own thread, reachable from trio with one hop per call."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

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
        loop = asyncio.new_event_loop()
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
        self._loop = loop

    def stop(self) -> None:
        """Stop the loop and join its thread. Pending asyncio work is abandoned."""
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()

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

        loop.call_soon_threadsafe(start)

        def abort(_: Callable[[], BaseException]) -> trio.lowlevel.Abort:
            # The asyncio side must unwind first; on_done reschedules us when it has.
            def cancel() -> None:
                task = handle.get("task")
                if task is not None:
                    task.cancel()

            loop.call_soon_threadsafe(cancel)
            return trio.lowlevel.Abort.FAILED

        try:
            return await trio.lowlevel.wait_task_rescheduled(abort)  # type: ignore[no-any-return]
        except _TaskCancelledError:
            # Our abort cancelled it: the checkpoint raises trio.Cancelled. Otherwise the
            # loop itself went away under the call.
            await trio.lowlevel.checkpoint()
            raise BridgeClosedError("the asyncio bridge stopped during the call") from None
