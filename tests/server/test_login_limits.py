"""The login rate limit holds under concurrency, across server processes, and for the
current-password check of a password change; refused attempts never extend a lock."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import trio
from nacl.signing import SigningKey

from tests.harness import INITIAL_PASSWORD, PASSWORD, Harness, assert_error, b64, start_harness

WRONG = "Wrong-Pass-123"


def login_body(email: str, password: str) -> dict[str, Any]:
    key = SigningKey.generate()
    return {
        "email": email,
        "password": password,
        "device": {"name": "phone", "platform": "ios", "public_key": b64(bytes(key.verify_key))},
    }


Call = tuple[httpx.AsyncClient, str, dict[str, Any], dict[str, str]]


async def all_at_once(calls: list[Call]) -> Counter[int]:
    """POST every (client, path, body, headers) concurrently, released together; the
    status codes seen."""
    statuses: Counter[int] = Counter()
    go = trio.Event()

    async def one(client: httpx.AsyncClient, path: str, body: Any, headers: Any) -> None:
        await go.wait()
        response = await client.post(path, json=body, headers=headers)
        statuses[response.status_code] += 1

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for call in calls:
                nursery.start_soon(one, *call)
            await trio.sleep(0.2)  # every task is waiting at the gate
            go.set()
    return statuses


async def outcomes(server: Harness, email: str) -> Counter[str]:
    """The failed login records of `email`'s account, by outcome (read through its owner's
    session). Refused attempts are recorded but not tied to an account: none was looked up."""
    session = await server.login(email)
    response = await server.client.get("/v1/me/logins", headers=session.headers)
    return Counter(r["outcome"] for r in response.json()["logins"] if r["outcome"] != "success")


async def test_concurrent_wrong_logins_on_two_servers_check_only_the_limit(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    """30 wrong passwords at once, split over two server processes sharing the database:
    exactly `limit` are checked (401), every other one is refused unchecked (429)."""
    shared_key = tmp_path / "master.key"  # servers sharing a database share its master key
    async with (
        start_harness(nursery, database_url, tmp_path / "one", master_key_file=shared_key) as one,
        start_harness(nursery, database_url, tmp_path / "two", master_key_file=shared_key) as two,
    ):
        await one.create_org("Acme", "olivia")
        email = "olivia@acme.example"
        limit = one.settings.login_failures_per_account
        calls: list[Call] = [
            (server.client, "/v1/login", login_body(email, WRONG), {}) for server in [one, two] * 15
        ]
        assert await all_at_once(calls) == {401: limit, 429: 30 - limit}
        limited = await one.client.post("/v1/login", json=login_body(email, PASSWORD))
        assert_error(limited, 429, "rate_limited")  # not even the right password is checked
        for server in (one, two):
            server.clock.advance(one.settings.login_failure_window_s + 1)
        assert await outcomes(two, email) == {"bad_password": limit}


async def test_refused_attempts_do_not_extend_the_lock(server: Harness) -> None:
    await server.create_org("Acme", "olivia")
    email = "olivia@acme.example"
    window = server.settings.login_failure_window_s
    for _ in range(server.settings.login_failures_per_account):
        response = await server.client.post("/v1/login", json=login_body(email, WRONG))
        assert_error(response, 401, "bad_credentials")
    # Someone keeps probing through the whole window: every probe is refused unchecked...
    for _ in range(6):
        server.clock.advance((window - 10) / 6)
        for password in (WRONG, PASSWORD):
            response = await server.client.post("/v1/login", json=login_body(email, password))
            assert_error(response, 429, "rate_limited")
    # ...and does not keep the owner out once the failures have left the window.
    server.clock.advance(11)
    await server.login(email)


async def test_the_per_address_limit_is_exact_under_concurrency(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with start_harness(
        nursery, database_url, tmp_path, login_failures_per_ip=4, login_failures_per_account=100
    ) as server:
        await server.create_org("Acme", "olivia")
        calls: list[Call] = [
            (server.client, "/v1/login", login_body(f"guess{i}@acme.example", WRONG), {})
            for i in range(20)
        ]
        assert await all_at_once(calls) == {401: 4, 429: 16}
        # The address is locked for everyone it serves, right password or not...
        response = await server.client.post(
            "/v1/login", json=login_body("olivia@acme.example", PASSWORD)
        )
        assert_error(response, 429, "rate_limited")
        # ...until the window has passed.
        server.clock.advance(server.settings.login_failure_window_s + 1)
        await server.login("olivia@acme.example")


async def test_the_current_password_check_is_limited_like_a_login(server: Harness) -> None:
    owner = await server.create_org()
    maria = await server.add_member(owner, "maria", change_password=False)
    limit = server.settings.login_failures_per_account
    change = {"current_password": WRONG, "new_password": "Brand-New-Pass-7"}
    calls: list[Call] = [
        (server.client, "/v1/me/password", change, maria.headers) for _ in range(30)
    ]
    assert await all_at_once(calls) == {401: limit, 429: 30 - limit}
    # The guesses count against the account's logins too (one budget per password)...
    response = await server.client.post(
        "/v1/login", json=login_body("maria@members.example", INITIAL_PASSWORD)
    )
    assert_error(response, 429, "rate_limited")
    right = {"current_password": INITIAL_PASSWORD, "new_password": "Brand-New-Pass-7"}
    response = await server.client.post("/v1/me/password", json=right, headers=maria.headers)
    assert_error(response, 429, "rate_limited")
    # ...and the change goes through once the window has passed.
    server.clock.advance(server.settings.login_failure_window_s + 1)
    refreshed = await server.client.post(
        "/v1/tokens/refresh", json={"refresh_token": maria.refresh_token}
    )
    headers = {"Authorization": f"Bearer {refreshed.json()['access_token']}"}
    response = await server.client.post("/v1/me/password", json=right, headers=headers)
    assert response.status_code == 204, response.text
    response = await server.client.get("/v1/me/logins", headers=headers)
    seen = Counter(r["outcome"] for r in response.json()["logins"])
    assert seen["bad_current_password"] == limit and seen["password_changed"] == 1
