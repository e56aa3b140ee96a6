"""Privacy-policy versions: admins publish them, members read them and accept the current one.

Publishing tells every connected device of the organization (a `policy` frame through the
hub); a material version also blocks every account of the organization until it accepts
(the gate itself is in `SessionHandler.authenticate` for the HTTP API and in
`Hub.policy_blocked` for the channel). Accepting lets the account's live connections
through again at once.
"""

from __future__ import annotations

import logging
import uuid

from protocol import PolicyNotice, encode
from server.errors import forbidden
from server.handlers.access import Actor, require_org
from server.services import Services
from storage.policies import NewPolicy, PolicyState, PolicyVersion

logger = logging.getLogger(__name__)


class PolicyHandler:
    def __init__(self, services: Services) -> None:
        self._s = services

    async def publish(self, actor: Actor, org_id: uuid.UUID, new: NewPolicy) -> PolicyVersion:
        """Publish a version (owners and admins of the org only); conflict if its label is
        taken. Once committed, the org's live devices hear of it."""
        require_org(actor, org_id)
        if not actor.is_admin:
            raise forbidden("only the organization's owners and admins publish its policy")
        published = await self._s.policies.publish(org_id, actor.account_id, new, self._s.clock())
        notice = PolicyNotice(
            version=published.version,
            material=published.material,
            at=int(published.published_at.timestamp() * 1000),
        )
        handed = self._s.hub.policy_published(
            org_id, published.id, published.material, encode(notice)
        )
        logger.info(
            "policy version %s published in org %s (material=%s, %d connections told)",
            published.id,
            org_id,
            published.material,
            handed,
        )
        return published

    async def versions(
        self, actor: Actor, org_id: uuid.UUID, before: str | None, limit: int
    ) -> list[PolicyVersion]:
        require_org(actor, org_id)
        return await self._s.policies.versions(org_id, before, limit)

    async def version(self, actor: Actor, org_id: uuid.UUID, version: str) -> PolicyVersion:
        require_org(actor, org_id)
        return await self._s.policies.get(org_id, version)

    async def mine(self, actor: Actor) -> PolicyState:
        return await self._s.policies.state(actor.org_id, actor.account_id)

    async def accept(self, actor: Actor, version: str) -> PolicyState:
        """Accept the current version from this device: unknown_policy / policy_not_current
        otherwise, and nothing is recorded."""
        state = await self._s.policies.accept(
            actor.org_id, actor.account_id, actor.device_id, version, self._s.clock()
        )
        if state.accepted is not None:
            self._s.hub.policy_accepted(actor.account_id, state.accepted.policy_id)
        return state
