"""File upload and download, authorised by conversation membership."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

from server.errors import ApiError, ApiErrorCode
from server.handlers.access import Actor
from server.handlers.conversations import ConversationHandler
from server.handlers.filetypes import SNIFF_BYTES, accepted_type, matches_signature
from server.services import Services
from server.text import text_problem
from storage.files import BlobTooLargeError, FileRecord

_NAME_FORBIDDEN = re.compile(r"[/\\]")


def check_upload(name: str, mime: str) -> str:
    """The allow-listed mime type, or ApiError if the name or type is not acceptable."""
    problem = text_problem(name)
    if not name or len(name) > 255 or problem is not None or _NAME_FORBIDDEN.search(name):
        raise ApiError(
            ApiErrorCode.INVALID_REQUEST,
            "name must be 1-255 characters without control characters or slashes",
            details=[{"field": "name", "problem": problem or "invalid"}],
        )
    accepted = accepted_type(mime)
    if accepted is None:
        shown = mime.split(";", 1)[0].strip()[:100] or "(none)"
        raise ApiError(
            ApiErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"files of type {shown!r} are not accepted; see the list in README.md",
        )
    return accepted


class FileHandler:
    def __init__(self, services: Services, conversations: ConversationHandler) -> None:
        self._s = services
        self._conversations = conversations

    async def upload(
        self,
        actor: Actor,
        conversation_id: uuid.UUID,
        name: str,
        mime: str,
        chunks: AsyncIterator[bytes],
    ) -> FileRecord:
        """Stream an upload to disk for a conversation the actor is in, then record it.

        payload_too_large past max_upload_bytes; unsupported_media_type when the declared
        type is not accepted or the bytes do not look like it. Nothing is kept on failure.
        """
        await self._conversations.get(actor, conversation_id)
        mime = check_upload(name, mime)
        file_id = uuid.uuid4()

        async def sniffed() -> AsyncGenerator[bytes, None]:
            head = b""
            async for chunk in chunks:
                if len(head) < SNIFF_BYTES:
                    head += chunk[: SNIFF_BYTES - len(head)]
                    if len(head) >= SNIFF_BYTES and not matches_signature(mime, head):
                        raise ApiError(
                            ApiErrorCode.UNSUPPORTED_MEDIA_TYPE,
                            f"the content does not look like {mime}",
                        )
                yield chunk
            if len(head) < SNIFF_BYTES and not matches_signature(mime, head):
                raise ApiError(
                    ApiErrorCode.UNSUPPORTED_MEDIA_TYPE, f"the content does not look like {mime}"
                )

        limit = self._s.settings.max_upload_bytes
        key = await self._s.keyring.key_for_write(actor.account_id)  # the blob is sealed
        try:
            async with aclosing(sniffed()) as stream:
                size, digest = await self._s.blobs.write(file_id, stream, limit, key)
        except BlobTooLargeError:
            raise ApiError(
                ApiErrorCode.PAYLOAD_TOO_LARGE, f"files are limited to {limit} bytes"
            ) from None
        record = FileRecord(
            file_id,
            actor.org_id,
            conversation_id,
            actor.account_id,
            name,
            mime,
            size,
            digest,
            self._s.clock(),
        )
        try:
            return await self._s.files.add(record)
        except BaseException:
            await self._s.blobs.delete(file_id)
            raise

    async def for_download(self, actor: Actor, file_id: uuid.UUID) -> FileRecord:
        """The file if the actor uploaded it or may see a message that shares it (the
        message's consent scope decides, as for the message itself); `gone` if it was
        erased (its uploader's data key destroyed)."""
        record = await self._s.files.get(file_id)
        if record.uploader_id != actor.account_id and not await self._s.files.visible_to(
            file_id, actor.account_id
        ):
            raise ApiError(ApiErrorCode.NOT_FOUND, "no such file")
        if record.erased:
            raise ApiError(ApiErrorCode.GONE, "this file was erased")
        return record
