"""Data-rights requests: members open theirs and follow them; the organization's owners and
admins list what is open and what is overdue, and answer.

Every request is due its organization's `request_deadline_days` after it was opened (15 by
default: the privacy policies promise an answer within 15 days). The features that do the
work (export, cancellation) open and close requests through storage/requests.py.
"""

from __future__ import annotations

import logging
import uuid

from server.errors import forbidden, invalid
from server.handlers.access import Actor, require_org
from server.services import Services
from storage.requests import KINDS, ORG_KINDS, STATUSES, RightsRequest

logger = logging.getLogger(__name__)


def _require_admin(actor: Actor, org_id: uuid.UUID) -> None:
    require_org(actor, org_id)
    if not actor.is_admin:
        raise forbidden("only the organization's owners and admins handle its requests")


class RequestHandler:
    def __init__(self, services: Services) -> None:
        self._s = services

    async def open(self, actor: Actor, kind: str, details: str | None) -> RightsRequest:
        """Open a request of the actor's own (the organization's kinds: its admins only)."""
        if kind not in KINDS:
            raise invalid(f"unknown kind; one of: {', '.join(KINDS)}", "kind")
        if kind in ORG_KINDS and not actor.is_admin:
            raise forbidden(f"only the organization's owners and admins ask for {kind}")
        request = await self._s.requests.open(
            actor.org_id, actor.account_id, kind, self._s.clock(), details
        )
        logger.info("request %s (%s) opened in org %s", request.id, kind, actor.org_id)
        return request

    async def mine(self, actor: Actor, before: uuid.UUID | None, limit: int) -> list[RightsRequest]:
        return await self._s.requests.mine(actor.account_id, before, limit)

    async def for_org(
        self,
        actor: Actor,
        org_id: uuid.UUID,
        *,
        status: str | None,
        overdue: bool,
        before: uuid.UUID | None,
        limit: int,
    ) -> list[RightsRequest]:
        """The organization's requests, newest first; `overdue`: only those unanswered past
        their deadline now."""
        _require_admin(actor, org_id)
        if status is not None and status not in STATUSES:
            raise invalid(f"unknown status; one of: {', '.join(STATUSES)}", "status")
        return await self._s.requests.for_org(
            org_id,
            status=status,
            overdue_at=self._s.clock() if overdue else None,
            before=before,
            limit=limit,
        )

    async def answer(
        self,
        actor: Actor,
        org_id: uuid.UUID,
        request_id: uuid.UUID,
        status: str,
        note: str | None,
    ) -> RightsRequest:
        """Move a request to in_progress, or close it done or refused (a refusal says why).
        request_closed once it is closed; not_found for another organization's."""
        _require_admin(actor, org_id)
        if status not in ("in_progress", "done", "refused"):
            raise invalid("must be in_progress, done or refused", "status")
        if status == "refused" and not note:
            raise invalid("a refusal needs a note saying why", "note")
        request = await self._s.requests.set_status(
            request_id, status, self._s.clock(), note, actor.account_id, org_id
        )
        logger.info("request %s in org %s is now %s", request.id, org_id, status)
        return request
