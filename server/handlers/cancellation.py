"""Account cancellation: the person closes their own account, or an owner deletes the
whole organization (README, "Account cancellation" and "Deleting an organization").

From the commit on: the account is `cancelled` (its old tokens and its password get
`account_cancelled`), every device and token is revoked, its live gateway connections
close with 4005 (device revoked: the apps wipe what they hold), its data key is destroyed so
everything sealed of theirs reads as erased, and others see "deleted user". The retention
sweeper purges every row within the promise (server/retention.py, `cancelled_accounts`).
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from server.errors import ApiError, ApiErrorCode, forbidden, invalid
from server.gateway.announce import announce_live_end
from server.handlers.access import Actor, require_fresh, require_org
from server.services import Services
from storage.cancellation import Cancelled
from storage.org_cancellation import OrgCancelled

logger = logging.getLogger(__name__)

# How recent an export of the organization's data must be for its deletion to go ahead.
ORG_EXPORT_FRESH = timedelta(days=30)


class CancellationHandler:
    def __init__(self, services: Services) -> None:
        self._s = services

    async def cancel(self, actor: Actor, confirm: str) -> Cancelled:
        """Cancel the actor's account. `confirm` must be the account's work email (any
        case): a typed confirmation, on top of a fresh re-authentication. Raises ApiError
        reauth_required, invalid_request (field `confirm`), only_owner (the organization's
        only owner), account_cancelled (done already)."""
        s = self._s
        now = s.clock()
        require_fresh(actor, now)
        account = await s.accounts.get(actor.org_id, actor.account_id)
        if confirm.strip().lower() != account.work_email.lower():
            raise invalid("type your work email to confirm the cancellation", "confirm")
        delay = timedelta(hours=s.settings.cancelled_accounts_purge_delay_h)
        done = await s.cancellations.cancel(actor.org_id, actor.account_id, actor.by, now, delay)
        await self._after(done)
        logger.info(
            "account %s cancelled: %d devices revoked; purge from %s",
            actor.account_id,
            len(done.devices),
            done.purge_after.isoformat(),
        )
        return done

    async def cancel_org(
        self, actor: Actor, org_id: uuid.UUID, confirm: str, export_declined: bool
    ) -> OrgCancelled:
        """Delete the organization: every account cancelled now, its own rows purged by the
        sweeper once they are gone. Owners only, after a fresh re-authentication, with the
        organization's name typed as `confirm`, and an export of its data ready in the last
        30 days unless `export_declined`. Raises ApiError forbidden, reauth_required,
        invalid_request (field `confirm`), export_first, org_cancelled."""
        s = self._s
        now = s.clock()
        require_org(actor, org_id)
        if actor.role != "owner":
            raise forbidden("only an owner may delete the organization")
        require_fresh(actor, now)
        org = await s.orgs.get(org_id)
        if confirm.strip() != org.name:
            raise invalid("type the organization's name to confirm its deletion", "confirm")
        delay = timedelta(hours=s.settings.cancelled_accounts_purge_delay_h)
        since = None if export_declined else now - ORG_EXPORT_FRESH
        done = await s.org_cancellations.cancel(org_id, actor.by, now, delay, since)
        for account in done.accounts:
            await self._after(account)
        logger.info(
            "organization %s deleted: %d accounts cancelled (export %s)",
            org_id,
            len(done.accounts),
            "declined" if export_declined else "taken",
        )
        return done

    async def _after(self, done: Cancelled) -> None:
        """After the commit: close the account's connections, tell live-session watchers."""
        for device_id in done.devices:
            self._s.hub.disconnect_device(device_id)
        await announce_live_end(self._s, done.live_ended)


def cancelled_error() -> ApiError:
    return ApiError(
        ApiErrorCode.ACCOUNT_CANCELLED,
        "this account was cancelled: its data is being erased and it cannot be used again",
    )
