"""Attendance: the organization's sites, one-shot check-in/out, and the records.

The position of a check-in travels only in the JSON body (never the URL, which access logs
and proxies keep), and no answer or error repeats it.
"""

from __future__ import annotations

import uuid
from typing import Any

from quart import Blueprint

from server.api.context import actor, body, ctx
from server.api.models import CheckIn, SiteIn
from server.api.params import BIGINT_MAX, int_arg, page_limit, uuid_arg
from server.api.present import iso
from storage.attendance import AttendanceRecord, Site

bp = Blueprint("attendance", __name__, url_prefix="/v1")


def site_json(site: Site) -> dict[str, Any]:
    circle = site.circle
    return {
        "id": str(site.id),
        "org_id": str(site.org_id),
        "department_id": None if site.department_id is None else str(site.department_id),
        "name": site.name,
        "circle": None
        if circle is None
        else {"lat": circle.lat, "lon": circle.lon, "radius_m": circle.radius_m},
        "polygon": None
        if site.polygon is None
        else [{"lat": lat, "lon": lon} for lat, lon in site.polygon],
        "created_by": None if site.created_by is None else str(site.created_by),
        "created_at": iso(site.created_at),
    }


def record_json(r: AttendanceRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "account_id": str(r.account_id),
        "device_id": str(r.device_id),
        "action": r.action,
        "at": iso(r.at),
        "site": None if r.site_id is None else {"id": str(r.site_id), "name": r.site_name},
        "outcome": r.outcome,
    }


def records_json(records: list[AttendanceRecord]) -> dict[str, Any]:
    return {
        "records": [record_json(r) for r in records],
        "next_after": records[-1].id if records else None,
    }


def after_arg() -> int:
    return int_arg("after", minimum=0, maximum=BIGINT_MAX) or 0


@bp.post("/orgs/<uuid:org_id>/sites")
async def create_site(org_id: uuid.UUID) -> tuple[dict[str, Any], int]:
    who = await actor()
    req = await body(SiteIn)
    circle = None if req.circle is None else req.circle.model_dump()
    polygon = None if req.polygon is None else [(p.lat, p.lon) for p in req.polygon]
    site = await ctx().attendance.create_site(
        who, org_id, req.name, req.department_id, circle, polygon
    )
    return site_json(site), 201


@bp.get("/orgs/<uuid:org_id>/sites")
async def list_sites(org_id: uuid.UUID) -> dict[str, Any]:
    sites = await ctx().attendance.sites(await actor(), org_id)
    return {"sites": [site_json(s) for s in sites]}


@bp.get("/orgs/<uuid:org_id>/sites/<uuid:site_id>")
async def get_site(org_id: uuid.UUID, site_id: uuid.UUID) -> dict[str, Any]:
    return site_json(await ctx().attendance.site(await actor(), org_id, site_id))


@bp.delete("/orgs/<uuid:org_id>/sites/<uuid:site_id>")
async def delete_site(org_id: uuid.UUID, site_id: uuid.UUID) -> tuple[str, int]:
    await ctx().attendance.delete_site(await actor(), org_id, site_id)
    return "", 204


@bp.post("/me/attendance")
async def check() -> tuple[dict[str, Any], int]:
    who = await actor()
    req = await body(CheckIn)
    record = await ctx().attendance.check(who, req.action, req.lat, req.lon, req.acc)
    answer = record_json(record)
    return {k: answer[k] for k in ("id", "action", "at", "site", "outcome")}, 201


@bp.get("/me/attendance")
async def my_records() -> dict[str, Any]:
    who = await actor()
    return records_json(await ctx().attendance.mine(who, after_arg(), page_limit()))


@bp.get("/orgs/<uuid:org_id>/attendance")
async def org_records(org_id: uuid.UUID) -> dict[str, Any]:
    who = await actor()
    account_id = uuid_arg("account", "must be an account id")
    records = await ctx().attendance.org_records(who, org_id, account_id, after_arg(), page_limit())
    return records_json(records)
