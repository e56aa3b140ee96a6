"""Every kind of database outage reaches callers as DatabaseUnavailableError, and the pool
heals by itself once the database is back."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest
import trio

from storage.bridge import AsyncioBridge, BridgeClosedError
from storage.database import Database
from storage.errors import ConflictError, DatabaseUnavailableError
from storage.faults import as_unavailable, is_unavailable, needs_new_connections
from tests.stoppable import stoppable_postgres

OUTAGES = [
    ConnectionRefusedError(111, "Connection refused"),
    FileNotFoundError(2, "No such file or directory"),  # the Unix socket is gone
    ConnectionResetError(104, "Connection reset by peer"),
    TimeoutError(),  # connect timeout, command_timeout (asyncio.TimeoutError)
    asyncpg.CannotConnectNowError("the database system is starting up"),
    asyncpg.CannotConnectNowError("the database system is shutting down"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.CrashShutdownError("terminating connection because of crash of another process"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.ConnectionFailureError("connection failure"),
    asyncpg.ClientCannotConnectError("cannot connect"),
    asyncpg.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.DiskFullError("could not extend file"),
    asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),
    asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
    asyncpg.IdleSessionTimeoutError("terminating connection due to idle-session timeout"),
    asyncpg.DeadlockDetectedError("deadlock detected"),
    asyncpg.SerializationError("could not serialize access"),
    asyncpg.exceptions.TargetServerAttributeNotMatched("not a primary"),
    BridgeClosedError("the asyncio bridge stopped during the call"),
]

NOT_OUTAGES = [
    asyncpg.UniqueViolationError("duplicate key value"),
    asyncpg.ForeignKeyViolationError("violates foreign key constraint"),
    asyncpg.UndefinedColumnError("column does not exist"),
    asyncpg.InvalidPasswordError("password authentication failed"),
    asyncpg.DataError("invalid input for query argument $1"),
    asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
    ValueError("a bug"),
]


@pytest.mark.parametrize("exc", OUTAGES, ids=lambda e: type(e).__name__)
def test_outages_are_recognised(exc: Exception) -> None:
    assert is_unavailable(exc)
    mapped = as_unavailable(exc)
    assert isinstance(mapped, DatabaseUnavailableError)
    assert "unavailable" in str(mapped)


@pytest.mark.parametrize("exc", NOT_OUTAGES, ids=lambda e: type(e).__name__)
def test_refused_work_and_bugs_are_not_outages(exc: Exception) -> None:
    assert not is_unavailable(exc)
    assert as_unavailable(exc) is None


def test_any_error_on_a_connection_that_closed_is_an_outage() -> None:
    # The rollback after a lost connection raises this, hiding what closed it.
    closed = asyncpg.InterfaceError("cannot call Transaction.__aexit__(): connection is closed")
    assert as_unavailable(closed) is None
    assert isinstance(as_unavailable(closed, connection_closed=True), DatabaseUnavailableError)


def test_only_a_read_only_server_needs_new_connections() -> None:
    assert needs_new_connections(asyncpg.ReadOnlySQLTransactionError("read-only"))
    assert not needs_new_connections(asyncpg.CannotConnectNowError("starting up"))


@pytest.fixture
def bridge() -> Iterator[AsyncioBridge]:
    b = AsyncioBridge()
    b.start()
    yield b
    b.stop()


@pytest.fixture
async def db(bridge: AsyncioBridge, database_url: str) -> AsyncIterator[Database]:
    database = await Database.connect(bridge, database_url, pool_size=1)
    yield database
    await database.close()


async def backend_pid(conn: Any) -> int:
    return int(await conn.fetchval("SELECT pg_backend_pid()"))


async def test_connection_lost_mid_transaction(db: Database) -> None:
    async def killed(conn: Any) -> None:
        await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    with pytest.raises(DatabaseUnavailableError):
        await db.transaction(killed)
    with pytest.raises(DatabaseUnavailableError):
        await db.read(killed)
    await db.ping()  # the pool opened a new connection by itself
    assert await db.read(backend_pid) > 0


async def test_a_read_only_server_is_an_outage_and_its_connections_are_replaced(
    db: Database,
) -> None:
    async def write_on_a_standby(conn: Any) -> None:
        await conn.execute("SET TRANSACTION READ ONLY")
        await conn.execute("INSERT INTO schema_version (version, name) VALUES (-1, 'x')")

    before = await db.read(backend_pid)
    with pytest.raises(DatabaseUnavailableError):
        await db.transaction(write_on_a_standby)
    assert await db.read(backend_pid) != before


async def test_rules_broken_are_still_their_own_errors(db: Database) -> None:
    async def duplicate(conn: Any) -> None:
        await conn.execute(
            "CREATE TEMP TABLE t (x int CONSTRAINT devices_public_key_unique UNIQUE)"
        )
        await conn.execute("INSERT INTO t VALUES (1), (1)")

    async def bad_sql(conn: Any) -> None:
        await conn.execute("SELECT no_such_column FROM schema_version")

    with pytest.raises(ConflictError):
        await db.transaction(duplicate)
    with pytest.raises(asyncpg.UndefinedColumnError):
        await db.transaction(bad_sql)


async def sleep_in_database(conn: Any, seconds: float) -> None:
    await conn.execute(f"SELECT pg_sleep({seconds})")


async def small_pool(bridge: AsyncioBridge, url: str, **options: Any) -> Any:
    async def open_pool() -> Any:
        return await asyncpg.create_pool(url, min_size=1, max_size=1, **options)

    return await bridge.run(open_pool)


async def test_a_statement_timeout_is_an_outage(bridge: AsyncioBridge, database_url: str) -> None:
    db = Database(bridge, await small_pool(bridge, database_url, command_timeout=0.2), 1)
    try:
        with trio.fail_after(5):
            with pytest.raises(DatabaseUnavailableError):
                await db.read(sleep_in_database, 3)
            await db.ping()
    finally:
        await db.close()


async def test_waiting_too_long_for_a_connection_is_an_outage(
    bridge: AsyncioBridge, database_url: str
) -> None:
    db = Database(bridge, await small_pool(bridge, database_url), 1, acquire_timeout_s=0.05)
    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(db.read, sleep_in_database, 0.5)
                await trio.sleep(0.1)
                # The only connection stays busy for longer than a caller may wait for it.
                with pytest.raises(DatabaseUnavailableError, match="came free"):
                    await db.read(sleep_in_database, 0)
    finally:
        await db.close()


async def test_too_many_connections_is_an_outage(bridge: AsyncioBridge, database_url: str) -> None:
    role = f"obrol_limited_{os.getpid()}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        await bridge.run(admin, f"CREATE ROLE {role} LOGIN PASSWORD 'limited' CONNECTION LIMIT 1")
    except asyncpg.InsufficientPrivilegeError:
        pytest.skip("the test database's role may not create roles")
    parts = urlsplit(database_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    url = urlunsplit(parts._replace(netloc=f"{role}:{quote('limited')}@{host}"))

    async def open_pool() -> Any:
        return await asyncpg.create_pool(url, min_size=0, max_size=2)

    db = Database(bridge, await bridge.run(open_pool), 2)
    try:
        with trio.fail_after(10):
            await db.ping()  # the role's one connection, kept by the pool
            async with trio.open_nursery() as nursery:
                nursery.start_soon(db.read, sleep_in_database, 1)
                await trio.sleep(0.2)
                # A second connection is refused: "too many connections for role".
                with pytest.raises(DatabaseUnavailableError, match="too many connections"):
                    await db.read(sleep_in_database, 0)
    finally:
        await db.close()
        await bridge.run(admin, f"DROP ROLE {role}")


async def test_the_pool_survives_the_database_stopping_and_starting(
    bridge: AsyncioBridge,
) -> None:
    async with stoppable_postgres(durable=False) as pg:
        db = await Database.connect(bridge, pg.url, pool_size=3)
        try:
            await db.ping()
            await pg.stop_immediately_async()

            async def now(conn: Any) -> object:
                return await conn.fetchval("SELECT now()")

            with trio.fail_after(10):  # each refusal is quick: nothing waits for a timeout
                for call in (db.ping, partial(db.read, now), partial(db.transaction, now)):
                    with pytest.raises(DatabaseUnavailableError):
                        await call()
            await pg.start_async()
            with trio.fail_after(10):
                await db.ping()
                assert await db.transaction(now)
                assert await db.read(now)
        finally:
            await db.close()
