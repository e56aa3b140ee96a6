"""Notices from an organization's owners and admins to its members: the service is ending
(sent at least `service_ending_notice_days` ahead, 30 by default: what the privacy policies
promise), or a security incident, to every member or to the accounts it affected.

A notice is stored (members read theirs at `GET /v1/me/notices`), queued as a push for every
registered device of its recipients in the same transaction (storage/push_notices.py: a job
of its own per device and notice, never moot and never merged with message pushes, a generic
alert with the notice id and kind, never its text), and handed at once to every live
connection of its recipients in this process as a `notice` frame (PROTOCOL.md 6.8); like the
`policy` frame, several processes will need it on the bus.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from protocol import OrgNotice, encode
from server.errors import ApiError, ApiErrorCode, forbidden, invalid
from server.handlers.access import Actor, require_org
from server.services import Services
from storage.notices import KINDS, NewNotice, Notice

logger = logging.getLogger(__name__)


def _require_admin(actor: Actor, org_id: uuid.UUID) -> None:
    require_org(actor, org_id)
    if not actor.is_admin:
        raise forbidden("only the organization's owners and admins send notices")


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


class NoticeHandler:
    def __init__(self, services: Services) -> None:
        self._s = services

    def _check(self, kind: str, ends_at: datetime | None, now: datetime) -> None:
        if kind not in KINDS:
            raise invalid(f"unknown kind; one of: {', '.join(KINDS)}", "kind")
        if kind != "service_ending":
            if ends_at is not None:
                raise invalid("only a service_ending notice has an end date", "ends_at")
            return
        if ends_at is None:
            raise invalid("a service_ending notice needs the last day of service", "ends_at")
        days = self._s.settings.service_ending_notice_days
        earliest = now + timedelta(days=days)
        if ends_at < earliest:
            raise ApiError(
                ApiErrorCode.NOTICE_PERIOD_TOO_SHORT,
                f"members must be told at least {days} days before the service ends: ends_at "
                f"must be {earliest.isoformat(timespec='seconds')} or later",
                details=[{"field": "ends_at", "problem": f"less than {days} days ahead"}],
            )

    async def send(
        self,
        actor: Actor,
        org_id: uuid.UUID,
        kind: str,
        title: str,
        text: str,
        ends_at: datetime | None,
        recipients: list[uuid.UUID] | None,
    ) -> tuple[Notice, list[uuid.UUID]]:
        """Store the notice and tell its recipients' live devices. notice_period_too_short
        for a service ending too soon; not_found (nothing stored) for a listed account that
        is not a member."""
        _require_admin(actor, org_id)
        now = self._s.clock()
        self._check(kind, ends_at, now)
        new = NewNotice(
            kind, title, text, ends_at, None if recipients is None else tuple(recipients)
        )
        notice, listed, pushes = await self._s.notices.send(org_id, new, actor.account_id, now)
        frame = encode(
            OrgNotice(
                id=notice.id.bytes,
                kind="service_ending" if notice.kind == "service_ending" else "security_incident",
                title=notice.title,
                text=notice.body,
                at=_ms(notice.sent_at),
                ends_at=None if notice.ends_at is None else _ms(notice.ends_at),
            )
        )
        if notice.everyone:
            handed = self._s.hub.fan_out_org(org_id, frame)
        else:
            handed = self._s.hub.fan_out(listed, None, frame)
        logger.info(
            "notice %s (%s) sent in org %s to %s: %d connections told, %d pushes queued",
            notice.id,
            notice.kind,
            org_id,
            "everyone" if notice.everyone else f"{len(listed)} accounts",
            handed,
            pushes,
        )
        return notice, listed

    async def mine(self, actor: Actor, before: uuid.UUID | None, limit: int) -> list[Notice]:
        return await self._s.notices.mine(actor.org_id, actor.account_id, before, limit)

    async def for_org(
        self, actor: Actor, org_id: uuid.UUID, before: uuid.UUID | None, limit: int
    ) -> list[tuple[Notice, list[uuid.UUID] | None]]:
        _require_admin(actor, org_id)
        return await self._s.notices.for_org(org_id, before, limit)
