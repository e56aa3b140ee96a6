"""The channel's consent and live-location frames (PROTOCOL.md 5.1, 6.4, 6.6).

`consent_get`/`consent_set` go through the same handler as the HTTP API. A live session is
a stored row (never a position); every `live_pos` is checked against it and against the
sharer's grant as it arrives, then fanned out as an ephemeral `msg` and forgotten.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from protocol import (
    Consent,
    ConsentGet,
    Consents,
    ConsentSet,
    ErrorCode,
    GrantState,
    LiveOk,
    LivePos,
    LiveStart,
    LiveStop,
    LocationBody,
    Msg,
    encode,
)
from server.gateway.announce import announce_live_end
from server.gateway.committer import (
    CONSENT_NOT_GRANTED_TEXT,
    NOT_MEMBER_TEXT,
    err_frame,
    recipients,
)
from server.handlers.consent import ConsentHandler
from storage.consent import PURPOSES, ConsentError, Grant
from storage.live import LOCATION_PURPOSE, LiveSession

if TYPE_CHECKING:
    from server.gateway.session import Session

ENDED_TEXT = "no such live session of yours, or it ended"
CONSENT_ERRORS = {
    "switched_off": ErrorCode.PURPOSE_SWITCHED_OFF,
    "not_granted": ErrorCode.CONSENT_NOT_GRANTED,
}


async def handle(
    session: Session, frame: ConsentGet | ConsentSet | LiveStart | LivePos | LiveStop
) -> None:
    if isinstance(frame, ConsentGet):
        await consent_get(session, frame.cid)
    elif isinstance(frame, ConsentSet):
        await consent_set(session, frame)
    elif isinstance(frame, LiveStart):
        await live_start(session, frame)
    elif isinstance(frame, LivePos):
        await live_pos(session, frame)
    else:
        await live_stop(session, frame)


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def consents_frame(cid: str, grants: list[Grant]) -> bytes:
    return encode(
        Consents(
            cid=cid,
            grants=tuple(
                GrantState(
                    purpose=g.purpose,
                    on=g.granted,
                    at=None if g.changed_at is None else ms(g.changed_at),
                    off=g.switched_off,
                )
                for g in grants
            ),
        )
    )


async def consent_get(session: Session, cid: str) -> None:
    grants = await session.gw.services.consent.state(session.org_id, session.account_id)
    session.conn.reply(consents_frame(cid, grants))


async def consent_set(session: Session, frame: ConsentSet) -> None:
    if frame.purpose not in PURPOSES:
        text = f"purpose: unknown; one of: {', '.join(PURPOSES)}"
        session.conn.reply(err_frame(ErrorCode.INVALID_FIELD, text, frame.cid, frame.TYPE))
        return
    if frame.on and session.gw.hub.policy_blocked(session.conn):
        text = "accept the current privacy policy first (POST /v1/me/policy/accept)"
        session.conn.reply(err_frame(ErrorCode.RECONSENT_REQUIRED, text, frame.cid, frame.TYPE))
        return
    handler = ConsentHandler(session.gw.services)
    try:
        grants = await handler.change(
            session.org_id, session.account_id, session.device_id, frame.purpose, frame.on
        )
    except ConsentError as exc:
        session.conn.reply(err_frame(CONSENT_ERRORS[exc.reason], str(exc), frame.cid, frame.TYPE))
        return
    session.conn.reply(consents_frame(frame.cid, grants))


async def live_start(session: Session, frame: LiveStart) -> None:
    """Open a session (capped at the server's longest) if a located send could go out now."""
    services = session.gw.services
    conversation_id = uuid.UUID(bytes=frame.conv)
    members = await session.members(conversation_id)
    if members is None:
        session.conn.reply(err_frame(ErrorCode.NOT_MEMBER, NOT_MEMBER_TEXT, frame.cid, frame.TYPE))
        return
    scope = (
        None if frame.scope == "conversation" else tuple(uuid.UUID(bytes=a) for a in frame.scope)
    )
    refusal = await session.tag_refusal(members, scope, LOCATION_PURPOSE)
    if refusal is not None:
        session.conn.reply(err_frame(*refusal, frame.cid, frame.TYPE))
        return
    now = services.clock()
    longest = now + timedelta(seconds=services.settings.live_location_max_s)
    if frame.until <= ms(now):
        text = "until: must be in the future"
        session.conn.reply(err_frame(ErrorCode.INVALID_FIELD, text, frame.cid, frame.TYPE))
        return
    until = min(datetime.fromtimestamp(frame.until / 1000, now.tzinfo), longest)
    live = LiveSession(
        uuid.uuid4(), session.account_id, session.device_id, conversation_id, scope, now, until
    )
    await services.live.start(live)
    session.conn.reply(encode(LiveOk(cid=frame.cid, id=live.id.bytes, until=ms(until))))


async def live_pos(session: Session, frame: LivePos) -> None:
    """Fan one position out, ephemeral, if the session is open and the grant held now."""
    services = session.gw.services
    check = await services.live.check(uuid.UUID(bytes=frame.id), session.account_id)
    if check is None:
        session.conn.reply(err_frame(ErrorCode.LIVE_SESSION_ENDED, ENDED_TEXT, None, frame.TYPE))
        return
    live, now = check.session, services.clock()
    if live.end_reason == "withdrawn" or not check.granted:
        text = CONSENT_NOT_GRANTED_TEXT
        session.conn.reply(err_frame(ErrorCode.CONSENT_NOT_GRANTED, text, None, frame.TYPE))
        return
    if live.ended_at is not None or live.expires_at <= now:
        session.conn.reply(err_frame(ErrorCode.LIVE_SESSION_ENDED, ENDED_TEXT, None, frame.TYPE))
        return
    members = await session.members(live.conversation_id)
    if members is None:
        session.conn.reply(err_frame(ErrorCode.NOT_MEMBER, NOT_MEMBER_TEXT, None, frame.TYPE))
        return
    scope = live.scope
    update = Msg(
        id=uuid.uuid4().bytes,
        conv=live.conversation_id.bytes,
        seq=None,
        pos=None,
        sender=session.account_id.bytes,
        sender_device=session.device_id.bytes,
        body=LocationBody(
            lat=frame.lat, lon=frame.lon, acc=frame.acc, live_until=ms(live.expires_at)
        ),
        consent=Consent(
            purpose=LOCATION_PURPOSE,
            scope="conversation" if scope is None else tuple(a.bytes for a in scope),
            retention="ephemeral",
        ),
        sent_at=ms(now),
    )
    session.gw.hub.fan_out(recipients(members, session.account_id, scope), None, encode(update))


async def live_stop(session: Session, frame: LiveStop) -> None:
    services = session.gw.services
    ended = await services.live.stop(
        uuid.UUID(bytes=frame.id), session.account_id, services.clock()
    )
    if ended is None:
        session.conn.reply(err_frame(ErrorCode.LIVE_SESSION_ENDED, ENDED_TEXT, None, frame.TYPE))
        return
    await announce_live_end(services, [ended])
