"""File upload (streamed, raw body) and download, authorised by conversation membership.

Every download is an attachment in a sandbox: `Content-Disposition: attachment` with the
name as an RFC 6266 `filename*` (and an ASCII `filename` for old clients),
`X-Content-Type-Options: nosniff` and `Content-Security-Policy: default-src 'none'; sandbox`,
so a file opened from our origin can neither run script nor load anything.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

from quart import Blueprint, Response, request

from server.api.context import actor, ctx
from server.api.params import text_arg
from server.api.present import file_json
from server.errors import invalid
from server.handlers.filetypes import served_type

bp = Blueprint("files", __name__, url_prefix="/v1")

CHUNK_BYTES = 64 * 1024
FILE_NAME_MAX_CHARS = 255
DOWNLOAD_CSP = "default-src 'none'; sandbox"


def content_disposition(name: str) -> str:
    """`attachment` with the name twice: ASCII-only `filename`, exact UTF-8 `filename*`."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\%' else "_" for c in name)
    return f"attachment; filename=\"{fallback or 'file'}\"; filename*=UTF-8''{quote(name, safe='')}"


@bp.post("/conversations/<uuid:conversation_id>/files")
async def upload(conversation_id: uuid.UUID) -> tuple[dict[str, Any], int]:
    """Raw body; `Content-Type` is the file's type; `?name=` its file name."""
    who = await actor()
    name = text_arg("name", max_length=FILE_NAME_MAX_CHARS)
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
    chunks = ctx().services.blobs.read(record.id, record.blob_key, CHUNK_BYTES)
    response = Response(chunks, mimetype=served_type(record.mime))
    response.headers["Content-Length"] = str(record.size)
    response.headers["Content-Disposition"] = content_disposition(record.name)
    response.headers["Content-Security-Policy"] = DOWNLOAD_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
