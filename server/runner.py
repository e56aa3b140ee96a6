"""Running the service: database (embedded or by URL), bridge, identity, HTTP API.

`serve()` owns every resource it starts and releases them in reverse order on the way out,
whether it stops because `shutdown` was set, it was cancelled, or something failed.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from urllib.parse import urlsplit

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from protocol import GATEWAY_PATH, CloseCode, ErrorCode
from server.app import create_app
from server.gateway.committer import Committer
from server.gateway.cursors import CursorSaver
from server.gateway.listener import Gateway, GatewaySettings
from server.gateway.session import GatewayContext
from server.identity import fingerprint, load_or_create_identity, public_key_b64
from server.passwords import PasswordHasher
from server.services import Services, utc_now
from server.settings import Settings
from storage.bridge import AsyncioBridge
from storage.database import Database
from storage.embedded import EmbeddedPostgres, create_private_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Running:
    """What a started server tells its caller."""

    api_url: str | None
    gateway_url: str | None
    server_key: str
    database: str


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
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown` is set; report the bound address through `task_status`.

    `clock` is the wall clock token expiry and login records use (tests move it).
    """
    create_private_dir(settings.data_dir)
    identity = load_or_create_identity(settings.data_dir)
    embedded: EmbeddedPostgres | None = None
    if settings.database_url is not None:
        url = settings.database_url.get_secret_value()
        database = describe_url(url)
    else:
        embedded = EmbeddedPostgres(
            settings.data_dir / "postgres",
            bin_dir=settings.postgres_bin_dir,
            os_user=settings.postgres_os_user,
        )
        url = await trio.to_thread.run_sync(embedded.start)
        database = f"embedded PostgreSQL in {embedded.cluster_dir}"
    bridge = AsyncioBridge()
    bridge.start()
    try:
        db = await Database.connect(bridge, url, pool_size=settings.db_pool_size)
        try:
            services = Services(
                settings, db, identity, PasswordHasher(settings.password_hash_strength), clock
            )
            await _serve_all(services, shutdown, database, task_status)
        finally:
            await db.close()
    finally:
        bridge.stop()
        if embedded is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(embedded.stop)
        logger.info("obrol stopped")


async def _serve_all(
    services: Services,
    shutdown: trio.Event,
    database: str,
    task_status: trio.TaskStatus[Running],
) -> None:
    settings = services.settings
    async with trio.open_nursery() as nursery:
        api_url = gateway_url = None
        if settings.serve_api:
            config = HypercornConfig()
            config.bind = [f"{settings.host}:{settings.port}"]
            config.graceful_timeout = settings.shutdown_timeout_s
            config.accesslog = None
            config.errorlog = logging.getLogger("hypercorn.error")  # through our handler only
            binds = await nursery.start(
                partial(
                    hypercorn_serve, create_app(services), config, shutdown_trigger=shutdown.wait
                )
            )
            api_url = binds[0]
        if settings.serve_gateway:
            port = await nursery.start(_run_gateway, services, shutdown)
            gateway_url = f"ws://{settings.host}:{port}{GATEWAY_PATH}"
        if settings.gc_tuning:
            gc.freeze()  # what start-up built lives forever: keep it out of every collection
            gc.set_threshold(settings.gc_gen0_threshold, 20, 20)
        running = Running(
            api_url=api_url,
            gateway_url=gateway_url,
            server_key=public_key_b64(services.identity),
            database=database,
        )
        logger.info(
            "obrol API %s, gateway %s; database: %s; server key %s (fingerprint %s)",
            api_url,
            gateway_url,
            database,
            running.server_key,
            fingerprint(services.identity),
        )
        task_status.started(running)


async def _run_gateway(
    services: Services, shutdown: trio.Event, *, task_status: trio.TaskStatus[int]
) -> None:
    """The hub's gateway, its committer and cursor saver, until `shutdown`."""
    settings = services.settings
    committer = Committer(services.messages, services.hub, max_batch=settings.commit_batch_max)
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
        ),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(committer.run)
        nursery.start_soon(cursors.run)
        port = await nursery.start(gateway.serve, settings.host, settings.effective_gateway_port)
        task_status.started(port)
        await shutdown.wait()
        services.hub.close_all(CloseCode.GOING_AWAY, ErrorCode.SHUTTING_DOWN, "server restarting")
        await trio.sleep(0.5)  # let the closing batches go out
        nursery.cancel_scope.cancel()
