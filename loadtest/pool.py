"""The worker processes: what each one simulates, starting them, closing them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from loadtest.config import RunConfig
from loadtest.link import Link
from loadtest.localserver import open_log
from loadtest.provision import Provisioned
from loadtest.target import Target
from loadtest.topology import Topology


@dataclass
class WorkerHandle:
    """A running worker process, its link, and what it has reported so far."""

    index: int
    process: trio.Process
    link: Link
    log_path: Path
    ramped: trio.Event = field(default_factory=trio.Event)
    sent: dict[str, Any] | None = None
    sent_event: trio.Event = field(default_factory=trio.Event)
    final: dict[str, Any] | None = None
    final_event: trio.Event = field(default_factory=trio.Event)
    died: bool = False
    connected_after_ramp: int = 0

    def mark_dead(self) -> None:
        self.died = True
        for event in (self.ramped, self.sent_event, self.final_event):
            event.set()


def worker_plans(
    config: RunConfig,
    topology: Topology,
    provisioned: Provisioned,
    target: Target,
    run: str,
    phones: Collection[int] = (),
) -> list[dict[str, Any]]:
    """What each worker simulates: its users' devices but the offline `phones`, their
    conversations, its share of the send rate (its (conversation, member) slots weigh
    1/size each; a member sends from one of its connected devices)."""
    member_of = topology.conversations_of_users()
    sizes = [len(m) for m in topology.conversations]
    total_weight = max(len(topology.conversations), 1)
    plans = []
    for w in range(config.workers):
        users = [u for u in range(topology.users) if topology.worker_of_user(u) == w]
        convs = sorted({c for u in users for c in member_of[u]})
        slots = [(c, u) for u in users for c in member_of[u]]
        share = sum(1 / sizes[c] for c, _ in slots) / total_weight
        plans.append(
            {
                "t": "plan",
                "worker": w,
                "run": run,
                "gateway_url": target.gateway_url,
                "ca_file": None if target.ca_file is None else str(target.ca_file),
                "server_key": provisioned.server_key,
                "seed": config.seed,
                "cursor": provisioned.cursor,
                "ramp_rate": config.ramp_rate,
                "rate": config.rate * share,
                "arrival": config.arrival,
                "mix": list(config.mix.weights),
                "text_chars": config.text_chars,
                "drain_timeout_s": config.drain_timeout_s,
                "push": bool(phones),
                "devices": [
                    [d, provisioned.devices[d][0].bytes, provisioned.devices[d][1], u]
                    for u in users
                    for d in topology.devices_of(u)
                    if d not in phones
                ],
                "conversations": [
                    [c, conv_id.bytes, sizes[c], None if file_id is None else file_id.bytes]
                    for c in convs
                    for conv_id, file_id in [provisioned.conversations[c]]
                ],
                "user_conversations": {u: member_of[u] for u in users},
                "slots": slots,
            }
        )
    return plans


async def start_worker(index: int, report_dir: Path) -> WorkerHandle:
    """Start `python -m loadtest.worker`, its log in the report folder."""
    log_path = report_dir / f"worker-{index}.log"
    with open_log(log_path) as log:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "loadtest.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
    assert process.stdin is not None and process.stdout is not None
    return WorkerHandle(index, process, Link(process.stdin, process.stdout), log_path)


async def close_worker(handle: WorkerHandle) -> None:
    """Close the link and wait (bounded) for the process; kill it if it lingers."""
    await handle.link.aclose()
    with trio.move_on_after(10):
        await handle.process.wait()
    if handle.process.returncode is None:
        handle.process.kill()
        with trio.CancelScope(shield=True):
            await handle.process.wait()
