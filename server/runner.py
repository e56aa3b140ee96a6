"""Running the service: database (embedded or by URL), bridge, identity, HTTP API.

`serve()` owns every resource it starts and releases them in reverse order on the way out,
whether it stops because `shutdown` was set, it was cancelled, or something failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from urllib.parse import urlsplit

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from server.app import create_app
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

    api_url: str
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
            await _serve_http(services, shutdown, database, task_status)
        finally:
            await db.close()
    finally:
        bridge.stop()
        if embedded is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(embedded.stop)
        logger.info("obrol stopped")


async def _serve_http(
    services: Services,
    shutdown: trio.Event,
    database: str,
    task_status: trio.TaskStatus[Running],
) -> None:
    settings = services.settings
    config = HypercornConfig()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.graceful_timeout = settings.shutdown_timeout_s
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through our handler only
    app = create_app(services)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(hypercorn_serve, app, config, shutdown_trigger=shutdown.wait)
        )
        running = Running(
            api_url=binds[0], server_key=public_key_b64(services.identity), database=database
        )
        logger.info(
            "obrol API on %s; database: %s; server key %s (fingerprint %s)",
            running.api_url,
            database,
            running.server_key,
            fingerprint(services.identity),
        )
        task_status.started(running)
