"""Retention settings: the organization's (its admins), a conversation's own (its owner or
the organization's admins), the schedule every member may read, and the sweeper's state for
the operator.

A conversation's setting replaces its organization's. Only the organization's owners and
admins may keep a conversation's messages longer than the organization does: a conversation
owner may only shorten it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from server.errors import forbidden, not_found
from server.handlers.access import Actor, require_operator, require_org
from server.retention import schedule
from server.services import Services
from storage.errors import NotFoundError
from storage.retention import KEEP, ConversationRetention, OrgRetention


@dataclass(frozen=True, slots=True)
class OrgRetentionView:
    settings: OrgRetention
    schedule: list[dict[str, str]]


def _longer(days: int | None, limit: int | None) -> bool:
    """Is keeping for `days` (None: until deleted) longer than for `limit`?"""
    if limit is None:
        return False
    return days is None or days > limit


class RetentionHandler:
    def __init__(self, services: Services) -> None:
        self._s = services

    async def org(self, actor: Actor, org_id: uuid.UUID) -> OrgRetentionView:
        """Any member: the organization's settings and the whole schedule."""
        require_org(actor, org_id)
        settings = await self._s.retention.org(org_id)
        return OrgRetentionView(settings, schedule(self._s.settings))

    async def update_org(
        self, actor: Actor, org_id: uuid.UUID, message_days: Any = KEEP, deadline_days: Any = KEEP
    ) -> OrgRetentionView:
        """Owners and admins: the message retention (None: kept until deleted) and the
        number of days the organization has to answer a request (new requests only)."""
        require_org(actor, org_id)
        if not actor.is_admin:
            raise forbidden("only the organization's owners and admins change its retention")
        settings = await self._s.retention.set_org(
            org_id, message_days=message_days, deadline_days=deadline_days
        )
        return OrgRetentionView(settings, schedule(self._s.settings))

    async def _conversation(
        self, actor: Actor, conversation_id: uuid.UUID
    ) -> tuple[ConversationRetention, bool]:
        """The conversation's setting, and whether the actor may change it. not_found unless
        the actor is a member or one of its organization's admins (no probing)."""
        try:
            conversation = await self._s.conversations.get(conversation_id)
        except NotFoundError:
            raise not_found("no such conversation") from None
        member = actor.account_id in conversation.member_ids
        admin = actor.is_admin and conversation.org_id == actor.org_id
        if not (member or admin):
            raise not_found("no such conversation")
        owner = member and (
            conversation.kind == "direct" or conversation.created_by == actor.account_id
        )
        return await self._s.retention.conversation(conversation_id), admin or owner

    async def conversation(self, actor: Actor, conversation_id: uuid.UUID) -> ConversationRetention:
        return (await self._conversation(actor, conversation_id))[0]

    async def set_conversation(
        self, actor: Actor, conversation_id: uuid.UUID, days: int | None
    ) -> ConversationRetention:
        """The conversation's own retention (None: kept until deleted). Its owner (either
        member of a direct conversation) may keep messages no longer than the organization
        does; the organization's owners and admins may set anything."""
        current, may = await self._conversation(actor, conversation_id)
        if not may:
            raise forbidden(
                "only the conversation's owner or the organization's admins set its retention"
            )
        if not actor.is_admin and _longer(days, current.org_days):
            raise forbidden(
                f"your organization keeps messages {current.org_days} days: only its admins may "
                "keep a conversation's messages longer"
            )
        return await self._s.retention.set_conversation(
            conversation_id, days, actor.account_id, self._s.clock()
        )

    async def clear_conversation(
        self, actor: Actor, conversation_id: uuid.UUID
    ) -> ConversationRetention:
        """Back to the organization's setting (whoever may set the conversation's own)."""
        _, may = await self._conversation(actor, conversation_id)
        if not may:
            raise forbidden(
                "only the conversation's owner or the organization's admins set its retention"
            )
        return await self._s.retention.clear_conversation(conversation_id)

    def operator(self, authorization: str | None) -> dict[str, Any]:
        """For whoever runs the server: the schedule and this process's sweeper."""
        require_operator(self._s.settings, authorization)
        return {
            "schedule": schedule(self._s.settings),
            "sweeper": self._s.sweep_status.as_json(),
        }
