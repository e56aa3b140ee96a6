"""Shared fixtures: one throwaway PostgreSQL per test session, one database per test.

Without OBROL_TEST_DATABASE_URL the session starts an embedded cluster (the same code
`obrol serve` uses) in a temporary folder; with it, that server is used (the role needs
CREATEDB). Each test gets a fresh database cloned from a migrated template, so tests are
isolated and start in milliseconds.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import trio

from storage.embedded import EmbeddedPostgres
from storage.migrations import apply_migrations
from tests.harness import Harness, start_harness

TEMPLATE = "obrol_test_template"
_counter = itertools.count()


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


class TestCluster:
    def __init__(self, admin_url: str, postgres: EmbeddedPostgres | None = None) -> None:
        self.admin_url = admin_url
        self.postgres = postgres  # None: a server given by OBROL_TEST_DATABASE_URL
        self.prefix = f"obrol_test_{os.getpid()}_"

    async def _admin(self, *statements: str) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    def prepare_template(self) -> None:
        async def prepare() -> None:
            await self._admin(
                f'DROP DATABASE IF EXISTS "{TEMPLATE}"', f'CREATE DATABASE "{TEMPLATE}"'
            )
            conn = await asyncpg.connect(with_database(self.admin_url, TEMPLATE))
            try:
                await apply_migrations(conn)
            finally:
                await conn.close()

        asyncio.run(prepare())

    def create_database(self) -> str:
        name = f"{self.prefix}{next(_counter)}"
        asyncio.run(self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"'))
        return name

    def drop_database(self, name: str) -> None:
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def test_cluster() -> Iterator[TestCluster]:
    given = os.environ.get("OBROL_TEST_DATABASE_URL")
    if given:
        cluster = TestCluster(given)
        cluster.prepare_template()
        yield cluster
        return
    folder = Path(tempfile.mkdtemp(prefix="obrol-test-pg-"))
    folder.chmod(0o711)  # as root, PostgreSQL runs as another user and must enter it
    pg = EmbeddedPostgres(folder / "pg", durable=False)
    try:
        url = pg.start()
        cluster = TestCluster(with_database(url, "postgres"), pg)
        cluster.prepare_template()
        yield cluster
    finally:
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def database_url(test_cluster: TestCluster) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    name = test_cluster.create_database()
    yield with_database(test_cluster.admin_url, name)
    test_cluster.drop_database(name)


@pytest.fixture
async def server(
    nursery: trio.Nursery, database_url: str, tmp_path: Path, test_cluster: TestCluster
) -> AsyncIterator[Harness]:
    """The real server (HTTP API over a real socket on 127.0.0.1) on this test's database."""
    async with start_harness(nursery, database_url, tmp_path) as harness:
        harness.postgres = test_cluster.postgres
        yield harness
