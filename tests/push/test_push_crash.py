"""A server process killed with SIGKILL in the middle of a push batch, then started again:
every push still owed goes out, and only a push in flight at the kill can go out twice. And
two worker processes (`obrol serve --workers 2`) sharing one outbox push each job once."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio
from nacl.signing import SigningKey

from push.standin import StandIn
from server.runner import Running
from server.settings import load_settings
from tests.harness import FakeClock, Harness, Session
from tests.processes import Process
from tests.push.bridge_helpers import push_settings, send_texts, synced, wait_until

DEVICES = 60
BATCH = 10
TOKENS = [f"{i:064x}" for i in range(1, DEVICES + 1)]  # bob's phones, one token each


def accepted(standin: StandIn) -> list[str]:
    """The tokens of every push the stand-in accepted, once per push."""
    return [r.token for r in standin.received if r.status == 200 and r.token is not None]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_env(settings: dict[str, object]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBROL_")}
    for name, value in settings.items():
        text = json.dumps(value) if isinstance(value, list) else str(value)
        env[f"OBROL_{name.upper()}"] = text
    return env


@asynccontextmanager
async def server_process(
    settings: dict[str, object], cwd: Path, workers: int = 1
) -> AsyncIterator[tuple[Process, Harness]]:
    """`obrol serve` as a child process, and a harness (HTTP client + helpers) for it."""
    process = Process(
        [sys.executable, "-m", "server.cli", "serve", "--workers", str(workers)],
        cwd,
        env=server_env(settings),
    )
    try:
        api = (await trio.to_thread.run_sync(process.wait_for, r"API:\s+(http://\S+)")).group(1)
        gateway = (await trio.to_thread.run_sync(process.wait_for, r"(ws://\S+)")).group(1)
        async with httpx.AsyncClient(base_url=api, timeout=30) as client:
            key = (await client.get("/.well-known/obrol/server-key")).json()["public_key"]
            running = Running(api, gateway, key, "test database", None)
            local = load_settings(None, **{k: v for k, v in settings.items() if k != "port"})
            yield process, Harness(running, client, FakeClock(), local)
    finally:
        process.close()


def process_settings(
    standin: StandIn, database_url: str, data_dir: Path, **overrides: object
) -> dict[str, object]:
    return {
        **push_settings(standin, **overrides),
        "database_url": database_url,
        "data_dir": data_dir,
        "port": free_port(),
        "gateway_port": free_port(),
        "allow_org_signup": "true",
        "password_hash_strength": "minimal",
        "gc_tuning": "false",
    }


async def register_phones(server: Harness, tokens: list[str]) -> tuple[Session, uuid.UUID]:
    """Bob with one phone per token, in a group with Olivia: (Olivia, the group)."""
    olivia = await server.create_org()
    bob = await server.add_member(olivia, "bob")
    conv = await server.group(olivia, bob)
    for token in tokens:  # bob's phones: one device and one token each
        phone = await server.login("bob@members.example", key=SigningKey.generate())
        response = await server.client.put(
            "/v1/push/registration",
            headers=phone.headers,
            json={"provider": "apns", "token": token},
        )
        assert response.status_code == 200, response.text
    return olivia, conv


async def test_a_server_killed_mid_batch_owes_no_push_and_repeats_only_those_in_flight(
    database_url: str, tmp_path: Path, standin: StandIn
) -> None:
    settings = process_settings(
        standin,
        database_url,
        tmp_path / "data",
        push_grace_s=0.2,
        push_lease_s=5,
        push_send_timeout_s=1.5,
        push_batch=BATCH,
        push_workers=1,
    )
    standin.latency_s = 0.3  # each batch is in flight a while: the kill lands inside one
    async with server_process(settings, tmp_path) as (process, server):
        olivia, conv = await register_phones(server, TOKENS)
        async with await server.connect(olivia) as sender:
            await synced(sender)
            await send_texts(sender, conv, "to every phone")
        await wait_until(lambda: len(accepted(standin)) >= 2 * BATCH)
        os.kill(process.popen.pid, signal.SIGKILL)
        await trio.to_thread.run_sync(process.popen.wait)
    await trio.sleep(standin.latency_s + 0.5)  # what was in flight is answered (or dropped)
    before = set(accepted(standin))
    assert 2 * BATCH <= len(before) < DEVICES  # killed mid-way

    async with server_process(settings, tmp_path) as (_, server):
        await wait_until(lambda: set(accepted(standin)) == set(TOKENS), 60)
        await trio.sleep(settings["push_lease_s"] + 1.0)  # type: ignore[operator]
    counts = Counter(accepted(standin))
    assert set(counts) == set(TOKENS)  # nothing owed is lost
    after_kill = set(TOKENS) - before
    assert all(counts[t] == 1 for t in after_kill)  # sent after the restart: once each
    repeated = {t for t, n in counts.items() if n > 1}
    # Only pushes the provider had already received when the server died (their answers
    # were lost with it, so nothing recorded them) are sent again: at most one chunk, with
    # the same apns-id and collapse id, so the phone shows each once.
    assert repeated <= before and len(repeated) <= BATCH
    ids = {r.headers["apns-id"] for r in standin.received if r.token in repeated}
    assert len(ids) == len(repeated)


async def test_two_worker_processes_share_the_outbox_and_push_each_job_once(
    database_url: str, tmp_path: Path, standin: StandIn
) -> None:
    settings = process_settings(
        standin,
        database_url,
        tmp_path / "data",
        push_grace_s=0.2,
        push_batch=5,  # many small claims: both processes' loops take part
        push_workers=2,
    )
    standin.latency_s = 0.05
    async with server_process(settings, tmp_path, workers=2) as (_, server):
        olivia, conv = await register_phones(server, TOKENS)
        async with await server.connect(olivia) as sender:
            await synced(sender)
            await send_texts(sender, conv, "to every phone")
            await wait_until(lambda: set(accepted(standin)) == set(TOKENS))
            await trio.sleep(1.0)  # a second claim of any job would have gone out by now
            await send_texts(sender, conv, "again")
            await wait_until(lambda: len(accepted(standin)) >= 2 * DEVICES)
            await trio.sleep(1.0)
    counts = Counter(accepted(standin))
    assert counts == dict.fromkeys(TOKENS, 2)  # one push per phone per message, none twice
