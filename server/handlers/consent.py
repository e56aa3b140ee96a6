"""The consent registry for people and their organization's admins.

A person grants and withdraws their own consents (from the device they are using: it is
recorded). Admins see their members' state and can switch a purpose off for the whole
organization; nobody grants on someone else's behalf, so there is no call for it.
"""

from __future__ import annotations

import uuid

from server.errors import forbidden, invalid
from server.gateway.announce import announce_revocation
from server.gateway.erased import announce_erased
from server.handlers.access import Actor, require_org
from server.handlers.audit import record_admin_reads
from server.services import Services
from storage.consent import PURPOSES, ConsentEvent, Grant, MemberGrants


def check_purpose(purpose: str) -> str:
    if purpose not in PURPOSES:
        raise invalid(f"unknown purpose; one of: {', '.join(PURPOSES)}", "purpose")
    return purpose


class ConsentHandler:
    def __init__(self, services: Services) -> None:
        self._s = services

    async def mine(self, actor: Actor) -> list[Grant]:
        return await self._s.consent.state(actor.org_id, actor.account_id)

    async def grant(self, actor: Actor, purpose: str) -> list[Grant]:
        """purpose_switched_off if the organization switched it off."""
        return await self.change(actor.org_id, actor.account_id, actor.device_id, purpose, True)

    async def withdraw(self, actor: Actor, purpose: str) -> list[Grant]:
        """consent_not_granted if there is nothing to withdraw."""
        return await self.change(actor.org_id, actor.account_id, actor.device_id, purpose, False)

    async def change(
        self,
        org_id: uuid.UUID,
        account_id: uuid.UUID,
        device_id: uuid.UUID,
        purpose: str,
        on: bool,
    ) -> list[Grant]:
        """Grant or withdraw `purpose` from the person's device (REST and the channel both
        come here). A withdrawal erases what it must and tells the devices that saw data
        under the grant before it returns. Raises ApiError (an unknown purpose) or
        ConsentError."""
        s, purpose = self._s, check_purpose(purpose)
        if on:
            return await s.consent.grant(org_id, account_id, device_id, purpose, s.clock())
        grants, revocation = await s.consent.withdraw(
            org_id, account_id, device_id, purpose, s.clock()
        )
        await announce_erased(s.hub, revocation.erased)
        await announce_revocation(s, revocation)
        return grants

    async def history(self, actor: Actor, after_id: int, limit: int) -> list[ConsentEvent]:
        return await self._s.consent.history(actor.account_id, after_id, limit)

    @staticmethod
    def _admin(actor: Actor, org_id: uuid.UUID) -> None:
        require_org(actor, org_id)
        if not actor.is_admin:
            raise forbidden("only the organization's admins see its members' consents")

    async def members(
        self, actor: Actor, org_id: uuid.UUID, after: uuid.UUID | None, limit: int
    ) -> list[MemberGrants]:
        """The members' grants: an admin read of each member listed (audit log)."""
        self._admin(actor, org_id)
        members = await self._s.consent.members(org_id, after, limit)
        await record_admin_reads(self._s, actor, "consents", (m.account_id for m in members))
        return members

    async def switch(self, actor: Actor, org_id: uuid.UUID, purpose: str, off: bool) -> None:
        """Switch a purpose off for everyone (every grant of it is withdrawn) or on again."""
        self._admin(actor, org_id)
        purpose = check_purpose(purpose)
        revocations = await self._s.consent.switch(
            org_id, purpose, off, actor.account_id, self._s.clock()
        )
        for revocation in revocations:
            await announce_erased(self._s.hub, revocation.erased)
        for revocation in revocations:
            await announce_revocation(self._s, revocation)
