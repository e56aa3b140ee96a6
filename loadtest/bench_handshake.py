"""Where a connection's server CPU goes: accept, WebSocket upgrade, secure handshake, sync.

Starts its own server on the data folder of an earlier load test (which holds the enrolled
devices and their keys, `loadtest-cache.json`), then for each step opens `--connections`
connections from `--concurrency` connectors, each taken as far as that step and kept open,
and reads the server's CPU time from /proc before and after (and while they sit idle). Steps:

    tcp        TCP connect, nothing sent
    websocket  + the WebSocket upgrade
    handshake  + the secure handshake (the server looks the device up in PostgreSQL)
    synced     + `sync` from the device's cursor, until `synced` (what a device does)

Before those, the same machine's cost of the sans-IO handshake (protocol/ only, both sides
in this process) and of the libsodium calls it makes. Run::

    obrol loadtest --devices 2000 --duration 5 --data-dir /tmp/obrol-hs   # once, provisions
    .venv/bin/python -m loadtest.bench_handshake --data-dir /tmp/obrol-hs
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import timeit
import uuid
from pathlib import Path
from typing import Any

import nacl.bindings as sodium
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request

from loadtest import procstats
from loadtest.client import DeviceIdentity, GatewayClient, connect
from loadtest.localserver import local_server
from loadtest.provision import unb64url
from protocol import GATEWAY_PATH, ClientHandshake, ServerHandshake, SigningKeyPair, Synced

STEPS = ("tcp", "websocket", "handshake", "synced")
# The `tcp` and `websocket` steps hold connections that never go on with the handshake,
# which handshake admission would close as stalled: give them room (every connection its
# slot, no step or queue deadline that the measurement's own pace could hit).
HOLD_OPEN = {
    "OBROL_GATEWAY_HANDSHAKE_SLOTS": "100000",
    "OBROL_GATEWAY_HANDSHAKE_STEP_TIMEOUT_S": "3600",
    "OBROL_GATEWAY_HANDSHAKE_QUEUE_TIMEOUT_S": "3600",
    "OBROL_HANDSHAKE_TIMEOUT_S": "3600",
}
IDLE_S = 5.0


def sans_io_costs(rounds: int = 2000) -> dict[str, float]:
    """Microseconds of CPU per handshake for each side of protocol/ alone, and per
    libsodium call the server side makes."""
    server, device = SigningKeyPair.generate(), SigningKeyPair.generate()
    device_id = uuid.uuid4().bytes
    client_s = server_s = 0.0
    for _ in range(rounds):
        began = time.process_time()
        client = ClientHandshake(
            server_public_key=server.public,
            device_id=device_id,
            device_secret_key=device.secret,
        )
        hello = client.client_hello()
        mid = time.process_time()
        hs = ServerHandshake(identity_secret_key=server.secret)
        hs.receive_client_hello(hello)
        server_hello = hs.server_hello()
        after = time.process_time()
        auth, _ = client.receive_server_hello(server_hello)
        last = time.process_time()
        hs.receive_client_auth(auth, device.public)
        end = time.process_time()
        client_s += (mid - began) + (last - after)
        server_s += (after - mid) + (end - last)
    pk, sk = sodium.crypto_kx_keypair()
    peer, _ = sodium.crypto_kx_keypair()
    signed = sodium.crypto_sign(b"h" * 32, server.secret)
    calls = {
        "x25519 keypair": sodium.crypto_kx_keypair,
        "x25519 session keys": lambda: sodium.crypto_kx_server_session_keys(pk, sk, peer),
        "ed25519 sign": lambda: sodium.crypto_sign(b"h" * 32, server.secret),
        "ed25519 verify": lambda: sodium.crypto_sign_open(signed, server.public),
    }
    costs = {
        "sans-IO handshake, server side": 1e6 * server_s / rounds,
        "sans-IO handshake, client side": 1e6 * client_s / rounds,
    }
    for name, call in calls.items():
        costs[name] = 1e6 * min(timeit.repeat(call, number=rounds, repeat=3)) / rounds
    return costs


async def _open(step: str, url: str, identity: DeviceIdentity, cursor: int) -> Any:
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    if step in ("tcp", "websocket"):
        stream = await trio.open_tcp_stream(host, int(port))
        if step == "websocket":
            ws = WSConnection(ConnectionType.CLIENT)
            await stream.send_all(ws.send(Request(host=f"{host}:{port}", target=GATEWAY_PATH)))
            await stream.receive_some(65536)  # the 101 answer
        return stream
    client: GatewayClient = await connect(url, identity)
    if step == "synced":
        await client.sync(cursor)
        while not any(isinstance(frame, Synced) for frame in await client.receive()):
            pass
    return client


async def measure_step(
    step: str, url: str, pid: int, identities: list[DeviceIdentity], cursor: int, concurrency: int
) -> dict[str, float]:
    """Open one connection per identity up to `step`; server CPU and wall time per one, and
    the server's CPU while they then sit idle for IDLE_S (a share of a core)."""
    opened: list[Any] = []
    pending = iter(identities)

    async def connector() -> None:
        for identity in pending:
            opened.append(await _open(step, url, identity, cursor))

    before = procstats.sample(pid)
    began = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(connector)
    took = time.perf_counter() - began
    after = procstats.sample(pid)
    await trio.sleep(IDLE_S)
    idle = procstats.sample(pid)
    assert before is not None and after is not None and idle, "the server went away"
    for connection in opened:
        with trio.move_on_after(1):
            await connection.aclose()
    await trio.sleep(1)  # let the server close them before the next step
    cpu_ms = 1e3 * (after.cpu_s - before.cpu_s) / len(opened)
    idle_share = (idle.cpu_s - after.cpu_s) / IDLE_S
    return {"server_cpu_ms": cpu_ms, "per_s": len(opened) / took, "idle": idle_share}


def _identities(data_dir: Path, server_key: str, count: int) -> tuple[list[DeviceIdentity], int]:
    cache = json.loads((data_dir / "loadtest-cache.json").read_text(encoding="utf-8"))
    entry = cache["servers"].get(server_key)
    if entry is None:
        raise SystemExit(f"{data_dir} holds no devices of this server: run obrol loadtest on it")
    key = unb64url(server_key)
    identities = [
        DeviceIdentity(uuid.UUID(device["id"]), bytes.fromhex(device["key"]), key)
        for user in entry["users"]
        for device in user["devices"]
    ]
    if len(identities) < count:
        raise SystemExit(f"{data_dir} holds {len(identities)} devices, fewer than {count}")
    return identities[:count], int(entry.get("cursor", 0))


async def run(args: argparse.Namespace) -> None:
    for name, micros in sans_io_costs().items():
        print(f"{name:32s} {micros:8.1f} us")
    async with local_server(
        args.data_dir, args.data_dir / "bench-handshake-server.log", settings=HOLD_OPEN
    ) as srv:
        identities, cursor = _identities(args.data_dir, srv.server_key, args.connections)
        results: dict[str, list[dict[str, float]]] = {step: [] for step in STEPS}
        for _ in range(args.repeats):
            for step in STEPS:
                results[step].append(
                    await measure_step(
                        step, srv.gateway_url, srv.pid, identities, cursor, args.concurrency
                    )
                )
    print(
        f"\n{args.connections} connections, {args.concurrency} connectors, "
        f"medians of {args.repeats}:"
    )
    print(f"{'step':10s} {'server CPU ms/conn':>20s} {'conn/s':>8s} {'per CPU-s':>10s} idle")
    for step in STEPS:
        cpu = statistics.median(r["server_cpu_ms"] for r in results[step])
        rate = statistics.median(r["per_s"] for r in results[step])
        idle = statistics.median(r["idle"] for r in results[step])
        print(f"{step:10s} {cpu:20.3f} {rate:8.0f} {1e3 / cpu:10.0f} {100 * idle:.1f}% of a core")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    trio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
