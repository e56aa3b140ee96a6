"""The caller's own profile, password, login records and devices."""

from __future__ import annotations

import uuid
from typing import Any

from quart import Blueprint, request

from server.api.context import actor, body, client_ip, ctx, user_agent
from server.api.minors import own_guardian_json
from server.api.models import DeviceIn, PasswordChangeIn, ProfilePatch, ReauthIn
from server.api.present import account_json, device_json, login_json
from server.errors import invalid
from server.handlers.profile import ADMIN_CONTROLLED_FIELDS
from server.handlers.sessions import DeviceSpec
from storage.accounts import Account

bp = Blueprint("me", __name__, url_prefix="/v1")


async def profile_json(account: Account) -> dict[str, Any]:
    """The person's own record, their birth date and standing under the guardian rule."""
    return {
        **account_json(account, birth_date=True),
        "guardian": own_guardian_json(await ctx().minors.own(account)),
        "admin_controlled_fields": sorted(ADMIN_CONTROLLED_FIELDS),
    }


@bp.get("/me")
async def me() -> dict[str, Any]:
    return await profile_json(await ctx().profile.me(await actor(before_password_change=True)))


@bp.patch("/me")
async def correct_me() -> dict[str, Any]:
    who = await actor()
    req = await body(ProfilePatch)
    try:
        changes = req.changes()
    except ValueError as exc:
        raise invalid(str(exc)) from None
    return await profile_json(await ctx().profile.correct(who, changes))


@bp.post("/me/password")
async def change_password() -> tuple[str, int]:
    who = await actor(before_password_change=True)
    req = await body(PasswordChangeIn)
    await ctx().profile.change_password(
        who, req.current_password, req.new_password, ip=client_ip(), user_agent=user_agent()
    )
    return "", 204


@bp.post("/me/reauth")
async def reauthenticate() -> dict[str, Any]:
    """Enter the password again before a data-rights action (access summary, export,
    deletion, cancellation); the session may use them for `fresh_for_s` seconds."""
    who = await actor()
    req = await body(ReauthIn)
    window = await ctx().sessions.reauthenticate(
        who,
        request.headers.get("Authorization", ""),
        req.password,
        ip=client_ip(),
        user_agent=user_agent(),
    )
    return {"fresh_for_s": window}


@bp.get("/me/logins")
async def login_records() -> dict[str, Any]:
    records = await ctx().profile.login_records(await actor())
    return {"logins": [login_json(r) for r in records]}


@bp.get("/devices")
async def list_devices() -> dict[str, Any]:
    devices = await ctx().profile.devices(await actor())
    return {"devices": [device_json(d) for d in devices]}


@bp.post("/devices")
async def enroll_device() -> tuple[dict[str, Any], int]:
    who = await actor()
    req = await body(DeviceIn)
    spec = DeviceSpec(req.name, req.platform, req.public_key)
    return device_json(await ctx().profile.enroll_device(who, spec)), 201


@bp.delete("/devices/<uuid:device_id>")
async def revoke_device(device_id: uuid.UUID) -> dict[str, Any]:
    return device_json(await ctx().profile.revoke_device(await actor(), device_id))
