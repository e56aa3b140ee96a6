"""The access summary, export jobs and archive downloads."""

from __future__ import annotations

import uuid
from typing import Any

from quart import Blueprint, Response

from server.api.context import actor, ctx
from server.api.params import page_limit
from server.api.present import iso
from server.api.rights import id_arg, page
from server.handlers.exports import JobView
from storage.export_archive import read_archive

bp = Blueprint("exports", __name__, url_prefix="/v1")


def job_json(view: JobView) -> dict[str, Any]:
    job = view.job
    return {
        "id": str(job.id),
        "scope": job.scope,
        "org_id": str(job.org_id),
        "status": job.status,
        "progress": {
            "items_done": job.items_done,
            "items_total": job.items_total,
            "bytes_done": job.bytes_done,
            "bytes_total": job.bytes_total,
        },
        "request_id": None if job.request_id is None else str(job.request_id),
        "requested_at": iso(job.requested_at),
        "ready_at": iso(job.ready_at),
        "expires_at": iso(job.expires_at),
        "downloaded_at": iso(job.downloaded_at),
        "archive_bytes": job.archive_bytes,
        "download": None
        if view.token is None
        else {"url": f"/v1/exports/{view.token}", "expires_at": iso(job.expires_at)},
        "error": job.error,
    }


@bp.get("/me/data")
async def summary() -> dict[str, Any]:
    who = await actor()
    return {"categories": await ctx().exports.summary(who)}


@bp.post("/me/exports")
async def request_export() -> tuple[dict[str, Any], int]:
    who = await actor()
    job = await ctx().exports.request(who)
    return job_json(JobView(job, None)), 202


@bp.post("/orgs/<uuid:org_id>/exports")
async def request_org_export(org_id: uuid.UUID) -> tuple[dict[str, Any], int]:
    who = await actor()
    job = await ctx().exports.request_org(who, org_id)
    return job_json(JobView(job, None)), 202


@bp.get("/me/exports")
async def my_exports() -> dict[str, Any]:
    who = await actor()
    limit = page_limit()
    views = await ctx().exports.mine(who, id_arg("before"), limit)
    return {"exports": [job_json(v) for v in views], "next": page([v.job for v in views], limit)}


@bp.get("/me/exports/<uuid:export_id>")
async def my_export(export_id: uuid.UUID) -> dict[str, Any]:
    who = await actor()
    return job_json(await ctx().exports.get(who, export_id))


@bp.get("/exports/<token>")
async def download(token: str) -> Response:
    """The archive behind a single-use link (the link is the credential: no login)."""
    found = await ctx().exports.download(token)
    chunks = read_archive(found.source, found.key, found.job.id)
    response = Response(chunks, mimetype="application/zip")
    response.timeout = None  # a large archive takes its time
    if found.job.archive_bytes is not None:
        response.headers["Content-Length"] = str(found.job.archive_bytes)
    name = f"obrol-{found.job.scope}-export-{found.job.id}.zip"
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
