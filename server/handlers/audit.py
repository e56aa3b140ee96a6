"""The audit log as people and admins read it, and the hook for admin reads.

A person reads the entries about them or done by them; an organization's owners and admins
read the organization's entries (optionally those naming one member). Reading the log is
not itself recorded: entries hold ids and counts, no personal data.

`record_admin_reads` is called by every handler that shows someone's personal data to
someone else who manages them (a member's whole profile, their consents, attendance
records, guardian consents), after the read and before the answer: if it cannot be
recorded, the answer is not given.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable

from server.errors import forbidden
from server.handlers.access import Actor, require_org
from server.services import Services
from storage.audit import AuditEvent
from storage.audit_chain import AuditEntry


async def record_admin_reads(
    services: Services, actor: Actor, what: str, subjects: Iterable[uuid.UUID]
) -> None:
    """Record that `actor` read `what` of each account in `subjects` (one entry per
    account, with how many of its items were read; the actor's own data is not an admin
    read). One transaction."""
    counts = Counter(s for s in subjects if s != actor.account_id)
    if not counts:
        return
    events = [
        AuditEvent("admin_read", actor.by, subject, actor.org_id, {"what": what, "count": n})
        for subject, n in counts.items()
    ]
    await services.audit.record_many(events, services.clock())


class AuditHandler:
    def __init__(self, services: Services) -> None:
        self._s = services

    async def mine(self, actor: Actor, after: int, limit: int) -> list[AuditEntry]:
        """Entries about the caller or done by the caller, oldest first."""
        return await self._s.audit.for_account(actor.account_id, after, limit)

    async def org(
        self,
        actor: Actor,
        org_id: uuid.UUID,
        account_id: uuid.UUID | None,
        after: int,
        limit: int,
    ) -> list[AuditEntry]:
        """The organization's entries, for its owners and admins only."""
        require_org(actor, org_id)
        if not actor.is_admin:
            raise forbidden("only the organization's owners and admins read its audit log")
        return await self._s.audit.for_org(org_id, account_id, after, limit)
