"""Account cancellation: the person closes their own account (README, "Account
cancellation").

From the commit on: the account is `cancelled` (its old tokens and its password get
`account_cancelled`), every device and token is revoked, its live gateway connections
close with 4005 (device revoked: the apps wipe what they hold), its data key is destroyed so
everything sealed of theirs reads as erased, and others see "deleted user". The retention
sweeper purges every row within the promise (server/retention.py, `cancelled_accounts`).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from server.errors import ApiError, ApiErrorCode, invalid
from server.gateway.announce import announce_live_end
from server.handlers.access import Actor, require_fresh
from server.services import Services
from storage.cancellation import Cancelled

logger = logging.getLogger(__name__)


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
        for device_id in done.devices:
            s.hub.disconnect_device(device_id)
        await announce_live_end(s, done.live_ended)
        logger.info(
            "account %s cancelled: %d devices revoked; purge from %s",
            actor.account_id,
            len(done.devices),
            done.purge_after.isoformat(),
        )
        return done


def cancelled_error() -> ApiError:
    return ApiError(
        ApiErrorCode.ACCOUNT_CANCELLED,
        "this account was cancelled: its data is being erased and it cannot be used again",
    )
