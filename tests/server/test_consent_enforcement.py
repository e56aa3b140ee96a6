"""Consent enforced at every step, over the real server and PostgreSQL: a tagged send needs
the sender's grant and a scope of members; withdrawal erases `until_withdrawn` data and
tells those who saw it; retention clocks are kept by the sweeper; the channel's consent
frames follow the same rules as the HTTP API."""

from __future__ import annotations

import uuid
from pathlib import Path

import trio

from protocol import (
    Consent,
    ConsentGet,
    ConsentRevoked,
    Consents,
    ConsentSet,
    Err,
    ErrorCode,
    FileBody,
    LocationBody,
    Msg,
    Send,
    Sent,
    ServerFrame,
    TextBody,
)
from storage.files import BlobStore
from tests.harness import Harness, Session, receive_until, start_harness

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200


def located(cid: str, conv: uuid.UUID, retention: object = 3600, **tag: object) -> Send:
    consent = {"purpose": "location_share", "scope": "conversation", "retention": retention}
    consent.update(tag)
    return Send(
        cid=cid,
        conv=conv.bytes,
        body=LocationBody(lat=-6.2, lon=106.8, acc=10.0),
        consent=Consent(**consent),  # type: ignore[arg-type]
    )


async def history(server: Harness, who: Session, conv: uuid.UUID) -> list[str]:
    response = await server.client.get(f"/v1/conversations/{conv}/messages", headers=who.headers)
    assert response.status_code == 200, response.text
    return [m["client_id"] for m in response.json()["messages"]]


def refusal(answer: ServerFrame) -> ErrorCode | None:
    return answer.code if isinstance(answer, Err) else None


async def test_a_tagged_send_needs_the_grant_a_matching_purpose_and_a_scope_of_members(
    server: Harness,
) -> None:
    ann = await server.create_org()
    bob = await server.add_member(ann, "bob")
    carl = await server.add_member(ann, "carl")  # in the org, not in the conversation
    conv = await server.group(ann, bob)
    watcher = await server.synced(bob)

    stored, gone = located("loc-1", conv), located("loc-2", conv, "ephemeral")
    assert refusal(await server.answer(ann, stored)) == ErrorCode.CONSENT_NOT_GRANTED
    assert refusal(await server.answer(ann, gone)) == ErrorCode.CONSENT_NOT_GRANTED
    await server.grant(ann, "location_share")
    wrong = located("loc-3", conv, purpose="media_share")
    assert refusal(await server.answer(ann, wrong)) == ErrorCode.CONSENT_INVALID
    outside = located("loc-4", conv, scope=(bob.account_uuid.bytes, carl.account_uuid.bytes))
    assert refusal(await server.answer(ann, outside)) == ErrorCode.CONSENT_SCOPE_INVALID
    assert await history(server, ann, conv) == []

    # Nothing refused reached Bob's live device; the first allowed send does.
    assert isinstance(await server.answer(ann, located("loc-5", conv)), Sent)
    frames = await receive_until(watcher, lambda f: isinstance(f, Msg))
    assert [f.cid for f in frames if isinstance(f, Msg)] == ["loc-5"]
    assert await history(server, bob, conv) == ["loc-5"]
    await watcher.aclose()


async def test_withdrawal_erases_until_withdrawn_data_and_tells_everyone_who_saw_it(
    server: Harness,
) -> None:
    ann = await server.create_org()
    bob = await server.add_member(ann, "bob")
    conv = await server.group(ann, bob)
    await server.grant(ann, "media_share", "location_share")
    upload = await server.client.post(
        f"/v1/conversations/{conv}/files?name=plan.png",
        headers={**ann.headers, "Content-Type": "image/png"},
        content=PNG,
    )
    file_id = uuid.UUID(upload.json()["id"])
    body = FileBody(file_id=file_id.bytes, name="plan.png", size=len(PNG), mime="image/png")
    tag = Consent(purpose="media_share", scope="conversation", retention="until_withdrawn")
    shared = await server.answer(ann, Send(cid="file-1", conv=conv.bytes, body=body, consent=tag))
    assert isinstance(shared, Sent)
    assert isinstance(await server.answer(ann, located("loc-1", conv)), Sent)  # another grant
    assert (await server.client.get(f"/v1/files/{file_id}", headers=bob.headers)).status_code == 200
    watcher = await server.synced(bob)

    response = await server.client.delete("/v1/me/consents/media_share", headers=ann.headers)
    assert response.status_code == 200, response.text
    [revoked] = [
        f
        for f in await receive_until(watcher, lambda f: isinstance(f, ConsentRevoked))
        if isinstance(f, ConsentRevoked)
    ]
    assert (revoked.who, revoked.purpose, revoked.conv) == (
        ann.account_uuid.bytes,
        "media_share",
        conv.bytes,
    )
    assert revoked.ids == (shared.id,)
    # Erased everywhere: history, catch-up, the file and its bytes. The location, under a
    # grant that still stands, stays.
    assert await history(server, bob, conv) == ["loc-1"]
    assert (await server.client.get(f"/v1/files/{file_id}", headers=bob.headers)).status_code == 404
    assert (await server.client.get(f"/v1/files/{file_id}", headers=ann.headers)).status_code == 404
    assert not BlobStore(server.settings.data_dir / "files").path(file_id).exists()
    # The very next tagged send is refused.
    upload = await server.client.post(
        f"/v1/conversations/{conv}/files?name=plan.png",
        headers={**ann.headers, "Content-Type": "image/png"},
        content=PNG,
    )
    body = FileBody(
        file_id=uuid.UUID(upload.json()["id"]).bytes,
        name="plan.png",
        size=len(PNG),
        mime="image/png",
    )
    again = Send(cid="file-2", conv=conv.bytes, body=body, consent=tag)
    assert refusal(await server.answer(ann, again)) == ErrorCode.CONSENT_NOT_GRANTED
    events = (await server.client.get("/v1/me/consents/history", headers=ann.headers)).json()
    assert [(e["purpose"], e["action"]) for e in events["history"]][-1] == (
        "media_share",
        "withdrawn",
    )
    await watcher.aclose()


async def test_the_sweeper_erases_what_a_retention_clock_says(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with start_harness(nursery, database_url, tmp_path, sweep_interval_s=0.1) as server:
        ann = await server.create_org()
        conv = await server.group(ann)
        await server.grant(ann, "location_share")
        assert isinstance(await server.answer(ann, located("short", conv, 60)), Sent)
        assert isinstance(await server.answer(ann, located("long", conv, 7200)), Sent)
        assert isinstance(await server.answer(ann, located("kept", conv, "default")), Sent)
        assert sorted(await history(server, ann, conv)) == ["kept", "long", "short"]
        server.clock.advance(61)
        ann = await server.login("olivia@acme.example")  # tokens age with the clock
        for _ in range(100):
            if sorted(await history(server, ann, conv)) == ["kept", "long"]:
                break
            await trio.sleep(0.05)
        else:
            raise AssertionError("the expired message was not erased")
        server.clock.advance(7200)
        ann = await server.login("olivia@acme.example")
        for _ in range(100):
            if await history(server, ann, conv) == ["kept"]:
                break
            await trio.sleep(0.05)
        else:
            raise AssertionError("the second expired message was not erased")


async def test_consent_frames_on_the_channel_follow_the_same_rules(server: Harness) -> None:
    ann = await server.create_org()
    bob = await server.add_member(ann, "bob")
    state = await server.answer(bob, ConsentGet(cid="g-1"))
    assert isinstance(state, Consents)
    assert {g.purpose: g.on for g in state.grants} == {
        "location_share": False,
        "attendance": False,
        "media_share": False,
        "contacts_sync": False,
    }
    granted = await server.answer(bob, ConsentSet(cid="g-2", purpose="location_share", on=True))
    assert isinstance(granted, Consents)
    [location] = [g for g in granted.grants if g.purpose == "location_share"]
    assert location.on and location.at is not None
    unknown = await server.answer(bob, ConsentSet(cid="g-3", purpose="telepathy", on=True))
    assert refusal(unknown) == ErrorCode.INVALID_FIELD
    never = await server.answer(bob, ConsentSet(cid="g-4", purpose="attendance", on=False))
    assert refusal(never) == ErrorCode.CONSENT_NOT_GRANTED
    response = await server.client.put(
        f"/v1/orgs/{ann.org_id}/purposes/media_share/off", headers=ann.headers
    )
    assert response.status_code in (200, 204), response.text
    off = await server.answer(bob, ConsentSet(cid="g-5", purpose="media_share", on=True))
    assert refusal(off) == ErrorCode.PURPOSE_SWITCHED_OFF
    rest = (await server.client.get("/v1/me/consents", headers=bob.headers)).json()
    assert {c["purpose"]: c["granted"] for c in rest["consents"]}["location_share"] is True
    history = (await server.client.get("/v1/me/consents/history", headers=bob.headers)).json()
    assert [(e["purpose"], e["action"], e["device_id"]) for e in history["history"]] == [
        ("location_share", "granted", bob.device["id"])
    ]


async def test_text_stays_untouched_by_consent(server: Harness) -> None:
    ann = await server.create_org()
    conv = await server.group(ann)
    plain = Send(cid="t-1", conv=conv.bytes, body=TextBody(text="no grant needed"))
    assert isinstance(await server.answer(ann, plain), Sent)
