"""Conversations: who may open, join, leave and read them."""

from __future__ import annotations

import uuid

from server.errors import ApiError, ApiErrorCode, forbidden, not_found
from server.handlers.access import Actor
from server.services import Services
from storage.conversations import Conversation
from storage.messages import StoredMessage
from storage.receipts import ReceiptRecord

HISTORY_PAGE_MAX = 200
GROUP_MEMBERS_MAX = 5000


class ConversationHandler:
    def __init__(self, services: Services) -> None:
        self._s = services

    async def open_direct(self, actor: Actor, other: uuid.UUID) -> tuple[Conversation, bool]:
        """The actor's one 1:1 conversation with `other` (same org); True if new."""
        if other == actor.account_id:
            raise ApiError(ApiErrorCode.INVALID_REQUEST, "a direct conversation needs someone else")
        return await self._s.conversations.open_direct(actor.org_id, actor.account_id, other)

    async def create_group(
        self, actor: Actor, title: str, members: list[uuid.UUID]
    ) -> Conversation:
        if len(set(members)) >= GROUP_MEMBERS_MAX:
            raise ApiError(
                ApiErrorCode.INVALID_REQUEST, f"a group holds at most {GROUP_MEMBERS_MAX} members"
            )
        return await self._s.conversations.create_group(
            actor.org_id, actor.account_id, title, members
        )

    async def get(self, actor: Actor, conversation_id: uuid.UUID) -> Conversation:
        """The conversation, if the actor is a member; not_found otherwise (no probing)."""
        conversation = await self._s.conversations.get(conversation_id)
        if actor.account_id not in conversation.member_ids:
            raise not_found("no such conversation")
        return conversation

    async def mine(self, actor: Actor) -> list[Conversation]:
        return await self._s.conversations.for_account(actor.account_id)

    async def add_members(
        self, actor: Actor, conversation_id: uuid.UUID, members: list[uuid.UUID]
    ) -> Conversation:
        """Any member of a group may add colleagues from the same organization."""
        conversation = await self.get(actor, conversation_id)
        if conversation.kind != "group":
            raise forbidden("members of a direct conversation cannot change")
        if len(set(conversation.member_ids) | set(members)) > GROUP_MEMBERS_MAX:
            raise ApiError(
                ApiErrorCode.INVALID_REQUEST, f"a group holds at most {GROUP_MEMBERS_MAX} members"
            )
        return await self._s.conversations.add_members(conversation_id, actor.org_id, members)

    async def remove_member(
        self, actor: Actor, conversation_id: uuid.UUID, account_id: uuid.UUID
    ) -> Conversation:
        """Anyone may leave a group; its creator and org admins may remove others."""
        conversation = await self.get(actor, conversation_id)
        if conversation.kind != "group":
            raise forbidden("members of a direct conversation cannot change")
        if account_id != actor.account_id and not (
            actor.is_admin or conversation.created_by == actor.account_id
        ):
            raise forbidden("only the group's creator or an admin may remove others")
        return await self._s.conversations.remove_member(conversation_id, account_id)

    async def history(
        self, actor: Actor, conversation_id: uuid.UUID, before_seq: int | None, limit: int
    ) -> tuple[list[StoredMessage], list[ReceiptRecord]]:
        """Messages the actor may see, newest first, below `before_seq`, and their receipts."""
        await self.get(actor, conversation_id)
        limit = max(1, min(limit, HISTORY_PAGE_MAX))
        rows = await self._s.messages.history(conversation_id, actor.account_id, before_seq, limit)
        receipts = await self._s.receipts.for_messages(conversation_id, [m.id for m in rows])
        return rows, receipts
