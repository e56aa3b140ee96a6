"""`obrol serve` as real processes sharing one database: nodes, workers, and a harness to
drive each over HTTP and the gateway."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import trio

from loadtest.client import GatewayClient
from protocol import Msg, Send, Sent, ServerFrame, TextBody
from server.runner import Running
from server.settings import load_settings
from tests.harness import FakeClock, Harness
from tests.processes import Process

NODE_ENV = {
    "OBROL_ALLOW_ORG_SIGNUP": "true",
    "OBROL_PASSWORD_HASH_STRENGTH": "minimal",
    "OBROL_DB_POOL_SIZE": "4",
    "OBROL_PUSH_WORKERS": "1",
}


def start_node(
    data_dir: Path, database_url: str, *args: str, settings: dict[str, str] | None = None
) -> Process:
    """`obrol serve` on free ports over `database_url` (started, not yet ready); `settings`:
    more `OBROL_*` environment variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBROL_")} | NODE_ENV
    env |= settings or {}
    data_dir.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "server.cli", "serve", "--port", "0"]
    argv += ["--data-dir", str(data_dir), "--database-url", database_url, *args]
    return Process(argv, data_dir.parent, env=env)


@asynccontextmanager
async def node_harness(process: Process) -> AsyncIterator[Harness]:
    """A harness on a started node, once it says it is running."""
    api = await trio.to_thread.run_sync(process.wait_for, r"API:\s+(http://\S+)")
    gateway = process.wait_for(r"gateway:\s+(ws://\S+)").group(1)
    key = process.wait_for(r"server key:\s+(\S+)").group(1)
    running = Running(api.group(1), gateway, key, "shared")
    async with httpx.AsyncClient(base_url=api.group(1), timeout=30) as client:
        yield Harness(running, client, FakeClock(), load_settings(None))


async def admin_sql(database_url: str, sql: str) -> list[asyncpg.Record]:
    """Run one statement as the test cluster's superuser on this test's database."""

    def run() -> list[asyncpg.Record]:
        async def go() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(database_url)
            try:
                return list(await conn.fetch(sql))
            finally:
                await conn.close()

        return asyncio.run(go())

    return await trio.to_thread.run_sync(run)


async def health(node: Harness) -> dict[str, object]:
    body: dict[str, object] = (await node.client.get("/healthz")).json()
    return body


async def until_health(
    node: Harness, want: Callable[[dict[str, object]], bool], limit_s: float = 30
) -> dict[str, object]:
    """Poll /healthz until its body satisfies `want` (bounded by a generous deadline)."""
    with trio.fail_after(limit_s):
        while True:
            body = await health(node)
            if want(body):
                return body
            await trio.sleep(0.05)


def text(cid: str, conv: bytes) -> Send:
    return Send(cid=cid, conv=conv, body=TextBody(text=f"message {cid}"))


async def send_acked(client: GatewayClient, frame: Send, limit_s: float = 20) -> int:
    """Send and wait for its `sent`; returns its position."""
    await client.send(frame)
    with trio.fail_after(limit_s):
        while True:
            for got in await client.receive():
                if isinstance(got, Sent) and got.cid == frame.cid and got.pos is not None:
                    return got.pos


async def collect_msgs(
    client: GatewayClient, count: int, limit_s: float = 30, *, seen: list[ServerFrame] | None = None
) -> list[Msg]:
    """The next `count` `msg` frames (other frames are kept in `seen`)."""
    msgs: list[Msg] = []
    with trio.fail_after(limit_s):
        while len(msgs) < count:
            for frame in await client.receive():
                if isinstance(frame, Msg):
                    msgs.append(frame)
                elif seen is not None:
                    seen.append(frame)
    return msgs
