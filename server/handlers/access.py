"""Who may do what: the authenticated actor and the organization's role rules.

Roles: owner > admin > department_admin (scoped to one department subtree) > member.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from datetime import datetime

from protocol import CloseCode, ErrorCode
from server.errors import ApiError, ApiErrorCode, forbidden, not_found
from server.services import Services
from server.settings import Settings
from storage.accounts import Account
from storage.audit import AuditActor, account_actor
from storage.devices import Credentials

ROLES = ("owner", "admin", "department_admin", "member")
ADMIN_ROLES = frozenset({"owner", "admin"})


@dataclass(frozen=True, slots=True)
class Actor:
    """The account and device behind an authenticated request."""

    account_id: uuid.UUID
    org_id: uuid.UUID
    device_id: uuid.UUID
    role: str
    admin_department_id: uuid.UUID | None
    fresh_until: datetime | None = None  # the password was confirmed until then

    @property
    def is_admin(self) -> bool:
        return self.role in ADMIN_ROLES

    @property
    def by(self) -> AuditActor:
        """This account on this device, as the audit log names who acted."""
        return account_actor(self.account_id, self.device_id)


def gateway_refusal(device: Credentials) -> tuple[CloseCode, ErrorCode, str] | None:
    """Why the gateway must refuse this device's handshake (close code, error, message),
    or None when it may connect."""
    if device.revoked:
        return CloseCode.DEVICE_REVOKED, ErrorCode.DEVICE_REVOKED, "device revoked"
    if device.guardian_consent_required:
        return (
            CloseCode.GUARDIAN_CONSENT_REQUIRED,
            ErrorCode.GUARDIAN_CONSENT_REQUIRED,
            "a guardian's consent must be recorded first",
        )
    if not device.account_active:
        return CloseCode.ACCOUNT_DEACTIVATED, ErrorCode.ACCOUNT_DEACTIVATED, "account deactivated"
    if device.password_change_required:
        return (
            CloseCode.PASSWORD_CHANGE_REQUIRED,
            ErrorCode.PASSWORD_CHANGE_REQUIRED,
            "change the initial password first",
        )
    if device.signed_out:
        return CloseCode.SIGNED_OUT, ErrorCode.SIGNED_OUT, "signed out: log in again"
    return None


def require_fresh(actor: Actor, now: datetime) -> None:
    """The data-rights actions (access summary, export, deletion, cancellation) need the
    password confirmed a short while ago: by the login that opened this session or by
    POST /v1/me/reauth (settings.reauth_window_s). reauth_required otherwise, so a phone
    left unlocked or a stolen token cannot take a person's data or account."""
    if actor.fresh_until is None or actor.fresh_until <= now:
        raise ApiError(
            ApiErrorCode.REAUTH_REQUIRED,
            "confirm your password first (POST /v1/me/reauth), then repeat this request",
        )


def require_org(actor: Actor, org_id: uuid.UUID) -> None:
    """Members act only inside their own organization."""
    if actor.org_id != org_id:
        raise forbidden("you are not a member of this organization")


async def department_in_scope(
    services: Services, actor: Actor, department_id: uuid.UUID | None
) -> bool:
    """Can `actor` administer things placed in `department_id`?"""
    if actor.is_admin:
        return True
    if actor.role != "department_admin" or actor.admin_department_id is None:
        return False
    if department_id is None:
        return False
    return await services.orgs.in_subtree(actor.org_id, actor.admin_department_id, department_id)


async def require_department_scope(
    services: Services, actor: Actor, department_id: uuid.UUID | None
) -> None:
    if not await department_in_scope(services, actor, department_id):
        raise forbidden("this is outside the departments you administer")


async def require_member_scope(services: Services, actor: Actor, target: Account) -> None:
    """May `actor` correct or deactivate `target`?

    Owners manage everyone; admins everyone but owners; department admins plain members
    placed in their subtree.
    """
    if actor.role == "owner":
        return
    if actor.role == "admin":
        if target.role == "owner":
            raise forbidden("only an owner may change an owner")
        return
    if actor.role == "department_admin" and target.role == "member":
        await require_department_scope(services, actor, target.department_id)
        return
    raise forbidden("you may not manage this member")


def require_role_grant(actor: Actor, role: str) -> None:
    """May `actor` give someone `role`? Owners any; admins up to department admin."""
    allowed = {
        "owner": set(ROLES),
        "admin": {"department_admin", "member"},
        "department_admin": {"member"},
    }.get(actor.role, set())
    if role not in allowed:
        raise ApiError(ApiErrorCode.FORBIDDEN, f"you may not give the role {role!r}")


def require_operator(settings: Settings, authorization: str | None) -> None:
    """The caller is the server's operator: `Authorization: Bearer <operator_token>`.
    not_found while no operator_token is set (the endpoints are off); unauthenticated for a
    missing or wrong token."""
    token = settings.operator_token
    if token is None:
        raise not_found("no operator endpoints: set operator_token to enable them")
    given = (authorization or "").removeprefix("Bearer ").encode()
    if not hmac.compare_digest(given, token.get_secret_value().encode()):
        raise ApiError(ApiErrorCode.UNAUTHENTICATED, "the operator token is missing or wrong")
