"""`obrol serve --workers N`: one supervisor, N gateway+API worker processes.

The supervisor owns what there is one of: the embedded PostgreSQL (started, watched and
restarted as `obrol serve` does), the start-up chores that must not race (the identity key,
migrations, the master key), and the listening sockets. It binds the API and gateway ports
once and hands both sockets to every worker (inherited file descriptors): the kernel queues
connections on the one socket and whichever worker accepts first serves the connection, so
a device may land on any worker, and a worker that dies loses nothing queued.

Each worker is `python -m server.workers`: the whole server (`server.runner.serve`) on the
inherited sockets, with the database URL, talking to the others over the bus. It reads its
settings from its standard input, says it is ready on its standard output, stops on
SIGTERM, and stops by itself when its standard input closes (the supervisor is gone).

A worker that exits while the supervisor is not stopping is started again at once, with a
log line and a count; one that keeps dying young is started again after a growing pause.
SIGINT or SIGTERM to the supervisor stops the workers (SIGTERM, then SIGKILL after the
shutdown timeout), then the database. SIGHUP is passed on (TLS reload).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE

import trio
from prometheus_client.multiprocess import mark_process_dead
from pydantic import SecretStr

from server.identity import load_or_create_identity, public_key_b64
from server.keys import open_keyring
from server.logs import configure_logging
from server.runner import (
    InheritedSockets,
    Running,
    describe_url,
    embedded_postgres,
    listening,
    serve,
    supervise_embedded,
)
from server.settings import Settings
from server.tls import ServerTls
from storage.bridge import AsyncioBridge
from storage.database import Database
from storage.embedded import EmbeddedPostgres, create_private_dir

logger = logging.getLogger(__name__)

YOUNG_S = 10.0  # a worker that dies younger than this is restarted after a pause
PAUSE_MAX_S = 30.0
READY_TIMEOUT_S = 120.0
LISTEN_BACKLOG = 4096


@dataclass(frozen=True, slots=True)
class WorkerJob:
    """What a worker is given on its standard input."""

    index: int
    settings: Settings
    sockets: InheritedSockets


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port that child processes inherit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


class Worker:
    """One worker process slot: started, restarted, stopped."""

    def __init__(self, index: int, job: bytes, fds: tuple[int, ...]) -> None:
        self.index = index
        self._job = job
        self._fds = fds
        self.process: trio.Process | None = None
        self.started_at = 0.0

    async def start(self, restarts: int = 0) -> dict[str, str]:
        """Start the process and wait until it serves; returns what it reported.
        `restarts`: how many worker restarts there were so far (a metric it shows)."""
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "server.workers"],
            stdin=PIPE,
            stdout=PIPE,
            pass_fds=self._fds,
            env={**os.environ, "OBROL_WORKER_RESTARTS": str(restarts)},
        )
        self.process = process
        self.started_at = trio.current_time()
        assert process.stdin is not None and process.stdout is not None
        await process.stdin.send_all(b"%d\n" % len(self._job) + self._job)
        line = b""
        with trio.move_on_after(READY_TIMEOUT_S):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    break
                line += chunk
        if not line.endswith(b"\n"):
            raise WorkerError(f"worker {self.index} (pid {process.pid}) did not start")
        logger.info("worker %d serving (pid %d)", self.index, process.pid)
        ready: dict[str, str] = json.loads(line)
        return ready

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signum)


def share_metrics(folder: Path) -> None:
    """The workers write their metrics to files in `folder` (prometheus-client's
    multiprocess mode), so whichever answers GET /metrics shows them all: a private folder,
    emptied of a previous run's files, named in the environment they inherit."""
    create_private_dir(folder)
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def forget_metrics(pid: int) -> None:
    """A worker is gone: its live gauges (connections, bus up) stop counting."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        mark_process_dead(pid, folder)  # type: ignore[no-untyped-call]


class WorkerError(Exception):
    """A worker did not start."""


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


class Supervisor:
    def __init__(self, workers: list[Worker], shutdown: trio.Event) -> None:
        self.workers = workers
        self.shutdown = shutdown
        self.restarts = 0

    async def keep(self, worker: Worker) -> None:
        """Wait for the worker to exit; start it again unless we are stopping."""
        pause_s = 1.0
        while True:
            assert worker.process is not None
            returncode = await worker.process.wait()
            forget_metrics(worker.process.pid)
            if self.shutdown.is_set():
                return
            self.restarts += 1
            young = trio.current_time() - worker.started_at < YOUNG_S
            logger.error(
                "worker %d (pid %d) died (%s); restarting it (%d worker restarts so far)",
                worker.index,
                worker.process.pid,
                _describe(returncode),
                self.restarts,
            )
            if young:
                with trio.move_on_after(pause_s):
                    await self.shutdown.wait()
                pause_s = min(pause_s * 2, PAUSE_MAX_S)
            else:
                pause_s = 1.0
            while not self.shutdown.is_set():
                try:
                    await worker.start(self.restarts)
                    break
                except (WorkerError, OSError) as exc:
                    logger.error("%s; next try in %.0f s", exc, pause_s)
                    with trio.move_on_after(pause_s):
                        await self.shutdown.wait()
                    pause_s = min(pause_s * 2, PAUSE_MAX_S)
            if self.shutdown.is_set():
                return

    async def stop(self, timeout_s: float) -> None:
        """SIGTERM every worker, SIGKILL those still running after `timeout_s`."""
        for worker in self.workers:
            worker.signal(signal.SIGTERM)
        with trio.move_on_after(timeout_s):
            for worker in self.workers:
                if worker.process is not None:
                    await worker.process.wait()
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                logger.warning("worker %d did not stop in time: killed", worker.index)
                worker.process.kill()
                await worker.process.wait()


@contextmanager
def _listening_sockets(settings: Settings) -> Iterator[InheritedSockets]:
    opened = []
    try:
        api_fd = gateway_fd = None
        if settings.serve_api:
            with listening("HTTP API", settings.host, settings.port, "--port"):
                opened.append(bind(settings.host, settings.port))
            api_fd = opened[-1].fileno()
        if settings.serve_gateway:
            port = settings.effective_gateway_port
            with listening("WebSocket gateway", settings.host, port, "--gateway-port"):
                opened.append(bind(settings.host, port))
            gateway_fd = opened[-1].fileno()
        yield InheritedSockets(api_fd, gateway_fd)
    finally:
        for sock in opened:
            sock.close()


async def _prepare(settings: Settings, url: str) -> None:
    """What must happen once before the workers start: migrations, the master key."""
    bridge = AsyncioBridge()
    bridge.start()
    try:
        db = await Database.connect(bridge, url, pool_size=2)
        try:
            await open_keyring(settings, db)
        finally:
            await db.close()
    finally:
        bridge.stop()


async def supervise(
    settings: Settings,
    shutdown: trio.Event,
    count: int,
    *,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run `count` workers until `shutdown` is set; report them through `task_status`."""
    tls_info = None
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        tls_info = ServerTls(settings.tls_cert_file, settings.tls_key_file).info.describe()
    create_private_dir(settings.data_dir)
    identity = load_or_create_identity(settings.data_dir)
    share_metrics(settings.data_dir / "metrics")
    embedded: EmbeddedPostgres | None = None
    if settings.database_url is not None:
        url = settings.database_url.get_secret_value()
        database = describe_url(url)
    else:
        embedded = embedded_postgres(settings)
        url = await trio.to_thread.run_sync(embedded.start)
        database = embedded.describe()
    supervisor: Supervisor | None = None
    try:
        async with trio.open_nursery() as nursery:
            if embedded is not None:
                nursery.start_soon(supervise_embedded, embedded)
            await _prepare(settings, url)
            with _listening_sockets(settings) as sockets:
                fds = tuple(fd for fd in (sockets.api_fd, sockets.gateway_fd) if fd is not None)
                worker_settings = settings.model_copy(
                    update={"database_url": SecretStr(url), "workers": 1}
                )
                workers = [
                    Worker(i, pickle.dumps(WorkerJob(i, worker_settings, sockets)), fds)
                    for i in range(1, count + 1)
                ]
                supervisor = Supervisor(workers, shutdown)
                try:
                    reports: list[dict[str, str]] = []

                    async def start(worker: Worker) -> None:
                        reports.append(await worker.start())

                    async with trio.open_nursery() as starting:
                        for worker in workers:
                            starting.start_soon(start, worker)
                    for worker in workers:
                        nursery.start_soon(supervisor.keep, worker)
                    nursery.start_soon(_pass_sighup, supervisor)
                    task_status.started(
                        Running(
                            api_url=reports[0].get("api_url"),
                            gateway_url=reports[0].get("gateway_url"),
                            server_key=public_key_b64(identity),
                            database=database,
                            tls=tls_info,
                            workers=count,
                        )
                    )
                    logger.info("obrol serving with %d workers; database: %s", count, database)
                    await shutdown.wait()
                finally:
                    shutdown.set()
                    with trio.CancelScope(shield=True):
                        await supervisor.stop(settings.shutdown_timeout_s + 5)
            nursery.cancel_scope.cancel()
    finally:
        if embedded is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(embedded.stop)
        restarts = 0 if supervisor is None else supervisor.restarts
        logger.info("obrol stopped (%d worker restarts)", restarts)


async def _pass_sighup(supervisor: Supervisor) -> None:
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            logger.info("SIGHUP received: passed on to the workers (TLS reload)")
            for worker in supervisor.workers:
                worker.signal(signal.SIGHUP)


# -- the worker process ---------------------------------------------------------------------


async def _run_worker(job: WorkerJob) -> None:
    shutdown = trio.Event()
    settings = job.settings
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for _ in signals:
                    if shutdown.is_set():
                        nursery.cancel_scope.cancel()
                        return
                    shutdown.set()
                    nursery.cancel_scope.deadline = (
                        trio.current_time() + settings.shutdown_timeout_s + 10
                    )

            async def watch_supervisor() -> None:
                # Our standard input closes when the supervisor is gone (even killed -9).
                async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
                    while await stdin.receive_some(4096):
                        pass
                if not shutdown.is_set():
                    logger.error("worker %d: the supervisor is gone; stopping", job.index)
                    shutdown.set()

            async def run_server(task_status: trio.TaskStatus[Running]) -> None:
                try:
                    await serve(settings, shutdown, sockets=job.sockets, task_status=task_status)
                finally:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            running: Running = await nursery.start(run_server)
            nursery.start_soon(watch_supervisor)
            report = {"api_url": running.api_url, "gateway_url": running.gateway_url}
            sys.stdout.write(json.dumps(report) + "\n")
            sys.stdout.flush()


def worker_main() -> int:
    # Ctrl-C in a terminal reaches the whole process group: the supervisor stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the server listens for it (TLS)
    size = int(sys.stdin.buffer.readline())
    job: WorkerJob = pickle.loads(sys.stdin.buffer.read(size))  # noqa: S301 - our supervisor
    configure_logging(job.settings.log_level, job.settings.log_format)
    trio.run(_run_worker, job)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
