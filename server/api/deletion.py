"""Deleting one's own message or file (a data right: fresh re-authentication required)."""

from __future__ import annotations

import uuid
from typing import Any

from quart import Blueprint

from server.api.context import actor, ctx

bp = Blueprint("deletion", __name__, url_prefix="/v1")


@bp.delete("/conversations/<uuid:conversation_id>/messages/<uuid:message_id>")
async def delete_message(conversation_id: uuid.UUID, message_id: uuid.UUID) -> tuple[str, int]:
    await ctx().deletion.delete_message(await actor(), conversation_id, message_id)
    return "", 204


@bp.delete("/files/<uuid:file_id>")
async def delete_file(file_id: uuid.UUID) -> dict[str, Any]:
    erased = await ctx().deletion.delete_file(await actor(), file_id)
    return {"messages_erased": erased}
