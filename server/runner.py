"""Running the service: database (embedded or by URL), bridge, identity, HTTP API, gateway,
and TLS for both listeners (built once before anything starts, re-read on SIGHUP).

`serve()` owns every resource it starts and releases them in reverse order on the way out,
whether it stops because `shutdown` was set, it was cancelled, or something failed. An
embedded PostgreSQL that dies is started again; a listener that cannot bind its address
ends the start-up with a ListenError naming the port.
"""

from __future__ import annotations

import errno
import gc
import ipaddress
import logging
import signal
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from urllib.parse import urlsplit

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from protocol import GATEWAY_PATH, CloseCode, ErrorCode
from protocol.errors import ObrolError
from server.app import create_app
from server.audit import run_checkpointer
from server.bus.base import Bus
from server.bus.node import join, open_bus, run_node
from server.export_worker import run_export_workers
from server.gateway.budget import FrameLimits
from server.gateway.committer import Committer
from server.gateway.cursors import CursorSaver
from server.gateway.listener import Gateway, GatewaySettings
from server.gateway.session import GatewayContext
from server.gateway.standing import StandingWatch
from server.gateway.stream import StreamFeed
from server.handlers.minors import settle_at_start
from server.identity import fingerprint, load_or_create_identity, public_key_b64
from server.keys import open_keyring
from server.legacy import seal_legacy_data
from server.passwords import PasswordHasher
from server.services import Services, utc_now
from server.settings import Settings
from server.sweeper import run_sweeper
from server.tls import ServerTls
from storage.bridge import AsyncioBridge
from storage.database import Database
from storage.embedded import EmbeddedPostgres, create_private_dir, describe_exit
from storage.errors import EmbeddedPostgresError
from storage.stream_read import StreamReader

logger = logging.getLogger(__name__)

SUPERVISE_INTERVAL_S = 1.0  # how often the embedded PostgreSQL is checked
RESTART_BACKOFF_MAX_S = 30.0


class ListenError(ObrolError):
    """A listener could not bind its address; the message names the port and what to do."""


@dataclass(frozen=True, slots=True)
class InheritedSockets:
    """Listening sockets a worker process got from its supervisor (server/workers.py): the
    port is shared by every worker, whichever accepts a connection serves it."""

    api_fd: int | None
    gateway_fd: int | None


@dataclass(frozen=True, slots=True)
class Running:
    """What a started server tells its caller."""

    api_url: str | None
    gateway_url: str | None
    server_key: str
    database: str
    tls: str | None = None  # the certificate's subject and expiry, when serving TLS
    workers: int = 1  # processes serving (server/workers.py)
    # What the server runs on, for code that embeds it (tests reach the keyring through it).
    services: Services | None = field(default=None, repr=False, compare=False)


def embedded_postgres(settings: Settings) -> EmbeddedPostgres:
    """The embedded cluster of `settings.data_dir` (not started), for every command that
    uses it."""
    return EmbeddedPostgres(
        settings.data_dir / "postgres",
        bin_dir=settings.postgres_bin_dir,
        os_user=settings.postgres_os_user,
        shared_root=settings.postgres_shared_dir,
    )


def describe_url(url: str) -> str:
    """A database URL without its password, for printing."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return f"{parts.scheme}://{netloc}{parts.path}"


async def serve(
    settings: Settings,
    shutdown: trio.Event,
    *,
    clock: Callable[[], datetime] = utc_now,
    sockets: InheritedSockets | None = None,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown` is set; report the bound address through `task_status`.

    `clock` is the wall clock token expiry and login records use (tests move it); `sockets`
    the listening sockets to serve on instead of binding host and ports. Raises
    TlsConfigError before anything is started if the TLS certificate or key is unusable.
    """
    tls = None
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        tls = ServerTls(settings.tls_cert_file, settings.tls_key_file)
    elif not is_loopback(settings.host):
        logger.warning(
            "listening on %s without TLS: passwords, tokens and files cross the network in "
            "clear text. Give a certificate with --tls-cert FILE --tls-key FILE, or put a "
            "TLS-terminating proxy in front and list it in trusted_proxies",
            settings.host,
        )
    create_private_dir(settings.data_dir)
    identity = load_or_create_identity(settings.data_dir)
    embedded: EmbeddedPostgres | None = None
    if settings.database_url is not None:
        url = settings.database_url.get_secret_value()
        database = describe_url(url)
    else:
        embedded = embedded_postgres(settings)
        url = await trio.to_thread.run_sync(embedded.start)
        database = embedded.describe()
    bridge = AsyncioBridge()
    bridge.start()
    try:
        async with trio.open_nursery() as supervision:  # an error in the body cancels it
            if embedded is not None:
                supervision.start_soon(supervise_embedded, embedded)
            db = await Database.connect(bridge, url, pool_size=settings.db_pool_size)
            try:
                keyring = await open_keyring(settings, db)
                claim = await keyring.claim()  # no key rotation while this server runs
                try:
                    hasher = PasswordHasher(settings.password_hash_strength)
                    services = Services(settings, db, identity, hasher, keyring, clock)
                    node = Node(services, open_bus(settings, bridge, db, url), sockets)
                    await _run_services(node, bridge, tls, shutdown, database, task_status)
                finally:
                    await claim.release()
            finally:
                await db.close()
            supervision.cancel_scope.cancel()
    finally:
        bridge.stop()
        if embedded is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(embedded.stop)
        logger.info("obrol stopped")


@dataclass
class Node:
    """This process among the others sharing the database: its services, its bus (None: a
    lone process) and its stream feed (with a gateway)."""

    services: Services
    bus: Bus | None
    sockets: InheritedSockets | None
    feed: StreamFeed | None = None


async def _run_services(
    node: Node,
    bridge: AsyncioBridge,
    tls: ServerTls | None,
    shutdown: trio.Event,
    database: str,
    task_status: trio.TaskStatus[Running],
) -> None:
    """The start-up chores, then the bus, the push bridge, the sealing of legacy data and
    both listeners, until `shutdown`."""
    services = node.services
    await trio.to_thread.run_sync(services.blobs.make_private)
    await settle_at_start(services)  # the age settings may have changed
    if services.settings.serve_gateway:
        node.feed = StreamFeed(StreamReader(services.db, services.keyring), services.hub)
        await node.feed.start()
        services.hub.feed = node.feed  # the writers of tombstones fan out through it
    async with trio.open_nursery() as pushing:
        stop_pushing = trio.Event()
        pushing.start_soon(services.push.run, bridge, stop_pushing)
        pushing.start_soon(run_checkpointer, services, stop_pushing)
        sealing = trio.CancelScope()  # stopped with the server; the next start resumes it
        pushing.start_soon(seal_legacy_data, services, sealing)
        exporting = trio.CancelScope()  # stopped with the server: a job in hand is given back
        pushing.start_soon(run_export_workers, services, exporting)
        async with trio.open_nursery() as bus:
            if node.bus is not None:
                join(services.hub, services.keyring, node.bus)
                standing = None
                if node.feed is not None:  # a gateway: connections to keep honest
                    standing = StandingWatch(services.devices, services.policies, services.hub)
                    interval = services.settings.standing_check_interval_s
                    bus.start_soon(standing.run, interval)
                await bus.start(run_node, node.bus, services.hub, node.feed, standing)
            if node.feed is not None:
                bus.start_soon(node.feed.poll, services.settings.bus_poll_interval_s)
            await _serve_all(node, tls, shutdown, database, task_status)
            bus.cancel_scope.cancel()
        # The batch in flight is sent and recorded, and the audit log's last entries are
        # signed, first.
        stop_pushing.set()
        sealing.cancel()
        exporting.cancel()


async def supervise_embedded(
    embedded: EmbeddedPostgres, interval_s: float = SUPERVISE_INTERVAL_S
) -> None:
    """Start the embedded PostgreSQL again whenever it stops on its own, until cancelled.

    Meanwhile database calls fail as unavailable (503, `unavailable`); the pool reconnects
    once it is back. A failed restart is retried with a growing pause.
    """
    while True:
        await trio.sleep(interval_s)
        status = embedded.exit_status()
        if status is None:
            continue
        logger.error(
            "embedded PostgreSQL stopped unexpectedly (%s); restarting it", describe_exit(status)
        )
        pause_s = interval_s
        while True:
            try:
                await trio.to_thread.run_sync(embedded.restart)
            except (EmbeddedPostgresError, OSError) as exc:
                logger.error(
                    "embedded PostgreSQL did not restart; next try in %.0f s: %s", pause_s, exc
                )
                await trio.sleep(pause_s)
                pause_s = min(pause_s * 2, RESTART_BACKOFF_MAX_S)
            except Exception:  # a bug in the restart: the supervisor keeps trying all the same
                logger.exception("embedded PostgreSQL did not restart; next try in %.0f s", pause_s)
                await trio.sleep(pause_s)
                pause_s = min(pause_s * 2, RESTART_BACKOFF_MAX_S)
            else:
                logger.warning("embedded PostgreSQL restarted (pid %s)", embedded.pid)
                break


_BIND_ERRNOS = {errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL}


def _bind_error(exc: BaseException) -> OSError | None:
    """The failure to bind an address inside `exc` (itself or in exception groups)."""
    if isinstance(exc, OSError) and exc.errno in _BIND_ERRNOS:
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            found = _bind_error(sub)
            if found is not None:
                return found
    return None


@contextmanager
def listening(what: str, host: str, port: int, option: str) -> Iterator[None]:
    """Turn a failure to bind `host:port` inside the block into one ListenError saying
    which port, for what, and which option chooses another."""
    try:
        yield
    except BaseException as exc:
        error = _bind_error(exc)
        if error is None:
            raise
        if error.errno == errno.EADDRINUSE:
            problem = f"port {port} on {host} ({what}) is already in use"
            advice = f"stop the program using it, or choose another port with {option}"
        elif error.errno == errno.EACCES:
            problem = f"not allowed to listen on port {port} on {host} ({what})"
            advice = f"ports below 1024 need privileges; choose another port with {option}"
        else:
            problem = f"cannot listen on {host} ({what}): not an address of this machine"
            advice = "choose another address with --host"
        raise ListenError(f"{problem}: {advice}") from None


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or "" (every address)


class ApiConfig(HypercornConfig):
    """hypercorn's configuration serving TLS with our live context.

    hypercorn asks `ssl_enabled` whether its sockets are secure and calls
    `create_ssl_context()` once when it starts serving; returning the live context (not a
    copy built from file names) is what lets a SIGHUP reload reach new connections.
    """

    def __init__(self, tls_context: ssl.SSLContext | None) -> None:
        super().__init__()
        self.tls_context = tls_context

    @property
    def ssl_enabled(self) -> bool:
        return self.tls_context is not None

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self.tls_context


async def reload_on_sighup(
    tls: ServerTls, shutdown: trio.Event, *, task_status: trio.TaskStatus[None]
) -> None:
    """Re-read the certificate and key on every SIGHUP until `shutdown` (a failed reload
    is logged and the previous certificate stays)."""
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def stop() -> None:
                await shutdown.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop)
            task_status.started()
            async for _ in signals:
                logger.info("SIGHUP received: reloading the TLS certificate and key")
                tls.reload()


async def _serve_all(
    node: Node,
    tls: ServerTls | None,
    shutdown: trio.Event,
    database: str,
    task_status: trio.TaskStatus[Running],
) -> None:
    services = node.services
    settings = services.settings
    sockets = node.sockets
    async with trio.open_nursery() as nursery:
        api_url = gateway_url = None
        if tls is not None:
            await nursery.start(reload_on_sighup, tls, shutdown)
        if settings.serve_api:
            config = ApiConfig(None if tls is None else tls.api)
            config.ssl_handshake_timeout = settings.handshake_timeout_s
            config.bind = [f"{settings.host}:{settings.port}"]
            if sockets is not None and sockets.api_fd is not None:
                config.bind = [f"fd://{sockets.api_fd}"]
            config.graceful_timeout = settings.shutdown_timeout_s
            config.accesslog = None
            config.errorlog = logging.getLogger("hypercorn.error")  # through our handler only
            with listening("HTTP API", settings.host, settings.port, "--port"):
                binds = await nursery.start(
                    partial(
                        hypercorn_serve,
                        create_app(services),
                        config,
                        shutdown_trigger=shutdown.wait,
                    )
                )
            api_url = binds[0]
        if settings.serve_gateway:
            port = await nursery.start(_run_gateway, node, tls, shutdown)
            scheme = "ws" if tls is None else "wss"
            gateway_url = f"{scheme}://{settings.host}:{port}{GATEWAY_PATH}"
        if settings.gc_tuning:
            gc.freeze()  # what start-up built lives forever: keep it out of every collection
            gc.set_threshold(settings.gc_gen0_threshold, 20, 20)
        running = Running(
            api_url=api_url,
            gateway_url=gateway_url,
            server_key=public_key_b64(services.identity),
            database=database,
            tls=None if tls is None else tls.info.describe(),
            services=services,
        )
        logger.info(
            "obrol API %s, gateway %s (%s); database: %s; server key %s (fingerprint %s)",
            api_url,
            gateway_url,
            "no TLS" if tls is None else f"TLS certificate {tls.info.describe()}",
            database,
            running.server_key,
            fingerprint(services.identity),
        )
        task_status.started(running)


async def _run_gateway(
    node: Node,
    tls: ServerTls | None,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[int],
) -> None:
    """The hub's gateway, its committer and cursor saver, until `shutdown`."""
    services = node.services
    settings = services.settings
    assert node.feed is not None
    committer = Committer(
        services.messages,
        services.hub,
        node.feed,
        bus=node.bus,
        max_batch=settings.commit_batch_max,
    )
    cursors = CursorSaver(services.messages, services.receipts, services.devices)
    context = GatewayContext(services, services.hub, committer, cursors, settings.catch_up_page)
    gateway = Gateway(
        context,
        GatewaySettings(
            handshake_timeout_s=settings.handshake_timeout_s,
            idle_timeout_s=settings.idle_timeout_s,
            max_outbound_bytes=settings.max_outbound_bytes,
            resync_timeout_s=settings.resync_timeout_s,
            close_grace_s=settings.close_grace_s,
            frame_limits=FrameLimits(settings.gateway_frames_per_s, settings.gateway_frame_burst),
            tls=None if tls is None else tls.gateway,
        ),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(committer.run)
        nursery.start_soon(cursors.run)
        nursery.start_soon(run_sweeper, services)
        port = settings.effective_gateway_port
        with listening("WebSocket gateway", settings.host, port, "--gateway-port"):
            fd = None if node.sockets is None else node.sockets.gateway_fd
            port = await nursery.start(partial(gateway.serve, settings.host, port, fd=fd))
        task_status.started(port)
        await shutdown.wait()
        services.hub.close_all(CloseCode.GOING_AWAY, ErrorCode.SHUTTING_DOWN, "server restarting")
        await trio.sleep(0.5)  # let the closing batches go out
        nursery.cancel_scope.cancel()
