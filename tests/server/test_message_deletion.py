"""Deleting a message or a file, over the real server and PostgreSQL: a tombstone (`erased`)
goes at once to every connected device that may hold it, devices offline at the time find
it in their catch-up (never the body), the row and the blob are gone; refusals change
nothing; consent withdrawal and the sweeper's clocks leave tombstones too, and tombstones
expire on their own retention."""

from __future__ import annotations

import uuid
from pathlib import Path

import trio

from loadtest.client import GatewayClient
from protocol import (
    Consent,
    Erased,
    FileBody,
    LocationBody,
    Msg,
    Send,
    Sent,
    ServerFrame,
    Sync,
    Synced,
    TextBody,
)
from storage.files import BlobStore
from tests.harness import Harness, Session, assert_error, receive_until
from tests.server.sweeps import DAY_S, sql, sweep_pass, sweeping_server

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200


def text(cid: str, conv: uuid.UUID, words: str) -> Send:
    return Send(cid=cid, conv=conv.bytes, body=TextBody(text=words))


async def sent(server: Harness, who: Session, frame: Send) -> Sent:
    answer = await server.answer(who, frame)
    assert isinstance(answer, Sent), answer
    return answer


async def erased(client: GatewayClient) -> Erased:
    frames = await receive_until(client, lambda f: isinstance(f, Erased))
    last = frames[-1]
    assert isinstance(last, Erased)
    return last


async def catch_up(server: Harness, who: Session, after: int) -> list[ServerFrame]:
    """Everything a device of `who` gets when it reconnects with cursor `after`."""
    async with await server.connect(who) as client:
        await client.send(Sync(after=after))
        return await receive_until(client, lambda f: isinstance(f, Synced))


async def delete(server: Harness, who: Session, conv: uuid.UUID, message: bytes) -> int:
    response = await server.client.delete(
        f"/v1/conversations/{conv}/messages/{uuid.UUID(bytes=message)}", headers=who.headers
    )
    return response.status_code


async def history(server: Harness, who: Session, conv: uuid.UUID) -> list[str]:
    response = await server.client.get(f"/v1/conversations/{conv}/messages", headers=who.headers)
    assert response.status_code == 200, response.text
    return [m["client_id"] for m in response.json()["messages"]]


async def test_a_deleted_message_reaches_every_device_live_and_in_catch_up(
    server: Harness,
) -> None:
    ann = await server.create_org()
    ann_phone = await server.login("olivia@acme.example")  # the sender's other device
    bob = await server.add_member(ann, "bob")
    carl = await server.add_member(ann, "carl")
    conv = await server.group(ann, bob, carl)
    bob_live = await server.synced(bob)
    ann_live = await server.synced(ann_phone)
    async with await server.synced(carl) as carl_once:  # carl sees it, then goes offline
        kept = await sent(server, ann, text("kept", conv, "lunch at noon"))
        gone = await sent(server, ann, text("gone", conv, "the vault code is 4711-ZX"))
        frames = await receive_until(carl_once, lambda f: isinstance(f, Msg) and f.cid == "gone")
        assert [f.cid for f in frames if isinstance(f, Msg)] == ["kept", "gone"]
    assert gone.pos is not None and kept.pos is not None
    carl_cursor = gone.pos

    assert await delete(server, ann, conv, gone.id) == 204

    for device in (bob_live, ann_live):
        notice = await erased(device)
        assert (notice.conv, notice.ids, notice.reason) == (
            conv.bytes,
            (gone.id,),
            "deleted_by_sender",
        )
        assert notice.pos > gone.pos
    # Carl's device was offline: its catch-up brings the tombstone, and no body.
    frames = await catch_up(server, carl, carl_cursor)
    assert [type(f) for f in frames] == [Erased, Synced]
    assert isinstance(frames[0], Erased) and frames[0].ids == (gone.id,)
    # A device syncing from before the message gets the rest, never the deleted body.
    frames = await catch_up(server, bob, 0)
    assert [f.cid for f in frames if isinstance(f, Msg)] == ["kept"]
    assert [f.ids for f in frames if isinstance(f, Erased)] == [(gone.id,)]
    # Gone from the store: history, the row, its receipts; the tombstone names no sender.
    assert await history(server, bob, conv) == ["kept"]
    url = server.settings.database_url
    assert url is not None
    db = url.get_secret_value()
    message_id = uuid.UUID(bytes=gone.id)
    assert await sql(db, "SELECT 1 FROM messages WHERE id = $1", message_id) == []
    assert await sql(db, "SELECT 1 FROM message_receipts WHERE message_id = $1", message_id) == []
    [row] = await sql(db, "SELECT t::text AS t FROM tombstones t WHERE message_id = $1", message_id)
    assert ann.id not in row["t"] and "4711" not in row["t"]
    # The audit log says what went, never which.
    entries = (await server.client.get("/v1/me/audit", headers=ann.headers)).json()["entries"]
    [entry] = [e for e in entries if e["action"] == "deletion"]
    assert entry["detail"] == {"what": "message", "count": 1}
    await bob_live.aclose()
    await ann_live.aclose()


async def test_deletion_is_refused_without_changing_anything(server: Harness) -> None:
    ann = await server.create_org()
    bob = await server.add_member(ann, "bob")
    conv = await server.group(ann, bob)
    mine = await sent(server, ann, text("mine", conv, "hello"))
    other = await server.create_org("Beta", "dina")

    response = await server.client.delete(
        f"/v1/conversations/{conv}/messages/{uuid.UUID(bytes=mine.id)}", headers=bob.headers
    )
    assert_error(response, 403, "forbidden")  # not the sender
    for who, message in ((ann, uuid.uuid4().bytes), (other, mine.id)):  # unknown, other org
        response = await server.client.delete(
            f"/v1/conversations/{conv}/messages/{uuid.UUID(bytes=message)}", headers=who.headers
        )
        assert_error(response, 404, "not_found")
    server.clock.advance(server.settings.reauth_window_s + 1)  # the login is no longer fresh
    response = await server.client.delete(
        f"/v1/conversations/{conv}/messages/{uuid.UUID(bytes=mine.id)}", headers=ann.headers
    )
    assert_error(response, 403, "reauth_required")
    assert await history(server, bob, conv) == ["mine"]

    await server.reauth(ann)
    assert await delete(server, ann, conv, mine.id) == 204
    assert await delete(server, ann, conv, mine.id) == 404  # already deleted
    assert await history(server, bob, conv) == []


async def test_deleting_a_file_erases_its_blob_and_the_messages_sharing_it(
    server: Harness,
) -> None:
    ann = await server.create_org()
    bob = await server.add_member(ann, "bob")
    conv = await server.group(ann, bob)
    await server.grant(ann, "media_share")
    upload = await server.client.post(
        f"/v1/conversations/{conv}/files?name=plan.png",
        headers={**ann.headers, "Content-Type": "image/png"},
        content=PNG,
    )
    file_id = uuid.UUID(upload.json()["id"])
    body = FileBody(file_id=file_id.bytes, name="plan.png", size=len(PNG), mime="image/png")
    tag = Consent(purpose="media_share", scope="conversation", retention="default")
    shared = await sent(server, ann, Send(cid="file-1", conv=conv.bytes, body=body, consent=tag))
    blob = BlobStore(server.settings.data_dir / "files").path(file_id)
    assert blob.exists()
    bob_live = await server.synced(bob)

    response = await server.client.delete(f"/v1/files/{file_id}", headers=bob.headers)
    assert_error(response, 403, "forbidden")  # bob may see it, but did not share it
    response = await server.client.delete(f"/v1/files/{file_id}", headers=ann.headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"messages_erased": 1}

    notice = await erased(bob_live)
    assert (notice.ids, notice.reason) == ((shared.id,), "deleted_by_sender")
    assert not blob.exists()
    assert (await server.client.get(f"/v1/files/{file_id}", headers=ann.headers)).status_code == 404
    assert await history(server, bob, conv) == []
    response = await server.client.delete(f"/v1/files/{file_id}", headers=ann.headers)
    assert_error(response, 404, "not_found")
    await bob_live.aclose()


async def test_consent_withdrawal_leaves_tombstones_for_offline_devices(server: Harness) -> None:
    ann = await server.create_org()
    bob = await server.add_member(ann, "bob")
    conv = await server.group(ann, bob)
    await server.grant(ann, "location_share")
    tag = Consent(purpose="location_share", scope="conversation", retention="until_withdrawn")
    here = LocationBody(lat=-6.2, lon=106.8, acc=10.0)
    shared = await sent(server, ann, Send(cid="loc", conv=conv.bytes, body=here, consent=tag))
    assert shared.pos is not None
    seen = await catch_up(server, bob, 0)  # bob's device gets it, then goes offline
    assert [f.cid for f in seen if isinstance(f, Msg)] == ["loc"]

    response = await server.client.delete("/v1/me/consents/location_share", headers=ann.headers)
    assert response.status_code == 200, response.text

    frames = await catch_up(server, bob, shared.pos)
    assert [type(f) for f in frames] == [Erased, Synced]
    notice = frames[0]
    assert isinstance(notice, Erased)
    assert (notice.ids, notice.reason) == ((shared.id,), "consent_withdrawn")


async def test_the_sweepers_erasures_leave_tombstones_that_expire(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with sweeping_server(nursery, database_url, tmp_path) as server:
        ann = await server.create_org()
        bob = await server.add_member(ann, "bob")
        conv = await server.group(ann, bob)
        await server.grant(ann, "location_share")
        tag = Consent(purpose="location_share", scope="conversation", retention=60)
        here = LocationBody(lat=-6.2, lon=106.8, acc=10.0)
        short = await sent(server, ann, Send(cid="short", conv=conv.bytes, body=here, consent=tag))
        assert short.pos is not None

        server.clock.advance(61)
        assert (await sweep_pass(server))["consent_clocks"]["rows"] == 1
        bob = await server.login("bob@members.example")  # tokens age with the clock
        frames = await catch_up(server, bob, short.pos)
        assert [type(f) for f in frames] == [Erased, Synced]
        assert isinstance(frames[0], Erased) and frames[0].reason == "retention"
        assert len(await sql(database_url, "SELECT 1 FROM tombstones")) == 1

        server.clock.advance(server.settings.tombstones_retention_days * DAY_S - 60)
        await sweep_pass(server)
        assert len(await sql(database_url, "SELECT 1 FROM tombstones")) == 1  # not yet
        server.clock.advance(120)
        assert (await sweep_pass(server))["tombstones"]["rows"] == 1
        assert await sql(database_url, "SELECT 1 FROM tombstones") == []
        bob = await server.login("bob@members.example")
        assert [type(f) for f in await catch_up(server, bob, short.pos)] == [Synced]
