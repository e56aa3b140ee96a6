"""Minors and their guardians' consents.

A member with a birth date that makes them younger than the age of consent may use their
account only while a guardian's consent is recorded for them; younger than the child age,
also only while their organization declares that it serves children. The account's
`status` carries the outcome ('pending_guardian' until then), so everything that checks
for an active account (login, tokens, the gateway, push) refuses such an account without
knowing this rule. Every change that can move a member across the line settles their
status in the same transaction (`settle_guardian_status`); a member it blocks loses every
token, like a deactivated one.

Guardian consents are never updated: a withdrawal is a row of its own. Recording and
withdrawing one, and an admin's change of a member's entry, are recorded in the audit log in
the same transaction. The ages are the server's settings, applied by the caller as an
`AgeRule` for one day.

Birth dates are sealed (`storage.accounts`), so the rule is applied in Python to the dates
opened, not in SQL: the rows in scope are read and locked in id order, and only the ones
whose status changes are written. An account whose data key was destroyed keeps its status
(its birth date reads as unset, which must not activate it).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from storage.accounts import (
    Account,
    correction_events,
    get_account,
    lock_account,
    open_personal,
    seal_personal,
    update_account,
)
from storage.audit import AuditActor, AuditEvent, account_actor, append
from storage.database import Database
from storage.errors import NotFoundError, StorageError
from storage.keyring import Keyring
from storage.orgs import ORG_COLUMNS, Org, org_from_row
from storage.push_registrations import drop_registrations

RELATIONS = ("parent", "legal_guardian", "other")
ACTIVE = "active"
PENDING_GUARDIAN = "pending_guardian"


class GuardianError(StorageError):
    """A guardian-consent change that cannot be made; `reason` says which rule refused it:
    "not_a_minor" (no consent is needed: no birth date, or of age), "not_serving_children"
    (a child of an organization that has not declared it serves children), "withdrawn"
    (the consent was already withdrawn)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AgeRule:
    """The age settings on one day, as birth dates: born on or before `adult_born_by` is of
    age; born after `child_born_after` is a child."""

    adult_born_by: date
    child_born_after: date

    def is_minor(self, birth_date: date | None) -> bool:
        return birth_date is not None and birth_date > self.adult_born_by

    def is_child(self, birth_date: date | None) -> bool:
        return birth_date is not None and birth_date > self.child_born_after


@dataclass(frozen=True, slots=True)
class NewGuardianConsent:
    guardian_name: str
    relation: str
    given_on: date
    evidence_ref: str


@dataclass(frozen=True, slots=True)
class GuardianConsent:
    id: uuid.UUID
    account_id: uuid.UUID
    guardian_name: str
    relation: str
    given_on: date
    evidence_ref: str
    recorded_at: datetime
    recorded_by: uuid.UUID | None  # None: that account was purged since
    withdrawn_at: datetime | None
    withdrawn_by: uuid.UUID | None

    @property
    def active(self) -> bool:
        return self.withdrawn_at is None


@dataclass(frozen=True, slots=True)
class Settled:
    """Accounts whose status a change moved: now blocked, or now active."""

    blocked: list[uuid.UUID]
    activated: list[uuid.UUID]


_CONSENT_SELECT = """
    SELECT g.id, g.account_id, g.guardian_name, g.relation, g.given_on, g.evidence_ref,
           g.recorded_at, g.recorded_by, w.withdrawn_at, w.withdrawn_by
    FROM guardian_consents g LEFT JOIN guardian_consent_withdrawals w ON w.consent_id = g.id"""

# The accounts in scope whose status depends on the rule, locked; $1 the scope's key. An
# erased account (its data key destroyed) is left out: its birth date cannot be read.
_IN_SCOPE = """
    SELECT a.id, a.status, a.birth_date, o.serves_children,
           EXISTS (
               SELECT 1 FROM guardian_consents g
               WHERE g.account_id = a.id AND NOT EXISTS (
                   SELECT 1 FROM guardian_consent_withdrawals w WHERE w.consent_id = g.id))
               AS consented
    FROM accounts a JOIN orgs o ON o.id = a.org_id
    WHERE a.status IN ('active', 'pending_guardian')
      AND (a.birth_date IS NOT NULL OR a.status = 'pending_guardian') AND {scope}
      AND NOT EXISTS (
          SELECT 1 FROM data_keys k WHERE k.account_id = a.id AND k.destroyed_at IS NOT NULL)
    ORDER BY a.id
    FOR UPDATE OF a"""

_SCOPES = {
    "account": "a.id = $1",
    "org": "a.org_id = $1",
    "all": "$1::uuid IS NULL",
}


def _consent(row: Any) -> GuardianConsent:
    return GuardianConsent(**{name: row[name] for name in GuardianConsent.__slots__})


def wanted_status(rule: AgeRule, birth_date: date | None, serves: bool, consented: bool) -> str:
    """The status the guardian rule gives an active or waiting account."""
    if not rule.is_minor(birth_date):
        return ACTIVE
    if rule.is_child(birth_date) and not serves:
        return PENDING_GUARDIAN
    return ACTIVE if consented else PENDING_GUARDIAN


async def settle_guardian_status(
    conn: Any, keyring: Keyring, rule: AgeRule, scope: str, key: uuid.UUID | None = None
) -> Settled:
    """Give every active or waiting account in `scope` ("account" `key`, "org" `key`, or
    "all") the status the guardian rule asks for today (on an open transaction); the ones it
    blocks lose every token and push registration. Deactivated accounts stay as they are,
    and so do erased ones (whose data key was destroyed). Two statements, three with birth
    dates whose keys are not cached, four when a status changes."""
    found = await conn.fetch(_IN_SCOPE.format(scope=_SCOPES[scope]), key)
    dated = [r["id"] for r in found if r["birth_date"] is not None]
    keys = await keyring.for_read(conn, dated) if dated else {}
    changes: dict[uuid.UUID, str] = {}
    for row in found:
        birth_date = open_personal(row, "birth_date", keys)
        status = wanted_status(rule, birth_date, row["serves_children"], row["consented"])
        if status != row["status"]:
            changes[row["id"]] = status
    if not changes:
        return Settled([], [])
    rows = await conn.fetch(
        """UPDATE accounts a SET status = c.status, updated_at = now()
           FROM unnest($1::uuid[], $2::text[]) AS c(id, status) WHERE a.id = c.id
           RETURNING a.id, a.status""",
        list(changes),
        list(changes.values()),
    )
    blocked = [r["id"] for r in rows if r["status"] == PENDING_GUARDIAN]
    activated = [r["id"] for r in rows if r["status"] == ACTIVE]
    if blocked:
        await conn.execute(
            """UPDATE auth_tokens SET revoked_at = now()
               WHERE account_id = ANY($1::uuid[]) AND revoked_at IS NULL""",
            blocked,
        )
        devices = await conn.fetch(
            "SELECT id FROM devices WHERE account_id = ANY($1::uuid[])", blocked
        )
        await drop_registrations(conn, [d["id"] for d in devices])
    return Settled(blocked, activated)


async def _update_member(
    conn: Any,
    keyring: Keyring,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    changes: dict[str, Any],
    rule: AgeRule,
    by: AuditActor,
    at: datetime,
) -> tuple[Account, Settled]:
    before = await lock_account(conn, keyring, org_id, account_id)
    fields = {k: v for k, v in changes.items() if k != "birth_date"}
    account = await update_account(conn, keyring, org_id, account_id, fields)
    settled = Settled([], [])
    if "birth_date" in changes:
        sealed = await seal_personal(
            conn, keyring, account.id, {"birth_date": changes["birth_date"]}
        )
        await conn.execute(
            "UPDATE accounts SET birth_date = $2, updated_at = now() WHERE id = $1",
            account.id,
            sealed["birth_date"],
        )
        settled = await settle_guardian_status(conn, keyring, rule, "account", account.id)
        account = await get_account(conn, keyring, org_id, account_id)
    await append(conn, correction_events(before, account, by), at)
    return account, settled


async def _lock_minor(
    conn: Any, keyring: Keyring, org_id: uuid.UUID, account_id: uuid.UUID
) -> tuple[bool, date | None]:
    """Whether the org serves children, and the member's birth date; the org row is locked
    before the account's (the order `_set_serves_children` takes them in)."""
    serves = await conn.fetchval("SELECT serves_children FROM orgs WHERE id = $1 FOR SHARE", org_id)
    if serves is None:
        raise NotFoundError("no such organization")
    row = await conn.fetchrow(
        "SELECT id, birth_date FROM accounts WHERE org_id = $1 AND id = $2 FOR UPDATE",
        org_id,
        account_id,
    )
    if row is None:
        raise NotFoundError("no such member")
    keys = await keyring.for_read(conn, [account_id]) if row["birth_date"] is not None else {}
    return bool(serves), open_personal(row, "birth_date", keys)


async def _record(
    conn: Any,
    keyring: Keyring,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    new: NewGuardianConsent,
    by: uuid.UUID,
    at: datetime,
    rule: AgeRule,
) -> tuple[GuardianConsent, Settled]:
    serves_children, birth_date = await _lock_minor(conn, keyring, org_id, account_id)
    if not rule.is_minor(birth_date):
        raise GuardianError(
            "this member is not a minor (no birth date, or of age): no guardian consent is needed",
            "not_a_minor",
        )
    if rule.is_child(birth_date) and not serves_children:
        raise GuardianError(
            "this member is a child and the organization has not declared that it serves children",
            "not_serving_children",
        )
    consent_id = uuid.uuid4()
    await conn.execute(
        """INSERT INTO guardian_consents (id, account_id, guardian_name, relation, given_on,
               evidence_ref, recorded_at, recorded_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        consent_id,
        account_id,
        new.guardian_name,
        new.relation,
        new.given_on,
        new.evidence_ref,
        at,
        by,
    )
    return await _settled(conn, keyring, rule, "recorded", org_id, account_id, consent_id, by, at)


async def _settled(
    conn: Any,
    keyring: Keyring,
    rule: AgeRule,
    change: str,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    consent_id: uuid.UUID,
    by: uuid.UUID,
    at: datetime,
) -> tuple[GuardianConsent, Settled]:
    """After a guardian consent was recorded or withdrawn: the member's status settled by
    `rule`, the consent as it stands, and the change in the audit log."""
    settled = await settle_guardian_status(conn, keyring, rule, "account", account_id)
    row = await conn.fetchrow(f"{_CONSENT_SELECT} WHERE g.id = $1", consent_id)
    event = AuditEvent(
        f"guardian_consent_{change}",
        account_actor(by),
        account_id,
        org_id,
        {"consent_id": str(consent_id)},
    )
    await append(conn, [event], at)
    return _consent(row), settled


async def _withdraw(
    conn: Any,
    keyring: Keyring,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    consent_id: uuid.UUID,
    by: uuid.UUID,
    at: datetime,
    rule: AgeRule,
) -> tuple[GuardianConsent, Settled]:
    await _lock_minor(conn, keyring, org_id, account_id)
    row = await conn.fetchrow(
        f"{_CONSENT_SELECT} WHERE g.id = $1 AND g.account_id = $2", consent_id, account_id
    )
    if row is None:
        raise NotFoundError("no such guardian consent")
    if row["withdrawn_at"] is not None:
        raise GuardianError("this guardian consent was already withdrawn", "withdrawn")
    await conn.execute(
        """INSERT INTO guardian_consent_withdrawals (consent_id, withdrawn_at, withdrawn_by)
           VALUES ($1, $2, $3)""",
        consent_id,
        at,
        by,
    )
    return await _settled(conn, keyring, rule, "withdrawn", org_id, account_id, consent_id, by, at)


async def _consents(
    conn: Any, keyring: Keyring, org_id: uuid.UUID, account_id: uuid.UUID
) -> tuple[Account, list[GuardianConsent]]:
    account = await get_account(conn, keyring, org_id, account_id)
    rows = await conn.fetch(
        f"{_CONSENT_SELECT} WHERE g.account_id = $1 ORDER BY g.recorded_at, g.id", account_id
    )
    return account, [_consent(r) for r in rows]


async def _set_serves_children(
    conn: Any, keyring: Keyring, org_id: uuid.UUID, serves: bool, rule: AgeRule
) -> tuple[Org, Settled]:
    row = await conn.fetchrow(
        f"UPDATE orgs SET serves_children = $2 WHERE id = $1 RETURNING {ORG_COLUMNS}",
        org_id,
        serves,
    )
    if row is None:
        raise NotFoundError("no such organization")
    return org_from_row(row), await settle_guardian_status(conn, keyring, rule, "org", org_id)


async def _settle_account(
    conn: Any, keyring: Keyring, account_id: uuid.UUID, rule: AgeRule
) -> tuple[str, Settled]:
    settled = await settle_guardian_status(conn, keyring, rule, "account", account_id)
    status = await conn.fetchval("SELECT status FROM accounts WHERE id = $1", account_id)
    if status is None:
        raise NotFoundError("no such member")
    return str(status), settled


class MinorStore:
    def __init__(self, db: Database, keyring: Keyring) -> None:
        self._db = db
        self._keyring = keyring

    async def update_member(
        self,
        org_id: uuid.UUID,
        account_id: uuid.UUID,
        changes: dict[str, Any],
        rule: AgeRule,
        by: AuditActor,
        at: datetime,
    ) -> tuple[Account, Settled]:
        """`AccountStore.update_member` that may also set or clear `birth_date`, settling
        the member's status by `rule` in the same transaction (and auditing as it does)."""
        return await self._db.transaction(
            _update_member, self._keyring, org_id, account_id, changes, rule, by, at
        )

    async def record(
        self,
        org_id: uuid.UUID,
        account_id: uuid.UUID,
        new: NewGuardianConsent,
        by: uuid.UUID,
        at: datetime,
        rule: AgeRule,
    ) -> tuple[GuardianConsent, Settled]:
        """Record a guardian's consent for a minor member (activating a waiting account).
        NotFoundError for a member outside `org_id`; GuardianError "not_a_minor",
        "not_serving_children"."""
        return await self._db.transaction(
            _record, self._keyring, org_id, account_id, new, by, at, rule
        )

    async def withdraw(
        self,
        org_id: uuid.UUID,
        account_id: uuid.UUID,
        consent_id: uuid.UUID,
        by: uuid.UUID,
        at: datetime,
        rule: AgeRule,
    ) -> tuple[GuardianConsent, Settled]:
        """Withdraw one guardian consent (blocking the minor unless another one stands).
        NotFoundError for a consent not of this member; GuardianError "withdrawn"."""
        return await self._db.transaction(
            _withdraw, self._keyring, org_id, account_id, consent_id, by, at, rule
        )

    async def consents(
        self, org_id: uuid.UUID, account_id: uuid.UUID
    ) -> tuple[Account, list[GuardianConsent]]:
        """The member and every guardian consent recorded for them, oldest first."""
        return await self._db.read(_consents, self._keyring, org_id, account_id)

    async def set_serves_children(
        self, org_id: uuid.UUID, serves: bool, rule: AgeRule
    ) -> tuple[Org, Settled]:
        """Declare (or stop declaring) that the organization serves children; its children's
        accounts are settled by `rule` in the same transaction."""
        return await self._db.transaction(_set_serves_children, self._keyring, org_id, serves, rule)

    async def settle_account(self, account_id: uuid.UUID, rule: AgeRule) -> tuple[str, Settled]:
        """Settle one account by `rule` (it may have come of age); returns its status."""
        return await self._db.transaction(_settle_account, self._keyring, account_id, rule)

    async def settle_all(self, rule: AgeRule) -> Settled:
        """Settle every account with a birth date by `rule` (the ages may have changed)."""
        return await self._db.transaction(settle_guardian_status, self._keyring, rule, "all", None)
