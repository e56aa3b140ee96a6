"""Retention: the organization's settings and schedule, a conversation's own setting, and
the sweeper's state for the operator."""

from __future__ import annotations

import uuid
from typing import Any

from quart import Blueprint, request

from server.api.context import actor, body, ctx
from server.api.models import ConversationRetentionIn, OrgRetentionPatch
from server.api.present import iso
from server.errors import invalid
from server.handlers.retention import OrgRetentionView
from storage.retention import ConversationRetention

bp = Blueprint("retention", __name__, url_prefix="/v1")


def org_retention_json(org_id: uuid.UUID, view: OrgRetentionView) -> dict[str, Any]:
    return {
        "org_id": str(org_id),
        "message_retention_days": view.settings.message_retention_days,
        "request_deadline_days": view.settings.request_deadline_days,
        "schedule": view.schedule,
    }


def conversation_retention_json(
    conversation_id: uuid.UUID, r: ConversationRetention
) -> dict[str, Any]:
    return {
        "conversation_id": str(conversation_id),
        "message_retention_days": r.days,  # what applies (null: kept until deleted)
        "set_by": "conversation" if r.own else "organization",
        "organization_message_retention_days": r.org_days,
        "changed_by": None if r.set_by is None else str(r.set_by),
        "changed_at": iso(r.set_at),
    }


@bp.get("/orgs/<uuid:org_id>/retention")
async def org_retention(org_id: uuid.UUID) -> dict[str, Any]:
    return org_retention_json(org_id, await ctx().retention.org(await actor(), org_id))


@bp.patch("/orgs/<uuid:org_id>/retention")
async def update_org_retention(org_id: uuid.UUID) -> dict[str, Any]:
    who = await actor()
    req = await body(OrgRetentionPatch)
    try:
        changes = req.changes()
    except ValueError as exc:
        raise invalid(str(exc)) from None
    mapping = {"message_retention_days": "message_days", "request_deadline_days": "deadline_days"}
    view = await ctx().retention.update_org(
        who, org_id, **{mapping[k]: v for k, v in changes.items()}
    )
    return org_retention_json(org_id, view)


@bp.get("/conversations/<uuid:conversation_id>/retention")
async def conversation_retention(conversation_id: uuid.UUID) -> dict[str, Any]:
    found = await ctx().retention.conversation(await actor(), conversation_id)
    return conversation_retention_json(conversation_id, found)


@bp.put("/conversations/<uuid:conversation_id>/retention")
async def set_conversation_retention(conversation_id: uuid.UUID) -> dict[str, Any]:
    who = await actor()
    req = await body(ConversationRetentionIn)
    changed = await ctx().retention.set_conversation(
        who, conversation_id, req.message_retention_days
    )
    return conversation_retention_json(conversation_id, changed)


@bp.delete("/conversations/<uuid:conversation_id>/retention")
async def clear_conversation_retention(conversation_id: uuid.UUID) -> dict[str, Any]:
    changed = await ctx().retention.clear_conversation(await actor(), conversation_id)
    return conversation_retention_json(conversation_id, changed)


@bp.get("/operator/retention")
async def operator_retention() -> dict[str, Any]:
    return ctx().retention.operator(request.headers.get("Authorization"))
