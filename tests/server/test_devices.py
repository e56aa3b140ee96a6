"""Device enrollment, listing and revocation."""

from __future__ import annotations

import trio
from nacl.signing import SigningKey

from tests.harness import PASSWORD, Harness, assert_error, b64


async def test_login_enrolls_the_device_and_reuses_it(server: Harness) -> None:
    session = await server.create_org()
    devices = (await server.client.get("/v1/devices", headers=session.headers)).json()["devices"]
    assert [d["id"] for d in devices] == [session.device["id"]]
    assert devices[0]["public_key"] == b64(bytes(session.key.verify_key))
    # Logging in again from the same key binds to the same device, replacing its tokens.
    again = await server.client.post(
        "/v1/login",
        json={
            "email": "olivia@acme.example",
            "password": PASSWORD,
            "device": {
                "name": "laptop",
                "platform": "linux",
                "public_key": b64(bytes(session.key.verify_key)),
            },
        },
    )
    assert again.json()["device"]["id"] == session.device["id"]
    assert_error(await server.client.get("/v1/me", headers=session.headers), 401, "token_revoked")


async def test_enrolled_device_approves_another(server: Harness) -> None:
    session = await server.create_org()
    phone = SigningKey.generate()
    response = await server.client.post(
        "/v1/devices",
        headers=session.headers,
        json={"name": "phone", "platform": "android", "public_key": b64(bytes(phone.verify_key))},
    )
    assert response.status_code == 201
    listing = (await server.client.get("/v1/devices", headers=session.headers)).json()
    assert {d["name"] for d in listing["devices"]} == {"laptop", "phone"}


async def test_revoking_a_device_ends_its_tokens_and_retires_its_key(server: Harness) -> None:
    laptop = await server.create_org()
    phone = await server.login("olivia@acme.example")
    response = await server.client.delete(
        f"/v1/devices/{phone.device['id']}", headers=laptop.headers
    )
    assert response.status_code == 200 and response.json()["revoked_at"] is not None
    assert_error(await server.client.get("/v1/me", headers=phone.headers), 401, "token_revoked")
    assert (await server.client.get("/v1/me", headers=laptop.headers)).status_code == 200
    # The revoked key can never be enrolled again.
    response = await server.client.post(
        "/v1/login",
        json={
            "email": "olivia@acme.example",
            "password": PASSWORD,
            "device": {
                "name": "phone",
                "platform": "ios",
                "public_key": b64(bytes(phone.key.verify_key)),
            },
        },
    )
    assert_error(response, 409, "conflict")


async def test_devices_of_other_accounts_are_out_of_reach(server: Harness) -> None:
    owner = await server.create_org()
    member = await server.add_member(owner, "maria")
    response = await server.client.delete(
        f"/v1/devices/{member.device['id']}", headers=owner.headers
    )
    assert_error(response, 404, "not_found")
    assert (await server.client.get("/v1/me", headers=member.headers)).status_code == 200
    # Nor can one account enroll a key another account holds.
    response = await server.client.post(
        "/v1/devices",
        headers=owner.headers,
        json={"name": "x", "platform": "ios", "public_key": b64(bytes(member.key.verify_key))},
    )
    assert_error(response, 409, "conflict")


async def test_connecting_records_when_a_device_was_last_seen(server: Harness) -> None:
    session = await server.create_org()
    client = await server.connect(session)
    await client.aclose()
    with trio.fail_after(10):  # cursors and last-seen times are saved once a second
        while True:
            devices = (await server.client.get("/v1/devices", headers=session.headers)).json()
            if devices["devices"][0]["last_seen_at"] is not None:
                break
            await trio.sleep(0.1)
