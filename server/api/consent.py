"""Consents: the caller's own grants and history; the organization's view for admins."""

from __future__ import annotations

import uuid
from typing import Any

from quart import Blueprint

from server.api.context import actor, ctx
from server.api.params import int_arg, page_limit, uuid_arg
from server.api.present import iso
from storage.consent import ConsentEvent, Grant

bp = Blueprint("consent", __name__, url_prefix="/v1")


def grants_json(grants: list[Grant]) -> dict[str, Any]:
    return {
        "consents": [
            {
                "purpose": g.purpose,
                "granted": g.granted,
                "changed_at": iso(g.changed_at),
                "switched_off_by_org": g.switched_off,
            }
            for g in grants
        ]
    }


def event_json(e: ConsentEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "purpose": e.purpose,
        "action": e.action,
        "at": iso(e.at),
        "device_id": None if e.device_id is None else str(e.device_id),
        "policy_version": e.policy_version,
        "reason": e.reason,
    }


@bp.get("/me/consents")
async def my_consents() -> dict[str, Any]:
    return grants_json(await ctx().consent.mine(await actor()))


@bp.put("/me/consents/<purpose>")
async def grant(purpose: str) -> dict[str, Any]:
    return grants_json(await ctx().consent.grant(await actor(), purpose))


@bp.delete("/me/consents/<purpose>")
async def withdraw(purpose: str) -> dict[str, Any]:
    return grants_json(await ctx().consent.withdraw(await actor(), purpose))


@bp.get("/me/consents/history")
async def history() -> dict[str, Any]:
    who = await actor()
    after = int_arg("after", minimum=0, maximum=2**63 - 1) or 0
    events = await ctx().consent.history(who, after, page_limit())
    return {
        "history": [event_json(e) for e in events],
        "next_after": events[-1].id if events else None,
    }


@bp.get("/orgs/<uuid:org_id>/consents")
async def members(org_id: uuid.UUID) -> dict[str, Any]:
    who = await actor()
    rows = await ctx().consent.members(who, org_id, account_after(), page_limit())
    return {
        "members": [
            {"account_id": str(m.account_id), "granted": {p: iso(t) for p, t in m.granted.items()}}
            for m in rows
        ],
        "next": str(rows[-1].account_id) if rows else None,
    }


def account_after() -> uuid.UUID | None:
    """The `after` query parameter: the last account id of the previous page."""
    return uuid_arg("after", "must be an account id")


@bp.put("/orgs/<uuid:org_id>/purposes/<purpose>/off")
async def switch_off(org_id: uuid.UUID, purpose: str) -> tuple[str, int]:
    await ctx().consent.switch(await actor(), org_id, purpose, True)
    return "", 204


@bp.delete("/orgs/<uuid:org_id>/purposes/<purpose>/off")
async def switch_on(org_id: uuid.UUID, purpose: str) -> tuple[str, int]:
    await ctx().consent.switch(await actor(), org_id, purpose, False)
    return "", 204
