"""Data-rights requests (members open and follow theirs; admins list and answer) and
notices (admins send; members read theirs)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from quart import Blueprint, request

from server.api.context import actor, body, ctx
from server.api.models import NoticeIn, RequestAnswerIn, RequestIn
from server.api.params import page_limit, uuid_arg
from server.api.present import iso
from server.errors import invalid
from storage.notices import Notice
from storage.requests import RightsRequest

bp = Blueprint("rights", __name__, url_prefix="/v1")


def _id(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


def request_json(r: RightsRequest, now: datetime) -> dict[str, Any]:
    return {
        "id": str(r.id),
        "org_id": str(r.org_id),
        "account_id": _id(r.account_id),
        "kind": r.kind,
        "details": r.details,
        "status": r.status,
        "opened_at": iso(r.opened_at),
        "due_at": iso(r.due_at),
        "overdue": r.overdue(now),
        "note": r.note,
        "handled_by": _id(r.handled_by),
        "updated_at": iso(r.updated_at),
        "closed_at": iso(r.closed_at),
        "answered_late": r.answered_late,
    }


def notice_json(n: Notice) -> dict[str, Any]:
    return {
        "id": str(n.id),
        "kind": n.kind,
        "title": n.title,
        "text": n.body,
        "sent_at": iso(n.sent_at),
        "ends_at": iso(n.ends_at),
    }


def admin_notice_json(n: Notice, recipients: list[uuid.UUID] | None) -> dict[str, Any]:
    return {
        **notice_json(n),
        "sent_by": _id(n.sent_by),
        "account_ids": None if recipients is None else [str(a) for a in recipients],
    }


def id_arg(name: str) -> uuid.UUID | None:
    """The query parameter as an id (paging: the last id of the previous page), or None."""
    return uuid_arg(name, "must be an id from the previous page's `next`")


def bool_arg(name: str) -> bool:
    value = request.args.get(name, "false")
    if value not in ("true", "false"):
        raise invalid("must be true or false", name)
    return value == "true"


def page(items: list[Any], limit: int) -> str | None:
    """`next`: where the following page starts (`?before=`), or None after the last."""
    return str(items[-1].id) if len(items) == limit else None


@bp.post("/me/requests")
async def open_request() -> tuple[dict[str, Any], int]:
    who = await actor()
    req = await body(RequestIn)
    opened = await ctx().requests.open(who, req.kind, req.details)
    return request_json(opened, ctx().services.clock()), 201


@bp.get("/me/requests")
async def my_requests() -> dict[str, Any]:
    who = await actor()
    limit = page_limit()
    found = await ctx().requests.mine(who, id_arg("before"), limit)
    now = ctx().services.clock()
    return {"requests": [request_json(r, now) for r in found], "next": page(found, limit)}


@bp.get("/orgs/<uuid:org_id>/requests")
async def org_requests(org_id: uuid.UUID) -> dict[str, Any]:
    """`?status=open|in_progress|done|refused&overdue=true&before=&limit=`"""
    who = await actor()
    limit = page_limit()
    found = await ctx().requests.for_org(
        who,
        org_id,
        status=request.args.get("status"),
        overdue=bool_arg("overdue"),
        before=id_arg("before"),
        limit=limit,
    )
    now = ctx().services.clock()
    return {"requests": [request_json(r, now) for r in found], "next": page(found, limit)}


@bp.patch("/orgs/<uuid:org_id>/requests/<uuid:request_id>")
async def answer_request(org_id: uuid.UUID, request_id: uuid.UUID) -> dict[str, Any]:
    who = await actor()
    req = await body(RequestAnswerIn)
    answered = await ctx().requests.answer(who, org_id, request_id, req.status, req.note)
    return request_json(answered, ctx().services.clock())


@bp.post("/orgs/<uuid:org_id>/notices")
async def send_notice(org_id: uuid.UUID) -> tuple[dict[str, Any], int]:
    who = await actor()
    req = await body(NoticeIn)
    notice, listed = await ctx().notices.send(
        who, org_id, req.kind, req.title, req.text, req.ends_at, req.account_ids
    )
    return admin_notice_json(notice, None if notice.everyone else listed), 201


@bp.get("/orgs/<uuid:org_id>/notices")
async def org_notices(org_id: uuid.UUID) -> dict[str, Any]:
    who = await actor()
    limit = page_limit()
    found = await ctx().notices.for_org(who, org_id, id_arg("before"), limit)
    return {
        "notices": [admin_notice_json(n, r) for n, r in found],
        "next": page([n for n, _ in found], limit),
    }


@bp.get("/me/notices")
async def my_notices() -> dict[str, Any]:
    who = await actor()
    limit = page_limit()
    found = await ctx().notices.mine(who, id_arg("before"), limit)
    return {"notices": [notice_json(n) for n in found], "next": page(found, limit)}
