"""A person deletes a message they sent or a file they shared (issue 12, part 2).

Fresh re-authentication first (`require_fresh`). The erasure and its tombstones commit in
one transaction (storage.deletion), the tombstones go at once to every connected device
that may hold the message (server/gateway/erased.py: `erased` frames, in stream order), and
devices offline now find them in their catch-up. Blobs are deleted after the commit.
"""

from __future__ import annotations

import logging
import uuid

from server.gateway.erased import announce_erased
from server.handlers.access import Actor, require_fresh
from server.services import Services
from storage.erasure import Erasure

logger = logging.getLogger(__name__)


class DeletionHandler:
    def __init__(self, services: Services) -> None:
        self._s = services

    async def delete_message(
        self, actor: Actor, conversation_id: uuid.UUID, message_id: uuid.UUID
    ) -> None:
        """reauth_required; not_found (unknown, not visible to the actor, another
        organization's, already deleted); forbidden (someone else's message)."""
        s, now = self._s, self._s.clock()
        require_fresh(actor, now)
        erasure = await s.deletion.delete_message(
            actor.org_id, actor.account_id, actor.device_id, conversation_id, message_id, now
        )
        await announce_erased(s.hub, erasure.erased)
        await self._finish(erasure)

    async def delete_file(self, actor: Actor, file_id: uuid.UUID) -> int:
        """Delete a file the actor uploaded and every message sharing it; how many
        messages went. reauth_required; not_found; forbidden (someone else's file)."""
        s, now = self._s, self._s.clock()
        require_fresh(actor, now)
        erasure = await s.deletion.delete_file(
            actor.org_id, actor.account_id, actor.device_id, file_id, now
        )
        await announce_erased(s.hub, erasure.erased)
        await self._finish(erasure)
        return len(erasure.messages)

    async def _finish(self, erasure: Erasure) -> None:
        for file_id in erasure.files:
            await self._s.blobs.delete(file_id)
        logger.info(
            "deleted by their sender: %d messages, %d files",
            len(erasure.messages),
            len(erasure.files),
        )
