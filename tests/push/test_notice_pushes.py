"""An organization's notices as pushes, end to end: the real server, PostgreSQL, aioapns and
the FCM client against the local APNs/FCM stand-ins. An offline phone is woken by a generic
alert that names the notice (never its title or text); a connected device gets the live
`notice` frame and, since a notice is not a message its cursor could pass, the push too; a
notice's push is never merged with a message's."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from loadtest.client import GatewayClient
from protocol import OrgNotice, ServerFrame
from push.standin import Fault, StandIn
from tests.harness import Harness, Session, start_harness
from tests.push.bridge_helpers import (
    APNS_OTHER,
    APNS_PHONE,
    FCM_PHONE,
    push_settings,
    pushes,
    quiet_period,
    register,
    send_texts,
    synced,
    wait_for_pushes,
)

TITLE = "Breach at the data centre"
TEXT = "Someone read the member directory on 3 May. Change your password."


@pytest.fixture
async def server(
    nursery: trio.Nursery, database_url: str, tmp_path: Path, standin: StandIn
) -> AsyncIterator[Harness]:
    async with start_harness(
        nursery, database_url, tmp_path / "data", **push_settings(standin)
    ) as harness:
        yield harness


async def send_notice(server: Harness, admin: Session, **fields: Any) -> dict[str, Any]:
    response = await server.client.post(
        f"/v1/orgs/{admin.org_id}/notices", headers=admin.headers, json=fields
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def live_notices(client: GatewayClient) -> list[OrgNotice]:
    frames: list[ServerFrame] = []
    with trio.fail_after(20):
        while not any(isinstance(f, OrgNotice) for f in frames):
            frames += await client.receive()
    return [f for f in frames if isinstance(f, OrgNotice)]


async def test_an_incident_notice_wakes_offline_phones_and_reaches_connected_devices_live(
    server: Harness, standin: StandIn
) -> None:
    olivia = await server.create_org()
    bob = await server.add_member(olivia, "bob")
    bobs_phone = await server.login("bob@members.example")
    cat = await server.add_member(olivia, "cat")
    conv = await server.group(olivia, bob, title="Ops")
    await register(server, bobs_phone, provider="apns", token=APNS_PHONE)
    await register(server, cat, provider="fcm", token=FCM_PHONE)
    async with await server.connect(olivia) as sender:
        await synced(sender)
        [sent] = await send_texts(sender, conv, "secret plans")
    [message_push] = await wait_for_pushes(standin, APNS_PHONE, 1)  # Bob's phone is away

    async with await server.connect(bob) as bobs_laptop, await server.connect(cat) as cats:
        await synced(bobs_laptop)
        await synced(cats)  # Cat is connected and caught up, her phone registered
        notice = await send_notice(server, olivia, kind="security_incident", title=TITLE, text=TEXT)
        [live] = await live_notices(bobs_laptop)
        [cats_live] = await live_notices(cats)
        notice_push = (await wait_for_pushes(standin, APNS_PHONE, 2))[1]
        [cats_push] = await wait_for_pushes(standin, FCM_PHONE, 1)
    await quiet_period(server)

    notice_id = notice["id"]
    assert live.id == cats_live.id == uuid.UUID(notice_id).bytes
    assert (live.title, live.text, live.kind) == (TITLE, TEXT, "security_incident")
    # One push for the message, one for the notice: neither replaced the other.
    assert len(pushes(standin, APNS_PHONE)) == 2
    assert message_push.payload["m"] == str(uuid.UUID(bytes=sent.id))
    assert message_push.headers["apns-collapse-id"] == str(conv)
    assert notice_push.status == 200
    assert notice_push.payload == {
        "aps": {
            "alert": {"loc-key": "NOTICE_SECURITY_INCIDENT"},
            "badge": 1,  # the message Bob has not read
            "sound": "default",
            "thread-id": "notices",
        },
        "n": notice_id,
        "k": "security_incident",
    }
    assert notice_push.headers["apns-collapse-id"] == f"notice:{notice_id}"
    assert notice_push.headers["apns-priority"] == "10"
    assert notice_push.headers["apns-push-type"] == "alert"
    # Cat's device has every message there is: a message push would be moot, a notice's not.
    assert len(pushes(standin, FCM_PHONE)) == 1
    assert cats_push.status == 200
    message = cats_push.payload["message"]
    assert message["token"] == FCM_PHONE
    assert message["data"] == {
        "badge": "0",
        "kind": "notice",
        "n": notice_id,
        "k": "security_incident",
    }
    assert message["android"]["collapse_key"] == f"notice:{notice_id}"
    assert message["android"]["priority"] == "HIGH"
    assert message["android"]["notification"] == {
        "body_loc_key": "notice_security_incident",
        "notification_count": 0,
    }
    for push in (notice_push, cats_push):
        text = json.dumps(push.payload)
        assert "Breach" not in text and "password" not in text and "Olivia" not in text


async def test_a_notice_to_named_accounts_pushes_only_their_devices(
    server: Harness, standin: StandIn
) -> None:
    olivia = await server.create_org()
    bob = await server.add_member(olivia, "bob")
    cat = await server.add_member(olivia, "cat")
    zed = await server.create_org("Zeta", "zed")
    await register(server, bob, provider="apns", token=APNS_PHONE)
    await register(server, cat, provider="fcm", token=FCM_PHONE)
    await register(server, zed, provider="apns", token=APNS_OTHER)
    ends = server.clock() + timedelta(days=31)
    notice = await send_notice(
        server,
        olivia,
        kind="service_ending",
        title="We are closing",
        text="Export your data.",
        ends_at=ends.isoformat(),
        account_ids=[bob.id],
    )
    [push] = await wait_for_pushes(standin, APNS_PHONE, 1)
    await quiet_period(server)
    assert push.payload["aps"]["alert"] == {"loc-key": "NOTICE_SERVICE_ENDING"}
    assert (push.payload["n"], push.payload["k"]) == (notice["id"], "service_ending")
    assert pushes(standin, FCM_PHONE) == []  # Cat was not named
    assert pushes(standin, APNS_OTHER) == []  # another organization


async def test_a_refused_notice_push_retries_dead_letters_and_is_redriven(
    nursery: trio.Nursery, database_url: str, tmp_path: Path, standin: StandIn
) -> None:
    settings = push_settings(
        standin, push_max_attempts=2, push_backoff_base_s=0.05, push_backoff_cap_s=0.2
    )
    async with start_harness(nursery, database_url, tmp_path / "data", **settings) as server:
        olivia = await server.create_org()
        bob = await server.add_member(olivia, "bob")
        await register(server, bob, provider="apns", token=APNS_PHONE)
        standin.add_fault(Fault(service="apns", status=503, count=None, token=APNS_PHONE))
        notice = await send_notice(server, olivia, kind="security_incident", title=TITLE, text=TEXT)
        await wait_for_pushes(standin, APNS_PHONE, 2)
        with trio.fail_after(20):
            while True:
                listed = await server.client.get(
                    "/v1/admin/push/dead-letters", headers=olivia.headers
                )
                letters = listed.json()["dead_letters"]
                if letters:
                    break
                await trio.sleep(0.05)
        [letter] = letters
        assert (letter["kind"], letter["notice_id"], letter["attempts"]) == (
            "notice",
            notice["id"],
            2,
        )
        assert letter["device_id"] == bob.device["id"] and letter["message_id"] is None
        standin.clear_faults()
        redrive = await server.client.post(
            "/v1/admin/push/dead-letters/redrive",
            headers=olivia.headers,
            json={"ids": [letter["id"]]},
        )
        assert redrive.json() == {"redriven": 1}
        pushed = await wait_for_pushes(standin, APNS_PHONE, 3)
        assert pushed[-1].status == 200
        assert pushed[-1].payload["n"] == notice["id"]
        assert pushed[-1].headers["apns-id"] == pushed[0].headers["apns-id"]  # the same push
