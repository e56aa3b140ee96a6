"""Data-rights requests and notices over the real server, under a controlled clock: every
request carries its deadline (15 days, or the organization's) and shows as overdue once the
clock passes it; admins answer; a service-ending notice needs 30 days' warning; notices reach
the connected members they are meant for, and are there to read afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import trio

from loadtest.client import GatewayClient
from protocol import OrgNotice, Ping, Pong, ServerFrame, Synced
from storage.requests import forget_person
from tests.harness import Harness, Session, assert_error
from tests.server.sweeps import DAY_S, in_transaction, sql, sweep_pass, sweeping_server

OWNER_EMAIL = "olivia@acme.example"


async def open_request(server: Harness, who: Session, **fields: Any) -> httpx.Response:
    return await server.client.post("/v1/me/requests", headers=who.headers, json=fields)


async def opened(server: Harness, who: Session, kind: str, **fields: Any) -> dict[str, Any]:
    response = await open_request(server, who, kind=kind, **fields)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def org_requests(server: Harness, admin: Session, query: str = "") -> list[dict[str, Any]]:
    response = await server.client.get(
        f"/v1/orgs/{admin.org_id}/requests{query}", headers=admin.headers
    )
    assert response.status_code == 200, response.text
    requests: list[dict[str, Any]] = response.json()["requests"]
    return requests


async def answer(server: Harness, admin: Session, request_id: str, **fields: Any) -> httpx.Response:
    return await server.client.patch(
        f"/v1/orgs/{admin.org_id}/requests/{request_id}", headers=admin.headers, json=fields
    )


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_a_request_is_due_in_15_days_and_overdue_after(server: Harness) -> None:
    olivia = await server.create_org()
    maria = await server.add_member(olivia, "maria")
    access = await opened(server, maria, "access", details="What do you hold on me?")
    assert access["status"] == "open" and access["account_id"] == maria.id
    assert at(access["due_at"]) - at(access["opened_at"]) == timedelta(days=15)
    assert access["overdue"] is False
    assert await org_requests(server, olivia, "?overdue=true") == []

    # The organization's own deadline applies to requests opened from then on.
    response = await server.client.patch(
        f"/v1/orgs/{olivia.org_id}/retention",
        headers=olivia.headers,
        json={"request_deadline_days": 20},
    )
    assert response.json()["request_deadline_days"] == 20
    server.clock.advance(DAY_S)
    maria = await server.login("maria@members.example")
    export = await opened(server, maria, "export")
    assert at(export["due_at"]) - at(export["opened_at"]) == timedelta(days=20)

    server.clock.advance(14 * DAY_S - 60)  # a minute before the first one's deadline
    olivia = await server.login(OWNER_EMAIL)
    assert await org_requests(server, olivia, "?overdue=true") == []
    server.clock.advance(120)  # a minute after
    olivia = await server.login(OWNER_EMAIL)
    [late] = await org_requests(server, olivia, "?overdue=true")
    assert late["id"] == access["id"] and late["overdue"] is True
    assert [r["id"] for r in await org_requests(server, olivia)] == [export["id"], access["id"]]
    assert [r["id"] for r in await org_requests(server, olivia, "?status=open")] == [
        export["id"],
        access["id"],
    ]

    # Answering closes it: no longer overdue, but answered late; it never changes again.
    moved = await answer(server, olivia, access["id"], status="in_progress")
    assert moved.json()["status"] == "in_progress" and moved.json()["closed_at"] is None
    done = (await answer(server, olivia, access["id"], status="done", note="Sent by email")).json()
    assert done["status"] == "done" and done["note"] == "Sent by email"
    assert done["closed_at"] is not None and done["handled_by"] == olivia.id
    assert done["overdue"] is False and done["answered_late"] is True
    assert await org_requests(server, olivia, "?overdue=true") == []
    again = await answer(server, olivia, access["id"], status="refused", note="changed my mind")
    assert_error(again, 409, "request_closed")
    maria = await server.login("maria@members.example")
    mine = (await server.client.get("/v1/me/requests", headers=maria.headers)).json()
    assert [(r["kind"], r["status"]) for r in mine["requests"]] == [
        ("export", "open"),
        ("access", "done"),
    ]


async def test_requests_are_the_persons_and_their_organizations_only(server: Harness) -> None:
    olivia = await server.create_org()
    maria = await server.add_member(olivia, "maria")
    bob = await server.add_member(olivia, "bob")
    zed = await server.create_org("Zeta", "zed")
    mine = await opened(server, maria, "deletion", details="Please delete my old photos")

    # Bad input: a clear error, nothing stored.
    for bad in (
        {"kind": "everything"},
        {"kind": "access", "details": ""},
        {"kind": "access", "details": "x" * 4001},
        {"kind": "access", "extra": 1},
        {},
    ):
        assert_error(await open_request(server, bob, **bad), 422, "invalid_request")
    assert_error(await open_request(server, bob, kind="org_export"), 403, "forbidden")
    assert (await server.client.get("/v1/me/requests", headers=bob.headers)).json()[
        "requests"
    ] == []
    assert [r["id"] for r in await org_requests(server, olivia)] == [mine["id"]]

    # Members see only their own; admins only their organization's.
    response = await server.client.get(f"/v1/orgs/{olivia.org_id}/requests", headers=bob.headers)
    assert_error(response, 403, "forbidden")
    response = await server.client.get(f"/v1/orgs/{olivia.org_id}/requests", headers=zed.headers)
    assert_error(response, 403, "forbidden")
    assert_error(await answer(server, zed, mine["id"], status="done"), 404, "not_found")
    response = await server.client.get(
        f"/v1/orgs/{olivia.org_id}/requests?status=closed", headers=olivia.headers
    )
    assert_error(response, 422, "invalid_request")
    refused = await answer(server, olivia, mine["id"], status="refused")
    assert_error(refused, 422, "invalid_request")  # a refusal says why
    assert_error(await answer(server, olivia, mine["id"], status="open"), 422, "invalid_request")
    assert (await org_requests(server, olivia))[0]["status"] == "open"
    org_wide = await opened(server, olivia, "org_export")  # the organization's own kind
    assert org_wide["account_id"] == olivia.id


async def test_closed_requests_are_kept_three_years_and_forgetting_a_person_keeps_the_record(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with sweeping_server(nursery, database_url, tmp_path) as server:
        olivia = await server.create_org()
        maria = await server.add_member(olivia, "maria")
        first = await opened(server, maria, "correction", details="My name is Maria Ulfa")
        second = await opened(server, maria, "access")
        await answer(server, olivia, first["id"], status="done", note="Corrected")
        server.clock.advance(2 * DAY_S)
        olivia = await server.login(OWNER_EMAIL)
        await answer(server, olivia, second["id"], status="done")
        server.clock.advance(1095 * DAY_S)  # the first closed 1097 days ago, the second 1095
        erased = await sweep_pass(server)
        assert erased["rights_requests"]["rows"] == 1
        left = await sql(database_url, "SELECT id FROM rights_requests")
        assert [str(r["id"]) for r in left] == [second["id"]]

        # The hook for purging an account: the record stays, without the person or words.
        assert await in_transaction(database_url, forget_person, maria.account_uuid) == 1
        [row] = await sql(database_url, "SELECT account_id, details, status FROM rights_requests")
        assert (row["account_id"], row["details"], row["status"]) == (None, None, "done")


async def notice_frames(client: GatewayClient, want: Callable[[list[ServerFrame]], bool]) -> Any:
    frames: list[ServerFrame] = []
    with trio.fail_after(10):
        while not want(frames):
            frames += await client.receive()
    return frames


async def told_nothing(client: GatewayClient) -> None:
    """Nothing was handed to this device: a ping sent after the notice, answered by a pong
    behind anything handed to it before, comes back with no notice before it."""
    await client.send(Ping())
    frames = await notice_frames(client, lambda fs: any(isinstance(f, Pong) for f in fs))
    assert not any(isinstance(f, OrgNotice) for f in frames)


async def synced(server: Harness, who: Session) -> GatewayClient:
    client = await server.connect(who)
    await client.sync(0)
    await notice_frames(client, lambda fs: any(isinstance(f, Synced) for f in fs))
    return client


async def send_notice(server: Harness, admin: Session, **fields: Any) -> httpx.Response:
    return await server.client.post(
        f"/v1/orgs/{admin.org_id}/notices", headers=admin.headers, json=fields
    )


async def my_notices(server: Harness, who: Session) -> list[dict[str, Any]]:
    response = await server.client.get("/v1/me/notices", headers=who.headers)
    assert response.status_code == 200, response.text
    notices: list[dict[str, Any]] = response.json()["notices"]
    return notices


async def test_a_service_ending_notice_needs_30_days_and_reaches_every_member(
    server: Harness,
) -> None:
    olivia = await server.create_org()
    maria = await server.add_member(olivia, "maria")
    zed = await server.create_org("Zeta", "zed")
    marias_device = await synced(server, maria)
    zeds_device = await synced(server, zed)
    now = server.clock()

    too_soon = await send_notice(
        server,
        olivia,
        kind="service_ending",
        title="We are closing",
        text="The service ends soon.",
        ends_at=(now + timedelta(days=29, hours=23)).isoformat(),
    )
    error = assert_error(too_soon, 422, "notice_period_too_short")
    assert "30 days" in error["message"]
    for bad in (
        {"kind": "service_ending", "title": "No end", "text": "When?"},
        {
            "kind": "security_incident",
            "title": "Breach",
            "text": "Details.",
            "ends_at": (now + timedelta(days=40)).isoformat(),
        },
        {
            "kind": "service_ending",
            "title": "Naive",
            "text": "No zone.",
            "ends_at": (now + timedelta(days=40)).replace(tzinfo=None).isoformat(),
        },
        {"kind": "maintenance", "title": "x", "text": "y"},
    ):
        assert_error(await send_notice(server, olivia, **bad), 422, "invalid_request")
    member_tries = await send_notice(server, maria, kind="security_incident", title="x", text="y")
    assert_error(member_tries, 403, "forbidden")
    assert await my_notices(server, maria) == []

    ends = now + timedelta(days=30, minutes=1)
    sent = await send_notice(
        server,
        olivia,
        kind="service_ending",
        title="We are closing",
        text="The service ends on the date given.\nExport your data before then.",
        ends_at=ends.isoformat(),
    )
    assert sent.status_code == 201, sent.text
    notice = sent.json()
    frames = await notice_frames(
        marias_device, lambda fs: any(isinstance(f, OrgNotice) for f in fs)
    )
    [frame] = [f for f in frames if isinstance(f, OrgNotice)]
    assert frame == OrgNotice(
        id=uuid.UUID(notice["id"]).bytes,
        kind="service_ending",
        title="We are closing",
        text="The service ends on the date given.\nExport your data before then.",
        at=int(at(notice["sent_at"]).timestamp() * 1000),
        ends_at=int(at(notice["ends_at"]).timestamp() * 1000),
    )
    [stored] = await my_notices(server, maria)
    assert stored["id"] == notice["id"] and at(stored["ends_at"]) == at(notice["ends_at"])
    assert await my_notices(server, zed) == []
    await told_nothing(zeds_device)
    await marias_device.aclose()
    await zeds_device.aclose()


async def test_an_incident_notice_reaches_only_the_accounts_it_names(server: Harness) -> None:
    olivia = await server.create_org()
    maria = await server.add_member(olivia, "maria")
    bob = await server.add_member(olivia, "bob")
    zed = await server.create_org("Zeta", "zed")
    marias_device = await synced(server, maria)
    bobs_device = await synced(server, bob)

    stranger = await send_notice(
        server,
        olivia,
        kind="security_incident",
        title="Incident",
        text="Your password may have leaked.",
        account_ids=[maria.id, zed.id],
    )
    assert_error(stranger, 404, "not_found")  # nothing stored
    assert await my_notices(server, maria) == []

    sent = await send_notice(
        server,
        olivia,
        kind="security_incident",
        title="Incident on 3 May",
        text="Your password may have leaked: change it.",
        account_ids=[maria.id],
    )
    assert sent.status_code == 201, sent.text
    assert sent.json()["account_ids"] == [maria.id] and sent.json()["ends_at"] is None
    frames = await notice_frames(
        marias_device, lambda fs: any(isinstance(f, OrgNotice) for f in fs)
    )
    [frame] = [f for f in frames if isinstance(f, OrgNotice)]
    assert (frame.kind, frame.title, frame.ends_at) == (
        "security_incident",
        "Incident on 3 May",
        None,
    )
    assert [n["title"] for n in await my_notices(server, maria)] == ["Incident on 3 May"]
    assert await my_notices(server, bob) == []
    await told_nothing(bobs_device)
    listed = (
        await server.client.get(f"/v1/orgs/{olivia.org_id}/notices", headers=olivia.headers)
    ).json()["notices"]
    assert [(n["kind"], n["account_ids"]) for n in listed] == [("security_incident", [maria.id])]
    await marias_device.aclose()
    await bobs_device.aclose()
