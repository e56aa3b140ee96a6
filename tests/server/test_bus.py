"""Two `obrol serve` nodes (real processes, their own ports) sharing one PostgreSQL: what a
device on one sends reaches devices on the other live, in stream order, once; live-only
events cross; a revocation on one closes the device on the other; the bus going away and
coming back (the LISTEN connection ended, a NATS server stopped) loses nothing."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trio

from loadtest.client import ConnectionClosedError, GatewayClient
from protocol import (
    Erased,
    Err,
    ErrorCode,
    Msg,
    Ping,
    Pong,
    Receipt,
    ReceiptNotice,
    ReceiptStatus,
    Synced,
    Typing,
    TypingNotice,
)
from tests.conftest import with_database
from tests.harness import Harness, receive_until
from tests.nodes import (
    admin_sql,
    collect_msgs,
    node_harness,
    send_acked,
    start_node,
    text,
    until_health,
)
from tests.processes import Process

NATS_SERVER = str(Path(sys.executable).parent / "nats-server")


@asynccontextmanager
async def two_nodes(
    tmp_path: Path, database_url: str, *args: str, settings: dict[str, str] | None = None
) -> AsyncIterator[tuple[Harness, Harness, list[Process]]]:
    """Node A, then node B (same data folder: one server key and master key), both up."""
    data = tmp_path / "data"
    processes = [start_node(data, database_url, "--workers", "1", *args, settings=settings)]
    try:
        async with node_harness(processes[0]) as a:
            processes.append(
                start_node(data, database_url, "--workers", "1", *args, settings=settings)
            )
            async with node_harness(processes[1]) as b:
                yield a, b, processes
    finally:
        for process in processes:
            process.close()


async def synced(node: Harness, session: object) -> GatewayClient:
    client = await node.synced(session)  # type: ignore[arg-type]
    return client


async def crossing_traffic(a: Harness, b: Harness) -> None:
    """Messages, typing and receipts cross between a device on A and one on B."""
    ann = await a.create_org()
    bob = await a.add_member(ann, "bob")
    conv = (await a.group(ann, bob)).bytes
    async with await synced(a, ann) as on_a, await synced(b, bob) as on_b:
        positions = [await send_acked(on_a, text(f"a{i}", conv)) for i in range(30)]
        got = await collect_msgs(on_b, 30)
        assert [m.cid for m in got] == [f"a{i}" for i in range(30)]
        assert [m.pos for m in got] == positions  # stream order, nothing twice
        reply = await send_acked(on_b, text("b0", conv))
        back = await receive_until(on_a, lambda f: isinstance(f, Msg) and f.cid == "b0")
        assert back[-1].pos == reply  # type: ignore[union-attr]
        await on_a.send(Typing(conv=conv, on=True))
        typing = await receive_until(on_b, lambda f: isinstance(f, TypingNotice))
        assert typing[-1].who == ann.account_uuid.bytes  # type: ignore[union-attr]
        await on_b.send(Receipt(conv=conv, id=got[0].id, status=ReceiptStatus.READ))
        receipt = await receive_until(on_a, lambda f: isinstance(f, ReceiptNotice))
        assert receipt[-1].id == got[0].id  # type: ignore[union-attr]


async def test_messages_typing_and_receipts_cross_nodes_over_postgres(
    tmp_path: Path, database_url: str
) -> None:
    async with two_nodes(tmp_path, database_url) as (a, b, _):
        await crossing_traffic(a, b)


async def test_a_device_revoked_on_one_node_is_closed_on_the_other(
    tmp_path: Path, database_url: str
) -> None:
    # The standing check (the safety net under the bus) waits a minute here: what closes
    # the device within the 10 s the test listens is the bus.
    settings = {"OBROL_STANDING_CHECK_INTERVAL_S": "60"}
    async with two_nodes(tmp_path, database_url, settings=settings) as (a, b, _):
        ann = await a.create_org()
        phone = await a.login("olivia@acme.example")
        async with await synced(b, phone) as on_b:
            response = await a.client.delete(
                f"/v1/devices/{phone.device['id']}", headers=ann.headers
            )
            assert response.status_code == 200
            with pytest.raises(ConnectionClosedError) as closed:
                await receive_until(on_b, lambda _: False, limit_s=10)
            assert closed.value.code == 4005


async def test_what_the_bus_never_carried_still_closes_devices_on_the_other_node(
    tmp_path: Path, database_url: str
) -> None:
    """Both nodes' bus is a NATS server that is not there, so every event is dropped: the
    standing check (server/gateway/standing.py) closes the devices on B all the same, and
    B's device-key cache no longer admits the revoked one it had cached."""
    nowhere = f"nats://127.0.0.1:{free_port()}"
    async with two_nodes(tmp_path, database_url, "--bus", nowhere) as (a, b, _):
        ann = await a.create_org()
        bob = await a.add_member(ann, "bob")
        old_phone = await a.login("olivia@acme.example")
        await (await synced(b, old_phone)).aclose()  # B keeps its key in the cache
        phone = await a.login("olivia@acme.example")
        async with await synced(b, phone) as on_b, await synced(b, bob) as bob_on_b:
            for device in (old_phone, phone):
                response = await a.client.delete(
                    f"/v1/devices/{device.device['id']}", headers=ann.headers
                )
                assert response.status_code == 200, response.text
            response = await a.client.post(
                f"/v1/orgs/{ann.org_id}/members/{bob.id}/deactivate", headers=ann.headers
            )
            assert response.status_code == 200, response.text
            for client, code in ((on_b, 4005), (bob_on_b, 4012)):
                with pytest.raises(ConnectionClosedError) as closed:
                    await receive_until(client, lambda _: False, limit_s=30)
                assert closed.value.code == code
        with pytest.raises(ConnectionClosedError) as refused:
            async with await b.connect(old_phone) as client:
                await receive_until(client, lambda _: False, limit_s=30)
        assert refused.value.code == 4005
        health = (await b.client.get("/healthz")).json()
        assert health["bus"] == "down"  # nothing crossed on the bus


async def test_a_material_policy_the_bus_never_carried_still_gates_the_other_node(
    tmp_path: Path, database_url: str
) -> None:
    """The publication's bus event is dropped (no NATS server): B's standing check reads
    the org's newest material version and refuses what the gate refuses."""
    nowhere = f"nats://127.0.0.1:{free_port()}"
    async with two_nodes(tmp_path, database_url, "--bus", nowhere) as (a, b, _):
        ann = await a.create_org()
        bob = await a.add_member(ann, "bob")
        conv = (await a.group(ann, bob)).bytes
        async with await synced(b, bob) as bob_on_b:
            response = await a.client.post(
                f"/v1/orgs/{ann.org_id}/policies",
                headers=ann.headers,
                json={"version": "2026-12", "language": "id", "material": True, "text": "Ours."},
            )
            assert response.status_code == 201, response.text

            async def refused() -> bool:
                await bob_on_b.send(Typing(conv=conv, on=True), Ping())
                frames = await receive_until(bob_on_b, lambda f: isinstance(f, Pong))
                return any(
                    isinstance(f, Err) and f.code is ErrorCode.RECONSENT_REQUIRED for f in frames
                )

            for _ in range(60):  # until B's standing check has read it (every 2 s here)
                if await refused():
                    break
                await trio.sleep(0.5)
            else:
                raise AssertionError("B never gated bob: the publication did not reach it")


async def test_a_deletion_on_one_node_reaches_the_other_in_stream_order(
    tmp_path: Path, database_url: str
) -> None:
    async with two_nodes(tmp_path, database_url) as (a, b, _):
        ann = await a.create_org()
        bob = await a.add_member(ann, "bob")
        conv = await a.group(ann, bob)
        async with await synced(a, ann) as on_a, await synced(b, bob) as on_b:
            first = await send_acked(on_a, text("gone", conv.bytes))
            (msg,) = await collect_msgs(on_b, 1)
            response = await a.client.delete(
                f"/v1/conversations/{conv}/messages/{uuid.UUID(bytes=msg.id)}",
                headers=ann.headers,
            )
            assert response.status_code == 204, response.text
            after = await send_acked(on_a, text("after", conv.bytes))
            frames = await receive_until(on_b, lambda f: isinstance(f, Msg) and f.cid == "after")
            (erased,) = [f for f in frames if isinstance(f, Erased)]
            assert erased.ids == (msg.id,) and erased.reason == "deleted_by_sender"
            assert first < erased.pos < after  # in stream order, before what came next
        # B read A's commits from the store: its bus lag is measured.
        metrics = (await b.client.get("/metrics")).text
        lag = [
            line for line in metrics.splitlines() if line.startswith("obrol_bus_lag_seconds_count")
        ]
        assert lag and float(lag[0].split()[-1]) >= 2


async def test_the_bus_lost_and_back_loses_no_message(tmp_path: Path, database_url: str) -> None:
    """B's LISTEN connection is ended (and cannot come back for a while): B says so at
    /healthz and still delivers what A commits (from the store, on its timer); when the bus
    is back, B says so, and every message arrived once, in order."""
    name = urlsplit(database_url).path.lstrip("/")
    admin = with_database(database_url, "postgres")
    async with two_nodes(tmp_path, database_url) as (a, b, processes):
        ann = await a.create_org()
        bob = await a.add_member(ann, "bob")
        conv = (await a.group(ann, bob)).bytes
        async with await synced(a, ann) as on_a, await synced(b, bob) as on_b:
            await send_acked(on_a, text("before", conv))
            await collect_msgs(on_b, 1)
            await admin_sql(admin, f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
            try:
                await admin_sql(
                    admin,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE application_name = 'obrol-bus' AND datname = '{name}'",
                )
                down = await until_health(b, lambda h: h["bus"] == "down")
                assert down["status"] == "degraded" and down["database"] == "ok"
                sent = [await send_acked(on_a, text(f"during{i}", conv)) for i in range(10)]
                during = await collect_msgs(on_b, 10)
                assert [m.pos for m in during] == sent
            finally:
                await admin_sql(
                    admin,
                    f"ALTER DATABASE {name} ALLOW_CONNECTIONS true",
                )
            await until_health(b, lambda h: h["status"] == "ok")
            await until_health(a, lambda h: h["status"] == "ok")
            after = [await send_acked(on_a, text(f"after{i}", conv)) for i in range(10)]
            got = await collect_msgs(on_b, 10)
            assert [m.pos for m in got] == after
        assert processes[1].wait_for(r"PostgreSQL bus \(LISTEN/NOTIFY\) connection lost")
        # Nothing twice, nothing missing: a fresh sync on B sees all 21 exactly once.
        async with await b.connect(bob) as again:
            await again.sync(0)
            frames = await receive_until(again, lambda f: isinstance(f, Synced))
            cids = [f.cid for f in frames if f.TYPE == "msg"]  # type: ignore[union-attr]
            assert len(cids) == 21 == len(set(cids))


async def test_a_node_killed_while_its_devices_move_to_another_loses_nothing(
    tmp_path: Path, database_url: str
) -> None:
    """B is killed with -9 while a device of bob's is connected to it and ann keeps sending
    on A: bob reconnects to A, catches up from his cursor, and has every acknowledged
    message once; a B started again on the same database serves him too."""
    async with two_nodes(tmp_path, database_url) as (a, b, processes):
        ann = await a.create_org()
        bob = await a.add_member(ann, "bob")
        conv = (await a.group(ann, bob)).bytes
        bob_device = a.device(bob)
        async with await synced(a, ann) as on_a:
            on_b = await bob_device.reconnect(b.gateway_url)
            await on_b.sync(bob_device.cursor)
            first = [await send_acked(on_a, text(f"one{i}", conv)) for i in range(5)]
            for msg in await collect_msgs(on_b, 5):
                bob_device.accept(msg)
            processes[1].popen.send_signal(signal.SIGKILL)
            processes[1].popen.wait()
            await on_b.aclose()  # its node is gone
            more = [await send_acked(on_a, text(f"two{i}", conv)) for i in range(5)]
            moved = await bob_device.reconnect(a.gateway_url)
            await moved.sync(bob_device.cursor)
            frames = await receive_until(moved, lambda f: isinstance(f, Synced))
            for frame in frames:
                bob_device.accept(frame)
            await moved.aclose()
        assert [m.pos for m in bob_device.messages] == first + more
        assert bob_device.duplicates == 0
        # B again, on the same database: bob is served there as well.
        restarted = start_node(tmp_path / "data", database_url, "--workers", "1")
        processes.append(restarted)
        async with node_harness(restarted) as b2, await b2.connect(bob) as again:
            await again.sync(0)
            frames = await receive_until(again, lambda f: isinstance(f, Synced))
            assert len([f for f in frames if isinstance(f, Msg)]) == 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nats_server(port: int, cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [NATS_SERVER, "-a", "127.0.0.1", "-p", str(port)],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_two_nodes_over_a_real_nats_server_lose_nothing_when_it_restarts(
    tmp_path: Path, database_url: str
) -> None:
    port = free_port()
    nats = nats_server(port, tmp_path)
    try:
        bus = f"nats://127.0.0.1:{port}"
        async with two_nodes(tmp_path, database_url, "--bus", bus) as (a, b, _):
            await until_health(a, lambda h: h["bus"] == "ok")
            await until_health(b, lambda h: h["bus"] == "ok")
            await crossing_traffic(a, b)
            ann = await a.login("olivia@acme.example")
            bob = await a.login("bob@members.example")
            conv = (await a.group(ann, bob, title="Second")).bytes
            async with await synced(a, ann) as on_a, await synced(b, bob) as on_b:
                nats.terminate()
                nats.wait()
                await until_health(b, lambda h: h["bus"] == "down")
                sent = [await send_acked(on_a, text(f"n{i}", conv)) for i in range(5)]
                assert [m.pos for m in await collect_msgs(on_b, 5)] == sent
                nats = nats_server(port, tmp_path)
                await until_health(a, lambda h: h["bus"] == "ok")
                await until_health(b, lambda h: h["bus"] == "ok")
                sent = [await send_acked(on_a, text(f"m{i}", conv)) for i in range(5)]
                assert [m.pos for m in await collect_msgs(on_b, 5)] == sent
                await on_a.send(Typing(conv=conv, on=True))
                await receive_until(on_b, lambda f: isinstance(f, TypingNotice))
    finally:
        nats.kill()
        nats.wait()
