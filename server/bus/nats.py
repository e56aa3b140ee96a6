"""The cluster bus: NATS (`--bus nats://host:port`), for nodes on several machines.

nats-py is an asyncio client: it runs on the storage bridge's loop (storage/bridge.py), and
this module is the only one that knows it. Every process subscribes to one subject and
publishes its bus messages there (without echo: a process never gets its own back). The
client's own reconnection is off: a lost connection ends `_listen`, the bus says so, and
the next connection catches up from the store (server/bus/base.py), so that a NATS server
restarted (or unreachable for a while) loses no stored message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import nats
import trio

from server.bus.base import Bus, Connected
from storage.bridge import AsyncioBridge

logger = logging.getLogger(__name__)

SUBJECT = "obrol.bus"
CONNECT_TIMEOUT_S = 5
PING_INTERVAL_S = 5.0
PING_TIMEOUT_S = 5.0


class NatsBus(Bus):
    name = "NATS bus"

    def __init__(self, bridge: AsyncioBridge, servers: str) -> None:
        super().__init__()
        self._bridge = bridge
        self._servers = servers.split(",")
        self._client: Any = None

    def describe(self) -> str:
        return f"NATS bus ({', '.join(self._servers)})"

    async def _send(self, payload: bytes) -> None:
        client = self._client
        if client is None:
            raise ConnectionError("not connected to NATS")
        await self._bridge.run(_publish, client, payload)

    async def _listen(self, deliver: Callable[[bytes], None], connected: Connected) -> None:
        token = trio.lowlevel.current_trio_token()
        lost = trio.Event()

        def tell(fn: Callable[..., Any], *args: Any) -> None:
            with contextlib.suppress(trio.RunFinishedError):  # on the loop: never wait for trio
                token.run_sync_soon(fn, *args)

        async def on_message(message: Any) -> None:
            tell(deliver, message.data)

        async def on_lost() -> None:
            tell(lost.set)

        async def on_error(exc: Exception) -> None:
            logger.debug("NATS: %s", exc)

        servers = self._servers

        async def open_client() -> Any:
            client = await nats.connect(
                servers,
                name="obrol",
                allow_reconnect=False,
                connect_timeout=CONNECT_TIMEOUT_S,
                # One try per server: nats-py's own retries (60, 2 s apart by default) would
                # hold a node's start for two minutes while NATS is away; our loop retries.
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                no_echo=True,
                disconnected_cb=on_lost,
                closed_cb=on_lost,
                error_cb=on_error,
            )
            try:
                await client.subscribe(SUBJECT, cb=on_message)
                await client.flush(timeout=CONNECT_TIMEOUT_S)
            except BaseException:
                await client.close()
                raise
            return client

        client = await self._bridge.run(open_client)
        self._client = client
        try:
            await connected()
            while not lost.is_set():
                with trio.move_on_after(PING_INTERVAL_S):
                    await lost.wait()
                if not lost.is_set():
                    await self._bridge.run(_ping, client)
        finally:
            self._client = None
            with trio.CancelScope(shield=True), trio.move_on_after(CONNECT_TIMEOUT_S):
                try:
                    await self._bridge.run(_close, client)
                except Exception as exc:
                    logger.debug("NATS connection not closed cleanly: %s", exc)


async def _publish(client: Any, payload: bytes) -> None:
    await client.publish(SUBJECT, payload)


async def _ping(client: Any) -> None:
    await client.flush(timeout=PING_TIMEOUT_S)


async def _close(client: Any) -> None:
    if not client.is_closed:
        await asyncio.wait_for(client.close(), CONNECT_TIMEOUT_S)
