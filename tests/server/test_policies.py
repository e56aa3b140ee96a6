"""Privacy-policy versions over the real server: admins publish, members read every version
and accept the current one; a material version blocks the HTTP API and the channel until
the person accepts, and every connected member hears of a new version."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import trio

from loadtest.client import GatewayClient
from protocol import (
    Err,
    ErrorCode,
    Msg,
    Ping,
    PolicyNotice,
    Pong,
    Receipt,
    ReceiptNotice,
    ReceiptStatus,
    Send,
    Sent,
    ServerFrame,
    Synced,
    TextBody,
    Typing,
    TypingNotice,
)
from tests.harness import (
    INITIAL_PASSWORD,
    PASSWORD,
    Harness,
    Session,
    assert_error,
    start_harness,
)

POLICY_TEXT = "We process your messages to deliver them.\n\nLocation only with your consent."


async def publish(
    server: Harness,
    who: Session,
    version: str,
    *,
    material: bool,
    org_id: str | None = None,
    **fields: Any,
) -> httpx.Response:
    return await server.client.post(
        f"/v1/orgs/{org_id or who.org_id}/policies",
        headers=who.headers,
        json={
            "version": version,
            "language": "id",
            "material": material,
            "text": POLICY_TEXT,
            **fields,
        },
    )


async def published(server: Harness, who: Session, version: str, *, material: bool) -> Any:
    response = await publish(server, who, version, material=material)
    assert response.status_code == 201, response.text
    return response.json()


async def my_policy(server: Harness, who: Session) -> Any:
    response = await server.client.get("/v1/me/policy", headers=who.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def accept(server: Harness, who: Session, version: str) -> httpx.Response:
    return await server.client.post(
        "/v1/me/policy/accept", headers=who.headers, json={"version": version}
    )


async def listed(server: Harness, who: Session, query: str = "") -> list[str]:
    response = await server.client.get(
        f"/v1/orgs/{who.org_id}/policies{query}", headers=who.headers
    )
    assert response.status_code == 200, response.text
    return [p["version"] for p in response.json()["policies"]]


async def conversations(server: Harness, who: Session) -> httpx.Response:
    return await server.client.get("/v1/conversations", headers=who.headers)


async def receive_until(
    client: GatewayClient, done: Callable[[list[ServerFrame]], bool]
) -> list[ServerFrame]:
    frames: list[ServerFrame] = []
    with trio.fail_after(10):
        while not done(frames):
            frames += await client.receive()
    return frames


async def synced(server: Harness, who: Session) -> GatewayClient:
    client = await server.connect(who)
    await client.sync(0)
    await receive_until(client, lambda fs: any(isinstance(f, Synced) for f in fs))
    return client


def text(conv: uuid.UUID, cid: str) -> Send:
    return Send(cid=cid, conv=conv.bytes, body=TextBody(text=cid))


def sent_as(cid: str) -> Callable[[list[ServerFrame]], bool]:
    """Until the `sent` for `cid` arrived."""
    return lambda frames: any(isinstance(f, Sent) and f.cid == cid for f in frames)


def errs(frames: list[ServerFrame]) -> list[Err]:
    return [f for f in frames if isinstance(f, Err)]


async def history(server: Harness, who: Session, conv: uuid.UUID) -> list[str]:
    response = await server.client.get(f"/v1/conversations/{conv}/messages", headers=who.headers)
    assert response.status_code == 200, response.text
    return sorted(m["client_id"] for m in response.json()["messages"])


async def test_admins_publish_and_members_read_every_version(server: Harness) -> None:
    owner = await server.create_org()
    maria = await server.add_member(owner, "maria")
    assert await listed(server, maria) == []
    first = await published(server, owner, "2025-06", material=False)
    assert first["version"] == "2025-06" and first["text"] == POLICY_TEXT
    assert first["language"] == "id" and first["published_by"] == owner.id
    await published(server, owner, "2026-01", material=False)
    await published(server, owner, "2026-02", material=False)

    refused = await publish(server, maria, "2026-03", material=False)
    assert_error(refused, 403, "forbidden")  # a member may not publish
    again = await publish(server, owner, "2025-06", material=True, text="changed")
    assert assert_error(again, 409, "conflict")["details"][0]["field"] == "version"

    # Newest first, without the text; paged with `before`.
    response = await server.client.get(f"/v1/orgs/{owner.org_id}/policies", headers=maria.headers)
    policies = response.json()["policies"]
    assert [p["version"] for p in policies] == ["2026-02", "2026-01", "2025-06"]
    assert all("text" not in p for p in policies)
    assert await listed(server, maria, "?limit=2") == ["2026-02", "2026-01"]
    assert await listed(server, maria, "?limit=2&before=2026-01") == ["2025-06"]

    # Old versions stay readable, unchanged.
    old = await server.client.get(
        f"/v1/orgs/{owner.org_id}/policies/2025-06", headers=maria.headers
    )
    assert old.status_code == 200, old.text
    assert old.json() == first
    missing = await server.client.get(
        f"/v1/orgs/{owner.org_id}/policies/1999", headers=maria.headers
    )
    assert_error(missing, 404, "not_found")
    state = await my_policy(server, maria)
    assert state["current"]["version"] == "2026-02"
    assert state["accepted"] is None and state["accepted_current"] is False


async def test_bad_versions_are_refused_and_nothing_is_published(server: Harness) -> None:
    owner = await server.create_org()
    for fields, field in [
        ({"version": "v 2"}, "version"),
        ({"version": "-v2"}, "version"),
        ({"version": "v" * 33}, "version"),
        ({"language": "english!"}, "language"),
        ({"material": "yes"}, "material"),
        ({"text": " \n "}, "text"),
        ({"text": "a\x00b"}, "text"),
    ]:
        body = {"version": "v2", "language": "en", "material": True, "text": "t", **fields}
        response = await server.client.post(
            f"/v1/orgs/{owner.org_id}/policies", headers=owner.headers, json=body
        )
        error = assert_error(response, 422, "invalid_request")
        assert error["details"][0]["field"] == field, error
    assert await listed(server, owner) == []
    assert (await conversations(server, owner)).status_code == 200  # nothing blocks


async def test_another_orgs_admin_cannot_publish_here(server: Harness) -> None:
    owner = await server.create_org()
    stranger = await server.create_org("Other", "zoe")
    response = await publish(server, stranger, "2026-01", material=True, org_id=owner.org_id)
    assert_error(response, 403, "forbidden")
    assert await listed(server, owner) == []
    peek = await server.client.get(f"/v1/orgs/{owner.org_id}/policies", headers=stranger.headers)
    assert_error(peek, 403, "forbidden")
    # Each org's policy binds only its own members.
    await published(server, stranger, "2026-01", material=True)
    assert (await conversations(server, owner)).status_code == 200
    assert (await my_policy(server, owner))["current"] is None


async def test_a_material_version_blocks_the_api_until_accepted(server: Harness) -> None:
    owner = await server.create_org()
    maria = await server.add_member(owner, "maria")
    assert (await my_policy(server, maria))["reconsent_required"] is False  # no policy yet
    await published(server, owner, "2026-01", material=True)

    for who in (maria, owner):  # the admin who published it too
        assert_error(await conversations(server, who), 403, "reconsent_required")
    profile = await server.client.patch("/v1/me", headers=maria.headers, json={"display_name": "M"})
    assert_error(profile, 403, "reconsent_required")
    state = await my_policy(server, maria)
    assert state["reconsent_required"] is True and state["accepted"] is None
    assert state["current"]["version"] == "2026-01" and state["current"]["material"] is True
    readable = await server.client.get(
        f"/v1/orgs/{owner.org_id}/policies/2026-01", headers=maria.headers
    )
    assert readable.json()["text"] == POLICY_TEXT  # reading it is allowed

    # An unknown version is refused and nothing is recorded.
    assert_error(await accept(server, maria, "2099-01"), 404, "unknown_policy")
    assert_error(await accept(server, maria, "not a version"), 422, "invalid_request")
    assert (await my_policy(server, maria))["accepted"] is None
    assert_error(await conversations(server, maria), 403, "reconsent_required")

    accepted = await accept(server, maria, "2026-01")
    assert accepted.status_code == 200, accepted.text
    state = accepted.json()
    assert state["reconsent_required"] is False and state["accepted_current"] is True
    assert state["accepted"]["version"] == "2026-01"
    assert state["accepted"]["device_id"] == maria.device["id"]
    assert datetime.fromisoformat(state["accepted"]["accepted_at"])
    assert (await conversations(server, maria)).status_code == 200
    # A consent given now is recorded under the version she accepted.
    assert (
        await server.client.put("/v1/me/consents/media_share", headers=maria.headers)
    ).is_success
    events = await server.client.get("/v1/me/consents/history", headers=maria.headers)
    assert [e["policy_version"] for e in events.json()["history"]] == ["2026-01"]
    assert_error(await conversations(server, owner), 403, "reconsent_required")  # not hers
    again = await accept(server, maria, "2026-01")  # accepting twice changes nothing
    assert again.json()["accepted"] == state["accepted"]

    # Stopping things is never made to wait for an acceptance: withdrawing a consent,
    # dropping the push registration, logging out.
    withdraw = await server.client.delete("/v1/me/consents/media_share", headers=owner.headers)
    assert_error(withdraw, 409, "consent_not_granted")  # past the gate: nothing to withdraw
    unregister = await server.client.delete("/v1/push/registration", headers=owner.headers)
    assert unregister.status_code == 204, unregister.text
    grant = await server.client.put("/v1/me/consents/media_share", headers=owner.headers)
    assert_error(grant, 403, "reconsent_required")
    logout = await server.client.post("/v1/logout", headers=owner.headers)
    assert logout.status_code == 204, logout.text


async def test_a_new_member_changes_the_password_then_accepts(server: Harness) -> None:
    owner = await server.create_org()
    await published(server, owner, "2026-01", material=True)
    assert (await accept(server, owner, "2026-01")).status_code == 200
    nina = await server.add_member(owner, "nina", change_password=False)
    assert_error(await conversations(server, nina), 403, "password_change_required")
    assert_error(await accept(server, nina, "2026-01"), 403, "password_change_required")
    changed = await server.client.post(
        "/v1/me/password",
        headers=nina.headers,
        json={"current_password": INITIAL_PASSWORD, "new_password": PASSWORD},
    )
    assert changed.status_code == 204, changed.text  # the policy does not stand in the way
    assert_error(await conversations(server, nina), 403, "reconsent_required")
    assert (await accept(server, nina, "2026-01")).status_code == 200
    assert (await conversations(server, nina)).status_code == 200


async def test_only_the_current_version_can_be_accepted(server: Harness) -> None:
    owner = await server.create_org()
    maria = await server.add_member(owner, "maria")
    await published(server, owner, "v1", material=True)
    await accept(server, owner, "v1")
    await published(server, owner, "v2", material=False)
    assert_error(await accept(server, maria, "v1"), 409, "policy_not_current")
    state = await my_policy(server, maria)
    assert state["accepted"] is None and state["reconsent_required"] is True
    # Accepting the newer version covers the material one before it.
    response = await accept(server, maria, "v2")
    assert response.json()["reconsent_required"] is False
    assert (await conversations(server, maria)).status_code == 200


async def test_a_non_material_version_blocks_nobody(server: Harness) -> None:
    owner = await server.create_org()
    maria = await server.add_member(owner, "maria")
    conv = await server.group(owner, maria)
    client = await synced(server, maria)
    await published(server, owner, "2026-01-typo", material=False)
    frames = await receive_until(client, lambda fs: any(isinstance(f, PolicyNotice) for f in fs))
    assert next(f for f in frames if isinstance(f, PolicyNotice)).material is False
    assert (await conversations(server, maria)).status_code == 200
    state = await my_policy(server, maria)
    assert state["reconsent_required"] is False and state["accepted_current"] is False
    await client.send(text(conv, "still-fine"))
    frames = await receive_until(client, lambda fs: any(isinstance(f, Sent) for f in fs))
    assert not errs(frames)
    await client.aclose()


async def test_a_material_version_blocks_the_channel_until_accepted(server: Harness) -> None:
    owner = await server.create_org()
    bob = await server.add_member(owner, "bob")
    conv = await server.group(owner, bob)
    owner_client = await synced(server, owner)
    bob_client = await synced(server, bob)
    await owner_client.send(text(conv, "before"))
    frames = await receive_until(bob_client, lambda fs: any(isinstance(f, Msg) for f in fs))
    before = next(f for f in frames if isinstance(f, Msg))

    version = (await published(server, owner, "2026-01", material=True))["published_at"]
    notice = PolicyNotice(
        version="2026-01",
        material=True,
        at=int(datetime.fromisoformat(version).timestamp() * 1000),
    )
    for client in (bob_client, owner_client):  # every connected member hears of it
        frames = await receive_until(
            client, lambda fs: any(isinstance(f, PolicyNotice) for f in fs)
        )
        assert notice in frames

    # While blocked: send, receipt and typing are refused; ping still works.
    await bob_client.send(
        text(conv, "blocked"),
        Receipt(conv=conv.bytes, id=before.id, status=ReceiptStatus.READ),
        Typing(conv=conv.bytes, on=True),
        Ping(),
    )
    frames = await receive_until(bob_client, lambda fs: any(isinstance(f, Pong) for f in fs))
    refused = errs(frames)
    assert [(e.code, e.ref, e.ref_type) for e in refused] == [
        (ErrorCode.RECONSENT_REQUIRED, "blocked", "send"),
        (ErrorCode.RECONSENT_REQUIRED, None, "receipt"),
        (ErrorCode.RECONSENT_REQUIRED, None, "typing"),
    ]
    assert not any(isinstance(f, Sent) for f in frames)
    # A device that connects while blocked is blocked from its first frame.
    bob_phone = await server.login("bob@members.example")
    phone_client = await synced(server, bob_phone)
    await phone_client.send(text(conv, "from-phone"), Ping())
    frames = await receive_until(phone_client, lambda fs: any(isinstance(f, Pong) for f in fs))
    assert [e.code for e in errs(frames)] == [ErrorCode.RECONSENT_REQUIRED]

    # Accepting (over the API, from one device) unblocks every connection of the account,
    # without reconnecting; the owner, who has not accepted, stays blocked.
    assert (await accept(server, bob, "2026-01")).status_code == 200
    await bob_client.send(text(conv, "after"))
    await phone_client.send(text(conv, "after-phone"))
    for client, cid in ((bob_client, "after"), (phone_client, "after-phone")):
        frames = await receive_until(client, sent_as(cid))
        assert not errs(frames)
    # Nothing of the refused frames went to the owner: the typing notice and the receipt
    # would have come before bob's next message, which comes after them in his stream.
    frames = await receive_until(
        owner_client, lambda fs: any(isinstance(f, Msg) and f.cid == "after" for f in fs)
    )
    assert not any(isinstance(f, ReceiptNotice | TypingNotice) for f in frames)
    assert not any(isinstance(f, Msg) and f.cid == "blocked" for f in frames)
    await owner_client.send(text(conv, "owner-blocked"), Ping())
    frames = await receive_until(owner_client, lambda fs: any(isinstance(f, Pong) for f in fs))
    assert [e.code for e in errs(frames)] == [ErrorCode.RECONSENT_REQUIRED]

    # What was refused was never stored.
    assert await history(server, bob, conv) == ["after", "after-phone", "before"]
    for client in (bob_client, phone_client, owner_client):
        await client.aclose()


async def test_after_a_restart_the_channel_gate_comes_from_the_store(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    """The hub starts empty: each handshake reads the gate with the device's credentials."""
    async with start_harness(nursery, database_url, tmp_path) as server:
        owner = await server.create_org()
        bob = await server.add_member(owner, "bob")
        maria = await server.add_member(owner, "maria")
        conv = await server.group(owner, bob, maria)
        await published(server, owner, "2026-01", material=True)
        assert (await accept(server, maria, "2026-01")).status_code == 200
    async with start_harness(nursery, database_url, tmp_path) as server:
        bob_client = await synced(server, bob)
        maria_client = await synced(server, maria)
        await bob_client.send(text(conv, "bob-blocked"), Ping())
        frames = await receive_until(bob_client, lambda fs: any(isinstance(f, Pong) for f in fs))
        assert [e.code for e in errs(frames)] == [ErrorCode.RECONSENT_REQUIRED]
        await maria_client.send(text(conv, "maria-accepted"))
        frames = await receive_until(maria_client, lambda fs: any(isinstance(f, Sent) for f in fs))
        assert not errs(frames)
        assert (await accept(server, bob, "2026-01")).status_code == 200
        await bob_client.send(text(conv, "bob-accepted"))
        frames = await receive_until(bob_client, lambda fs: any(isinstance(f, Sent) for f in fs))
        assert not errs(frames)
        assert await history(server, bob, conv) == ["bob-accepted", "maria-accepted"]
        for client in (bob_client, maria_client):
            await client.aclose()
