"""Cancelling one's own account: DELETE /v1/me (README, "Account cancellation")."""

from __future__ import annotations

from typing import Any

from quart import Blueprint

from server.api.context import actor, body, ctx
from server.api.models import CancellationIn
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
