"""Attendance: an organization's sites, and check-in/out records.

A site is org data (where an office is): a circle (centre, radius) or a polygon, for the
whole organization or for one department's subtree. A record says who checked in or out,
when, from which device, and what the server decided (inside which site, or outside):
never the position it decided from. The position never reaches this module; the caller
passes a `choose` function that knows it and picks the site.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.consent import require_grant
from storage.database import Database
from storage.errors import NotFoundError, StorageError

ATTENDANCE = "attendance"  # the consent purpose a check-in needs

Point = tuple[float, float]  # (lat, lon) in degrees


class NoSitesError(StorageError):
    """A check-in in an organization that has no site that applies to the person."""


@dataclass(frozen=True, slots=True)
class Circle:
    lat: float
    lon: float
    radius_m: float


@dataclass(frozen=True, slots=True)
class Site:
    id: uuid.UUID
    org_id: uuid.UUID
    department_id: uuid.UUID | None
    name: str
    circle: Circle | None  # exactly one of circle and polygon
    polygon: tuple[Point, ...] | None
    created_by: uuid.UUID | None  # None: the creator's account was purged since
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AttendanceRecord:
    id: int
    account_id: uuid.UUID
    device_id: uuid.UUID
    action: str  # "in" or "out"
    at: datetime
    site_id: uuid.UUID | None
    site_name: str | None
    outcome: str  # "inside" or "outside"


SITE_COLUMNS = """id, org_id, department_id, name, kind, center_lat, center_lon, radius_m,
    vertex_lat, vertex_lon, created_by, created_at"""

RECORD_COLUMNS = """r.id, r.account_id, r.device_id, r.action, r.at, r.site_id,
    s.name AS site_name, r.outcome"""


def _site(row: Any) -> Site:
    circle = polygon = None
    if row["kind"] == "circle":
        circle = Circle(row["center_lat"], row["center_lon"], row["radius_m"])
    else:
        polygon = tuple(zip(row["vertex_lat"], row["vertex_lon"], strict=True))
    return Site(
        row["id"],
        row["org_id"],
        row["department_id"],
        row["name"],
        circle,
        polygon,
        row["created_by"],
        row["created_at"],
    )


def _record(row: Any) -> AttendanceRecord:
    return AttendanceRecord(**dict(row))


async def _create_site(conn: Any, site: Site) -> Site:
    circle, polygon = site.circle, site.polygon
    row = await conn.fetchrow(
        f"""INSERT INTO attendance_sites (id, org_id, department_id, name, kind, center_lat,
               center_lon, radius_m, vertex_lat, vertex_lon, created_by, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
           RETURNING {SITE_COLUMNS}""",
        site.id,
        site.org_id,
        site.department_id,
        site.name,
        "circle" if circle is not None else "polygon",
        None if circle is None else circle.lat,
        None if circle is None else circle.lon,
        None if circle is None else circle.radius_m,
        None if polygon is None else [p[0] for p in polygon],
        None if polygon is None else [p[1] for p in polygon],
        site.created_by,
        site.created_at,
    )
    return _site(row)


async def _sites(conn: Any, org_id: uuid.UUID) -> Any:
    return await conn.fetch(
        f"""SELECT {SITE_COLUMNS} FROM attendance_sites
           WHERE org_id = $1 AND deleted_at IS NULL ORDER BY lower(name), id""",
        org_id,
    )


async def _site_by_id(conn: Any, org_id: uuid.UUID, site_id: uuid.UUID) -> Any:
    return await conn.fetchrow(
        f"""SELECT {SITE_COLUMNS} FROM attendance_sites
           WHERE org_id = $1 AND id = $2 AND deleted_at IS NULL""",
        org_id,
        site_id,
    )


async def _delete_site(conn: Any, org_id: uuid.UUID, site_id: uuid.UUID, at: datetime) -> Any:
    return await conn.fetchval(
        """UPDATE attendance_sites SET deleted_at = $3
           WHERE org_id = $1 AND id = $2 AND deleted_at IS NULL RETURNING id""",
        org_id,
        site_id,
        at,
    )


async def _sites_for(conn: Any, org_id: uuid.UUID, account_id: uuid.UUID) -> list[Site]:
    """The live sites that apply to the account: the organization's own, and those of its
    department and every department above it."""
    rows = await conn.fetch(
        f"""WITH RECURSIVE above(id, parent_id) AS (
               SELECT d.id, d.parent_id FROM departments d
               JOIN accounts a ON a.org_id = d.org_id AND a.department_id = d.id
               WHERE a.id = $2
               UNION ALL
               SELECT d.id, d.parent_id FROM departments d JOIN above x ON d.id = x.parent_id
               WHERE d.org_id = $1)
           SELECT {SITE_COLUMNS} FROM attendance_sites
           WHERE org_id = $1 AND deleted_at IS NULL
             AND (department_id IS NULL OR department_id IN (SELECT id FROM above))
           ORDER BY lower(name), id""",
        org_id,
        account_id,
    )
    return [_site(r) for r in rows]


async def _check(
    conn: Any,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    device_id: uuid.UUID,
    action: str,
    at: datetime,
    choose: Callable[[Sequence[Site]], Site | None],
) -> AttendanceRecord:
    await require_grant(conn, org_id, account_id, ATTENDANCE)  # before anything is looked at
    sites = await _sites_for(conn, org_id, account_id)
    if not sites:
        raise NoSitesError("your organization has no attendance site for you to check in at")
    site = choose(sites)
    row = await conn.fetchrow(
        """INSERT INTO attendance_records
               (org_id, account_id, device_id, action, at, site_id, outcome)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           RETURNING id, account_id, device_id, action, at, site_id, outcome""",
        org_id,
        account_id,
        device_id,
        action,
        at,
        None if site is None else site.id,
        "outside" if site is None else "inside",
    )
    return AttendanceRecord(**dict(row), site_name=None if site is None else site.name)


async def _mine(conn: Any, account_id: uuid.UUID, after_id: int, limit: int) -> Any:
    return await conn.fetch(
        f"""SELECT {RECORD_COLUMNS} FROM attendance_records r
           LEFT JOIN attendance_sites s ON s.id = r.site_id
           WHERE r.account_id = $1 AND r.id > $2 ORDER BY r.id LIMIT $3""",
        account_id,
        after_id,
        limit,
    )


async def _org_records(
    conn: Any,
    org_id: uuid.UUID,
    department_root: uuid.UUID | None,
    account_id: uuid.UUID | None,
    after_id: int,
    limit: int,
) -> Any:
    return await conn.fetch(
        f"""WITH RECURSIVE subtree(id) AS (
               SELECT id FROM departments WHERE org_id = $1 AND id = $2
               UNION ALL
               SELECT d.id FROM departments d JOIN subtree t ON d.parent_id = t.id
               WHERE d.org_id = $1)
           SELECT {RECORD_COLUMNS} FROM attendance_records r
           LEFT JOIN attendance_sites s ON s.id = r.site_id
           WHERE r.org_id = $1 AND r.id > $4
             AND ($3::uuid IS NULL OR r.account_id = $3)
             AND ($2::uuid IS NULL OR r.account_id IN (
                 SELECT a.id FROM accounts a
                 WHERE a.org_id = $1 AND a.department_id IN (SELECT id FROM subtree)))
           ORDER BY r.id LIMIT $5""",
        org_id,
        department_root,
        account_id,
        after_id,
        limit,
    )


class AttendanceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_site(self, site: Site) -> Site:
        """Store a new site. ConflictError (field "name") if a live site of the org has
        that name; NotFoundError (field "department_id") for a department outside it."""
        return await self._db.transaction(_create_site, site)

    async def sites(self, org_id: uuid.UUID) -> list[Site]:
        """The organization's live sites, by name."""
        return [_site(r) for r in await self._db.read(_sites, org_id)]

    async def site(self, org_id: uuid.UUID, site_id: uuid.UUID) -> Site:
        """NotFoundError unless it is a live site of the organization."""
        row = await self._db.read(_site_by_id, org_id, site_id)
        if row is None:
            raise NotFoundError("no such site")
        return _site(row)

    async def delete_site(self, org_id: uuid.UUID, site_id: uuid.UUID, at: datetime) -> None:
        """Retire a site: no check-in is judged against it again; the records that name it
        keep naming it. NotFoundError unless it is a live site of the organization."""
        if await self._db.read(_delete_site, org_id, site_id, at) is None:
            raise NotFoundError("no such site")

    async def check(
        self,
        org_id: uuid.UUID,
        account_id: uuid.UUID,
        device_id: uuid.UUID,
        action: str,
        at: datetime,
        choose: Callable[[Sequence[Site]], Site | None],
    ) -> AttendanceRecord:
        """Record a check-in or out, in one transaction: the account's attendance grant is
        checked (ConsentError "switched_off" / "not_granted") and held until the record is
        committed; then `choose` gets the sites that apply to the account (NoSitesError if
        there are none) and returns the one the person is inside, or None (outside)."""
        return await self._db.transaction(_check, org_id, account_id, device_id, action, at, choose)

    async def mine(
        self, account_id: uuid.UUID, after_id: int = 0, limit: int = 100
    ) -> list[AttendanceRecord]:
        """The account's own records, oldest first, after record `after_id`."""
        return [_record(r) for r in await self._db.read(_mine, account_id, after_id, limit)]

    async def org_records(
        self,
        org_id: uuid.UUID,
        *,
        department_root: uuid.UUID | None,
        account_id: uuid.UUID | None,
        after_id: int,
        limit: int,
    ) -> list[AttendanceRecord]:
        """The organization's records, oldest first, after record `after_id`: only those of
        members placed in `department_root`'s subtree when it is given, only `account_id`'s
        when it is given."""
        rows = await self._db.read(
            _org_records, org_id, department_root, account_id, after_id, limit
        )
        return [_record(r) for r in rows]
