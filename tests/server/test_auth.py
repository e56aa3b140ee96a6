"""Password login, login records, rate limiting, token expiry, refresh and logout."""

from __future__ import annotations

from typing import Any

from nacl.signing import SigningKey

from tests.harness import PASSWORD, Harness, assert_error, b64


def login_body(email: str, password: str, key: SigningKey | None = None) -> dict[str, Any]:
    key = key or SigningKey.generate()
    return {
        "email": email,
        "password": password,
        "device": {"name": "phone", "platform": "ios", "public_key": b64(bytes(key.verify_key))},
    }


async def test_every_login_attempt_is_recorded(server: Harness) -> None:
    owner = await server.create_org("Acme", "olivia")
    email = "olivia@acme.example"
    bad = await server.client.post(
        "/v1/login", json=login_body(email, "Wrong-Pass-123"), headers={"User-Agent": "tests/1"}
    )
    assert_error(bad, 401, "bad_credentials")
    unknown = await server.client.post("/v1/login", json=login_body("nobody@x.example", PASSWORD))
    unknown_error = assert_error(unknown, 401, "bad_credentials")
    assert unknown_error["message"] == bad.json()["error"]["message"]  # no account probing
    await server.login(email)
    response = await server.client.get("/v1/me/logins", headers=owner.headers)
    records = response.json()["logins"]
    assert [r["outcome"] for r in records] == ["success", "bad_password", "success"]
    assert records[1]["user_agent"] == "tests/1" and records[1]["ip"] == "127.0.0.1"
    assert records[0]["device_id"] is not None


async def test_repeated_failures_are_rate_limited(server: Harness) -> None:
    await server.create_org("Acme", "olivia")
    email = "olivia@acme.example"
    for _ in range(server.settings.login_failures_per_account):
        assert_error(
            await server.client.post("/v1/login", json=login_body(email, "Wrong-Pass-123")),
            401,
            "bad_credentials",
        )
    limited = await server.client.post("/v1/login", json=login_body(email, PASSWORD))
    assert_error(limited, 429, "rate_limited")
    assert int(limited.headers["Retry-After"]) > 0
    server.clock.advance(server.settings.login_failure_window_s + 1)
    await server.login(email)


async def test_weak_password_is_refused_with_reasons(server: Harness) -> None:
    response = await server.client.post(
        "/v1/orgs",
        json={
            "name": "Acme",
            "owner": {
                "account_name": "olivia",
                "work_email": "olivia@acme.example",
                "display_name": "Olivia",
                "password": "olivia12345",
            },
        },
    )
    error = assert_error(response, 422, "weak_password")
    problems = " ".join(d["problem"] for d in error["details"])
    assert "three of" in problems and "account name" in problems
    assert_error(
        await server.client.post("/v1/login", json=login_body("olivia@acme.example", "x")),
        401,
        "bad_credentials",
    )


async def test_expired_token_is_refused_and_refresh_rotates(server: Harness) -> None:
    session = await server.create_org()
    assert (await server.client.get("/v1/me", headers=session.headers)).status_code == 200
    server.clock.advance(server.settings.access_token_ttl_s + 1)
    assert_error(await server.client.get("/v1/me", headers=session.headers), 401, "token_expired")

    refreshed = await server.client.post(
        "/v1/tokens/refresh", json={"refresh_token": session.refresh_token}
    )
    assert refreshed.status_code == 200
    tokens = refreshed.json()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert (await server.client.get("/v1/me", headers=headers)).status_code == 200

    # The old refresh token was rotated away; presenting it again ends the whole session.
    reused = await server.client.post(
        "/v1/tokens/refresh", json={"refresh_token": session.refresh_token}
    )
    assert_error(reused, 401, "token_revoked")
    assert_error(await server.client.get("/v1/me", headers=headers), 401, "token_revoked")


async def test_logout_ends_the_device_session(server: Harness) -> None:
    # Tokens stop working, the device's live connection is closed and the gateway refuses
    # it until it logs in again.
    from protocol import CloseCode
    from tests.server.test_gateway_refusals import closed_with, refused

    session = await server.create_org()
    live = await server.connect(session)
    response = await server.client.post("/v1/logout", headers=session.headers)
    assert response.status_code == 204
    assert_error(await server.client.get("/v1/me", headers=session.headers), 401, "token_revoked")
    response = await server.client.post(
        "/v1/tokens/refresh", json={"refresh_token": session.refresh_token}
    )
    assert_error(response, 401, "token_revoked")
    closed = await closed_with(live)
    assert (closed.code, closed.reason) == (CloseCode.SIGNED_OUT, "signed_out")
    assert (await refused(server, session)).code == CloseCode.SIGNED_OUT
    again = await server.login(session.account["work_email"], PASSWORD, session.key)
    async with await server.connect(again) as client:
        await client.sync(0)
        assert await client.receive()  # `synced`: back in


async def test_missing_or_unknown_tokens(server: Harness) -> None:
    assert_error(await server.client.get("/v1/me"), 401, "unauthenticated")
    for header in ("Bearer oat_nonsense", "Basic abc", "Bearer"):
        response = await server.client.get("/v1/me", headers={"Authorization": header})
        assert_error(response, 401, "unauthenticated")
    response = await server.client.post("/v1/tokens/refresh", json={"refresh_token": "ort_nope"})
    assert_error(response, 401, "unauthenticated")


async def test_login_input_is_validated(server: Harness) -> None:
    await server.create_org()
    for body in (
        {"email": "olivia@acme.example", "password": PASSWORD},
        {**login_body("olivia@acme.example", PASSWORD), "extra": 1},
        login_body("olivia@acme.example", "p" * 129),
        {
            **login_body("olivia@acme.example", PASSWORD),
            "device": {"name": "x", "platform": "ios", "public_key": b64(b"short")},
        },
        {
            **login_body("olivia@acme.example", PASSWORD),
            "device": {"name": "x", "platform": "toaster", "public_key": b64(bytes(32))},
        },
        [1, 2, 3],
    ):
        assert_error(await server.client.post("/v1/login", json=body), 422, "invalid_request")
    json_type = {"Content-Type": "application/json"}
    response = await server.client.post("/v1/login", content=b"{not json", headers=json_type)
    assert_error(response, 400, "invalid_json")
    response = await server.client.post("/v1/login", content=b"", headers=json_type)
    assert_error(response, 400, "invalid_json")
