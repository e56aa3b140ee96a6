"""`obrol serve --workers 2` as a real process tree: the ports are shared, a worker killed
with -9 under traffic is restarted (a log line, a count) and no acknowledged message is
lost, and SIGTERM stops everything."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import trio

from loadtest.client import ConnectError, ConnectionClosedError, GatewayClient
from protocol import Msg, Synced
from tests.harness import Harness, Session, receive_until
from tests.nodes import collect_msgs, node_harness, send_acked, start_node, text
from tests.processes import Process


def serving(process: Process, index: int) -> list[int]:
    """The process ids worker `index` has had, oldest first."""
    pattern = re.compile(rf"worker {index} serving \(pid (\d+)\)")
    return [int(m.group(1)) for line in list(process.lines) if (m := pattern.search(line))]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Acked:
    """cid -> position of every acknowledged send, and a way to wait for more."""

    def __init__(self) -> None:
        self.positions: dict[str, int] = {}
        self._more = trio.Event()

    def add(self, cid: str, pos: int) -> None:
        self.positions[cid] = pos
        self._more.set()
        self._more = trio.Event()

    async def reach(self, count: int) -> None:
        while len(self.positions) < count:
            await self._more.wait()


async def keep_sending(
    node: Harness, session: Session, conv: bytes, acked: Acked, stop: trio.Event
) -> None:
    """Send one message after another as an app does: on a lost connection, connect again
    and resend the unacknowledged one with its cid."""
    n = 0
    client: GatewayClient | None = None
    while not stop.is_set():
        cid = f"s{n}"
        try:
            if client is None:
                client = await node.synced(session)
            acked.add(cid, await send_acked(client, text(cid, conv)))
            n += 1
        except (
            ConnectionClosedError,
            ConnectError,
            OSError,
            trio.BrokenResourceError,
            trio.TooSlowError,
        ):
            if client is not None:
                with trio.CancelScope(shield=True):
                    await client.aclose()
            client = None
            await trio.sleep(0.1)
    if client is not None:
        await client.aclose()


def restarted(process: Process, index: int, count: int, limit_s: float = 60) -> list[int]:
    """Wait (blocking) until worker `index` has had `count` processes."""
    deadline = time.monotonic() + limit_s
    while len(serving(process, index)) < count:
        assert time.monotonic() < deadline, process.output
        time.sleep(0.1)
    return serving(process, index)


async def test_a_worker_killed_under_traffic_is_restarted_and_nothing_acked_is_lost(
    tmp_path: Path, database_url: str
) -> None:
    process = start_node(tmp_path / "data", database_url, "--workers", "2")
    try:
        async with node_harness(process) as node:
            assert process.wait_for(r"workers:\s+2 \(bus: postgres\)")
            pids = [serving(process, 1)[0], serving(process, 2)[0]]
            ann = await node.create_org()
            bob = await node.add_member(ann, "bob")
            conv = (await node.group(ann, bob)).bytes
            # Several connections of bob: wherever each landed, each gets what ann sends.
            readers = [await node.synced(bob) for _ in range(4)]
            async with await node.synced(ann) as writer:
                pos = await send_acked(writer, text("hello", conv))
            for reader in readers:
                assert [m.pos for m in await collect_msgs(reader, 1)] == [pos]
                await reader.aclose()
            acked = Acked()
            stop = trio.Event()
            async with trio.open_nursery() as traffic:
                traffic.start_soon(keep_sending, node, ann, conv, acked, stop)
                with trio.fail_after(30):
                    await acked.reach(20)
                os.kill(pids[0], signal.SIGKILL)
                pids_of_1 = await trio.to_thread.run_sync(restarted, process, 1, 2)
                assert pids_of_1[1] != pids[0]
                assert process.wait_for(
                    r"worker 1 \(pid \d+\) died \(killed by SIGKILL\); restarting it "
                    r"\(1 worker restarts so far\)"
                )
                with trio.fail_after(60):
                    await acked.reach(len(acked.positions) + 20)
                stop.set()
            # Whichever worker answers, /metrics shows them all (and the restart).
            metrics = (await node.client.get("/metrics")).text
            assert "obrol_worker_restarts 1.0" in metrics
            handshakes = [
                float(line.split()[-1])
                for line in metrics.splitlines()
                if line.startswith('obrol_handshakes_total{outcome="ok"}')
            ]
            assert handshakes and handshakes[0] >= 6  # readers, writers: on both workers
            # Every acknowledged message is stored, once, in the order acknowledged.
            async with await node.connect(bob) as again:
                await again.sync(0)
                frames = await receive_until(again, lambda f: isinstance(f, Synced), 30)
            stored = {f.cid: f.pos for f in frames if isinstance(f, Msg)}
            assert {cid: stored.get(cid) for cid in acked.positions} == acked.positions
            assert len(stored) == len(set(stored.values()))
        process.popen.send_signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(process.finish, 60) == 0
        assert process.wait_for(r"obrol stopped \(1 worker restarts\)")
        assert not alive(pids[1])
    finally:
        process.close()
