"""The default bus: PostgreSQL LISTEN/NOTIFY, no infrastructure beyond the database.

Each process keeps one connection of its own (outside the pool) that LISTENs on one
channel, and sends with `pg_notify` through the pool. A NOTIFY payload is text of at most
8000 bytes: a bus message is sent base64-encoded, and one too large for that (a typing
notice to a very large group, many events at once) is written to `bus_spill` and the
notification carries its id. Spilled rows are deleted after SPILL_KEEP_S.

The listening connection is checked every PING_INTERVAL_S; asyncpg also reports it at once
when the server ends it (a restart, `pg_terminate_backend`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
import trio

from server.bus.base import Bus, Connected
from storage.bridge import AsyncioBridge
from storage.database import Database

logger = logging.getLogger(__name__)

CHANNEL = "obrol_bus"
APPLICATION_NAME = "obrol-bus"  # how the listening connection shows in pg_stat_activity
MAX_INLINE_BYTES = 5800  # base64 of this stays under NOTIFY's 8000 bytes
SPILL_MARK = "~"
SPILL_KEEP_S = 300
PING_INTERVAL_S = 5.0
PING_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 10.0


async def _notify(conn: Any, text: str) -> None:
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, text)


async def _spill(conn: Any, payload: bytes, prune: bool) -> None:
    if prune:
        await conn.execute(
            "DELETE FROM bus_spill WHERE created_at < now() - make_interval(secs => $1)",
            SPILL_KEEP_S,
        )
    spill_id = await conn.fetchval(
        "INSERT INTO bus_spill (payload) VALUES ($1) RETURNING id", payload
    )
    await _notify(conn, f"{SPILL_MARK}{spill_id}")


async def _spilled(conn: Any, spill_id: int) -> bytes:
    payload = await conn.fetchval("SELECT payload FROM bus_spill WHERE id = $1", spill_id)
    if payload is None:
        raise LookupError(f"spilled bus message {spill_id} is gone")
    return bytes(payload)


class PostgresBus(Bus):
    name = "PostgreSQL bus"

    def __init__(self, bridge: AsyncioBridge, db: Database, url: str) -> None:
        super().__init__()
        self._bridge = bridge
        self._db = db
        self._url = url
        self._spills = 0

    def describe(self) -> str:
        return "PostgreSQL bus (LISTEN/NOTIFY)"

    async def _send(self, payload: bytes) -> None:
        if len(payload) <= MAX_INLINE_BYTES:
            await self._db.read(_notify, base64.b64encode(payload).decode("ascii"))
            return
        self._spills += 1
        await self._db.transaction(_spill, payload, self._spills % 100 == 1)

    async def _resolve(self, payload: bytes) -> bytes:
        text = payload.decode("ascii")
        if text.startswith(SPILL_MARK):
            return await self._db.read(_spilled, int(text[1:]))
        return base64.b64decode(text, validate=True)

    async def _listen(self, deliver: Callable[[bytes], None], connected: Connected) -> None:
        token = trio.lowlevel.current_trio_token()
        lost = trio.Event()

        def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            with contextlib.suppress(trio.RunFinishedError):  # on the loop: never wait for trio
                token.run_sync_soon(deliver, payload.encode("ascii"))

        def on_termination(_conn: Any) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(lost.set)

        url = self._url

        async def open_listener() -> Any:
            conn = await asyncpg.connect(
                url,
                timeout=CONNECT_TIMEOUT_S,
                server_settings={"application_name": APPLICATION_NAME},
            )
            try:
                conn.add_termination_listener(on_termination)
                await conn.add_listener(CHANNEL, on_notify)
            except BaseException:
                conn.terminate()
                raise
            return conn

        conn = await self._bridge.run(open_listener)
        try:
            await connected()
            while not lost.is_set():
                with trio.move_on_after(PING_INTERVAL_S):
                    await lost.wait()
                if lost.is_set():
                    break
                await self._bridge.run(_ping, conn)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CONNECT_TIMEOUT_S):
                try:
                    await self._bridge.run(_close, conn)
                except Exception as exc:  # the bridge or connection is gone already
                    logger.debug("bus connection not closed cleanly: %s", exc)


async def _ping(conn: Any) -> None:
    async with asyncio.timeout(PING_TIMEOUT_S):
        await conn.fetchval("SELECT 1")


async def _close(conn: Any) -> None:
    if conn.is_closed():
        return
    try:
        await asyncio.wait_for(conn.close(), CONNECT_TIMEOUT_S)
    except Exception:
        conn.terminate()
