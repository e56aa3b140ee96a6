"""What withdrawing a grant does to the data shared under it, in the withdrawal's transaction.

Messages tagged `until_withdrawn` are erased, each leaving a tombstone (reason
`consent_withdrawn`) for the devices offline now; the account's live-location sessions end (a
`location_share` withdrawal); and the result names everyone who may have received data
under the grant (the audience of each conversation it was shared in) so the server can
tell their devices. Data with another retention stays as it was: it was lawful when sent.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from storage.erasure import ERASED_COLUMNS, finish_erasure
from storage.live import LOCATION_PURPOSE, LiveSession, end_all
from storage.tombstones import ErasedGroup


@dataclass
class Audience:
    """Who in one conversation may have received the data: `scope` (plus the sharer), or
    every member when `scope` is None; `erased`: the stored messages erased there."""

    conversation_id: uuid.UUID
    scope: set[uuid.UUID] | None
    erased: list[uuid.UUID] = field(default_factory=list)

    def widen(self, scope: tuple[uuid.UUID, ...] | None) -> None:
        if scope is None:
            self.scope = None
        elif self.scope is not None:
            self.scope.update(scope)


@dataclass(frozen=True, slots=True)
class Revocation:
    account_id: uuid.UUID
    purpose: str
    at: datetime
    audiences: list[Audience]
    ended: list[LiveSession]  # live sessions the withdrawal ended
    files: list[uuid.UUID]  # file rows erased: their blobs go after the commit
    erased: list[ErasedGroup]  # the tombstones written: fanned out after the commit


async def revoke(conn: Any, account_id: uuid.UUID, purpose: str, at: datetime) -> Revocation:
    """Erase and end what the account's withdrawal of `purpose` requires (the grant row is
    locked by the caller, so no send under it can commit meanwhile; the caller took the
    stream lock before that, as tombstones need: storage.tombstones)."""
    rows = await conn.fetch(
        f"""DELETE FROM messages WHERE sender_id = $1 AND purpose = $2 AND until_withdrawn
            RETURNING {ERASED_COLUMNS}""",
        account_id,
        purpose,
    )
    erasure = await finish_erasure(conn, rows, "consent_withdrawn", at)
    audiences: dict[uuid.UUID, Audience] = {}

    def reached(conversation_id: uuid.UUID, scope: Any) -> Audience:
        scope = None if scope is None else tuple(scope)
        audience = audiences.get(conversation_id)
        if audience is None:
            audience = audiences[conversation_id] = Audience(
                conversation_id, None if scope is None else set(scope)
            )
        else:
            audience.widen(scope)
        return audience

    for message in erasure.messages:
        reached(message.conversation_id, message.scope).erased.append(message.id)
    for row in await conn.fetch(
        """SELECT DISTINCT conversation_id, scope FROM messages
           WHERE sender_id = $1 AND purpose = $2""",
        account_id,
        purpose,
    ):
        reached(row["conversation_id"], row["scope"])
    ended: list[LiveSession] = []
    if purpose == LOCATION_PURPOSE:
        ended = await end_all(conn, account_id, at)
        for row in await conn.fetch(
            "SELECT DISTINCT conversation_id, scope FROM live_sessions WHERE account_id = $1",
            account_id,
        ):
            reached(row["conversation_id"], row["scope"])
    return Revocation(
        account_id, purpose, at, list(audiences.values()), ended, erasure.files, erasure.erased
    )
