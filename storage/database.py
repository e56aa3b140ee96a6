"""The database handle trio code holds: an asyncpg pool behind the asyncio bridge.

`await db.transaction(fn, *args)` runs the coroutine `fn(conn, *args)` inside one
transaction, as one bridge hop. Repositories (one module per domain) keep their SQL in such
coroutines and expose trio methods; nothing above `storage/` sees asyncpg or asyncio.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import asyncpg
import trio

from storage.bridge import AsyncioBridge
from storage.errors import ConflictError, DatabaseUnavailableError, NotFoundError
from storage.migrations import apply_migrations

T = TypeVar("T")

# Constraint names (see migrations) -> the field a client should fix.
CONSTRAINT_FIELDS = {
    "accounts_work_email_unique": "work_email",
    "accounts_account_name_unique": "account_name",
    "accounts_department_fk": "department_id",
    "accounts_admin_department_fk": "admin_department_id",
    "departments_name_unique": "name",
    "departments_parent_fk": "parent_id",
    "devices_public_key_unique": "public_key",
}


async def _keep_session(conn: Any) -> None:
    """Pool release without asyncpg's reset query (one round trip per operation saved).

    asyncpg still rolls back a transaction left open. Nothing here keeps session state:
    advisory locks are transaction-level, and there are no LISTENs, SETs or open cursors.
    """


class Database:
    """A connection pool; every call is one bridge hop (a transaction, or a single read)."""

    def __init__(self, bridge: AsyncioBridge, pool: Any, pool_size: int) -> None:
        self._bridge = bridge
        self._pool = pool
        self._limiter = trio.CapacityLimiter(pool_size)
        self.pool_size = pool_size

    @classmethod
    async def connect(cls, bridge: AsyncioBridge, url: str, *, pool_size: int) -> Database:
        """Open the pool and apply pending migrations. Raises DatabaseUnavailableError."""

        async def open_pool() -> Any:
            pool = await asyncpg.create_pool(
                url,
                min_size=min(2, pool_size),
                max_size=pool_size,
                command_timeout=60,
                reset=_keep_session,
            )
            async with pool.acquire() as conn:
                await apply_migrations(conn)
            return pool

        try:
            pool = await bridge.run(open_pool)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailableError(f"cannot open the database: {exc}") from exc
        return cls(bridge, pool, pool_size)

    async def close(self) -> None:
        """Close the pool, waiting for connections in use to be released."""
        with trio.move_on_after(10) as scope:
            scope.shield = True
            await self._bridge.run(self._pool.close)

    async def transaction(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(conn, *args)` in one transaction; storage errors for broken rules.

        Raises ConflictError (unique rule), NotFoundError (a referenced row is missing),
        DatabaseUnavailableError (the database is unreachable), or what `fn` raises.
        """

        async def run() -> T:
            async with self._pool.acquire() as conn, conn.transaction():
                return await fn(conn, *args)

        return await self._call(run)

    async def read(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(conn, *args)`, which must issue exactly one statement, outside an explicit
        transaction: one round trip to the database instead of three (BEGIN, it, COMMIT).
        The statement is still atomic; use `transaction` for anything that reads twice."""

        async def run() -> T:
            async with self._pool.acquire() as conn:
                return await fn(conn, *args)

        return await self._call(run)

    async def _call(self, run: Callable[[], Coroutine[Any, Any, T]]) -> T:
        async with self._limiter:
            try:
                return await self._bridge.run(run)
            except asyncpg.UniqueViolationError as exc:
                field = CONSTRAINT_FIELDS.get(exc.constraint_name or "")
                raise ConflictError(f"{field or 'value'} is already taken", field=field) from exc
            except asyncpg.ForeignKeyViolationError as exc:
                field = CONSTRAINT_FIELDS.get(exc.constraint_name or "")
                raise NotFoundError(f"unknown {field or 'reference'}") from exc
            except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError) as exc:
                raise DatabaseUnavailableError(str(exc)) from exc

    async def ping(self) -> None:
        """Check the database answers; raises DatabaseUnavailableError if not."""

        async def select_one(conn: Any) -> None:
            await conn.fetchval("SELECT 1")

        await self.read(select_one)
