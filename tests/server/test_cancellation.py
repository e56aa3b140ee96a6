"""Account cancellation over the real server: DELETE /v1/me ends every session and destroys
the person's key at once (their messages and files read as erased before any purge), others
see a "deleted user", and the sweeper's `cancelled_accounts` rule then leaves no row or
blob of the person anywhere but the audit log (ids only); a purge cut short resumes."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from protocol import CloseCode, Send, Sent, TextBody
from tests.harness import PASSWORD, Harness, Session, assert_error
from tests.server.sweeps import DAY_S, sql, sweep_pass, sweeping_server
from tests.server.test_encryption_at_rest import history, share, upload
from tests.server.test_gateway_refusals import closed_with, refused

# Values no other test uses, searched for everywhere after the purge.
GROUP_TEXT = "pesan-grup-6631 dari bob"
DIRECT_TEXT = "pesan-langsung-7142 untuk ann"
FILE_DATA = b"berkas-bob-9087 " * 64
FILE_NAME = "bob-notes-4410.txt"
HOURS = 3600


def text(conv: uuid.UUID, words: str) -> Send:
    return Send(cid=f"t-{uuid.uuid4()}", conv=conv.bytes, body=TextBody(text=words))


async def sent(server: Harness, who: Session, frame: Send) -> Sent:
    answer = await server.answer(who, frame)
    assert isinstance(answer, Sent), answer
    return answer


async def cancel(server: Harness, who: Session, confirm: str | None = None) -> Any:
    return await server.client.request(
        "DELETE",
        "/v1/me",
        headers=who.headers,
        json={"confirm": confirm if confirm is not None else who.account["work_email"]},
    )


def url_of(server: Harness) -> str:
    assert server.settings.database_url is not None
    return server.settings.database_url.get_secret_value()


async def rows_with(server: Harness, needles: list[str], *, audit: bool) -> list[str]:
    """Every table (all columns as text; bytea as hex) holding a needle: all but the audit
    log, or only the audit log."""
    url = url_of(server)
    tables = await sql(
        url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    found = []
    for t in tables:
        name = t["table_name"]
        if (name == "audit_log") != audit:
            continue
        rows = await sql(url, f'SELECT t::text AS row FROM public."{name}" t')
        for r in rows:
            for needle in needles:
                if needle.lower() in r["row"].lower():
                    found.append(f"{name}: {needle}")
    return found


async def person_with_data(server: Harness) -> dict[str, Any]:
    """An org (olivia owns it) where bob, an admin, has written in a group and a direct
    conversation, shared a file, granted consents, accepted a policy, created a site and
    checked in; ann is a member; bob has failed and successful logins."""
    olivia = await server.create_org()
    bob = await server.add_member(olivia, "bob", role="admin")
    ann = await server.add_member(olivia, "ann")
    for who in (bob, ann):
        await server.grant(who, "media_share", "attendance")
    response = await server.client.post(
        f"/v1/orgs/{olivia.org_id}/policies",
        headers=olivia.headers,
        json={"version": "2026-01", "language": "id", "material": False, "text": "Kebijakan."},
    )
    assert response.status_code == 201, response.text
    response = await server.client.post(
        "/v1/me/policy/accept", headers=bob.headers, json={"version": "2026-01"}
    )
    assert response.status_code == 200, response.text
    site = {"name": "HQ", "circle": {"lat": -6.12, "lon": 106.98, "radius_m": 500}}
    response = await server.client.post(
        f"/v1/orgs/{bob.org_id}/sites", headers=bob.headers, json=site
    )
    assert response.status_code == 201, response.text
    response = await server.client.post(
        "/v1/me/attendance",
        headers=bob.headers,
        json={"action": "in", "lat": -6.1201, "lon": 106.9801},
    )
    assert response.status_code == 201, response.text

    group = await server.group(bob, olivia, ann)
    await sent(server, bob, text(group, GROUP_TEXT))
    file_id = await upload(server, bob, group, FILE_NAME, FILE_DATA)
    await sent(server, bob, share(group, file_id, FILE_NAME, len(FILE_DATA)))
    response = await server.client.post(
        "/v1/conversations", headers=bob.headers, json={"kind": "direct", "member_ids": [ann.id]}
    )
    assert response.status_code in (200, 201), response.text
    direct = uuid.UUID(response.json()["id"])
    await sent(server, bob, text(direct, DIRECT_TEXT))
    await sent(server, ann, text(direct, "ann's own words stay"))
    # ann shares a file with bob alone: his id is in that message's consent scope and tag.
    ann_file = await upload(server, ann, group, "for-bob.txt", b"only for bob")
    for_bob = share(group, ann_file, "for-bob.txt", 12)
    assert for_bob.consent is not None
    for_bob = replace(for_bob, consent=replace(for_bob.consent, scope=(bob.account_uuid.bytes,)))
    await sent(server, ann, for_bob)
    # ann's device reads everything (receipts on bob's messages); a wrong password for bob.
    async with await server.synced(ann):
        pass
    response = await server.client.post(
        "/v1/login",
        json={
            "email": "BOB@members.example",
            "password": "Not-His-Password-1",
            "device": {"name": "x", "platform": "linux", "public_key": "A" * 43},
        },
    )
    assert response.status_code == 401, response.text
    phone = await server.login(bob.account["work_email"])  # a second device
    return {
        "olivia": olivia,
        "bob": bob,
        "ann": ann,
        "phone": phone,
        "group": group,
        "direct": direct,
        "file_id": file_id,
    }


async def test_cancellation_erases_at_once_and_the_purge_leaves_nothing(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with sweeping_server(
        nursery, database_url, tmp_path, cancelled_accounts_purge_delay_h=24
    ) as server:
        world = await person_with_data(server)
        olivia, bob, ann, phone = world["olivia"], world["bob"], world["ann"], world["phone"]
        group, direct, file_id = world["group"], world["direct"], world["file_id"]
        email = bob.account["work_email"]
        devices = [bob.device["id"], phone.device["id"]]
        live = await server.connect(phone)

        # Without a fresh password confirmation, or with the wrong email typed: refused.
        server.clock.advance(server.settings.reauth_window_s + 1)
        assert_error(await cancel(server, bob), 403, "reauth_required")
        await server.reauth(bob)
        error = assert_error(
            await cancel(server, bob, "someone@else.example"), 422, "invalid_request"
        )
        assert error["details"][0]["field"] == "confirm"
        me = await server.client.get("/v1/me", headers=bob.headers)
        assert me.json()["status"] == "active"

        response = await cancel(server, bob, email.upper())
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "cancelled"

        # Every device is disconnected (revoked: it wipes itself) and cannot come back.
        closed = await closed_with(live)
        assert (closed.code, closed.reason) == (CloseCode.DEVICE_REVOKED, "device_revoked")
        closed = await refused(server, bob)
        assert closed.code == CloseCode.DEVICE_REVOKED

        # Old tokens, a second cancellation, the password: account_cancelled, nothing changes.
        assert_error(await cancel(server, bob), 403, "account_cancelled")
        for who in (bob, phone):
            me = await server.client.get("/v1/me", headers=who.headers)
            assert_error(me, 403, "account_cancelled")
        refreshed = await server.client.post(
            "/v1/tokens/refresh", json={"refresh_token": bob.refresh_token}
        )
        assert refreshed.status_code in (401, 403), refreshed.text
        login = await server.client.post(
            "/v1/login",
            json={
                "email": email,
                "password": PASSWORD,
                "device": {"name": "x", "platform": "linux", "public_key": "B" * 43},
            },
        )
        assert_error(login, 403, "account_cancelled")

        # Before any purge: bob's messages and file are unreadable for everyone (the key is
        # gone); ann's own message stays.
        erased = {"event": "erased", "text": ""}
        bodies = [(m["sender_id"], m["body"]) for m in await history(server, ann, group)]
        assert bodies[:2] == [(bob.id, erased), (bob.id, erased)]
        assert bodies[2][0] == ann.id  # her file, for bob alone
        bodies = [(m["sender_id"], m["body"]) for m in await history(server, ann, direct)]
        assert bodies == [(bob.id, erased), (ann.id, {"text": "ann's own words stay"})]
        response = await server.client.get(f"/v1/files/{file_id}", headers=ann.headers)
        assert_error(response, 410, "gone")

        # Others see a deleted user: no name, no email, anywhere the API shows a member.
        member = await server.client.get(
            f"/v1/orgs/{ann.org_id}/members/{bob.id}", headers=ann.headers
        )
        assert member.json()["display_name"] == "deleted user"
        for who in (ann, olivia):  # a member and an admin
            directory = await server.client.get(
                f"/v1/orgs/{who.org_id}/members", headers=who.headers
            )
            assert "bob" not in directory.text.lower() and email not in directory.text
            entry = next(m for m in directory.json()["members"] if m["id"] == bob.id)
            assert (entry["display_name"], entry["status"]) == ("deleted user", "cancelled")
            assert entry["work_email"] is None and entry["account_name"] is None

        # Admins cannot bring the entry back: only the purge changes it.
        patched = await server.client.patch(
            f"/v1/orgs/{olivia.org_id}/members/{bob.id}",
            headers=olivia.headers,
            json={"display_name": "Bob Again"},
        )
        assert_error(patched, 403, "account_cancelled")
        deactivated = await server.client.post(
            f"/v1/orgs/{olivia.org_id}/members/{bob.id}/deactivate", headers=olivia.headers
        )
        assert_error(deactivated, 403, "account_cancelled")

        # The request is tracked, in progress until the purge.
        requests = await server.client.get(
            f"/v1/orgs/{olivia.org_id}/requests", headers=olivia.headers
        )
        (request,) = [r for r in requests.json()["requests"] if r["kind"] == "cancellation"]
        assert request["status"] == "in_progress"

        # Others go on as before.
        await sent(server, ann, text(group, "still here"))
        assert [m["body"] for m in await history(server, olivia, group)][-1] == {
            "text": "still here"
        }

        # The sweeper purges once the delay has passed.
        blob = server.services.blobs.path(uuid.UUID(file_id))
        assert blob.exists()
        server.clock.advance(25 * HOURS)
        erased_counts = await sweep_pass(server)
        assert erased_counts["cancelled_accounts"]["rows"] > 0
        await sweep_pass(server)

        needles = [bob.id, *devices, email, GROUP_TEXT, DIRECT_TEXT, FILE_NAME, file_id]
        # ... and the ids as raw bytes (bytea shows as hex), e.g. in a stored consent tag.
        needles += [uuid.UUID(i).hex for i in (bob.id, *devices)]
        assert await rows_with(server, needles, audit=False) == []
        assert not blob.exists()
        assert not any(p.name == file_id for p in server.settings.data_dir.rglob("*"))
        # The audit log keeps bob's id (the exemption), never his email or words.
        assert await rows_with(server, [email, GROUP_TEXT, DIRECT_TEXT], audit=True) == []
        actions = await sql(
            url_of(server),
            "SELECT action, detail FROM audit_log WHERE subject_id = $1 AND action = 'deletion'",
            bob.account_uuid,
        )
        assert sorted(a["detail"] for a in actions)[0]  # cancellation and purge, counts only
        assert len(actions) == 2

        # The direct conversation stays with ann and her own words; bob is gone from it.
        ann = await server.login(ann.account["work_email"])  # a day on: new tokens
        olivia = await server.login(olivia.account["work_email"])
        conversation = await server.client.get(f"/v1/conversations/{direct}", headers=ann.headers)
        assert conversation.status_code == 200, conversation.text
        assert conversation.json()["member_ids"] == [ann.id]
        words = [m["body"] for m in await history(server, ann, direct)]
        assert words == [{"text": "ann's own words stay"}]
        member = await server.client.get(
            f"/v1/orgs/{ann.org_id}/members/{bob.id}", headers=ann.headers
        )
        assert_error(member, 404, "not_found")
        requests = await server.client.get(
            f"/v1/orgs/{olivia.org_id}/requests", headers=olivia.headers
        )
        (request,) = [r for r in requests.json()["requests"] if r["kind"] == "cancellation"]
        assert request["status"] == "done" and request["account_id"] is None
        # His old token is simply unknown now; the login is a plain failure.
        assert_error(await server.client.get("/v1/me", headers=bob.headers), 401, "unauthenticated")
        await sent(server, ann, text(group, "after the purge"))


async def test_only_owner_cannot_cancel(server: Harness) -> None:
    olivia = await server.create_org()
    await server.reauth(olivia)
    assert_error(await cancel(server, olivia), 409, "only_owner")
    me = await server.client.get("/v1/me", headers=olivia.headers)
    assert me.json()["status"] == "active"
    # With a second owner, she may go.
    oscar = await server.add_member(olivia, "oscar", role="owner")
    response = await cancel(server, olivia)
    assert response.status_code == 202, response.text
    await server.reauth(oscar)
    assert_error(await cancel(server, oscar), 409, "only_owner")


@pytest.mark.parametrize("limit", [1, 3])
async def test_a_purge_cut_short_resumes(
    nursery: trio.Nursery, database_url: str, tmp_path: Path, limit: int
) -> None:
    async with sweeping_server(
        nursery, database_url, tmp_path, cancelled_accounts_purge_delay_h=24
    ) as server:
        world = await person_with_data(server)
        bob, file_id = world["bob"], world["file_id"]
        response = await cancel(server, bob)
        assert response.status_code == 202, response.text
        purge = server.services.purge
        # A process erased a small batch of bob's messages and crashed; another deleted the
        # blobs of his uploads, then crashed before their rows went; a third ran one small
        # batch of rows and crashed too.
        later = server.clock() + timedelta(days=2)
        erasure = await purge.messages(bob.account_uuid, later, limit)
        assert erasure is not None and len(erasure.messages) == limit
        while erasure is not None and erasure.messages:
            erasure = await purge.messages(bob.account_uuid, later, limit)
        for upload_id in await purge.uploads(bob.account_uuid, 100):
            await server.services.blobs.delete(upload_id)
        done = await purge.batch(bob.account_uuid, [], later, limit)
        assert done.ran and not done.finished and done.rows == limit
        left = await sql(url_of(server), "SELECT 1 FROM accounts WHERE id = $1", bob.account_uuid)
        assert left

        server.clock.advance(DAY_S + HOURS)
        await sweep_pass(server)
        await sweep_pass(server)
        needles = [bob.id, bob.account["work_email"], GROUP_TEXT, DIRECT_TEXT, file_id]
        assert await rows_with(server, needles, audit=False) == []
