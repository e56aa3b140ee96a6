"""File upload (streamed, raw body) and download, authorised by conversation membership."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import trio
from quart import Blueprint, Response, request

from server.api.context import actor, ctx, invalid
from server.api.present import file_json

bp = Blueprint("files", __name__, url_prefix="/v1")

CHUNK_BYTES = 64 * 1024


@bp.post("/conversations/<uuid:conversation_id>/files")
async def upload(conversation_id: uuid.UUID) -> tuple[dict[str, Any], int]:
    """Raw body; `Content-Type` is the file's type; `?name=` its file name."""
    who = await actor()
    name = request.args.get("name")
    if name is None:
        raise invalid("the file name is required", "name")
    record = await ctx().files.upload(
        who, conversation_id, name, request.headers.get("Content-Type", ""), request.body
    )
    return file_json(record), 201


@bp.get("/files/<uuid:file_id>")
async def download(file_id: uuid.UUID) -> Response:
    who = await actor()
    record = await ctx().files.for_download(who, file_id)
    path = ctx().services.blobs.path(record.id)

    async def chunks() -> AsyncIterator[bytes]:
        async with await trio.open_file(path, "rb") as source:
            while chunk := await source.read(CHUNK_BYTES):
                yield chunk

    response = Response(chunks(), mimetype=record.mime)
    response.headers["Content-Length"] = str(record.size)
    response.headers["Content-Disposition"] = (
        f"attachment; filename*=UTF-8''{quote(record.name, safe='')}"
    )
    return response
