"""Conversations over REST: open, list, membership, history. Sending is on the gateway."""

from __future__ import annotations

import uuid
from typing import Any

from quart import Blueprint

from server.api.context import actor, body, ctx
from server.api.models import ConversationIn, MembersIn
from server.api.params import BIGINT_MAX, int_arg, page_limit
from server.api.present import conversation_json, message_json, receipt_json
from server.errors import invalid

bp = Blueprint("conversations", __name__, url_prefix="/v1/conversations")


@bp.post("")
async def open_conversation() -> tuple[dict[str, Any], int]:
    who = await actor()
    req = await body(ConversationIn)
    handler = ctx().conversations
    if req.kind == "direct":
        if len(req.member_ids) != 1 or req.title is not None:
            raise invalid("a direct conversation takes exactly one member_id and no title")
        conversation, created = await handler.open_direct(who, req.member_ids[0])
        return conversation_json(conversation), 201 if created else 200
    if req.title is None:
        raise invalid("a group needs a title", "title")
    return conversation_json(await handler.create_group(who, req.title, req.member_ids)), 201


@bp.get("")
async def list_conversations() -> dict[str, Any]:
    conversations = await ctx().conversations.mine(await actor())
    return {"conversations": [conversation_json(c) for c in conversations]}


@bp.get("/<uuid:conversation_id>")
async def get_conversation(conversation_id: uuid.UUID) -> dict[str, Any]:
    return conversation_json(await ctx().conversations.get(await actor(), conversation_id))


@bp.post("/<uuid:conversation_id>/members")
async def add_members(conversation_id: uuid.UUID) -> dict[str, Any]:
    who = await actor()
    req = await body(MembersIn)
    conversation = await ctx().conversations.add_members(who, conversation_id, req.account_ids)
    return conversation_json(conversation)


@bp.delete("/<uuid:conversation_id>/members/<uuid:account_id>")
async def remove_member(conversation_id: uuid.UUID, account_id: uuid.UUID) -> dict[str, Any]:
    who = await actor()
    conversation = await ctx().conversations.remove_member(who, conversation_id, account_id)
    return conversation_json(conversation)


@bp.get("/<uuid:conversation_id>/messages")
async def history(conversation_id: uuid.UUID) -> dict[str, Any]:
    """`?before=<seq>&limit=1..200`, newest first; `next_before` continues further back."""
    who = await actor()
    before = int_arg("before", minimum=1, maximum=BIGINT_MAX)
    limit = page_limit()
    rows, receipts = await ctx().conversations.history(who, conversation_id, before, limit)
    by_message: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for r in receipts:
        by_message.setdefault(r.message_id, []).append(receipt_json(r))
    return {
        "messages": [{**message_json(m), "receipts": by_message.get(m.id, [])} for m in rows],
        "next_before": rows[-1].seq if len(rows) == limit else None,
    }
