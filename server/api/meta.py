"""Health and the server's identity key."""

from __future__ import annotations

import logging
from typing import Any

import trio
from quart import Blueprint

from server.api.context import ctx
from server.identity import fingerprint, public_key_b64
from storage.errors import DatabaseUnavailableError

logger = logging.getLogger(__name__)

bp = Blueprint("meta", __name__)

HEALTH_DB_TIMEOUT_S = 5.0


@bp.get("/healthz")
async def healthz() -> tuple[dict[str, Any], int]:
    """200 when the database answers within a few seconds, 503 otherwise."""
    database = "ok"
    with trio.move_on_after(HEALTH_DB_TIMEOUT_S) as scope:
        try:
            await ctx().services.db.ping()
        except DatabaseUnavailableError as exc:
            logger.warning("health check: database unavailable: %s", exc)
            database = "unavailable"
    if scope.cancelled_caught:
        database = "timeout"
    ok = database == "ok"
    return {"status": "ok" if ok else "degraded", "database": database}, 200 if ok else 503


@bp.get("/.well-known/obrol/server-key")
async def server_key() -> dict[str, Any]:
    """The Ed25519 public key clients pin for the secure channel."""
    key = ctx().services.identity
    return {
        "algorithm": "ed25519",
        "public_key": public_key_b64(key),
        "fingerprint": fingerprint(key),
    }
