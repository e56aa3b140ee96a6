"""The push bridge end to end: the real server, a real PostgreSQL, the real aioapns and FCM
clients, and the local APNs/FCM stand-ins over HTTP/2 + TLS. Nothing is mocked."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from protocol import (
    Ack,
    Consent,
    Err,
    FileBody,
    LocationBody,
    Msg,
    PushOk,
    PushRegister,
    PushUnregister,
    Receipt,
    ReceiptStatus,
    Send,
    ServerFrame,
)
from push.standin import Fault, StandIn
from tests.harness import Harness, Session, assert_error, start_harness
from tests.push.bridge_helpers import (
    APNS_OTHER,
    APNS_PHONE,
    FCM_PHONE,
    OPERATOR,
    push_settings,
    pushes,
    quiet_period,
    receive_sent,
    register,
    send_texts,
    synced,
    wait_for_pushes,
)


@pytest.fixture
async def server(
    nursery: trio.Nursery, database_url: str, tmp_path: Path, standin: StandIn
) -> AsyncIterator[Harness]:
    async with start_harness(
        nursery, database_url, tmp_path / "data", **push_settings(standin)
    ) as harness:
        yield harness


async def team(server: Harness) -> tuple[Session, Session, Session, uuid.UUID]:
    """Olivia (the owner), Bob and Bob's phone (a second device of his), in one group."""
    olivia = await server.create_org()
    bob = await server.add_member(olivia, "bob")
    phone = await server.login("bob@members.example")
    conv = await server.group(olivia, bob)
    return olivia, bob, phone, conv


async def test_an_offline_phone_gets_one_minimal_push_per_burst_and_a_connected_one_none(
    nursery: trio.Nursery, database_url: str, tmp_path: Path, standin: StandIn
) -> None:
    # A grace longer than the cursor saver's second: the connected device's ack is stored
    # before its job is due.
    async with start_harness(
        nursery, database_url, tmp_path / "data", **push_settings(standin, push_grace_s=2.0)
    ) as server:
        olivia, bob, phone, _ = await team(server)
        cat = await server.add_member(olivia, "cat")
        conv = await server.group(olivia, bob, cat, title="All")
        await register(server, phone, provider="apns", token=APNS_PHONE)
        await register(server, cat, provider="fcm", token=FCM_PHONE)
        async with await server.connect(cat) as cat_client:
            await synced(cat_client)
            async with await server.connect(olivia) as sender:
                await synced(sender)
                sent = await send_texts(sender, conv, "secret one", "secret two", "secret three")
            acked = 0
            with trio.fail_after(20):
                while acked < 3:
                    for frame in await cat_client.receive():
                        if isinstance(frame, Msg) and frame.pos is not None:
                            acked += 1
                            await cat_client.send(Ack(pos=frame.pos))
            [push] = await wait_for_pushes(standin, APNS_PHONE, 1)
            await quiet_period(server)
    assert len(pushes(standin, APNS_PHONE)) == 1  # one push for the burst of three
    assert pushes(standin, FCM_PHONE) == []  # connected and caught up: nothing
    assert push.status == 200
    last = uuid.UUID(bytes=max(sent, key=lambda s: s.pos or 0).id)
    assert push.payload == {
        "aps": {
            "alert": {"loc-key": "NEW_MESSAGE"},
            "badge": 3,
            "sound": "default",
            "thread-id": str(conv),
        },
        "c": str(conv),
        "m": str(last),
    }
    assert push.headers["apns-push-type"] == "alert"
    assert push.headers["apns-priority"] == "10"
    assert push.headers["apns-collapse-id"] == str(conv)
    assert push.headers["apns-topic"] == standin.credentials.apns_topic
    assert "apns-expiration" in push.headers
    assert "secret" not in json.dumps(push.payload)


async def test_previews_only_where_opted_in_and_never_for_locations(
    server: Harness, standin: StandIn
) -> None:
    olivia, bob, phone, conv = await team(server)
    await register(server, phone, provider="apns", token=APNS_PHONE, preview=True)
    await register(server, bob, provider="fcm", token=FCM_PHONE)  # no preview on this one
    await server.grant(olivia, "location_share")
    async with await server.connect(olivia) as sender:
        await synced(sender)
        await send_texts(sender, conv, "lunch at noon?")
        [preview] = await wait_for_pushes(standin, APNS_PHONE, 1)
        [generic] = await wait_for_pushes(standin, FCM_PHONE, 1)
        where = LocationBody(lat=-6.175392, lon=106.827153, acc=5.0)
        tag = Consent(purpose="location_share", scope="conversation", retention="default")
        await sender.send(Send(cid="loc1", conv=conv.bytes, body=where, consent=tag))
        await receive_sent(sender, 1)
        located = (await wait_for_pushes(standin, APNS_PHONE, 2))[1]
        located_fcm = (await wait_for_pushes(standin, FCM_PHONE, 2))[1]
    assert preview.payload["aps"]["alert"] == {"title": "Olivia", "body": "lunch at noon?"}
    assert "lunch" not in json.dumps(generic.payload)
    android = generic.payload["message"]["android"]
    assert android["notification"] == {"body_loc_key": "new_message", "notification_count": 1}
    for push in (located, located_fcm):
        text = json.dumps(push.payload)
        assert "6.17" not in text and "106.8" not in text and "lat" not in text
        assert "Olivia" not in text
    assert located.payload["aps"]["alert"] == {"loc-key": "NEW_MESSAGE"}


async def test_a_dead_token_is_disabled_and_later_messages_skip_it(
    server: Harness, standin: StandIn
) -> None:
    olivia, bob, phone, conv = await team(server)
    await register(server, phone, provider="apns", token=APNS_PHONE)
    await register(server, bob, provider="fcm", token=FCM_PHONE)
    standin.unregister(APNS_PHONE, "apns")
    standin.unregister(FCM_PHONE, "fcm")
    async with await server.connect(olivia) as sender:
        await synced(sender)
        await send_texts(sender, conv, "one")
        [gone] = await wait_for_pushes(standin, APNS_PHONE, 1)
        [gone_fcm] = await wait_for_pushes(standin, FCM_PHONE, 1)
        assert (gone.status, gone.reason, gone_fcm.status) == (410, "Unregistered", 404)
        with trio.fail_after(20):
            while True:
                view = (
                    await server.client.get(
                        f"/v1/admin/push/devices/{phone.device['id']}", headers=olivia.headers
                    )
                ).json()
                if view["registration"]["disabled_at"] is not None:
                    break
                await trio.sleep(0.05)
        assert view["registration"]["disabled_reason"] == "Unregistered"
        assert view["registration"]["provider_timestamp"] is not None
        assert [(r["outcome"], r["status"]) for r in view["recent_failures"]] == [("disable", 410)]
        assert view["registration"]["last_result"]["status"] == 410
        assert APNS_PHONE not in json.dumps(view)  # the token is never shown whole
        await send_texts(sender, conv, "two")
        await quiet_period(server)
    assert len(pushes(standin, APNS_PHONE)) == 1
    assert len(pushes(standin, FCM_PHONE)) == 1
    # the app gets a new token and registers it: pushes flow again
    await register(server, phone, provider="apns", token=APNS_OTHER)
    async with await server.connect(olivia) as sender:
        await send_texts(sender, conv, "three")
        await wait_for_pushes(standin, APNS_OTHER, 1)


async def test_a_read_on_the_laptop_lowers_the_phones_badge(
    server: Harness, standin: StandIn
) -> None:
    olivia, bob, phone, conv = await team(server)
    await register(server, phone, provider="apns", token=APNS_PHONE)
    async with await server.connect(olivia) as sender:
        await synced(sender)
        sent = await send_texts(sender, conv, "one", "two")
    [alert] = await wait_for_pushes(standin, APNS_PHONE, 1)
    assert alert.payload["aps"]["badge"] == 2
    newest = max(sent, key=lambda s: s.pos or 0)
    async with await server.connect(bob) as laptop:
        await synced(laptop)
        await laptop.send(Receipt(conv=conv.bytes, id=newest.id, status=ReceiptStatus.READ))
        badge = (await wait_for_pushes(standin, APNS_PHONE, 2))[1]
    assert badge.payload["aps"] == {"badge": 0}
    assert badge.headers["apns-priority"] == "5"


async def test_a_muted_conversation_and_quiet_hours_only_update_the_badge(
    server: Harness, standin: StandIn
) -> None:
    olivia, bob, phone, conv = await team(server)
    await register(server, phone, provider="apns", token=APNS_PHONE)
    response = await server.client.put(
        f"/v1/conversations/{conv}/mute", headers=bob.headers, json={}
    )
    assert response.status_code == 204, response.text
    async with await server.connect(olivia) as sender:
        await synced(sender)
        await send_texts(sender, conv, "muted")
        [muted] = await wait_for_pushes(standin, APNS_PHONE, 1)
        assert muted.payload["aps"] == {"badge": 1}
        await server.client.delete(f"/v1/conversations/{conv}/mute", headers=bob.headers)
        response = await server.client.put(
            "/v1/push/settings",
            headers=bob.headers,
            json={"do_not_disturb": {"start": "00:00", "end": "23:59"}, "time_zone": "UTC"},
        )
        assert response.json()["do_not_disturb"] == {"start": "00:00", "end": "23:59"}
        await send_texts(sender, conv, "quiet")
        quiet = (await wait_for_pushes(standin, APNS_PHONE, 2))[1]
        assert "alert" not in quiet.payload["aps"]


async def test_refused_pushes_retry_then_dead_letter_and_an_admin_redrives_them(
    nursery: trio.Nursery, database_url: str, tmp_path: Path, standin: StandIn
) -> None:
    settings = push_settings(
        standin, push_max_attempts=3, push_backoff_base_s=0.05, push_backoff_cap_s=0.2
    )
    async with start_harness(nursery, database_url, tmp_path / "data", **settings) as server:
        olivia, _bob, phone, conv = await team(server)
        await register(server, phone, provider="apns", token=APNS_PHONE)
        standin.add_fault(Fault(service="apns", status=503, count=None, token=APNS_PHONE))
        async with await server.connect(olivia) as sender:
            await synced(sender)
            await send_texts(sender, conv, "retry me")
        await wait_for_pushes(standin, APNS_PHONE, 3)
        with trio.fail_after(20):
            while True:
                listed = await server.client.get(
                    "/v1/admin/push/dead-letters", headers=olivia.headers
                )
                letters = listed.json()["dead_letters"]
                if letters:
                    break
                await trio.sleep(0.05)
        assert [(d["device_id"], d["attempts"], d["last_status"]) for d in letters] == [
            (phone.device["id"], 3, 503)
        ]
        assert len(pushes(standin, APNS_PHONE)) == 3  # no more tries once dead
        stats = (await server.client.get("/v1/operator/push", headers=OPERATOR)).json()
        assert stats["this_process"]["counts"]["retried"] == 2
        assert stats["this_process"]["counts"]["dead_lettered"] == 1
        assert stats["outbox"]["dead_letters"] == 1
        mine = (await server.client.get("/v1/admin/push", headers=olivia.headers)).json()
        assert mine["outbox"]["dead_letters"] == 1
        other = await server.create_org("Other", "zoe")
        theirs = (await server.client.get("/v1/admin/push", headers=other.headers)).json()
        assert theirs["outbox"]["dead_letters"] == 0  # nothing of another org's
        assert "this_process" not in theirs
        wrong = await server.client.get("/v1/operator/push", headers=olivia.headers)
        assert_error(wrong, 401, "unauthenticated")
        forbidden = await server.client.get("/v1/admin/push/dead-letters", headers=phone.headers)
        assert_error(forbidden, 403, "forbidden")
        standin.clear_faults()
        redrive = await server.client.post(
            "/v1/admin/push/dead-letters/redrive",
            headers=olivia.headers,
            json={"ids": [letters[0]["id"]]},
        )
        assert redrive.json() == {"redriven": 1}
        pushed = await wait_for_pushes(standin, APNS_PHONE, 4)
        assert pushed[-1].status == 200


async def test_registration_rules_over_rest_and_the_channel(
    server: Harness, standin: StandIn
) -> None:
    olivia, bob, phone, conv = await team(server)
    bad = [
        ({"provider": "webpush", "token": "x"}, "provider"),
        ({"provider": "apns", "token": "not-hex"}, "token"),
        ({"provider": "apns", "token": APNS_PHONE, "topic": "com.someone.else"}, "topic"),
        ({"provider": "apns", "token": APNS_PHONE, "environment": "staging"}, "environment"),
        ({"provider": "fcm", "token": "short"}, "token"),
        ({"provider": "fcm", "token": FCM_PHONE, "project": "another-project"}, "project"),
    ]
    for body, field in bad:
        response = await server.client.put(
            "/v1/push/registration", headers=phone.headers, json=body
        )
        error = assert_error(response, 422, "invalid_request")
        assert error["details"][0]["field"] == field, body
    assert_error(
        await server.client.get("/v1/push/registration", headers=phone.headers), 404, "not_found"
    )
    made = await register(server, phone, provider="apns", token=APNS_PHONE, environment="sandbox")
    assert (made["environment"], made["token_suffix"]) == ("sandbox", APNS_PHONE[-8:])
    # re-registration replaces; the same token from another device moves there
    await register(server, phone, provider="apns", token=APNS_OTHER)
    await register(server, bob, provider="apns", token=APNS_OTHER)
    assert_error(
        await server.client.get("/v1/push/registration", headers=phone.headers), 404, "not_found"
    )
    # over the channel
    async with await server.connect(phone) as client:
        await client.send(PushRegister(cid="r1", provider="apns", token=APNS_PHONE))
        await client.send(PushRegister(cid="r2", provider="apns", token="zz"))
        answers: list[ServerFrame] = []
        with trio.fail_after(20):
            while len(answers) < 2:
                answers += [f for f in await client.receive() if isinstance(f, PushOk | Err)]
        assert answers[0] == PushOk(cid="r1")
        assert isinstance(answers[1], Err) and answers[1].ref == "r2"
        assert answers[1].code.value == "invalid_field"
        got = await server.client.get("/v1/push/registration", headers=phone.headers)
        assert got.json()["token_suffix"] == APNS_PHONE[-8:]
        await client.send(PushUnregister(cid="r3"))
        with trio.fail_after(20):
            while PushOk(cid="r3") not in await client.receive():
                pass
    assert_error(
        await server.client.get("/v1/push/registration", headers=phone.headers), 404, "not_found"
    )
    # logging out deletes the registration
    await register(server, phone, provider="apns", token=APNS_PHONE)
    assert (await server.client.post("/v1/logout", headers=phone.headers)).status_code == 204
    async with await server.connect(olivia) as sender:
        await synced(sender)
        await send_texts(sender, conv, "after logout")
    await quiet_period(server)
    assert pushes(standin, APNS_PHONE) == []


async def test_a_provider_without_credentials_is_refused_clearly(
    nursery: trio.Nursery, database_url: str, tmp_path: Path, standin: StandIn
) -> None:
    settings = push_settings(standin)
    del settings["fcm_service_account_file"]
    async with start_harness(nursery, database_url, tmp_path / "data", **settings) as server:
        owner = await server.create_org()
        response = await server.client.put(
            "/v1/push/registration",
            headers=owner.headers,
            json={"provider": "fcm", "token": FCM_PHONE},
        )
        assert_error(response, 422, "push_provider_unavailable")
        health = (await server.client.get("/healthz")).json()
        assert health["push"] == {"apns": "ok", "fcm": "off"}


async def test_unusable_credentials_keep_the_server_up_and_say_so(
    nursery: trio.Nursery, database_url: str, tmp_path: Path, standin: StandIn
) -> None:
    broken = tmp_path / "broken.p8"
    broken.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    broken.chmod(0o600)
    not_json = tmp_path / "service-account.json"
    not_json.write_text("{ this is not json")
    not_json.chmod(0o600)
    settings = push_settings(standin, apns_key_file=broken, fcm_service_account_file=not_json)
    async with start_harness(nursery, database_url, tmp_path / "data", **settings) as server:
        health = (await server.client.get("/healthz")).json()
        assert health["push"] == {"apns": "unusable", "fcm": "unusable"}
        assert health["status"] == "ok"
        assert "broken.p8" not in json.dumps(health)  # no file names to strangers
        owner = await server.create_org()
        stats = (await server.client.get("/v1/admin/push", headers=owner.headers)).json()
        assert stats["providers"]["apns"] == "unusable"  # an org's admin: no file names
        stats = (await server.client.get("/v1/operator/push", headers=OPERATOR)).json()
        assert "broken.p8" in stats["providers"]["apns"]


async def test_files_show_no_name_and_ephemeral_messages_make_no_push(
    server: Harness, standin: StandIn
) -> None:
    olivia, _bob, phone, conv = await team(server)
    await register(server, phone, provider="apns", token=APNS_PHONE, preview=True)
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200
    upload = await server.client.post(
        f"/v1/conversations/{conv}/files?name=merger-plan.png",
        headers={**olivia.headers, "Content-Type": "image/png"},
        content=png,
    )
    assert upload.status_code == 201, upload.text
    file_id = uuid.UUID(upload.json()["id"])
    media = Consent(purpose="media_share", scope="conversation", retention="default")
    gone = Consent(purpose="location_share", scope="conversation", retention="ephemeral")
    await server.grant(olivia, "media_share", "location_share")
    async with await server.connect(olivia) as sender:
        await synced(sender)
        body = FileBody(
            file_id=file_id.bytes, name="merger-plan.png", size=len(png), mime="image/png"
        )
        await sender.send(Send(cid="f1", conv=conv.bytes, body=body, consent=media))
        await receive_sent(sender, 1)
        [shared] = await wait_for_pushes(standin, APNS_PHONE, 1)
        here = LocationBody(lat=-6.2, lon=106.8, acc=3.0)
        await sender.send(Send(cid="e1", conv=conv.bytes, body=here, consent=gone))
        await receive_sent(sender, 1)
        await quiet_period(server)
    assert "merger" not in json.dumps(shared.payload)
    assert shared.payload["aps"]["alert"] == {"loc-key": "NEW_MESSAGE"}
    assert len(pushes(standin, APNS_PHONE)) == 1  # the ephemeral location made none
