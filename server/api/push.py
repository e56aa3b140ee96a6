"""Push: the calling device's registration, quiet hours and mutes; the bridge for admins."""

from __future__ import annotations

import uuid
from datetime import UTC
from typing import Any

from quart import Blueprint, request

from push.registration import RegistrationSpec
from server.api.context import actor, body, ctx
from server.api.models import MuteIn, PushRegistrationIn, PushSettingsIn, RedriveIn
from server.api.params import int_arg, page_limit
from server.api.present import iso
from server.errors import invalid
from storage.push_outbox import DeadLetter
from storage.push_registrations import PushResult, PushSettings, Registration

bp = Blueprint("push", __name__, url_prefix="/v1")


def registration_json(r: Registration) -> dict[str, Any]:
    return {
        "provider": r.provider,
        # enough of the token to tell two apart, never all of it
        "token_suffix": r.token[-8:],
        "environment": r.environment,
        "topic": r.topic,
        "project": r.project,
        "preview": r.preview,
        "created_at": iso(r.created_at),
        "updated_at": iso(r.updated_at),
        "disabled_at": iso(r.disabled_at),
        "disabled_reason": r.disabled_reason,
        "provider_timestamp": iso(r.provider_timestamp),
        "last_result": None
        if r.last_result_at is None
        else {
            "at": iso(r.last_result_at),
            "outcome": r.last_outcome,
            "status": r.last_status,
            "reason": r.last_reason,
        },
    }


def result_json(r: PushResult) -> dict[str, Any]:
    return {
        "at": iso(r.at),
        "kind": r.kind,
        "outcome": r.outcome,
        "status": r.status,
        "reason": r.reason,
    }


def minutes(hhmm: str) -> int:
    hours, mins = hhmm.split(":")
    return int(hours) * 60 + int(mins)


def hhmm(value: int | None) -> str | None:
    return None if value is None else f"{value // 60:02d}:{value % 60:02d}"


def settings_json(s: PushSettings) -> dict[str, Any]:
    quiet = None
    if s.dnd_start_min is not None:
        quiet = {"start": hhmm(s.dnd_start_min), "end": hhmm(s.dnd_end_min)}
    return {"do_not_disturb": quiet, "time_zone": s.time_zone}


def dead_letter_json(d: DeadLetter) -> dict[str, Any]:
    return {
        "id": d.id,
        "device_id": str(d.device_id),
        "account_id": str(d.account_id),
        "kind": d.kind,
        "conversation_id": None if d.conversation_id is None else str(d.conversation_id),
        "message_id": None if d.message_id is None else str(d.message_id),
        "notice_id": None if d.notice_id is None else str(d.notice_id),
        "attempts": d.attempts,
        "last_status": d.last_status,
        "last_reason": d.last_reason,
        "queued_at": iso(d.queued_at),
        "dead_at": iso(d.dead_at),
    }


@bp.put("/push/registration")
async def register() -> dict[str, Any]:
    who = await actor()
    req = await body(PushRegistrationIn)
    spec = RegistrationSpec(
        req.provider, req.token, req.environment, req.topic, req.project, req.preview
    )
    return registration_json(await ctx().push.register(who, spec))


@bp.get("/push/registration")
async def get_registration() -> dict[str, Any]:
    return registration_json(await ctx().push.registration(await actor()))


@bp.delete("/push/registration")
async def unregister() -> tuple[str, int]:
    await ctx().push.unregister(await actor())
    return "", 204


@bp.get("/push/settings")
async def get_settings() -> dict[str, Any]:
    return settings_json(await ctx().push.settings(await actor()))


@bp.put("/push/settings")
async def put_settings() -> dict[str, Any]:
    who = await actor()
    req = await body(PushSettingsIn)
    quiet = req.do_not_disturb
    settings = PushSettings(
        None if quiet is None else minutes(quiet.start),
        None if quiet is None else minutes(quiet.end),
        req.time_zone,
    )
    return settings_json(await ctx().push.set_settings(who, settings))


@bp.get("/push/mutes")
async def list_mutes() -> dict[str, Any]:
    mutes = await ctx().push.mutes(await actor())
    return {"mutes": [{"conversation_id": str(c), "until": iso(u)} for c, u in mutes.items()]}


@bp.put("/conversations/<uuid:conversation_id>/mute")
async def mute(conversation_id: uuid.UUID) -> tuple[str, int]:
    who = await actor()
    req = await body(MuteIn)
    if req.until is not None and req.until.tzinfo is None:
        raise invalid("give a time zone (like 2026-12-24T18:00:00Z)", "until")
    until = None if req.until is None else req.until.astimezone(UTC)
    await ctx().push.mute(who, conversation_id, until)
    return "", 204


@bp.delete("/conversations/<uuid:conversation_id>/mute")
async def unmute(conversation_id: uuid.UUID) -> tuple[str, int]:
    await ctx().push.unmute(await actor(), conversation_id)
    return "", 204


@bp.get("/admin/push")
async def push_stats() -> dict[str, Any]:
    return await ctx().push.stats(await actor())


@bp.get("/operator/push")
async def operator_push() -> dict[str, Any]:
    return await ctx().push.operator(request.headers.get("Authorization"))


@bp.get("/admin/push/devices/<uuid:device_id>")
async def device_push(device_id: uuid.UUID) -> dict[str, Any]:
    view = await ctx().push.device(await actor(), device_id)
    return {
        "device_id": str(device_id),
        "registration": None if view.registration is None else registration_json(view.registration),
        "recent_failures": [result_json(r) for r in view.results],
    }


@bp.get("/admin/push/dead-letters")
async def dead_letters() -> dict[str, Any]:
    who = await actor()
    after = int_arg("after", minimum=0, maximum=2**63 - 1) or 0
    rows = await ctx().push.dead_letters(who, after, page_limit())
    return {
        "dead_letters": [dead_letter_json(d) for d in rows],
        "next_after": rows[-1].id if rows else None,
    }


@bp.post("/admin/push/dead-letters/redrive")
async def redrive() -> dict[str, Any]:
    who = await actor()
    req = await body(RedriveIn)
    return {"redriven": await ctx().push.redrive(who, req.ids)}
