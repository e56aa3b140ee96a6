"""A person's own profile and devices: read, correct, change password, revoke devices."""

from __future__ import annotations

import uuid
from typing import Any

from server.errors import ApiError, ApiErrorCode
from server.handlers.access import Actor
from server.handlers.orgs import check_password
from server.handlers.sessions import DeviceSpec
from server.services import Services
from storage.accounts import Account
from storage.devices import Device
from storage.logins import LoginAttempt

# A person corrects these themselves; the rest of the directory entry is the org's.
SELF_SERVICE_FIELDS = frozenset({"display_name", "phone"})
ADMIN_CONTROLLED_FIELDS = frozenset(
    {"account_name", "work_email", "department_id", "position", "role", "admin_department_id"}
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

    async def change_password(self, actor: Actor, current: str, new: str) -> None:
        account = await self.me(actor)
        stored = await self._s.accounts.password_hash(actor.account_id)
        if not await self._s.passwords.verify(stored, current):
            raise ApiError(ApiErrorCode.BAD_CREDENTIALS, "the current password is wrong")
        check_password(new, account.account_name, account.work_email)
        await self._s.accounts.set_password(
            actor.account_id, await self._s.passwords.hash(new), change_required=False
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
