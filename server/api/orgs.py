"""Organizations, departments and the member directory."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from typing import Any

from quart import Blueprint

from server.api.context import actor, body, ctx
from server.api.models import (
    CreateOrgIn,
    DepartmentIn,
    DepartmentPatch,
    MemberIn,
    MemberPatch,
    OrgPatch,
)
from server.api.params import page_limit, text_arg
from server.api.present import account_json, department_json, member_json, org_json
from server.errors import invalid
from server.text import text_problem

bp = Blueprint("orgs", __name__, url_prefix="/v1/orgs")

CURSOR_MAX_CHARS = 1024


@bp.post("")
async def sign_up() -> tuple[dict[str, Any], int]:
    """Open sign-up: 202 whether or not the org was made (a taken email is not told)."""
    ctx().orgs.require_signup_open()  # closed is closed, whatever the body says
    req = await body(CreateOrgIn)
    owner = req.owner.model_dump(exclude={"password"})
    await ctx().orgs.sign_up(req.name, owner, req.owner.password)
    return {
        "status": "accepted",
        "message": "if this work email can be used, the organization was created: log in with it",
    }, 202


@bp.get("/<uuid:org_id>")
async def get_org(org_id: uuid.UUID) -> dict[str, Any]:
    return org_json(await ctx().orgs.get_org(await actor(), org_id))


@bp.patch("/<uuid:org_id>")
async def update_org(org_id: uuid.UUID) -> dict[str, Any]:
    """Owners and admins: `{"serves_children": true|false}` (README, "Minors and guardians")."""
    who = await actor()
    req = await body(OrgPatch)
    return org_json(await ctx().minors.set_serves_children(who, org_id, req.serves_children))


@bp.get("/<uuid:org_id>/departments")
async def list_departments(org_id: uuid.UUID) -> dict[str, Any]:
    departments = await ctx().orgs.departments(await actor(), org_id)
    return {"departments": [department_json(d) for d in departments]}


@bp.post("/<uuid:org_id>/departments")
async def create_department(org_id: uuid.UUID) -> tuple[dict[str, Any], int]:
    who = await actor()
    req = await body(DepartmentIn)
    department = await ctx().orgs.create_department(who, org_id, req.parent_id, req.name)
    return department_json(department), 201


@bp.patch("/<uuid:org_id>/departments/<uuid:department_id>")
async def rename_department(org_id: uuid.UUID, department_id: uuid.UUID) -> dict[str, Any]:
    who = await actor()
    req = await body(DepartmentPatch)
    department = await ctx().orgs.rename_department(who, org_id, department_id, req.name)
    return department_json(department)


def _encode_cursor(key: tuple[str, uuid.UUID]) -> str:
    raw = json.dumps([key[0], str(key[1])]).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode_cursor(cursor: str) -> tuple[str, uuid.UUID]:
    try:
        name, ident = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(name, str) or text_problem(name) is not None:
            raise ValueError("not a display name")
        return name, uuid.UUID(ident)
    except (ValueError, TypeError, AttributeError, binascii.Error):
        raise invalid("not a cursor this server gave out", "after") from None


@bp.get("/<uuid:org_id>/members")
async def directory(org_id: uuid.UUID) -> dict[str, Any]:
    """One page of the directory: `?limit=1..200&after=<next cursor of the last page>`."""
    who = await actor()
    limit = page_limit()
    cursor = text_arg("after", max_length=CURSOR_MAX_CHARS)
    after = None if cursor is None else _decode_cursor(cursor)
    members, next_key = await ctx().orgs.directory(who, org_id, after, limit)
    return {
        "members": [member_json(m.account, full=m.full, birth_date=m.birth_date) for m in members],
        "next": None if next_key is None else _encode_cursor(next_key),
    }


@bp.post("/<uuid:org_id>/members")
async def add_member(org_id: uuid.UUID) -> tuple[dict[str, Any], int]:
    who = await actor()
    req = await body(MemberIn)
    fields = req.model_dump(exclude={"initial_password"})
    member = await ctx().orgs.add_member(who, org_id, fields, req.initial_password)
    return account_json(member, birth_date=who.is_admin), 201


@bp.get("/<uuid:org_id>/members/<uuid:account_id>")
async def get_member(org_id: uuid.UUID, account_id: uuid.UUID) -> dict[str, Any]:
    entry = await ctx().orgs.member(await actor(), org_id, account_id)
    return member_json(entry.account, full=entry.full, birth_date=entry.birth_date)


@bp.patch("/<uuid:org_id>/members/<uuid:account_id>")
async def update_member(org_id: uuid.UUID, account_id: uuid.UUID) -> dict[str, Any]:
    who = await actor()
    req = await body(MemberPatch)
    try:
        changes = req.changes()
    except ValueError as exc:
        raise invalid(str(exc)) from None
    member = await ctx().orgs.update_member(who, org_id, account_id, changes)
    return account_json(member, birth_date=who.is_admin)


@bp.post("/<uuid:org_id>/members/<uuid:account_id>/deactivate")
async def deactivate_member(org_id: uuid.UUID, account_id: uuid.UUID) -> dict[str, Any]:
    who = await actor()
    member = await ctx().orgs.deactivate_member(who, org_id, account_id)
    return account_json(member, birth_date=who.is_admin)
