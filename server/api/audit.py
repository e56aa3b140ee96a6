"""The audit log: a person's own entries, and their organization's for owners and admins."""

from __future__ import annotations

import uuid
from typing import Any

from quart import Blueprint

from server.api.context import actor, ctx
from server.api.params import BIGINT_MAX, int_arg, page_limit, uuid_arg
from storage.audit_chain import AuditEntry

bp = Blueprint("audit", __name__, url_prefix="/v1")


def entries_json(entries: list[AuditEntry]) -> dict[str, Any]:
    """A page of entries (every field and hash, as `obrol audit export` writes them)."""
    return {
        "entries": [e.to_json() for e in entries],
        "next_after": entries[-1].seq if entries else None,
    }


def after_arg() -> int:
    return int_arg("after", minimum=0, maximum=BIGINT_MAX) or 0


@bp.get("/me/audit")
async def mine() -> dict[str, Any]:
    """Entries about me or done by me: `?after=<seq>&limit=1..200`."""
    who = await actor()
    return entries_json(await ctx().audit.mine(who, after_arg(), page_limit()))


@bp.get("/orgs/<uuid:org_id>/audit")
async def org(org_id: uuid.UUID) -> dict[str, Any]:
    """Owners and admins: the organization's entries, `&account=<id>` for one member's."""
    who = await actor()
    account_id = uuid_arg("account", "must be an account id")
    entries = await ctx().audit.org(who, org_id, account_id, after_arg(), page_limit())
    return entries_json(entries)
