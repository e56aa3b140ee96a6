"""A member given an initial password can do nothing but change it; changing a password
ends every other session of the account, on the HTTP API and on the gateway."""

from __future__ import annotations

import trio
from nacl.signing import SigningKey

from loadtest.client import GatewayClient
from protocol import CloseCode, Send, Sent, Synced, TextBody
from tests.harness import INITIAL_PASSWORD, PASSWORD, Harness, assert_error, b64
from tests.server.test_gateway_refusals import closed_with, refused

NEW_PASSWORD = "Brand-New-Pass-7"


async def synced(client: GatewayClient) -> None:
    await client.sync(0)
    with trio.fail_after(10):
        while not any(isinstance(f, Synced) for f in await client.receive()):
            pass


async def test_until_the_initial_password_is_changed_only_three_things_work(
    server: Harness,
) -> None:
    owner = await server.create_org()
    maria = await server.add_member(owner, "maria", change_password=False)
    h = maria.headers
    me = await server.client.get("/v1/me", headers=h)
    assert me.status_code == 200 and me.json()["password_change_required"] is True
    conv = await server.group(owner, maria)
    forbidden_calls = [
        server.client.get(f"/v1/orgs/{maria.org_id}", headers=h),
        server.client.get(f"/v1/orgs/{maria.org_id}/members", headers=h),
        server.client.patch("/v1/me", headers=h, json={"display_name": "M"}),
        server.client.get("/v1/me/logins", headers=h),
        server.client.get("/v1/devices", headers=h),
        server.client.post(
            "/v1/devices",
            headers=h,
            json={"name": "x", "platform": "ios", "public_key": b64(bytes(32))},
        ),
        server.client.get("/v1/conversations", headers=h),
        server.client.get(f"/v1/conversations/{conv}/messages", headers=h),
        server.client.post(
            "/v1/conversations", headers=h, json={"kind": "direct", "member_ids": [owner.id]}
        ),
    ]
    for call in forbidden_calls:
        assert_error(await call, 403, "password_change_required")
    # The gateway refuses the handshake with its own code.
    closed = await refused(server, maria)
    assert (closed.code, closed.reason) == (
        CloseCode.PASSWORD_CHANGE_REQUIRED,
        "password_change_required",
    )
    # Logging out is allowed (here: a second device of hers).
    other = await server.login("maria@members.example", INITIAL_PASSWORD)
    assert (await server.client.post("/v1/logout", headers=other.headers)).status_code == 204

    response = await server.client.post(
        "/v1/me/password",
        headers=h,
        json={"current_password": INITIAL_PASSWORD, "new_password": NEW_PASSWORD},
    )
    assert response.status_code == 204, response.text
    assert (await server.client.get("/v1/conversations", headers=h)).status_code == 200
    me = await server.client.get("/v1/me", headers=h)
    assert me.json()["password_change_required"] is False
    async with await server.connect(maria) as client:
        await synced(client)


async def test_changing_the_password_ends_every_other_session(server: Harness) -> None:
    owner = await server.create_org()
    email = "olivia@acme.example"
    laptop = owner  # the device that changes the password
    phone_key = SigningKey.generate()
    phone = await server.login(email, PASSWORD, phone_key)
    tablet = await server.login(email)
    conv = await server.group(owner, title="Notes")
    laptop_live = await server.connect(laptop)
    await synced(laptop_live)
    phone_live = await server.connect(phone)
    tablet_live = await server.connect(tablet)

    response = await server.client.post(
        "/v1/me/password",
        headers=laptop.headers,
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
    )
    assert response.status_code == 204, response.text

    for session, live in ((phone, phone_live), (tablet, tablet_live)):
        assert_error(
            await server.client.get("/v1/me", headers=session.headers), 401, "token_revoked"
        )
        refresh = await server.client.post(
            "/v1/tokens/refresh", json={"refresh_token": session.refresh_token}
        )
        assert_error(refresh, 401, "token_revoked")
        closed = await closed_with(live)
        assert (closed.code, closed.reason) == (CloseCode.SIGNED_OUT, "signed_out")
        closed = await refused(server, session)
        assert (closed.code, closed.reason) == (CloseCode.SIGNED_OUT, "signed_out")

    # The device that changed it keeps its session and its live connection.
    assert (await server.client.get("/v1/me", headers=laptop.headers)).status_code == 200
    await laptop_live.send(Send(cid="still-on", conv=conv.bytes, body=TextBody(text="hi")))
    with trio.fail_after(10):
        while not any(isinstance(f, Sent) for f in await laptop_live.receive()):
            pass
    await laptop_live.aclose()

    # The old password is gone; the phone comes back by logging in again with the new one.
    response = await server.client.post(
        "/v1/login",
        json={
            "email": email,
            "password": PASSWORD,
            "device": {
                "name": "x",
                "platform": "ios",
                "public_key": b64(bytes(phone_key.verify_key)),
            },
        },
    )
    assert_error(response, 401, "bad_credentials")
    again = await server.login(email, NEW_PASSWORD, phone_key)
    assert again.device["id"] == phone.device["id"]  # the same device, not a new enrolment
    phone = again
    async with await server.connect(phone) as client:
        await synced(client)
    # The tablet, which did not log in again, is still kept out.
    assert (await refused(server, tablet)).code == CloseCode.SIGNED_OUT
