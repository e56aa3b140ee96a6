"""The retention schedule over the real server and PostgreSQL, under a controlled clock:
each rule erases exactly what is past its period and nothing else - login records after 3
months, ended live sessions after 7 days, an organization's (or a conversation's) messages
with their receipts, file rows and blobs after its retention - and who may set what."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import trio

from protocol import (
    Consent,
    FileBody,
    LiveOk,
    LiveStart,
    LocationBody,
    Receipt,
    ReceiptStatus,
    Send,
    Sent,
    TextBody,
)
from server.settings import SettingsError, load_settings
from storage.files import BlobStore
from tests.harness import Harness, Session, assert_error
from tests.server.sweeps import DAY_S, sql, sweep_pass, sweeping_server, until_stored

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200
OWNER_EMAIL = "olivia@acme.example"


def text(conv: uuid.UUID, cid: str) -> Send:
    return Send(cid=cid, conv=conv.bytes, body=TextBody(text=cid))


async def send(server: Harness, who: Session, frame: Send) -> Sent:
    answer = await server.answer(who, frame)
    assert isinstance(answer, Sent), answer
    return answer


async def history(server: Harness, who: Session, conv: uuid.UUID) -> list[str]:
    response = await server.client.get(f"/v1/conversations/{conv}/messages", headers=who.headers)
    assert response.status_code == 200, response.text
    return sorted(m["client_id"] for m in response.json()["messages"])


async def set_org_retention(server: Harness, admin: Session, **fields: object) -> dict[str, object]:
    response = await server.client.patch(
        f"/v1/orgs/{admin.org_id}/retention", headers=admin.headers, json=fields
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def set_conversation_retention(
    server: Harness, who: Session, conv: uuid.UUID, days: int | None
) -> dict[str, object]:
    response = await server.client.put(
        f"/v1/conversations/{conv}/retention",
        headers=who.headers,
        json={"message_retention_days": days},
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def share_file(server: Harness, who: Session, conv: uuid.UUID, cid: str) -> uuid.UUID:
    upload = await server.client.post(
        f"/v1/conversations/{conv}/files?name=plan.png",
        headers={**who.headers, "Content-Type": "image/png"},
        content=PNG,
    )
    assert upload.status_code == 201, upload.text
    file_id = uuid.UUID(upload.json()["id"])
    body = FileBody(file_id=file_id.bytes, name="plan.png", size=len(PNG), mime="image/png")
    tag = Consent(purpose="media_share", scope="conversation", retention="default")
    await send(server, who, Send(cid=cid, conv=conv.bytes, body=body, consent=tag))
    return file_id


async def test_login_records_are_kept_three_months_and_not_a_day_longer(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with sweeping_server(nursery, database_url, tmp_path) as server:
        await server.create_org()  # a record now (its login)
        failed = await server.client.post(
            "/v1/login",
            json={
                "email": "nobody@acme.example",
                "password": "not-a-password",
                "device": {"name": "x", "platform": "linux", "public_key": "A" * 43},
            },
        )
        assert failed.status_code == 401  # a failed attempt is a record too
        server.clock.advance(2 * DAY_S)
        await server.login(OWNER_EMAIL)
        [newer] = await sql(database_url, "SELECT at FROM login_records ORDER BY at DESC LIMIT 1")
        assert (await sweep_pass(server)).get("login_records", {}).get("rows", 0) == 0

        # 3 months (92 days) + 1 day for the first two, 3 months - 1 day for the third.
        server.clock.advance(91 * DAY_S)
        erased = await sweep_pass(server)
        assert erased["login_records"] == {"rows": 2, "files": 0}
        left = await sql(database_url, "SELECT at FROM login_records")
        assert [r["at"] for r in left] == [newer["at"]]
        assert left[0]["at"] > server.clock() - timedelta(days=92)


async def test_ended_live_sessions_go_a_week_after_their_end(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with sweeping_server(nursery, database_url, tmp_path) as server:
        ann = await server.create_org()
        conv = await server.group(ann)
        await server.grant(ann, "location_share")

        async def share(cid: str) -> None:
            until = int((server.clock() + timedelta(seconds=60)).timestamp() * 1000)
            start = LiveStart(cid=cid, conv=conv.bytes, scope="conversation", until=until)
            assert isinstance(await server.answer(ann, start), LiveOk)

        await share("first")
        server.clock.advance(2 * DAY_S)
        ann = await server.login(OWNER_EMAIL)
        await share("second")
        server.clock.advance(61)  # both are past their `until`: the sweeper ends them
        await sweep_pass(server)
        ended = await sql(database_url, "SELECT ended_at FROM live_sessions ORDER BY ended_at")
        assert len(ended) == 2 and all(r["ended_at"] is not None for r in ended)

        # The first ended 8 days ago (7 + 1), the second 6 days ago (7 - 1).
        server.clock.advance(6 * DAY_S)
        erased = await sweep_pass(server)
        assert erased["live_sessions_ended"]["rows"] == 1
        left = await sql(database_url, "SELECT ended_at FROM live_sessions")
        assert [r["ended_at"] for r in left] == [ended[1]["ended_at"]]


async def test_org_retention_erases_old_messages_with_their_receipts_files_and_blobs(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with sweeping_server(nursery, database_url, tmp_path) as server:
        ann = await server.create_org()
        bob = await server.add_member(ann, "bob")
        conv = await server.group(ann, bob)
        await server.grant(ann, "media_share", "location_share")
        # Another organization, without a retention period, keeps everything.
        zed = await server.create_org("Zeta", "zed")
        elsewhere = await server.group(zed)
        await send(server, zed, text(elsewhere, "kept-elsewhere"))

        old = await send(server, ann, text(conv, "old-text"))
        file_id = await share_file(server, ann, conv, "old-file")
        place = LocationBody(lat=-6.2, lon=106.8, acc=10.0)
        long_tag = Consent(purpose="location_share", scope="conversation", retention=90 * DAY_S)
        await send(
            server, ann, Send(cid="old-place", conv=conv.bytes, body=place, consent=long_tag)
        )
        async with await server.connect(bob) as bobs_device:
            await bobs_device.send(Receipt(conv=conv.bytes, id=old.id, status=ReceiptStatus.READ))
            await until_stored(database_url, "SELECT 1 FROM message_receipts")
        blobs = BlobStore(server.settings.data_dir / "files")
        assert blobs.path(file_id).exists()

        server.clock.advance(10 * DAY_S)
        ann = await server.login(OWNER_EMAIL)
        await send(server, ann, text(conv, "new-text"))
        settings = await set_org_retention(server, ann, message_retention_days=30)
        assert settings["message_retention_days"] == 30
        assert "org_messages" not in {
            rule for rule, e in (await sweep_pass(server)).items() if e["rows"]
        }

        # 30 days and an hour after the first three; the newest is 20 days old. The 90-day
        # tag does not outlive the organization's period: it is a ceiling for every message.
        server.clock.advance(20 * DAY_S + 3600)
        erased = await sweep_pass(server)
        assert erased["org_messages"] == {"rows": 3, "files": 1}
        ann = await server.login(OWNER_EMAIL)
        bob = await server.login("bob@members.example")
        assert await history(server, bob, conv) == ["new-text"]
        assert await history(server, ann, conv) == ["new-text"]
        for who in (ann, bob):
            download = await server.client.get(f"/v1/files/{file_id}", headers=who.headers)
            assert_error(download, 404, "not_found")
        assert not blobs.path(file_id).exists()
        assert await sql(database_url, "SELECT 1 FROM message_receipts") == []
        assert await sql(database_url, "SELECT 1 FROM files") == []
        zed = await server.login("zed@zeta.example")
        assert await history(server, zed, elsewhere) == ["kept-elsewhere"]


async def test_a_conversation_setting_replaces_the_organizations(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with sweeping_server(nursery, database_url, tmp_path) as server:
        ann = await server.create_org()
        short, forever, default = [await server.group(ann, title=t) for t in "SFD"]
        await set_org_retention(server, ann, message_retention_days=30)
        shortened = await set_conversation_retention(server, ann, short, 3)
        assert shortened["message_retention_days"] == 3
        assert shortened["set_by"] == "conversation"
        kept = await set_conversation_retention(server, ann, forever, None)
        assert kept["message_retention_days"] is None and kept["set_by"] == "conversation"
        for conv, cid in ((short, "s"), (forever, "f"), (default, "d")):
            await send(server, ann, text(conv, cid))

        server.clock.advance(4 * DAY_S)
        await sweep_pass(server)
        ann = await server.login(OWNER_EMAIL)
        assert [await history(server, ann, c) for c in (short, forever, default)] == [
            [],
            ["f"],
            ["d"],
        ]
        server.clock.advance(27 * DAY_S)  # 31 days
        await sweep_pass(server)
        ann = await server.login(OWNER_EMAIL)
        assert await history(server, ann, default) == []
        assert await history(server, ann, forever) == ["f"]

        # Back to the organization's period: gone at the next pass.
        response = await server.client.delete(
            f"/v1/conversations/{forever}/retention", headers=ann.headers
        )
        assert response.status_code == 200, response.text
        assert response.json()["set_by"] == "organization"
        assert response.json()["message_retention_days"] == 30
        await sweep_pass(server)
        assert await history(server, ann, forever) == []


async def test_who_may_set_a_retention_and_what_is_refused(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with sweeping_server(nursery, database_url, tmp_path) as server:
        ann = await server.create_org()
        bob = await server.add_member(ann, "bob")
        carl = await server.add_member(ann, "carl")
        anns = await server.group(ann, bob)
        bobs = await server.group(bob, ann)
        org_url = f"/v1/orgs/{ann.org_id}/retention"

        # Every member reads the schedule; only admins change the organization's setting.
        seen = (await server.client.get(org_url, headers=bob.headers)).json()
        assert seen["message_retention_days"] is None and seen["request_deadline_days"] == 15
        periods = {r["name"]: r["period"] for r in seen["schedule"]}
        assert periods["login_records"].startswith("92 days")
        assert {"consent_clocks", "org_messages", "live_sessions_ended"} <= set(periods)
        response = await server.client.patch(
            org_url, headers=bob.headers, json={"message_retention_days": 30}
        )
        assert_error(response, 403, "forbidden")
        for bad in (
            {"message_retention_days": 0},
            {"message_retention_days": "30"},
            {"message_retention_days": 30.5},
            {"request_deadline_days": None},
            {"request_deadline_days": 91},
            {"retention": 30},
            {},
        ):
            response = await server.client.patch(org_url, headers=ann.headers, json=bad)
            assert_error(response, 422, "invalid_request")
        assert (await server.client.get(org_url, headers=ann.headers)).json()[
            "message_retention_days"
        ] is None
        await set_org_retention(server, ann, message_retention_days=30)

        # A conversation: its owner may shorten the period, not lengthen it; admins may.
        assert (await set_conversation_retention(server, bob, bobs, 10))["set_by"] == (
            "conversation"
        )
        for days in (31, None):
            response = await server.client.put(
                f"/v1/conversations/{bobs}/retention",
                headers=bob.headers,
                json={"message_retention_days": days},
            )
            assert_error(response, 403, "forbidden")
        assert (await set_conversation_retention(server, ann, bobs, 365))[
            "message_retention_days"
        ] == 365
        response = await server.client.put(
            f"/v1/conversations/{anns}/retention",
            headers=bob.headers,
            json={"message_retention_days": 5},
        )
        assert_error(response, 403, "forbidden")  # a member, not its owner
        response = await server.client.get(
            f"/v1/conversations/{anns}/retention", headers=carl.headers
        )
        assert_error(response, 404, "not_found")  # not a member
        response = await server.client.put(
            f"/v1/conversations/{anns}/retention", headers=ann.headers, json={}
        )
        assert_error(response, 422, "invalid_request")  # null must be said, not implied
        shown = await server.client.get(f"/v1/conversations/{anns}/retention", headers=bob.headers)
        assert shown.json()["message_retention_days"] == 30
        assert shown.json()["set_by"] == "organization"


def test_a_login_record_period_below_three_months_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"login_records_retention_days.*3 months"):
        load_settings(None, login_records_retention_days=30)
    with pytest.raises(SettingsError, match=r"requests_retention_days.*3 years"):
        load_settings(None, requests_retention_days=365)
    with pytest.raises(SettingsError, match="service_ending_notice_days"):
        load_settings(None, service_ending_notice_days=29)
