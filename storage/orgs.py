"""Organizations and their department tree."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.accounts import Account, NewAccount, insert_account
from storage.database import Database
from storage.errors import NotFoundError
from storage.keyring import Keyring


@dataclass(frozen=True, slots=True)
class Org:
    id: uuid.UUID
    name: str
    created_at: datetime
    serves_children: bool  # declared by its owners or admins (storage.minors)


ORG_COLUMNS = "id, name, created_at, serves_children"


def org_from_row(row: Any) -> Org:
    return Org(row["id"], row["name"], row["created_at"], row["serves_children"])


@dataclass(frozen=True, slots=True)
class Department:
    id: uuid.UUID
    org_id: uuid.UUID
    parent_id: uuid.UUID | None
    name: str
    created_at: datetime


def _department(row: Any) -> Department:
    return Department(row["id"], row["org_id"], row["parent_id"], row["name"], row["created_at"])


async def _create_org(
    conn: Any, keyring: Keyring, name: str, owner: NewAccount
) -> tuple[Org, Account]:
    org_id = uuid.uuid4()
    row = await conn.fetchrow(
        f"INSERT INTO orgs (id, name) VALUES ($1, $2) RETURNING {ORG_COLUMNS}", org_id, name
    )
    account = await insert_account(conn, keyring, org_id, owner)
    return org_from_row(row), account


async def _get_org(conn: Any, org_id: uuid.UUID) -> Org:
    row = await conn.fetchrow(f"SELECT {ORG_COLUMNS} FROM orgs WHERE id = $1", org_id)
    if row is None:
        raise NotFoundError("no such organization")
    return org_from_row(row)


async def _create_department(
    conn: Any, org_id: uuid.UUID, parent_id: uuid.UUID | None, name: str
) -> Department:
    row = await conn.fetchrow(
        """INSERT INTO departments (id, org_id, parent_id, name) VALUES ($1, $2, $3, $4)
           RETURNING id, org_id, parent_id, name, created_at""",
        uuid.uuid4(),
        org_id,
        parent_id,
        name,
    )
    return _department(row)


async def _rename_department(
    conn: Any, org_id: uuid.UUID, department_id: uuid.UUID, name: str
) -> Department:
    row = await conn.fetchrow(
        """UPDATE departments SET name = $3 WHERE org_id = $1 AND id = $2
           RETURNING id, org_id, parent_id, name, created_at""",
        org_id,
        department_id,
        name,
    )
    if row is None:
        raise NotFoundError("no such department")
    return _department(row)


async def _list_departments(conn: Any, org_id: uuid.UUID) -> list[Department]:
    rows = await conn.fetch(
        """SELECT id, org_id, parent_id, name, created_at FROM departments
           WHERE org_id = $1 ORDER BY lower(name), id""",
        org_id,
    )
    return [_department(r) for r in rows]


async def _in_subtree(
    conn: Any, org_id: uuid.UUID, root_id: uuid.UUID, department_id: uuid.UUID
) -> bool:
    found = await conn.fetchval(
        """WITH RECURSIVE subtree(id) AS (
               SELECT id FROM departments WHERE org_id = $1 AND id = $2
               UNION ALL
               SELECT d.id FROM departments d JOIN subtree s ON d.parent_id = s.id
               WHERE d.org_id = $1)
           SELECT 1 FROM subtree WHERE id = $3""",
        org_id,
        root_id,
        department_id,
    )
    return found is not None


class OrgStore:
    def __init__(self, db: Database, keyring: Keyring) -> None:
        self._db = db
        self._keyring = keyring

    async def create(self, name: str, owner: NewAccount) -> tuple[Org, Account]:
        """Create an organization and its first owner in one transaction."""
        return await self._db.transaction(_create_org, self._keyring, name, owner)

    async def get(self, org_id: uuid.UUID) -> Org:
        return await self._db.transaction(_get_org, org_id)

    async def create_department(
        self, org_id: uuid.UUID, parent_id: uuid.UUID | None, name: str
    ) -> Department:
        """Raises NotFoundError for a parent outside the org, ConflictError for a sibling
        of the same name."""
        return await self._db.transaction(_create_department, org_id, parent_id, name)

    async def rename_department(
        self, org_id: uuid.UUID, department_id: uuid.UUID, name: str
    ) -> Department:
        return await self._db.transaction(_rename_department, org_id, department_id, name)

    async def departments(self, org_id: uuid.UUID) -> list[Department]:
        return await self._db.transaction(_list_departments, org_id)

    async def in_subtree(
        self, org_id: uuid.UUID, root_id: uuid.UUID, department_id: uuid.UUID
    ) -> bool:
        """True if `department_id` is `root_id` or below it, in `org_id`."""
        return await self._db.transaction(_in_subtree, org_id, root_id, department_id)
