"""Rate-limit reservations: exact under heavy concurrency from several pools, and only
failures (pending ones included) count."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import trio

from storage.bridge import AsyncioBridge
from storage.database import Database
from storage.logins import AttemptLimits, LoginAttempt, LoginRecordStore

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[list[LoginRecordStore]]:
    """Two stores on two pools with their own bridges: two server processes."""
    bridges = [AsyncioBridge(), AsyncioBridge()]
    dbs = []
    try:
        for bridge in bridges:
            bridge.start()
            dbs.append(await Database.connect(bridge, database_url, pool_size=10))
        yield [LoginRecordStore(db) for db in dbs]
    finally:
        for db in dbs:
            await db.close()
        for bridge in bridges:
            bridge.stop()


def attempt(name: str, ip: str = "10.0.0.1", at: datetime = NOW) -> LoginAttempt:
    return LoginAttempt(at, name, ip, "tests", "pending")


def limits(per_name: int = 5, per_ip: int = 1000, at: datetime = NOW) -> AttemptLimits:
    return AttemptLimits(at - timedelta(minutes=15), per_name, per_ip)


async def reserve_all(
    stores: list[LoginRecordStore], attempts: list[LoginAttempt], rule: AttemptLimits
) -> list[int]:
    admitted: list[int] = []

    async def one(store: LoginRecordStore, each: LoginAttempt) -> None:
        record = await store.reserve(each, rule)
        if record is not None:
            admitted.append(record)

    async with trio.open_nursery() as nursery:
        for i, each in enumerate(attempts):
            nursery.start_soon(one, stores[i % len(stores)], each)
    return admitted


async def test_concurrent_reservations_never_pass_the_limit(
    stores: list[LoginRecordStore],
) -> None:
    for _ in range(3):  # a race would need luck: give it several chances
        admitted = await reserve_all(stores, [attempt("Olivia@x.example")] * 100, limits())
        assert len(admitted) == 5
        for record in admitted:
            await stores[0].settle(record, "success")  # successes free their places
    by_address = [attempt(f"u{i}@x.example", ip="10.9.9.9") for i in range(100)]
    assert len(await reserve_all(stores, by_address, limits(per_ip=7))) == 7


async def test_only_failures_in_the_window_count(stores: list[LoginRecordStore]) -> None:
    store = stores[0]
    first = [await store.reserve(attempt("ann@x.example"), limits(2)) for _ in range(2)]
    assert None not in first
    assert await store.reserve(attempt("ANN@x.example"), limits(2)) is None  # case-blind
    assert first[0] is not None
    await store.settle(first[0], "success")
    third = await store.reserve(attempt("ann@x.example"), limits(2))
    assert third is not None
    await store.settle(third, "bad_password")
    # Refusals piled up inside the window never count; the failures age out of it.
    for minutes in (5, 10, 14):
        later = NOW + timedelta(minutes=minutes)
        assert await store.reserve(attempt("ann@x.example", at=later), limits(2, at=later)) is None
    later = NOW + timedelta(minutes=15, seconds=1)
    assert await store.reserve(attempt("ann@x.example", at=later), limits(2, at=later))
