"""The trio -> asyncio bridge: results, errors and cancellation cross it faithfully."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import trio

from storage.bridge import AsyncioBridge


@pytest.fixture
def bridge() -> Iterator[AsyncioBridge]:
    b = AsyncioBridge()
    b.start()
    yield b
    b.stop()


async def test_results_and_errors_cross_the_bridge(bridge: AsyncioBridge) -> None:
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    async def fail() -> None:
        raise KeyError("boom")

    assert await bridge.run(add, 2, 3) == 5
    with pytest.raises(KeyError, match="boom"):
        await bridge.run(fail)


async def test_many_concurrent_calls(bridge: AsyncioBridge) -> None:
    results: list[int] = []

    async def echo(i: int) -> int:
        await asyncio.sleep(0.001)
        return i

    async def call(i: int) -> None:
        results.append(await bridge.run(echo, i))

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(call, i)
    assert sorted(results) == list(range(200))


async def test_cancellation_unwinds_the_asyncio_task_first(bridge: AsyncioBridge) -> None:
    started = trio.Event()
    state: dict[str, bool] = {}
    token = trio.lowlevel.current_trio_token()

    async def slow() -> None:
        token.run_sync_soon(started.set)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # cleanup that takes a while
            state["cleaned_up"] = True
            raise

    with trio.CancelScope() as scope:

        async def cancel_when_started() -> None:
            await started.wait()
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_when_started)
            await bridge.run(slow)
    assert scope.cancelled_caught
    assert state == {"cleaned_up": True}  # done before trio saw the cancellation
