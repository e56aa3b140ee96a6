"""Minors and guardians over the real server: a minor's account cannot be used until an
admin records a guardian's consent; children also need an organization that serves
children; withdrawal blocks the account again at once; adults are untouched; the ages are
settings. Real server, real PostgreSQL, real gateway."""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from nacl.signing import SigningKey

from protocol import CloseCode
from server.settings import SettingsError, load_settings
from tests.harness import (
    INITIAL_PASSWORD,
    PASSWORD,
    Harness,
    Session,
    assert_error,
    b64,
    start_harness,
)
from tests.server.test_gateway_refusals import closed_with, refused

GUARDIAN = {
    "guardian_name": "Siti Rahma",
    "relation": "parent",
    "given_on": "2024-01-15",
    "evidence_ref": "DOC-2024-0042",
}


def years_ago(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


def aged(server: Harness, years: int) -> str:
    """A birth date that makes someone `years` old on the server's (UTC) date today."""
    today = server.clock().date()
    return date(today.year - years, today.month, 1).isoformat()  # birthday already passed


def email_of(name: str) -> str:
    return f"{name}@members.example"


async def add(server: Harness, admin: Session, name: str, **fields: Any) -> dict[str, Any]:
    """Add a member (without logging them in); returns the admin's view of them."""
    response = await server.client.post(
        f"/v1/orgs/{admin.org_id}/members",
        headers=admin.headers,
        json={
            "account_name": name,
            "work_email": email_of(name),
            "display_name": name.title(),
            "initial_password": INITIAL_PASSWORD,
            **fields,
        },
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def try_login(server: Harness, name: str, password: str = INITIAL_PASSWORD) -> httpx.Response:
    return await server.client.post(
        "/v1/login",
        json={
            "email": email_of(name),
            "password": password,
            "device": {
                "name": "phone",
                "platform": "android",
                "public_key": b64(bytes(SigningKey.generate().verify_key)),
            },
        },
    )


async def first_login(server: Harness, name: str) -> Session:
    """Log a new member in and replace the initial password, as the server requires."""
    session = await server.login(email_of(name), INITIAL_PASSWORD)
    response = await server.client.post(
        "/v1/me/password",
        headers=session.headers,
        json={"current_password": INITIAL_PASSWORD, "new_password": PASSWORD},
    )
    assert response.status_code == 204, response.text
    return session


def consents_path(admin: Session, account_id: str) -> str:
    return f"/v1/orgs/{admin.org_id}/members/{account_id}/guardian-consents"


async def record(server: Harness, admin: Session, account_id: str, **fields: Any) -> httpx.Response:
    return await server.client.post(
        consents_path(admin, account_id), headers=admin.headers, json={**GUARDIAN, **fields}
    )


async def guardian_view(server: Harness, admin: Session, account_id: str) -> dict[str, Any]:
    response = await server.client.get(consents_path(admin, account_id), headers=admin.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def serves_children(server: Harness, admin: Session, serves: bool) -> httpx.Response:
    return await server.client.patch(
        f"/v1/orgs/{admin.org_id}", headers=admin.headers, json={"serves_children": serves}
    )


async def me(server: Harness, session: Session) -> dict[str, Any]:
    response = await server.client.get("/v1/me", headers=session.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_an_adult_with_a_birth_date_is_unaffected(server: Harness) -> None:
    owner = await server.create_org()
    today = server.clock().date()
    exactly_18 = years_ago(today, 18).isoformat()  # of age since 00:00 UTC today
    adult = await add(server, owner, "ana", birth_date=exactly_18)
    assert adult["status"] == "active" and adult["birth_date"] == exactly_18
    ana = await first_login(server, "ana")
    profile = await me(server, ana)
    assert profile["birth_date"] == exactly_18
    assert profile["guardian"] == {"required": False, "consent": None}
    assert "birth_date" in profile["admin_controlled_fields"]
    async with await server.connect(ana) as live:
        await live.sync(0)
    # No consent to record for an adult: nothing is stored about a guardian.
    refused_consent = await record(server, owner, adult["id"])
    assert_error(refused_consent, 409, "guardian_consent_not_required")
    assert (await guardian_view(server, owner, adult["id"]))["consents"] == []
    # One day younger is a minor: the line is the birthday, counted on the UTC date.
    day_younger = await add(
        server, owner, "ben", birth_date=(years_ago(today, 18) + timedelta(days=1)).isoformat()
    )
    assert day_younger["status"] == "pending_guardian"


async def test_a_16_year_old_logs_in_only_after_a_guardian_consent(server: Harness) -> None:
    owner = await server.create_org()
    teen = await add(server, owner, "dewi", birth_date=aged(server, 16))
    assert teen["status"] == "pending_guardian"
    assert_error(await try_login(server, "dewi"), 403, "guardian_consent_required")
    view = await guardian_view(server, owner, teen["id"])
    assert (view["age_years"], view["minor"], view["child"]) == (16, True, False)
    assert view["status"] == "pending_guardian" and view["consents"] == []

    recorded = await record(server, owner, teen["id"])
    assert recorded.status_code == 201, recorded.text
    consent = recorded.json()["consent"]
    assert recorded.json()["status"] == "active"
    assert {k: consent[k] for k in GUARDIAN} == GUARDIAN
    assert consent["active"] is True and consent["recorded_by"] == owner.id

    dewi = await first_login(server, "dewi")
    profile = await me(server, dewi)
    assert profile["status"] == "active" and profile["birth_date"] == teen["birth_date"]
    # The person sees that a consent stands, not the guardian's name or the evidence.
    assert profile["guardian"] == {
        "required": True,
        "consent": {
            "relation": "parent",
            "given_on": GUARDIAN["given_on"],
            "recorded_at": consent["recorded_at"],
        },
    }
    async with await server.connect(dewi) as live:
        await live.sync(0)


async def test_a_child_needs_an_org_that_serves_children(server: Harness) -> None:
    owner = await server.create_org()
    child = await add(server, owner, "putri", birth_date=aged(server, 12))
    assert child["status"] == "pending_guardian"
    refused_consent = await record(server, owner, child["id"])
    assert_error(refused_consent, 409, "org_does_not_serve_children")
    view = await guardian_view(server, owner, child["id"])
    assert view["child"] is True and view["consents"] == []
    assert_error(await try_login(server, "putri"), 403, "guardian_consent_required")

    member = await server.add_member(owner, "maria")
    assert_error(await serves_children(server, member, True), 403, "forbidden")
    declared = await serves_children(server, owner, True)
    assert declared.status_code == 200, declared.text
    assert declared.json()["serves_children"] is True
    org = await server.client.get(f"/v1/orgs/{owner.org_id}", headers=member.headers)
    assert org.json()["serves_children"] is True

    recorded = await record(server, owner, child["id"], relation="legal_guardian")
    assert recorded.status_code == 201, recorded.text
    putri = await first_login(server, "putri")
    live = await server.connect(putri)
    await live.sync(0)
    # The organization stops declaring it: its children are blocked at once.
    assert (await serves_children(server, owner, False)).status_code == 200
    closed = await closed_with(live)
    assert (closed.code, closed.reason) == (
        CloseCode.GUARDIAN_CONSENT_REQUIRED,
        "guardian_consent_required",
    )
    assert_error(await try_login(server, "putri", PASSWORD), 403, "guardian_consent_required")
    # Their guardian's consent still stands: declaring again lets them back in.
    assert (await serves_children(server, owner, True)).status_code == 200
    assert (await try_login(server, "putri", PASSWORD)).status_code == 200


async def test_withdrawing_the_consent_blocks_and_disconnects_at_once(server: Harness) -> None:
    owner = await server.create_org()
    teen = await add(server, owner, "eko", birth_date=aged(server, 16))
    consent_id = (await record(server, owner, teen["id"])).json()["consent"]["id"]
    eko = await first_login(server, "eko")
    live = await server.connect(eko)
    await live.sync(0)

    withdrawn = await server.client.post(
        f"{consents_path(owner, teen['id'])}/{consent_id}/withdraw", headers=owner.headers
    )
    assert withdrawn.status_code == 200, withdrawn.text
    assert withdrawn.json()["status"] == "pending_guardian"
    assert withdrawn.json()["consent"]["withdrawn_by"] == owner.id
    closed = await closed_with(live)
    assert (closed.code, closed.reason) == (
        CloseCode.GUARDIAN_CONSENT_REQUIRED,
        "guardian_consent_required",
    )
    assert_error(await server.client.get("/v1/me", headers=eko.headers), 401, "token_revoked")
    assert_error(await try_login(server, "eko", PASSWORD), 403, "guardian_consent_required")
    again = await refused(server, eko)
    assert again.code == CloseCode.GUARDIAN_CONSENT_REQUIRED

    twice = await server.client.post(
        f"{consents_path(owner, teen['id'])}/{consent_id}/withdraw", headers=owner.headers
    )
    assert_error(twice, 409, "guardian_consent_withdrawn")
    # Append-only: the withdrawn consent stays in the history beside a new one.
    assert (await record(server, owner, teen["id"], relation="other")).status_code == 201
    history = (await guardian_view(server, owner, teen["id"]))["consents"]
    assert [(c["relation"], c["active"]) for c in history] == [
        ("parent", False),
        ("other", True),
    ]
    assert history[0]["withdrawn_at"] is not None
    assert (await try_login(server, "eko", PASSWORD)).status_code == 200


async def test_a_birth_date_that_makes_a_member_a_minor_blocks_at_once(server: Harness) -> None:
    owner = await server.create_org()
    bob = await server.add_member(owner, "bob")
    live = await server.connect(bob)
    await live.sync(0)
    path = f"/v1/orgs/{owner.org_id}/members/{bob.id}"
    patched = await server.client.patch(
        path, headers=owner.headers, json={"birth_date": aged(server, 15)}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["status"] == "pending_guardian"
    closed = await closed_with(live)
    assert closed.code == CloseCode.GUARDIAN_CONSENT_REQUIRED
    assert_error(await try_login(server, "bob", PASSWORD), 403, "guardian_consent_required")
    # A wrong birth date corrected (cleared) gives the account back.
    cleared = await server.client.patch(path, headers=owner.headers, json={"birth_date": None})
    assert cleared.json()["status"] == "active" and cleared.json()["birth_date"] is None
    assert (await try_login(server, "bob", PASSWORD)).status_code == 200
    # A deactivated account stays deactivated whatever its birth date says.
    await server.client.post(f"{path}/deactivate", headers=owner.headers)
    adult = await server.client.patch(
        path, headers=owner.headers, json={"birth_date": aged(server, 40)}
    )
    assert adult.json()["status"] == "deactivated"


async def test_bad_input_is_refused_and_nothing_is_stored(server: Harness) -> None:
    owner = await server.create_org()
    members = f"/v1/orgs/{owner.org_id}/members"
    tomorrow = (server.clock().date() + timedelta(days=1)).isoformat()
    for bad in (tomorrow, "1899-12-31", "2010-02-30", "01/02/2010", 20100101):
        response = await server.client.post(
            members,
            headers=owner.headers,
            json={
                "account_name": "nobody",
                "work_email": email_of("nobody"),
                "display_name": "Nobody",
                "initial_password": INITIAL_PASSWORD,
                "birth_date": bad,
            },
        )
        error = assert_error(response, 422, "invalid_request")
        assert error["details"][0]["field"] == "birth_date", bad
    listed = await server.client.get(members, headers=owner.headers)
    assert [m["account_name"] for m in listed.json()["members"]] == ["olivia"]

    teen = await add(server, owner, "fajar", birth_date=aged(server, 16))
    future = await server.client.patch(
        f"{members}/{teen['id']}", headers=owner.headers, json={"birth_date": tomorrow}
    )
    assert_error(future, 422, "invalid_request")
    entry = await server.client.get(f"{members}/{teen['id']}", headers=owner.headers)
    assert entry.json()["birth_date"] == teen["birth_date"]

    refusals = [
        (await record(server, owner, str(uuid.uuid4())), 404, "not_found"),
        (await record(server, owner, teen["id"], relation="uncle"), 422, "invalid_request"),
        (await record(server, owner, teen["id"], given_on=tomorrow), 422, "invalid_request"),
        (await record(server, owner, teen["id"], given_on="1990-01-01"), 422, "invalid_request"),
        (await record(server, owner, teen["id"], evidence_ref=""), 422, "invalid_request"),
        (await record(server, owner, teen["id"], guardian_name="A\nB"), 422, "invalid_request"),
    ]
    for response, status, code in refusals:
        assert_error(response, status, code)
    # Another organization's member: unknown here, and their org is not ours to act in.
    other = await server.create_org("Other", "zoe")
    stranger = await add(server, other, "yusuf", birth_date=aged(server, 16))
    assert_error(await record(server, owner, stranger["id"]), 404, "not_found")
    elsewhere = await server.client.post(
        consents_path(other, stranger["id"]), headers=owner.headers, json=GUARDIAN
    )
    assert_error(elsewhere, 403, "forbidden")
    for account_id, admin in ((teen["id"], owner), (stranger["id"], other)):
        view = await guardian_view(server, admin, account_id)
        assert view["consents"] == [] and view["status"] == "pending_guardian"
    unknown_consent = await server.client.post(
        f"{consents_path(owner, teen['id'])}/{uuid.uuid4()}/withdraw", headers=owner.headers
    )
    assert_error(unknown_consent, 404, "not_found")


async def test_only_the_person_and_admins_see_or_set_a_birth_date(server: Harness) -> None:
    owner = await server.create_org()
    sales = await server.department(owner, "Sales")
    boss = await server.add_member(
        owner, "dina", role="department_admin", admin_department_id=sales
    )
    adult = await add(server, owner, "gita", birth_date=aged(server, 30), department_id=sales)
    maria = await server.add_member(owner, "maria")
    entry = f"/v1/orgs/{owner.org_id}/members/{adult['id']}"
    assert (await server.client.get(entry, headers=owner.headers)).json()["birth_date"]
    for viewer in (boss, maria):
        seen = (await server.client.get(entry, headers=viewer.headers)).json()
        assert "birth_date" not in seen
        listed = await server.client.get(f"/v1/orgs/{owner.org_id}/members", headers=viewer.headers)
        by_id = {m["id"]: m for m in listed.json()["members"]}
        assert "birth_date" not in by_id[adult["id"]]
        assert "birth_date" in by_id[viewer.id]  # their own
        view = await server.client.get(consents_path(owner, adult["id"]), headers=viewer.headers)
        assert_error(view, 403, "forbidden")
    by_boss = await server.client.patch(
        entry, headers=boss.headers, json={"birth_date": aged(server, 16)}
    )
    assert_error(by_boss, 403, "forbidden")
    own = await server.client.patch(
        "/v1/me", headers=maria.headers, json={"birth_date": "2000-01-01"}
    )
    assert_error(own, 403, "forbidden")
    self_set = await server.client.patch(
        f"/v1/orgs/{owner.org_id}/members/{owner.id}",
        headers=owner.headers,
        json={"birth_date": aged(server, 16)},
    )
    assert_error(self_set, 403, "forbidden")
    assert (await me(server, owner))["birth_date"] is None


def test_age_settings_default_to_the_strictest_and_are_checked() -> None:
    settings = load_settings(None)
    assert (settings.age_of_consent_years, settings.child_age_years) == (18, 14)
    with pytest.raises(SettingsError, match="child_age_years"):
        load_settings(None, age_of_consent_years=12, child_age_years=14)
    with pytest.raises(SettingsError, match="age_of_consent_years"):
        load_settings(None, age_of_consent_years=0)


async def test_the_configured_ages_are_the_ones_applied(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    # A country where 16 is the age of consent and 8 the child age (the seeds name both).
    async with start_harness(
        nursery, database_url, tmp_path, age_of_consent_years=16, child_age_years=8
    ) as server:
        owner = await server.create_org()
        sixteen = await add(server, owner, "hana", birth_date=aged(server, 16))
        assert sixteen["status"] == "active"
        await first_login(server, "hana")
        twelve = await add(server, owner, "ilham", birth_date=aged(server, 12))
        assert twelve["status"] == "pending_guardian"
        recorded = await record(server, owner, twelve["id"])  # not a child here
        assert recorded.status_code == 201, recorded.text
        seven = await add(server, owner, "joko", birth_date=aged(server, 7))
        assert_error(await record(server, owner, seven["id"]), 409, "org_does_not_serve_children")


async def test_a_raised_age_of_consent_applies_to_existing_accounts_at_start(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        trio.open_nursery() as nursery,
        start_harness(nursery, database_url, tmp_path, age_of_consent_years=16) as server,
    ):
        owner = await server.create_org()
        await add(server, owner, "kiki", birth_date=aged(server, 17))
        kiki = await first_login(server, "kiki")
    async with (
        trio.open_nursery() as nursery,
        start_harness(nursery, database_url, tmp_path) as server,  # the default, 18
    ):
        assert_error(await server.client.get("/v1/me", headers=kiki.headers), 401, "token_revoked")
        assert_error(await try_login(server, "kiki", PASSWORD), 403, "guardian_consent_required")
        closed = await refused(server, kiki)
        assert closed.code == CloseCode.GUARDIAN_CONSENT_REQUIRED
