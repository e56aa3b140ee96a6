"""Live location and ephemeral locations over the real server: sessions with a capped end,
updates checked one by one (expiry, stop, withdrawal mid-session), `live_end` and
`consent_revoked` to those who saw them, and no trace of a position anywhere afterwards."""

from __future__ import annotations

import uuid
from pathlib import Path

import trio

from loadtest.client import GatewayClient
from protocol import (
    Consent,
    ConsentRevoked,
    Consents,
    ConsentSet,
    Err,
    ErrorCode,
    LiveEnd,
    LiveOk,
    LivePos,
    LiveStart,
    LiveStop,
    LocationBody,
    Msg,
    Send,
    Sent,
    ServerFrame,
    Synced,
)
from tests.harness import Harness, receive_until, start_harness
from tests.privacy_search import capture_logs, coordinate_needles, find_everywhere


def in_an_hour(server: Harness) -> int:
    return int(server.clock().timestamp() * 1000) + 3_600_000


async def start(server: Harness, client: GatewayClient, conv: uuid.UUID, until_ms: int) -> LiveOk:
    await client.send(
        LiveStart(cid="live-1", conv=conv.bytes, scope="conversation", until=until_ms)
    )
    [answer] = [
        f
        for f in await receive_until(
            client, lambda f: getattr(f, "cid", getattr(f, "ref", None)) == "live-1"
        )
        if getattr(f, "cid", getattr(f, "ref", None)) == "live-1"
    ]
    assert isinstance(answer, LiveOk), answer
    return answer


async def refused(client: GatewayClient, code: ErrorCode) -> None:
    frames = await receive_until(client, lambda f: isinstance(f, Err))
    err = frames[-1]
    assert isinstance(err, Err) and (err.code, err.ref_type) == (code, "live_pos"), err


async def test_withdrawal_mid_session_refuses_the_next_update_and_tells_the_viewers(
    server: Harness,
) -> None:
    ann = await server.create_org()
    bob = await server.add_member(ann, "bob")
    conv = await server.group(ann, bob)
    viewer = await server.synced(bob)
    sharer = await server.synced(ann)
    refusal = await server.answer(
        ann,
        LiveStart(cid="live-0", conv=conv.bytes, scope="conversation", until=in_an_hour(server)),
    )
    assert isinstance(refusal, Err) and refusal.code == ErrorCode.CONSENT_NOT_GRANTED
    await server.grant(ann, "location_share")
    session = await start(server, sharer, conv, in_an_hour(server))

    await sharer.send(LivePos(id=session.id, lat=-6.2, lon=106.8, acc=8.0))
    [update] = [
        f for f in await receive_until(viewer, lambda f: isinstance(f, Msg)) if isinstance(f, Msg)
    ]
    assert isinstance(update.body, LocationBody) and update.body.live_until == session.until
    assert update.pos is None and update.seq is None  # ephemeral: never stored
    assert update.consent is not None and update.consent.retention == "ephemeral"

    await sharer.send(ConsentSet(cid="off", purpose="location_share", on=False))
    answer = await receive_until(sharer, lambda f: isinstance(f, Consents))
    assert isinstance(answer[-1], Consents)
    seen: list[ServerFrame] = []
    while not {ConsentRevoked, LiveEnd} <= {type(f) for f in seen}:
        seen += await receive_until(viewer, lambda f: isinstance(f, ConsentRevoked | LiveEnd))
    [ended] = [f for f in seen if isinstance(f, LiveEnd)]
    assert (ended.id, ended.who, ended.reason) == (session.id, ann.account_uuid.bytes, "withdrawn")
    [revoked] = [f for f in seen if isinstance(f, ConsentRevoked)]
    assert (revoked.purpose, revoked.conv, revoked.ids) == ("location_share", conv.bytes, ())

    await sharer.send(LivePos(id=session.id, lat=-6.2, lon=106.8, acc=8.0))
    await refused(sharer, ErrorCode.CONSENT_NOT_GRANTED)
    await sharer.aclose()
    await viewer.aclose()


async def test_a_session_is_capped_expires_and_belongs_to_its_sharer(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with start_harness(
        nursery, database_url, tmp_path, sweep_interval_s=0.1, live_location_max_s=60
    ) as server:
        ann = await server.create_org()
        bob = await server.add_member(ann, "bob")
        conv = await server.group(ann, bob)
        await server.grant(ann, "location_share")
        viewer = await server.synced(bob)
        sharer = await server.synced(ann)
        asked = in_an_hour(server)
        session = await start(server, sharer, conv, asked)
        now_ms = int(server.clock().timestamp() * 1000)
        assert now_ms + 55_000 <= session.until <= now_ms + 60_000 < asked  # capped

        # Bob cannot feed or stop Ann's session; an unknown id is refused the same way.
        await viewer.send(LivePos(id=session.id, lat=1.0, lon=2.0, acc=3.0))
        await refused(viewer, ErrorCode.LIVE_SESSION_ENDED)
        await viewer.send(LivePos(id=uuid.uuid4().bytes, lat=1.0, lon=2.0, acc=3.0))
        await refused(viewer, ErrorCode.LIVE_SESSION_ENDED)

        server.clock.advance(61)
        await sharer.send(LivePos(id=session.id, lat=-6.2, lon=106.8, acc=8.0))
        await refused(sharer, ErrorCode.LIVE_SESSION_ENDED)
        frames = await receive_until(viewer, lambda f: isinstance(f, LiveEnd))
        assert frames[-1] == LiveEnd(
            id=session.id, conv=conv.bytes, who=ann.account_uuid.bytes, reason="expired"
        )
        assert not any(isinstance(f, Msg) for f in frames)  # no update got through

        # A new session, stopped by its sharer: the viewers hear it, later updates fail.
        await sharer.send(
            LiveStart(cid="live-2", conv=conv.bytes, scope="conversation", until=in_an_hour(server))
        )
        [second] = [
            f
            for f in await receive_until(sharer, lambda f: isinstance(f, LiveOk))
            if isinstance(f, LiveOk)
        ]
        await sharer.send(LiveStop(id=second.id))
        frames = await receive_until(viewer, lambda f: isinstance(f, LiveEnd))
        assert isinstance(frames[-1], LiveEnd) and frames[-1].reason == "stopped"
        await sharer.send(LivePos(id=second.id, lat=-6.2, lon=106.8, acc=8.0))
        await refused(sharer, ErrorCode.LIVE_SESSION_ENDED)
        await sharer.aclose()
        await viewer.aclose()


async def test_ephemeral_locations_reach_online_devices_only_and_leave_no_trace(
    server: Harness,
) -> None:
    """After ephemeral location messages and live updates, the positions are nowhere: not
    in any table, not in the log, not in the data folder, not in PostgreSQL's files."""
    points = [(-6.987651, 106.123457), (-7.246813, 112.135792)]
    with capture_logs() as logs:
        ann = await server.create_org()
        bob = await server.add_member(ann, "bob")
        conv = await server.group(ann, bob)
        await server.grant(ann, "location_share")
        online = await server.synced(bob)
        offline = await server.login("bob@members.example")  # enrolled, not connected
        lat, lon = points[0]
        share = Send(
            cid="here-1",
            conv=conv.bytes,
            body=LocationBody(lat=lat, lon=lon, acc=4.5),
            consent=Consent(purpose="location_share", scope="conversation", retention="ephemeral"),
        )
        sent = await server.answer(ann, share)
        assert isinstance(sent, Sent) and sent.pos is None
        got = await receive_until(online, lambda f: isinstance(f, Msg))
        assert isinstance(got[-1], Msg) and got[-1].cid == "here-1"

        sharer = await server.synced(ann)
        session = await start(server, sharer, conv, in_an_hour(server))
        lat, lon = points[1]
        await sharer.send(LivePos(id=session.id, lat=lat, lon=lon, acc=4.5))
        got = await receive_until(online, lambda f: isinstance(f, Msg))
        last = got[-1]
        assert isinstance(last, Msg) and isinstance(last.body, LocationBody)
        assert last.body.lat == lat
        await sharer.send(LiveStop(id=session.id))
        await receive_until(online, lambda f: isinstance(f, LiveEnd))

        later = await server.connect(offline)  # catches up: none of it
        await later.sync(0)
        caught_up = await receive_until(later, lambda f: isinstance(f, Synced))
        assert not any(isinstance(f, Msg) for f in caught_up)
        await later.aclose()
        await sharer.aclose()
        await online.aclose()
        caught = await server.client.get(f"/v1/conversations/{conv}/messages", headers=bob.headers)
        assert caught.json()["messages"] == []
    needles = coordinate_needles(*(value for point in points for value in point))
    findings = await find_everywhere(server, needles, logs)
    assert findings.found == []
    assert logs.lines, "the log capture saw nothing"
    places = " ".join(findings.searched)
    assert "database" in places and "log output" in places and "data folder" in places
    if server.postgres is not None:
        assert "PostgreSQL log" in places and "PostgreSQL cluster" in places
