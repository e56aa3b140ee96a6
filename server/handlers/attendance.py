"""Attendance: sites defined by the organization's admins, one-shot check-in and out.

A check-in carries the person's position. The server decides inside which site it is (or
outside all of them) and records only that, with who, when and from which device: the
position itself is not stored, logged or echoed, and nothing keeps it after the request.
It is looked at only once the person's `attendance` grant is confirmed (a refusal never
gets that far), apart from checking that it is a well-formed position.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from server.errors import forbidden, invalid
from server.handlers import geofence
from server.handlers.access import Actor, require_org
from server.handlers.audit import record_admin_reads
from server.services import Services
from storage.attendance import AttendanceRecord, Circle, Point, Site

ACTIONS = ("in", "out")


class AttendanceHandler:
    def __init__(self, services: Services) -> None:
        self._s = services

    @staticmethod
    def _admin(actor: Actor, org_id: uuid.UUID, what: str) -> None:
        require_org(actor, org_id)
        if not actor.is_admin:
            raise forbidden(f"only the organization's owners and admins {what}")

    async def create_site(
        self,
        actor: Actor,
        org_id: uuid.UUID,
        name: str,
        department_id: uuid.UUID | None,
        circle: dict[str, Any] | None,
        polygon: Sequence[tuple[Any, Any]] | None,
    ) -> Site:
        """A site: `circle` ({lat, lon, radius_m}) or `polygon` ((lat, lon) vertices), not
        both; for the whole organization, or for `department_id` and the departments below.
        Owners and admins only. invalid_request naming the field for a bad shape or value
        (never quoting it); conflict for a live site of the same name; not_found for a
        department outside the organization."""
        self._admin(actor, org_id, "define attendance sites")
        if (circle is None) == (polygon is None):
            raise invalid("give either a circle or a polygon", "circle")
        shape_circle: Circle | None = None
        shape_polygon: tuple[Point, ...] | None = None
        if circle is not None:
            shape_circle = geofence.circle(circle["lat"], circle["lon"], circle["radius_m"])
        else:
            assert polygon is not None
            shape_polygon = geofence.polygon(polygon)
        site = Site(
            uuid.uuid4(),
            org_id,
            department_id,
            name,
            shape_circle,
            shape_polygon,
            actor.account_id,
            self._s.clock(),
        )
        return await self._s.attendance.create_site(site)

    async def sites(self, actor: Actor, org_id: uuid.UUID) -> list[Site]:
        """Any member sees where the organization's sites are."""
        require_org(actor, org_id)
        return await self._s.attendance.sites(org_id)

    async def site(self, actor: Actor, org_id: uuid.UUID, site_id: uuid.UUID) -> Site:
        require_org(actor, org_id)
        return await self._s.attendance.site(org_id, site_id)

    async def delete_site(self, actor: Actor, org_id: uuid.UUID, site_id: uuid.UUID) -> None:
        self._admin(actor, org_id, "remove attendance sites")
        await self._s.attendance.delete_site(org_id, site_id, self._s.clock())

    async def check(
        self, actor: Actor, action: str, lat: Any, lon: Any, accuracy_m: Any
    ) -> AttendanceRecord:
        """Check in or out at the caller's position.

        invalid_request for a malformed position or action; purpose_switched_off or
        consent_not_granted without an active `attendance` grant; no_sites when no site
        applies to the caller. Any refusal stores nothing. The accuracy, if given, must be
        a number of metres, and is not used: the position is judged as given.
        """
        if action not in ACTIONS:
            raise invalid("action must be 'in' or 'out'", "action")
        position = geofence.point(lat, lon)
        if accuracy_m is not None:
            geofence.number(accuracy_m, "acc", 0, geofence.MAX_ACCURACY_M)

        def inside(sites: Sequence[Site]) -> Site | None:
            return geofence.site_at(position, sites)

        return await self._s.attendance.check(
            actor.org_id, actor.account_id, actor.device_id, action, self._s.clock(), inside
        )

    async def mine(self, actor: Actor, after_id: int, limit: int) -> list[AttendanceRecord]:
        return await self._s.attendance.mine(actor.account_id, after_id, limit)

    async def org_records(
        self,
        actor: Actor,
        org_id: uuid.UUID,
        account_id: uuid.UUID | None,
        after_id: int,
        limit: int,
    ) -> list[AttendanceRecord]:
        """Owners and admins read the whole organization's records; department admins those
        of the members placed in their department or below it. Each member whose records
        a page shows gets an admin read in the audit log, with how many."""
        require_org(actor, org_id)
        if actor.is_admin:
            root = None
        elif actor.role == "department_admin" and actor.admin_department_id is not None:
            root = actor.admin_department_id
        else:
            raise forbidden("only the organization's admins read its attendance records")
        records = await self._s.attendance.org_records(
            org_id, department_root=root, account_id=account_id, after_id=after_id, limit=limit
        )
        await record_admin_reads(self._s, actor, "attendance", (r.account_id for r in records))
        return records
