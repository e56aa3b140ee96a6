"""Cancelling one's own account (DELETE /v1/me) and deleting an organization (DELETE
/v1/orgs/{org}): README, "Account cancellation" and "Deleting an organization"."""

from __future__ import annotations

import uuid
from typing import Any

from quart import Blueprint

from server.api.context import actor, body, ctx
from server.api.models import CancellationIn, OrgCancellationIn
from server.api.present import iso

bp = Blueprint("cancellation", __name__, url_prefix="/v1")


@bp.delete("/me")
async def cancel() -> tuple[dict[str, Any], int]:
    """Cancel the caller's account: needs a fresh re-authentication (POST /v1/me/reauth)
    and `{"confirm": "<the account's work email>"}`. 202: cancelled now, purged by the
    sweeper from `purge_after` on."""
    who = await actor()
    req = await body(CancellationIn)
    done = await ctx().cancellation.cancel(who, req.confirm)
    return {
        "status": "cancelled",
        "request_id": str(done.request_id),
        "purge_after": iso(done.purge_after),
    }, 202


@bp.delete("/orgs/<uuid:org_id>")
async def cancel_org(org_id: uuid.UUID) -> tuple[dict[str, Any], int]:
    """Delete the organization (owners): a fresh re-authentication, `{"confirm": "<its
    name>"}`, and an export of its data ready in the last 30 days unless `"export":
    "declined"`. 202: every account cancelled now; the sweeper purges them, then the
    organization."""
    who = await actor()
    req = await body(OrgCancellationIn)
    done = await ctx().cancellation.cancel_org(who, org_id, req.confirm, req.export == "declined")
    return {
        "status": "cancelled",
        "request_id": str(done.request_id),
        "accounts_cancelled": len(done.accounts),
    }, 202
