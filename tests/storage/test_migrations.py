"""Migrations apply in order, once, even when several processes start together."""

from __future__ import annotations

import asyncio

import asyncpg

from storage.migrations import apply_migrations, load_migrations


def test_migrations_are_numbered_and_ordered() -> None:
    versions = [m.version for m in load_migrations()]
    assert versions == sorted(versions) and versions[0] == 1


def test_applying_again_and_concurrently_is_a_no_op(database_url: str) -> None:
    async def scenario() -> tuple[list[list[int]], list[int]]:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        finally:
            await conn.close()

        async def one() -> list[int]:
            c = await asyncpg.connect(database_url)
            try:
                return await apply_migrations(c)
            finally:
                await c.close()

        applied = list(await asyncio.gather(one(), one(), one()))
        c = await asyncpg.connect(database_url)
        try:
            rows = await c.fetch("SELECT version FROM schema_version ORDER BY version")
            assert await apply_migrations(c) == []
        finally:
            await c.close()
        return applied, [r["version"] for r in rows]

    applied, recorded = asyncio.run(scenario())
    every = [m.version for m in load_migrations()]
    assert recorded == every
    assert sorted(applied, key=len) == [[], [], every]
