"""The database handle trio code holds: an asyncpg pool behind the asyncio bridge.

`await db.transaction(fn, *args)` runs the coroutine `fn(conn, *args)` inside one
transaction, as one bridge hop. Repositories (one module per domain) keep their SQL in such
coroutines and expose trio methods; nothing above `storage/` sees asyncpg or asyncio.

An outage of any kind reaches callers as DatabaseUnavailableError (`storage.faults` decides
what counts as one). The pool heals by itself: a connection found closed is reopened on its
next use, so calls succeed again as soon as the database is back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import asyncpg
import trio

from storage.bridge import AsyncioBridge
from storage.errors import ConflictError, DatabaseUnavailableError, NotFoundError
from storage.faults import as_unavailable, needs_new_connections
from storage.metrics import CALL_SECONDS, POOL_WAIT_SECONDS
from storage.migrations import apply_migrations

T = TypeVar("T")

logger = logging.getLogger(__name__)

# Every wait on the database is bounded; running out of one is an outage
# (DatabaseUnavailableError), never a hang.
CONNECT_TIMEOUT_S = 10.0  # opening one connection
COMMAND_TIMEOUT_S = 60.0  # one statement
ACQUIRE_TIMEOUT_S = 10.0  # waiting for a free pooled connection
CLOSE_TIMEOUT_S = 10.0  # waiting for connections in use at shutdown
PING_TIMEOUT_S = 2.0  # each step of a health check

# Constraint names (see migrations) -> the field a client should fix.
CONSTRAINT_FIELDS = {
    "accounts_work_email_unique": "work_email",
    "accounts_account_name_unique": "account_name",
    "accounts_department_fk": "department_id",
    "accounts_admin_department_fk": "admin_department_id",
    "departments_name_unique": "name",
    "departments_parent_fk": "parent_id",
    "devices_public_key_unique": "public_key",
    "attendance_sites_name_unique": "name",
    "attendance_sites_department_fk": "department_id",
}


async def _keep_session(conn: Any) -> None:
    """Pool release without asyncpg's reset query (one round trip per operation saved).

    asyncpg still rolls back a transaction left open. Nothing here keeps session state:
    advisory locks are transaction-level, and there are no LISTENs, SETs or open cursors.
    """


def _writable_server(url: str) -> dict[str, str]:
    """Connect only to a server that takes writes, unless the URL (or PGTARGETSESSIONATTRS)
    says otherwise: after a failover, a URL naming several hosts finds the new primary."""
    if "target_session_attrs" in parse_qs(urlsplit(url).query):
        return {}
    if os.environ.get("PGTARGETSESSIONATTRS"):
        return {}
    return {"target_session_attrs": "read-write"}


def _closed(conn: Any) -> bool:
    """True if the pooled connection `conn` (still acquired) is closed."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True  # the pool detached it from the proxy, which it does once it closed


class Database:
    """A connection pool; every call is one bridge hop (a transaction, or a single read)."""

    def __init__(
        self,
        bridge: AsyncioBridge,
        pool: Any,
        pool_size: int,
        *,
        acquire_timeout_s: float = ACQUIRE_TIMEOUT_S,
    ) -> None:
        """Wrap an asyncpg pool of `pool_size` connections created on `bridge`'s loop."""
        self._bridge = bridge
        self._pool = pool
        self._limiter = trio.CapacityLimiter(pool_size)
        self._acquire_timeout_s = acquire_timeout_s
        self.pool_size = pool_size
        self._url: str | None = None  # for connections outside the pool (`hold_lock`)

    @classmethod
    async def connect(cls, bridge: AsyncioBridge, url: str, *, pool_size: int) -> Database:
        """Open the pool and apply pending migrations. Raises DatabaseUnavailableError."""

        async def open_pool() -> Any:
            pool = await asyncpg.create_pool(
                url,
                min_size=min(2, pool_size),
                max_size=pool_size,
                timeout=CONNECT_TIMEOUT_S,
                command_timeout=COMMAND_TIMEOUT_S,
                reset=_keep_session,
                **_writable_server(url),
            )
            try:
                async with pool.acquire() as conn:
                    await apply_migrations(conn)
            except BaseException:
                pool.terminate()
                raise
            return pool

        try:
            pool = await bridge.run(open_pool)
        except (
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.exceptions.InternalClientError,  # e.g. no host takes writes
        ) as exc:
            raise DatabaseUnavailableError(f"cannot open the database: {exc}") from exc
        db = cls(bridge, pool, pool_size)
        db._url = url
        return db

    async def close(self) -> None:
        """Close the pool: wait up to CLOSE_TIMEOUT_S for connections in use to be
        released, then drop what is left. Never raises (the database may be gone)."""

        async def close_pool() -> None:
            try:
                await asyncio.wait_for(self._pool.close(), CLOSE_TIMEOUT_S)
            except Exception as exc:
                logger.warning("database pool not closed cleanly (%s); dropping it", exc)
                self._pool.terminate()

        with trio.move_on_after(CLOSE_TIMEOUT_S + 5) as scope:
            scope.shield = True
            await self._bridge.run(close_pool)

    async def transaction(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(conn, *args)` in one transaction; storage errors for broken rules.

        Raises ConflictError (unique rule), NotFoundError (a referenced row is missing),
        DatabaseUnavailableError (any outage: see storage.faults; the transaction may or may
        not have committed if the connection was lost during COMMIT), or what `fn` raises.
        """

        async def run() -> T:
            async with self._pool.acquire() as conn:
                try:
                    async with conn.transaction():
                        return await fn(conn, *args)
                except Exception as exc:
                    await self._after_failure(conn, exc)
                    raise

        return await self._call(run)

    async def read(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(conn, *args)`, which must issue exactly one statement, outside an explicit
        transaction: one round trip to the database instead of three (BEGIN, it, COMMIT).
        The statement is still atomic; use `transaction` for anything that reads twice -
        unless each statement may see a newer snapshot than the one before without harm
        (the stream's settled positions: storage/stream_read.py), as in any transaction at
        our isolation level, READ COMMITTED: then a transaction only adds two round trips.
        (A read may add the lookup of data keys the keyring's cache lacks, which needs no
        snapshot shared with the statement: `storage.keyring`.)"""

        async def run() -> T:
            async with self._pool.acquire() as conn:
                try:
                    return await fn(conn, *args)
                except Exception as exc:
                    await self._after_failure(conn, exc)
                    raise

        return await self._call(run)

    async def _after_failure(self, conn: Any, exc: Exception) -> None:
        """On the loop, after work on `conn` failed with `exc`: open new connections after a
        failover, and report a connection that is closed now as lost (whatever was raised:
        often asyncpg's "connection is closed" from the rollback). Raises
        DatabaseUnavailableError in that case."""
        if needs_new_connections(exc):
            await self._pool.expire_connections()
        if _closed(conn):
            lost = as_unavailable(exc, connection_closed=True)
            if lost is not None and lost is not exc:
                raise lost from exc

    async def _call(
        self, run: Callable[[], Coroutine[Any, Any, T]], *, wait_s: float | None = None
    ) -> T:
        """Run `run` on the loop holding a pool slot (waiting at most `wait_s`, by default
        the acquire timeout); every outage becomes DatabaseUnavailableError (storage.faults
        decides what is one)."""
        wait_s = self._acquire_timeout_s if wait_s is None else wait_s
        acquired = False
        started = time.perf_counter()
        with trio.move_on_after(wait_s):
            await self._limiter.acquire()
            acquired = True
        if not acquired:
            raise DatabaseUnavailableError(f"no database connection came free within {wait_s:g} s")
        running = time.perf_counter()
        POOL_WAIT_SECONDS.observe(running - started)
        try:
            return await self._bridge.run(run)
        except DatabaseUnavailableError:
            raise
        except asyncpg.UniqueViolationError as exc:
            field = CONSTRAINT_FIELDS.get(exc.constraint_name or "")
            raise ConflictError(f"{field or 'value'} is already taken", field=field) from exc
        except asyncpg.ForeignKeyViolationError as exc:
            field = CONSTRAINT_FIELDS.get(exc.constraint_name or "")
            raise NotFoundError(f"unknown {field or 'reference'}") from exc
        except Exception as exc:
            unavailable = as_unavailable(exc)
            if unavailable is None:
                raise
            raise unavailable from exc
        finally:
            CALL_SECONDS.observe(time.perf_counter() - running)
            self._limiter.release()

    async def hold_lock(self, key: int, *, shared: bool) -> HeldLock | None:
        """Take the session-level advisory lock `key` (shared or exclusive) on a connection
        of its own, outside the pool, and keep it until `HeldLock.release()`. None if another
        session holds it in a conflicting mode. The lock goes with its connection: should the
        database restart, it is gone. Raises DatabaseUnavailableError."""
        if self._url is None:
            raise RuntimeError("hold_lock needs a Database made by Database.connect")
        url = self._url
        take = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"

        async def open_and_lock() -> Any:
            conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S, **_writable_server(url))
            try:
                if await conn.fetchval(f"SELECT {take}($1)", key):
                    return conn
            except BaseException:
                conn.terminate()
                raise
            await conn.close()
            return None

        try:
            conn = await self._bridge.run(open_and_lock)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailableError(f"cannot take a database lock: {exc}") from exc
        return None if conn is None else HeldLock(self._bridge, conn)

    async def ping(self, timeout_s: float = PING_TIMEOUT_S) -> None:
        """Check that the database answers; raises DatabaseUnavailableError if not.

        Returns or raises within about three times `timeout_s` whatever the database does:
        waiting for a pool slot, connecting plus the query, and the clean-up after a timeout
        (asyncpg cancels the query and waits for that) are each bounded by it.
        """

        async def select_one() -> None:
            async with asyncio.timeout(timeout_s), self._pool.acquire(timeout=timeout_s) as conn:
                await conn.fetchval("SELECT 1")

        await self._call(select_one, wait_s=timeout_s)


class HeldLock:
    """A session-level advisory lock held on a connection of its own (`Database.hold_lock`)."""

    def __init__(self, bridge: AsyncioBridge, conn: Any) -> None:
        self._bridge = bridge
        self._conn = conn

    async def release(self) -> None:
        """Close the connection (which releases the lock). Never raises."""

        async def close() -> None:
            try:
                await asyncio.wait_for(self._conn.close(), CLOSE_TIMEOUT_S)
            except Exception:
                self._conn.terminate()

        with trio.CancelScope(shield=True):
            try:
                await self._bridge.run(close)
            except Exception as exc:  # the bridge is gone: so is the connection
                logger.debug("lock connection not closed cleanly: %s", exc)
