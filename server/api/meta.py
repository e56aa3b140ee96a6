"""Health, metrics and the server's identity key."""

from __future__ import annotations

import hmac
import logging
from typing import Any

from quart import Blueprint, Response, request

from server.api.context import ctx
from server.errors import ApiError, ApiErrorCode
from server.identity import fingerprint, public_key_b64
from server.metrics import exposition
from storage.errors import DatabaseUnavailableError

logger = logging.getLogger(__name__)

bp = Blueprint("meta", __name__)

HEALTH_DB_TIMEOUT_S = 2.0  # each step of the check; the answer comes within ~3x this


@bp.get("/healthz")
async def healthz() -> tuple[dict[str, Any], int]:
    """200 when the database answers, 503 otherwise, within a few seconds either way.

    Nothing is cached: the answer is 200 again as soon as the database is back. `bus` says
    whether this process hears the others ("ok", "down", or "off" for a lone process); while
    it is down the status is "degraded" (200: this process still serves, and delivers what
    the others commit within `bus_poll_interval_s`)."""
    bus = bus_status()
    try:
        await ctx().services.db.ping(HEALTH_DB_TIMEOUT_S)
    except DatabaseUnavailableError as exc:
        logger.warning("health check: %s", exc)
        return {
            "status": "degraded",
            "database": "unavailable",
            "bus": bus,
            "push": push_status(),
        }, 503
    status = "degraded" if bus == "down" else "ok"
    return {"status": status, "database": "ok", "bus": bus, "push": push_status()}, 200


def bus_status() -> str:
    bus = ctx().services.hub.bus
    if bus is None:
        return "off"
    return "ok" if bus.healthy else "down"


def push_status() -> dict[str, str]:
    """Per push provider: "ok", "off" (no credentials) or "unusable" (its pushes wait in the
    outbox meanwhile; the rest of the server is unaffected; admins see why)."""
    return ctx().services.push.status()


@bp.get("/metrics")
async def metrics() -> Response:
    """Prometheus text format: every process's values (server.metrics). Needs
    `Authorization: Bearer <metrics_token>` when that is set."""
    token = ctx().services.settings.metrics_token
    if token is not None:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").encode()
        if not hmac.compare_digest(given, token.get_secret_value().encode()):
            raise ApiError(ApiErrorCode.UNAUTHENTICATED, "the metrics token is missing or wrong")
    body, content_type = exposition()
    return Response(body, content_type=content_type)


@bp.get("/.well-known/obrol/server-key")
async def server_key() -> dict[str, Any]:
    """The Ed25519 public key clients pin for the secure channel."""
    key = ctx().services.identity
    return {
        "algorithm": "ed25519",
        "public_key": public_key_b64(key),
        "fingerprint": fingerprint(key),
    }
