"""Minors and guardians: birth dates, guardian consents, organizations serving children.

A member younger than `age_of_consent_years` (by the birth date an owner or admin gave)
cannot use their account - log in, use a token, connect to the gateway - until an admin
records a guardian's consent; younger than `child_age_years`, the organization must also
have declared that it serves children, or the consent is refused. Withdrawing the consent,
or a birth date that makes an active member a minor, blocks the account at once and closes
its live connections (4014). Adults, and members without a birth date, are not affected.

Ages are counted on the server's date in UTC (organizations have no time zone yet): a
member comes of age at 00:00 UTC on their birthday; someone born on 29 February, on
1 March in common years. Nobody's age changes anything by itself: the rule is applied
whenever it is asked about (log in, a birth date or consent recorded, the organization's
declaration changed) and to every account when the server starts (the settings may have
changed).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import date
from typing import Any

from server.errors import forbidden, invalid
from server.handlers.access import Actor, require_member_scope, require_org
from server.handlers.audit import record_admin_reads
from server.services import Services
from server.settings import Settings
from storage.accounts import Account
from storage.errors import DatabaseUnavailableError
from storage.minors import AgeRule, GuardianConsent, NewGuardianConsent, Settled
from storage.orgs import Org

logger = logging.getLogger(__name__)

EARLIEST_BIRTH_DATE = date(1900, 1, 1)


def years_before(day: date, years: int) -> date:
    """The same calendar day `years` earlier (29 February becomes 28 February)."""
    try:
        return day.replace(year=day.year - years)
    except ValueError:
        return day.replace(year=day.year - years, day=28)


def age_rule(settings: Settings, today: date) -> AgeRule:
    """The age settings on `today`, as birth dates."""
    return AgeRule(
        adult_born_by=years_before(today, settings.age_of_consent_years),
        child_born_after=years_before(today, settings.child_age_years),
    )


def age_on(birth_date: date, today: date) -> int:
    """Completed years on `today` (the same count `age_rule` makes)."""
    before_birthday = (today.month, today.day) < (birth_date.month, birth_date.day)
    return today.year - birth_date.year - before_birthday


def check_date(value: date, today: date, field: str, what: str) -> date:
    """invalid_request (naming `field`) unless 1900-01-01 <= value <= today."""
    if value > today:
        raise invalid(f"{what} cannot be in the future", field)
    if value < EARLIEST_BIRTH_DATE:
        raise invalid(f"{what} cannot be before {EARLIEST_BIRTH_DATE.isoformat()}", field)
    return value


def require_admin(actor: Actor, org_id: uuid.UUID) -> None:
    require_org(actor, org_id)
    if not actor.is_admin:
        raise forbidden("only the organization's owners and admins handle birth dates and minors")


@dataclass(frozen=True, slots=True)
class GuardianView:
    """A member's standing under the guardian rule today, with every consent recorded."""

    account: Account
    age_years: int | None
    minor: bool
    child: bool
    consents: list[GuardianConsent]


@dataclass(frozen=True, slots=True)
class OwnGuardianStatus:
    """What a person sees of their own standing: whether a consent is needed, and the one
    that stands (not the guardian's name or the evidence)."""

    required: bool
    consent: GuardianConsent | None


class MinorHandler:
    def __init__(self, services: Services) -> None:
        self._s = services

    def rule(self) -> AgeRule:
        return age_rule(self._s.settings, self._s.clock().date())

    def today(self) -> date:
        return self._s.clock().date()

    def disconnect(self, settled: Settled) -> None:
        """Close the live connections of the accounts a change blocked (4014)."""
        for account_id in settled.blocked:
            self._s.hub.disconnect_account(account_id, guardian_consent_required=True)
        if settled.blocked or settled.activated:
            logger.info(
                "guardian rule: %d accounts blocked, %d activated",
                len(settled.blocked),
                len(settled.activated),
            )

    def new_member_status(self, actor: Actor, birth_date: date | None) -> str:
        """The status a new member with `birth_date` starts in (a minor has no guardian
        consent yet). Only owners and admins give birth dates."""
        if birth_date is None:
            return "active"
        if not actor.is_admin:
            raise forbidden("only the organization's owners and admins give birth dates")
        check_date(birth_date, self.today(), "birth_date", "a birth date")
        return "pending_guardian" if self.rule().is_minor(birth_date) else "active"

    async def update_member(
        self, actor: Actor, target: Account, changes: dict[str, Any]
    ) -> Account:
        """Apply `changes` to `target` (already checked by the caller), including its birth
        date (set or cleared): an account this makes a minor without a guardian's consent is
        blocked at once, one it makes of age is activated."""
        birth_date = changes["birth_date"]
        if not actor.is_admin:
            raise forbidden("only the organization's owners and admins give birth dates")
        if target.id == actor.account_id:
            raise forbidden("another owner or admin records your birth date")
        if birth_date is not None:
            assert isinstance(birth_date, date)
            check_date(birth_date, self.today(), "birth_date", "a birth date")
        account, settled = await self._s.minors.update_member(
            target.org_id, target.id, changes, self.rule(), actor.by, self._s.clock()
        )
        self.disconnect(settled)
        return account

    async def _target(self, actor: Actor, org_id: uuid.UUID, account_id: uuid.UUID) -> Account:
        require_admin(actor, org_id)
        target = await self._s.accounts.get(org_id, account_id)
        await require_member_scope(self._s, actor, target)
        return target

    async def view(self, actor: Actor, org_id: uuid.UUID, account_id: uuid.UUID) -> GuardianView:
        """An admin's view of a member: birth date, age, and every guardian consent (an
        admin read, recorded in the audit log)."""
        await self._target(actor, org_id, account_id)
        account, consents = await self._s.minors.consents(org_id, account_id)
        await record_admin_reads(self._s, actor, "guardian_consents", [account_id])
        rule, born = self.rule(), account.birth_date
        return GuardianView(
            account,
            None if born is None else age_on(born, self.today()),
            rule.is_minor(born),
            rule.is_child(born),
            consents,
        )

    async def record(
        self, actor: Actor, org_id: uuid.UUID, account_id: uuid.UUID, new: NewGuardianConsent
    ) -> tuple[GuardianConsent, str]:
        """Record a guardian's consent for a minor member; returns it and the member's
        status after it. Raises ApiError invalid_request (a date in the future, before 1900
        or before the member's birth), guardian_consent_not_required,
        org_does_not_serve_children; not_found for a member outside the org."""
        target = await self._target(actor, org_id, account_id)
        check_date(new.given_on, self.today(), "given_on", "the consent's date")
        if target.birth_date is not None and new.given_on < target.birth_date:
            raise invalid("the consent's date is before the member's birth", "given_on")
        consent, settled = await self._s.minors.record(
            org_id, account_id, new, actor.account_id, self._s.clock(), self.rule()
        )
        self.disconnect(settled)
        logger.info("guardian consent %s recorded for account=%s", consent.id, account_id)
        return consent, await self._status(org_id, account_id)

    async def withdraw(
        self, actor: Actor, org_id: uuid.UUID, account_id: uuid.UUID, consent_id: uuid.UUID
    ) -> tuple[GuardianConsent, str]:
        """Withdraw a guardian consent: the minor is blocked again at once (unless another
        consent stands) and their devices are disconnected. guardian_consent_withdrawn if it
        already was."""
        await self._target(actor, org_id, account_id)
        consent, settled = await self._s.minors.withdraw(
            org_id, account_id, consent_id, actor.account_id, self._s.clock(), self.rule()
        )
        self.disconnect(settled)
        logger.info("guardian consent %s withdrawn for account=%s", consent_id, account_id)
        return consent, await self._status(org_id, account_id)

    async def _status(self, org_id: uuid.UUID, account_id: uuid.UUID) -> str:
        return (await self._s.accounts.get(org_id, account_id)).status

    async def own(self, account: Account) -> OwnGuardianStatus:
        """The person's own standing under the guardian rule."""
        if not self.rule().is_minor(account.birth_date):
            return OwnGuardianStatus(False, None)
        _, consents = await self._s.minors.consents(account.org_id, account.id)
        standing = [c for c in consents if c.active]
        return OwnGuardianStatus(True, standing[-1] if standing else None)

    async def set_serves_children(self, actor: Actor, org_id: uuid.UUID, serves: bool) -> Org:
        """Declare that the organization serves children (guardian consents for children
        may then be recorded), or stop: its children's accounts are blocked at once."""
        require_admin(actor, org_id)
        org, settled = await self._s.minors.set_serves_children(org_id, serves, self.rule())
        self.disconnect(settled)
        return org


async def settle_at_login(services: Services, account: Account) -> str:
    """The status `account` has once the guardian rule is applied today (it may have come
    of age, or the age settings changed); an account this blocks is disconnected."""
    if account.birth_date is None or account.status not in ("active", "pending_guardian"):
        return account.status
    rule = age_rule(services.settings, services.clock().date())
    status, settled = await services.minors.settle_account(account.id, rule)
    for account_id in settled.blocked:
        services.hub.disconnect_account(account_id, guardian_consent_required=True)
    return status


async def settle_at_start(services: Services) -> None:
    """Apply the guardian rule to every account with a birth date, as the settings say now
    (a raised age of consent blocks those it makes minors before they use a token again).
    A database outage here is logged, not fatal: logins apply the rule anyway."""
    rule = age_rule(services.settings, services.clock().date())
    try:
        settled = await services.minors.settle_all(rule)
    except DatabaseUnavailableError as exc:
        logger.warning("guardian rule not applied at start (database unavailable): %s", exc)
        return
    if settled.blocked or settled.activated:
        logger.info(
            "guardian rule at start: %d accounts blocked, %d activated",
            len(settled.blocked),
            len(settled.activated),
        )
