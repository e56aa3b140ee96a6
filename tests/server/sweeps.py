"""What the retention tests share: a server whose sweeper runs every 0.1 s, a wait for a
whole sweeper pass under the moved clock, and plain SQL to look at what is stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import trio

from tests.harness import Harness, start_harness

OPERATOR_TOKEN = "operator-token-for-the-retention-tests"
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
DAY_S = 24 * 3600


@asynccontextmanager
async def sweeping_server(
    nursery: trio.Nursery, database_url: str, data_dir: Path, **overrides: Any
) -> AsyncIterator[Harness]:
    async with start_harness(
        nursery,
        database_url,
        data_dir,
        sweep_interval_s=0.1,
        operator_token=OPERATOR_TOKEN,
        **overrides,
    ) as server:
        yield server


async def sweep_pass(server: Harness) -> dict[str, dict[str, int]]:
    """Wait for a whole sweeper pass that started at the server's time now or later (so it
    saw every change made and every clock move before this call); what it erased per rule."""
    since = server.clock()
    with trio.fail_after(30):
        while True:
            response = await server.client.get("/v1/operator/retention", headers=OPERATOR)
            assert response.status_code == 200, response.text
            last = response.json()["sweeper"]["last_pass"]
            started = last["started_at"]
            if started is not None and datetime.fromisoformat(started) >= since:
                erased: dict[str, dict[str, int]] = last["erased"]
                return erased
            await trio.sleep(0.02)


async def sql(database_url: str, query: str, *args: Any) -> list[Any]:
    """The rows of one query on the test's database (from a worker thread)."""

    async def run() -> list[Any]:
        conn = await asyncpg.connect(database_url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return await trio.to_thread.run_sync(asyncio.run, run())


async def until_stored(database_url: str, query: str) -> None:
    """Wait until `query` finds a row (what the server writes after answering)."""
    with trio.fail_after(10):
        while True:
            if await sql(database_url, query):
                return
            await trio.sleep(0.02)


async def in_transaction(database_url: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """`fn(conn, *args)` in one transaction on the test's database (a storage function that
    other features call inside their own transactions)."""

    async def run() -> Any:
        conn = await asyncpg.connect(database_url)
        try:
            async with conn.transaction():
                return await fn(conn, *args)
        finally:
            await conn.close()

    return await trio.to_thread.run_sync(asyncio.run, run())
