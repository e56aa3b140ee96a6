"""A person's own profile and devices: read, correct, change password, revoke devices."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from server.errors import ApiError, ApiErrorCode
from server.handlers.access import Actor
from server.handlers.orgs import check_password
from server.handlers.sessions import DeviceSpec, admit_password_check
from server.services import Services
from storage.accounts import Account
from storage.devices import Device
from storage.logins import PENDING, LoginAttempt

logger = logging.getLogger(__name__)

# A person corrects these themselves; the rest of the directory entry is the org's.
SELF_SERVICE_FIELDS = frozenset({"display_name", "phone"})
ADMIN_CONTROLLED_FIELDS = frozenset(
    {
        "account_name",
        "work_email",
        "department_id",
        "position",
        "role",
        "admin_department_id",
        "birth_date",
    }
)


class ProfileHandler:
    def __init__(self, services: Services) -> None:
        self._s = services

    async def me(self, actor: Actor) -> Account:
        return await self._s.accounts.get(actor.org_id, actor.account_id)

    async def correct(self, actor: Actor, changes: dict[str, Any]) -> Account:
        """Apply self-service corrections; admin-controlled fields are refused by name."""
        locked = sorted(set(changes) & ADMIN_CONTROLLED_FIELDS)
        if locked:
            raise ApiError(
                ApiErrorCode.FORBIDDEN,
                "these fields are controlled by your organization's admins",
                details=[{"field": f, "problem": "admin_controlled"} for f in locked],
            )
        return await self._s.accounts.update(actor.org_id, actor.account_id, changes)

    async def change_password(
        self, actor: Actor, current: str, new: str, *, ip: str, user_agent: str
    ) -> None:
        """Replace the password and end every other session of the account.

        The current-password check is rate limited exactly like a login (same records, same
        limits). Afterwards the other devices' tokens are revoked, their live gateway
        connections closed, and they must log in again to reconnect; this device keeps its
        session. Raises ApiError: weak_password (also when `new` equals `current`),
        rate_limited, bad_credentials.
        """
        s = self._s
        account = await self.me(actor)
        check_password(new, account.account_name, account.work_email)
        if new == current:
            raise ApiError(
                ApiErrorCode.WEAK_PASSWORD,
                "the new password must differ from the current one",
                details=[{"field": "new_password", "problem": "same as the current password"}],
            )
        now = s.clock()
        attempt = LoginAttempt(
            now, account.work_email, ip, user_agent, PENDING, account.id, actor.device_id
        )
        record = await admit_password_check(s, attempt)
        if not await s.passwords.verify(await s.accounts.password_hash(account.id), current):
            await s.logins.settle(record, "bad_current_password")
            raise ApiError(ApiErrorCode.BAD_CREDENTIALS, "the current password is wrong")
        signed_out = await s.accounts.change_password(
            account.id, actor.device_id, await s.passwords.hash(new), record, now
        )
        for device_id in signed_out:
            s.hub.disconnect_device(device_id, signed_out=True)
        logger.info(
            "password changed account=%s device=%s; %d other devices signed out",
            account.id,
            actor.device_id,
            len(signed_out),
        )

    async def login_records(self, actor: Actor) -> list[LoginAttempt]:
        return await self._s.logins.for_account(actor.account_id)

    async def devices(self, actor: Actor) -> list[Device]:
        return await self._s.devices.list(actor.account_id)

    async def enroll_device(self, actor: Actor, spec: DeviceSpec) -> Device:
        """Register another device's key from an enrolled one (approval by a device)."""
        return await self._s.devices.enroll(
            actor.account_id, spec.name, spec.platform, spec.public_key
        )

    async def revoke_device(self, actor: Actor, device_id: uuid.UUID) -> Device:
        """Revoke one of the actor's devices; its tokens and connections end at once."""
        device = await self._s.devices.revoke(actor.account_id, device_id)
        self._s.hub.disconnect_device(device_id)
        return device
