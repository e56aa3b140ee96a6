"""Guardian consents for minor members: owners and admins record, list and withdraw them.

The birth date itself is set with the member (`POST /v1/orgs/{org}/members`, `PATCH
.../members/{id}`); the organization's declaration that it serves children is `PATCH
/v1/orgs/{org}`; a person sees their own standing in `GET /v1/me`.
"""

from __future__ import annotations

import uuid
from typing import Any

from quart import Blueprint

from server.api.context import actor, body, ctx
from server.api.models import GuardianConsentIn
from server.api.present import iso
from server.handlers.minors import GuardianView, OwnGuardianStatus
from storage.minors import GuardianConsent, NewGuardianConsent

bp = Blueprint("minors", __name__, url_prefix="/v1/orgs/<uuid:org_id>/members/<uuid:account_id>")


def consent_json(c: GuardianConsent) -> dict[str, Any]:
    """A guardian consent as admins see it."""
    return {
        "id": str(c.id),
        "account_id": str(c.account_id),
        "guardian_name": c.guardian_name,
        "relation": c.relation,
        "given_on": c.given_on.isoformat(),
        "evidence_ref": c.evidence_ref,
        "recorded_at": iso(c.recorded_at),
        "recorded_by": None if c.recorded_by is None else str(c.recorded_by),
        "active": c.active,
        "withdrawn_at": iso(c.withdrawn_at),
        "withdrawn_by": None if c.withdrawn_by is None else str(c.withdrawn_by),
    }


def own_guardian_json(status: OwnGuardianStatus) -> dict[str, Any]:
    """What a person sees of their own standing (in GET /v1/me)."""
    c = status.consent
    return {
        "required": status.required,
        "consent": None
        if c is None
        else {
            "relation": c.relation,
            "given_on": c.given_on.isoformat(),
            "recorded_at": iso(c.recorded_at),
        },
    }


def view_json(v: GuardianView) -> dict[str, Any]:
    born = v.account.birth_date
    return {
        "account_id": str(v.account.id),
        "status": v.account.status,
        "birth_date": None if born is None else born.isoformat(),
        "age_years": v.age_years,
        "minor": v.minor,
        "child": v.child,
        "consents": [consent_json(c) for c in v.consents],
    }


@bp.get("/guardian-consents")
async def view(org_id: uuid.UUID, account_id: uuid.UUID) -> dict[str, Any]:
    return view_json(await ctx().minors.view(await actor(), org_id, account_id))


@bp.post("/guardian-consents")
async def record(org_id: uuid.UUID, account_id: uuid.UUID) -> tuple[dict[str, Any], int]:
    who = await actor()
    req = await body(GuardianConsentIn)
    new = NewGuardianConsent(req.guardian_name, req.relation, req.given_on, req.evidence_ref)
    consent, status = await ctx().minors.record(who, org_id, account_id, new)
    return {"consent": consent_json(consent), "status": status}, 201


@bp.post("/guardian-consents/<uuid:consent_id>/withdraw")
async def withdraw(
    org_id: uuid.UUID, account_id: uuid.UUID, consent_id: uuid.UUID
) -> dict[str, Any]:
    who = await actor()
    consent, status = await ctx().minors.withdraw(who, org_id, account_id, consent_id)
    return {"consent": consent_json(consent), "status": status}
