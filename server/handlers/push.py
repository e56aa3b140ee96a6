"""Push registrations, quiet hours and mutes for the caller; the push bridge for admins."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from push.registration import RegistrationError, RegistrationSpec
from server.errors import ApiError, ApiErrorCode, forbidden, invalid, not_found
from server.handlers.access import Actor, require_operator
from server.services import Services
from storage.push_outbox import DeadLetter, OutboxState
from storage.push_registrations import NewRegistration, PushResult, PushSettings, Registration


@dataclass(frozen=True, slots=True)
class DeviceView:
    registration: Registration | None
    results: list[PushResult]


def outbox_json(state: OutboxState) -> dict[str, Any]:
    return {
        "pending": state.pending,
        "due": state.due,
        "oldest_due_s": round(state.oldest_due_s, 3),
        "dead_letters": state.dead_letters,
    }


class PushHandler:
    def __init__(self, services: Services) -> None:
        self._s = services

    def check(self, spec: RegistrationSpec) -> NewRegistration:
        """The registration as stored; invalid_request naming the field, or
        push_provider_unavailable for a provider this server has no credentials for."""
        try:
            return self._s.push.check(spec)
        except RegistrationError as exc:
            if exc.unavailable:
                raise ApiError(ApiErrorCode.PUSH_PROVIDER_UNAVAILABLE, exc.message) from None
            raise invalid(exc.message, exc.field) from None

    async def register(self, actor: Actor, spec: RegistrationSpec) -> Registration:
        """Register (or replace) the calling device's push token."""
        return await self._s.push_registrations.register(actor.device_id, self.check(spec))

    async def registration(self, actor: Actor) -> Registration:
        found = await self._s.push_registrations.get(actor.device_id)
        if found is None:
            raise not_found("this device has no push registration")
        return found

    async def unregister(self, actor: Actor) -> None:
        await self._s.push_registrations.unregister(actor.device_id)

    async def settings(self, actor: Actor) -> PushSettings:
        return await self._s.push_registrations.settings(actor.account_id)

    async def set_settings(self, actor: Actor, settings: PushSettings) -> PushSettings:
        try:
            ZoneInfo(settings.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise invalid("not a known IANA time zone (like Asia/Jakarta)", "time_zone") from None
        await self._s.push_registrations.set_settings(actor.account_id, settings)
        return settings

    async def mute(self, actor: Actor, conversation_id: uuid.UUID, until: datetime | None) -> None:
        await self._s.push_registrations.mute(actor.account_id, conversation_id, until)

    async def unmute(self, actor: Actor, conversation_id: uuid.UUID) -> None:
        await self._s.push_registrations.unmute(actor.account_id, conversation_id)

    async def mutes(self, actor: Actor) -> dict[uuid.UUID, datetime | None]:
        return await self._s.push_registrations.mutes(actor.account_id)

    # -- admins ---------------------------------------------------------------------------

    @staticmethod
    def _admin(actor: Actor) -> None:
        if not actor.is_admin:
            raise forbidden("only the organization's admins see the push bridge")

    async def device(self, actor: Actor, device_id: uuid.UUID) -> DeviceView:
        """A device of the admin's organization: its registration and latest results."""
        self._admin(actor)
        org = await self._s.push_registrations.device_org(device_id)
        if org != actor.org_id:
            raise not_found("no such device")
        store = self._s.push_registrations
        return DeviceView(await store.get(device_id), await store.results(device_id))

    async def dead_letters(self, actor: Actor, after_id: int, limit: int) -> list[DeadLetter]:
        self._admin(actor)
        return await self._s.push.outbox.dead_letters(actor.org_id, after_id, limit)

    async def redrive(self, actor: Actor, ids: list[int]) -> int:
        self._admin(actor)
        return await self._s.push.outbox.redrive(actor.org_id, ids)

    async def stats(self, actor: Actor) -> dict[str, Any]:
        """The providers' status and the outbox of the admin's organization (never
        another's: counters of the whole server are for its operator, see `operator`)."""
        self._admin(actor)
        push = self._s.push
        return {
            "providers": push.status(),
            "outbox": outbox_json(await push.outbox.state(actor.org_id)),
        }

    async def operator(self, authorization: str | None) -> dict[str, Any]:
        """For whoever runs the server (the `operator_token` setting): provider details
        (which name credential files), the whole outbox, this process's counters."""
        require_operator(self._s.settings, authorization)
        push = self._s.push
        return {
            "providers": push.status(detail=True),
            "outbox": outbox_json(await push.outbox.state()),
            "this_process": push.metrics.snapshot(),
        }
