"""Privacy-policy versions: publishing (admins), reading (members), the caller's acceptance."""

from __future__ import annotations

import uuid
from typing import Any

from quart import Blueprint

from protocol.fields import MAX_POLICY_VERSION_CHARS
from server.api.context import actor, body, ctx
from server.api.models import PolicyAcceptIn, PolicyIn
from server.api.params import page_limit, text_arg
from server.api.present import iso
from server.errors import invalid
from storage.policies import NewPolicy, PolicyState, PolicyVersion

bp = Blueprint("policies", __name__, url_prefix="/v1")


def version_json(v: PolicyVersion) -> dict[str, Any]:
    """A version; `text` only where it was read with it."""
    result: dict[str, Any] = {
        "version": v.version,
        "language": v.language,
        "material": v.material,
        "published_at": iso(v.published_at),
        "published_by": None if v.published_by is None else str(v.published_by),
    }
    if v.text is not None:
        result["text"] = v.text
    return result


def state_json(state: PolicyState) -> dict[str, Any]:
    accepted = state.accepted
    return {
        "current": None if state.current is None else version_json(state.current),
        "accepted": None
        if accepted is None
        else {
            "version": accepted.version,
            "accepted_at": iso(accepted.accepted_at),
            "device_id": str(accepted.device_id),
        },
        "accepted_current": state.accepted_current,
        "reconsent_required": state.reconsent_required,
    }


@bp.post("/orgs/<uuid:org_id>/policies")
async def publish(org_id: uuid.UUID) -> tuple[dict[str, Any], int]:
    who = await actor()
    req = await body(PolicyIn)
    new = NewPolicy(req.version, req.language, req.material, req.text)
    return version_json(await ctx().policies.publish(who, org_id, new)), 201


@bp.get("/orgs/<uuid:org_id>/policies")
async def versions(org_id: uuid.UUID) -> dict[str, Any]:
    who = await actor()
    before = text_arg("before", max_length=MAX_POLICY_VERSION_CHARS)
    limit = page_limit()
    rows = await ctx().policies.versions(who, org_id, before, limit)
    return {
        "policies": [version_json(v) for v in rows],
        "next": rows[-1].version if len(rows) == limit else None,
    }


@bp.get("/orgs/<uuid:org_id>/policies/<version>")
async def version(org_id: uuid.UUID, version: str) -> dict[str, Any]:
    who = await actor()
    if len(version) > MAX_POLICY_VERSION_CHARS:
        raise invalid(f"must be at most {MAX_POLICY_VERSION_CHARS} characters", "version")
    return version_json(await ctx().policies.version(who, org_id, version))


@bp.get("/me/policy")
async def mine() -> dict[str, Any]:
    return state_json(await ctx().policies.mine(await actor()))


@bp.post("/me/policy/accept")
async def accept() -> dict[str, Any]:
    who = await actor()
    req = await body(PolicyAcceptIn)
    return state_json(await ctx().policies.accept(who, req.version))
