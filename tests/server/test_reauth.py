"""Confirming the password again (POST /v1/me/reauth) before a data-rights action: checked
and rate limited like a login, recorded in the login records and the audit log, and a wrong
password changes nothing."""

from __future__ import annotations

from collections import Counter

from tests.harness import PASSWORD, Harness, assert_error

WRONG = "Wrong-Pass-123"


async def test_reauth_checks_the_password_and_is_recorded(server: Harness) -> None:
    olivia = await server.create_org()
    response = await server.client.post(
        "/v1/me/reauth", headers=olivia.headers, json={"password": WRONG}
    )
    assert_error(response, 401, "bad_credentials")
    await server.reauth(olivia)
    response = await server.client.post(
        "/v1/me/reauth", headers=olivia.headers, json={"password": PASSWORD}
    )
    assert response.json() == {"fresh_for_s": server.settings.reauth_window_s}

    logins = (await server.client.get("/v1/me/logins", headers=olivia.headers)).json()["logins"]
    outcomes = [r["outcome"] for r in logins]
    assert outcomes.count("reauthenticated") == 2 and "bad_password" in outcomes
    audit = (await server.client.get("/v1/me/audit", headers=olivia.headers)).json()
    actions = Counter(e["action"] for e in audit["entries"])
    assert actions["reauthenticated"] == 2


async def test_reauth_is_rate_limited_like_a_login(server: Harness) -> None:
    olivia = await server.create_org()
    for _ in range(server.settings.login_failures_per_account):
        response = await server.client.post(
            "/v1/me/reauth", headers=olivia.headers, json={"password": WRONG}
        )
        assert_error(response, 401, "bad_credentials")
    # Even the right password waits for the window now: a stolen token cannot guess on.
    response = await server.client.post(
        "/v1/me/reauth", headers=olivia.headers, json={"password": PASSWORD}
    )
    assert_error(response, 429, "rate_limited")


async def test_reauth_needs_a_valid_session(server: Harness) -> None:
    olivia = await server.create_org()
    await server.client.post("/v1/logout", headers=olivia.headers)
    response = await server.client.post(
        "/v1/me/reauth", headers=olivia.headers, json={"password": PASSWORD}
    )
    assert_error(response, 401, "token_revoked")
