"""Organizations, their department tree and their member directory."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from server.errors import ApiError, ApiErrorCode, forbidden
from server.handlers.access import (
    Actor,
    department_in_scope,
    require_department_scope,
    require_member_scope,
    require_org,
    require_role_grant,
)
from server.handlers.audit import record_admin_reads
from server.handlers.minors import MinorHandler
from server.passwords import PasswordHasher, password_problems
from server.services import Services
from storage.accounts import Account, NewAccount
from storage.errors import ConflictError
from storage.orgs import Department, Org, OrgStore

logger = logging.getLogger(__name__)

DIRECTORY_PAGE_MAX = 200


@dataclass(frozen=True, slots=True)
class MemberEntry:
    """A member as one viewer sees them: `full` when the viewer may see the whole record
    (themselves, an owner or admin, or a department admin for a member they manage);
    otherwise only the directory fields (README.md, "Who sees what of a colleague")."""

    account: Account
    full: bool
    birth_date: bool = False  # the viewer may see the birth date (themselves, owners, admins)


def check_password(password: str, account_name: str, work_email: str) -> None:
    """Raise weak_password with the reasons unless `password` meets the rule."""
    problems = password_problems(
        password, personal=(account_name, work_email.split("@", maxsplit=1)[0])
    )
    if problems:
        raise ApiError(
            ApiErrorCode.WEAK_PASSWORD,
            "the password is too weak",
            details=[{"field": "password", "problem": p} for p in problems],
        )


async def create_org(
    orgs: OrgStore, passwords: PasswordHasher, name: str, owner: dict[str, Any], password: str
) -> tuple[Org, Account]:
    """Create an organization with its first owner, whatever `allow_org_signup` says (the
    operator's `obrol org create` calls this directly). Raises ApiError weak_password;
    ConflictError if the work email is taken."""
    check_password(password, owner["account_name"], owner["work_email"])
    new = NewAccount(**owner, role="owner", password_hash=await passwords.hash(password))
    return await orgs.create(name, new)


class OrgHandler:
    def __init__(self, services: Services) -> None:
        self._s = services
        self._minors = MinorHandler(services)

    def require_signup_open(self) -> None:
        """Raise ApiError signup_closed unless `allow_org_signup`."""
        if not self._s.settings.allow_org_signup:
            raise ApiError(ApiErrorCode.SIGNUP_CLOSED, "this server does not take new orgs")

    async def sign_up(self, name: str, owner: dict[str, Any], password: str) -> None:
        """Open sign-up (only if `allow_org_signup`): create an organization and its owner.

        The outcome is deliberately not told: a work email already registered (in any org)
        answers exactly like a success, so sign-up cannot be used to find out who has an
        account here. Only problems of the request itself are reported. Raises ApiError:
        signup_closed, weak_password.
        """
        self.require_signup_open()
        try:
            org, account = await self.create_org(name, owner, password)
        except ConflictError:
            logger.info("org sign-up not done: the work email is already registered")
            return
        logger.info("org %s signed up, owner account=%s", org.id, account.id)

    async def create_org(
        self, name: str, owner: dict[str, Any], password: str
    ) -> tuple[Org, Account]:
        """`create_org` on this server's stores (what sign-up does once it is allowed)."""
        return await create_org(self._s.orgs, self._s.passwords, name, owner, password)

    async def get_org(self, actor: Actor, org_id: uuid.UUID) -> Org:
        require_org(actor, org_id)
        return await self._s.orgs.get(org_id)

    async def departments(self, actor: Actor, org_id: uuid.UUID) -> list[Department]:
        require_org(actor, org_id)
        return await self._s.orgs.departments(org_id)

    async def create_department(
        self, actor: Actor, org_id: uuid.UUID, parent_id: uuid.UUID | None, name: str
    ) -> Department:
        """Admins anywhere; department admins only below their own department."""
        require_org(actor, org_id)
        if not actor.is_admin:
            await require_department_scope(self._s, actor, parent_id)
        return await self._s.orgs.create_department(org_id, parent_id, name)

    async def rename_department(
        self, actor: Actor, org_id: uuid.UUID, department_id: uuid.UUID, name: str
    ) -> Department:
        require_org(actor, org_id)
        await require_department_scope(self._s, actor, department_id)
        return await self._s.orgs.rename_department(org_id, department_id, name)

    async def directory(
        self, actor: Actor, org_id: uuid.UUID, after: tuple[str, uuid.UUID] | None, limit: int
    ) -> tuple[list[MemberEntry], tuple[str, uuid.UUID] | None]:
        """One page of the member directory and the keyset of the next page (or None).
        Whole records of others it shows are admin reads (audit log)."""
        require_org(actor, org_id)
        limit = max(1, min(limit, DIRECTORY_PAGE_MAX))
        rows = await self._s.accounts.directory(org_id, after, limit + 1)
        next_key = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_key = (rows[-1].display_name.lower(), rows[-1].id)
        entries = await self._as_seen_by(actor, rows)
        await record_admin_reads(
            self._s, actor, "directory", (e.account.id for e in entries if e.full)
        )
        return entries, next_key

    async def member(self, actor: Actor, org_id: uuid.UUID, account_id: uuid.UUID) -> MemberEntry:
        """A colleague's entry: whole for those who manage them (an admin read, recorded
        in the audit log), directory fields otherwise."""
        require_org(actor, org_id)
        account = await self._s.accounts.get(org_id, account_id)
        entry = (await self._as_seen_by(actor, [account]))[0]
        if entry.full:
            await record_admin_reads(self._s, actor, "profile", [account.id])
        return entry

    async def _as_seen_by(self, actor: Actor, accounts: list[Account]) -> list[MemberEntry]:
        in_scope: dict[uuid.UUID | None, bool] = {}  # one subtree lookup per department
        entries = []
        for account in accounts:
            full = account.id == actor.account_id or actor.is_admin
            if not full and actor.role == "department_admin" and account.role == "member":
                if account.department_id not in in_scope:
                    in_scope[account.department_id] = await department_in_scope(
                        self._s, actor, account.department_id
                    )
                full = in_scope[account.department_id]
            own_or_admin = account.id == actor.account_id or actor.is_admin
            entries.append(MemberEntry(account, full, birth_date=own_or_admin))
        return entries

    async def add_member(
        self, actor: Actor, org_id: uuid.UUID, fields: dict[str, Any], initial_password: str
    ) -> Account:
        """Add a member who must change the initial password at first login. With a birth
        date (owners and admins only) that makes them a minor, the account waits for a
        guardian's consent (server.handlers.minors)."""
        require_org(actor, org_id)
        role = fields.get("role", "member")
        require_role_grant(actor, role)
        await self._check_placement(actor, fields, role)
        check_password(initial_password, fields["account_name"], fields["work_email"])
        status = self._minors.new_member_status(actor, fields.get("birth_date"))
        new = NewAccount(
            **fields,
            password_hash=await self._s.passwords.hash(initial_password),
            password_change_required=True,
            status=status,
        )
        return await self._s.accounts.add(org_id, new)

    async def update_member(
        self, actor: Actor, org_id: uuid.UUID, account_id: uuid.UUID, changes: dict[str, Any]
    ) -> Account:
        """Correct a member's directory entry, within the actor's rights; a birth date only
        by owners and admins, and never their own. The audit log records a new role and
        the names of the fields changed."""
        require_org(actor, org_id)
        target = await self._s.accounts.get(org_id, account_id)
        await require_member_scope(self._s, actor, target)
        role = changes.get("role", target.role)
        if "role" in changes:
            if target.id == actor.account_id:
                raise forbidden("you may not change your own role")
            require_role_grant(actor, role)
        if role != "department_admin":
            changes["admin_department_id"] = None
        merged = {
            "department_id": target.department_id,
            "admin_department_id": target.admin_department_id,
        } | changes
        await self._check_placement(actor, merged, role)
        if "birth_date" in changes:
            return await self._minors.update_member(actor, target, changes)
        return await self._s.accounts.update_member(
            org_id, account_id, changes, actor.by, self._s.clock()
        )

    async def deactivate_member(
        self, actor: Actor, org_id: uuid.UUID, account_id: uuid.UUID
    ) -> Account:
        """Deactivate a member: their tokens stop working at once."""
        require_org(actor, org_id)
        if account_id == actor.account_id:
            raise forbidden("you may not deactivate yourself")
        target = await self._s.accounts.get(org_id, account_id)
        await require_member_scope(self._s, actor, target)
        account = await self._s.accounts.deactivate(org_id, account_id, actor.by, self._s.clock())
        self._s.hub.disconnect_account(account_id)
        return account

    async def _check_placement(self, actor: Actor, fields: dict[str, Any], role: str) -> None:
        """Department admins place members only inside their own subtree."""
        if actor.role == "department_admin":
            await require_department_scope(self._s, actor, fields.get("department_id"))
        if role == "department_admin":
            scope = fields.get("admin_department_id")
            if scope is None:
                raise ApiError(
                    ApiErrorCode.INVALID_REQUEST,
                    "a department admin needs admin_department_id",
                    details=[{"field": "admin_department_id", "problem": "required"}],
                )
            await require_department_scope(self._s, actor, scope)
