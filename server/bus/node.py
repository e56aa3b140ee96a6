"""Joining the bus: the process's hub, keyring and stream feed wired to it."""

from __future__ import annotations

import contextlib
import logging

import trio

from server.bus.base import Bus
from server.bus.events import Announcement
from server.gateway.hub import Hub
from server.gateway.standing import StandingWatch
from server.gateway.stream import StreamFeed
from server.settings import Settings
from storage.bridge import AsyncioBridge
from storage.database import Database
from storage.errors import DatabaseUnavailableError
from storage.keyring import Keyring

logger = logging.getLogger(__name__)


def open_bus(settings: Settings, bridge: AsyncioBridge, db: Database, url: str) -> Bus | None:
    """The bus `settings.bus` names (not yet running), or None for a lone process."""
    if settings.bus == "none":
        return None
    if settings.bus == "postgres":
        from server.bus.postgres import PostgresBus  # noqa: PLC0415 - one of the transports

        return PostgresBus(bridge, db, url)
    from server.bus.nats import NatsBus  # noqa: PLC0415 - nats-py only when asked for

    return NatsBus(bridge, settings.bus)


def join(hub: Hub, keyring: Keyring, bus: Bus) -> None:
    """What the hub and the keyring do reaches the other processes, and theirs reaches us."""
    hub.bus = bus
    keyring.on_forget = hub.forget_key
    hub.key_forgetters.append(lambda account: keyring.forget(account, shared=False))


async def run_node(
    bus: Bus,
    hub: Hub,
    feed: StreamFeed | None,
    standing: StandingWatch | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the bus until cancelled: announcements move the feed (stored messages read from
    the store), events act on the hub. `feed` None: this process has no gateway. Each time
    the bus connects, what it may have missed meanwhile is caught up: the stream from the
    store, standing changes through `standing`."""

    async def receive(announcement: Announcement) -> None:
        if announcement.pos and feed is not None:
            await feed.reached(announcement.pos)
        for event in announcement.events:
            try:
                hub.apply(event)
            except Exception:  # a bug: the next events still count
                logger.exception("applying a bus event failed")

    async def connected() -> None:
        if feed is not None:
            await feed.reached(None)  # whatever was announced while we were not listening
        if standing is not None:
            with contextlib.suppress(DatabaseUnavailableError):  # its timer tries again
                await standing.check()  # revocations and the like we were not told of

    logger.info("bus: %s", bus.describe())
    await bus.run(receive, connected, task_status=task_status)
