"""Login, token refresh, logout."""

from __future__ import annotations

from typing import Any

from quart import Blueprint

from server.api.context import actor, body, client_ip, ctx, user_agent
from server.api.models import LoginIn, RefreshIn
from server.api.present import account_json, device_json
from server.handlers.sessions import DeviceSpec, TokenPair
from server.identity import public_key_b64

bp = Blueprint("auth", __name__, url_prefix="/v1")


def tokens_json(pair: TokenPair) -> dict[str, Any]:
    return {
        "token_type": "Bearer",
        "access_token": pair.access,
        "expires_in": pair.access_ttl_s,
        "refresh_token": pair.refresh,
        "refresh_expires_in": pair.refresh_ttl_s,
    }


@bp.post("/login")
async def login() -> tuple[dict[str, Any], int]:
    req = await body(LoginIn)
    device = DeviceSpec(req.device.name, req.device.platform, req.device.public_key)
    result = await ctx().sessions.login(
        req.email, req.password, device, ip=client_ip(), user_agent=user_agent()
    )
    return {
        "account": account_json(result.account, birth_date=True),  # the person's own
        "device": device_json(result.device),
        "server_key": public_key_b64(ctx().services.identity),
        **tokens_json(result.tokens),
    }, 200


@bp.post("/tokens/refresh")
async def refresh() -> tuple[dict[str, Any], int]:
    req = await body(RefreshIn)
    return tokens_json(await ctx().sessions.refresh(req.refresh_token)), 200


@bp.post("/logout")
async def logout() -> tuple[str, int]:
    await ctx().sessions.logout(await actor(before_password_change=True))
    return "", 204
