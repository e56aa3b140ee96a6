"""Telling connected devices that consent-tagged data they saw is gone.

`consent_revoked` after a withdrawal (PROTOCOL.md 6.4) and `live_end` when a live-location
session ends (6.6), each to the devices of the audience that may have received the data:
the members of the conversation within the scope, and the sharer's own devices. Live only:
nothing here is stored. The erased messages themselves also leave tombstones, fanned out
as `erased` frames (server/gateway/erased.py) and replayed by catch-up (6.9).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

from protocol import ConsentRevoked, LiveEnd, encode
from protocol.frames_live import LiveEndReason
from server.services import Services
from storage.errors import NotFoundError
from storage.live import LiveSession
from storage.revocation import Revocation

logger = logging.getLogger(__name__)

IDS_PER_FRAME = 1000
END_REASONS: dict[str, LiveEndReason] = {r: r for r in ("stopped", "expired", "withdrawn")}


async def _audience(
    services: Services,
    conversation_id: uuid.UUID,
    sharer: uuid.UUID,
    scope: Iterable[uuid.UUID] | None,
) -> frozenset[uuid.UUID]:
    """The current members who may have seen data `sharer` shared in the conversation."""
    try:
        conversation = await services.conversations.get(conversation_id)
    except NotFoundError:
        return frozenset({sharer})
    members = frozenset(conversation.member_ids)
    if scope is None:
        return members | {sharer}
    return (members & frozenset(scope)) | {sharer}


async def announce_revocation(services: Services, revocation: Revocation) -> None:
    """Delete the erased files' blobs, then tell every device in the audience."""
    for file_id in revocation.files:
        await services.blobs.delete(file_id)
    at = int(revocation.at.timestamp() * 1000)
    who = revocation.account_id
    for audience in revocation.audiences:
        accounts = await _audience(services, audience.conversation_id, who, audience.scope)
        ids = [i.bytes for i in audience.erased]
        for start in range(0, max(len(ids), 1), IDS_PER_FRAME):
            frame = ConsentRevoked(
                who=who.bytes,
                purpose=revocation.purpose,
                conv=audience.conversation_id.bytes,
                ids=tuple(ids[start : start + IDS_PER_FRAME]),
                at=at,
            )
            services.hub.fan_out(accounts, None, encode(frame))
    await announce_live_end(services, revocation.ended)
    if revocation.audiences or revocation.files:
        logger.info(
            "consent withdrawn: %d messages and %d files erased, %d live sessions ended",
            sum(len(a.erased) for a in revocation.audiences),
            len(revocation.files),
            len(revocation.ended),
        )


async def announce_live_end(services: Services, sessions: Iterable[LiveSession]) -> None:
    for s in sessions:
        accounts = await _audience(services, s.conversation_id, s.account_id, s.scope)
        reason = END_REASONS.get(s.end_reason or "", "withdrawn")
        frame = LiveEnd(
            id=s.id.bytes, conv=s.conversation_id.bytes, who=s.account_id.bytes, reason=reason
        )
        services.hub.fan_out(accounts, None, encode(frame))
