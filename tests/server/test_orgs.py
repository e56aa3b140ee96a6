"""Organizations, departments, the member directory and who may change what."""

from __future__ import annotations

from typing import Any

from tests.harness import PASSWORD, Harness, Session, assert_error


async def test_new_org_has_its_owner_in_the_directory(server: Harness) -> None:
    owner = await server.create_org("Acme", "olivia")
    assert owner.account["role"] == "owner"
    response = await server.client.get(f"/v1/orgs/{owner.org_id}/members", headers=owner.headers)
    assert response.status_code == 200
    members = response.json()["members"]
    assert [m["account_name"] for m in members] == ["olivia"]
    org = await server.client.get(f"/v1/orgs/{owner.org_id}", headers=owner.headers)
    assert org.json()["name"] == "Acme"


async def test_duplicate_work_email_is_refused_and_nothing_changes(server: Harness) -> None:
    owner = await server.create_org("Acme", "olivia")
    await server.add_member(owner, "maria")
    response = await server.client.post(
        f"/v1/orgs/{owner.org_id}/members",
        headers=owner.headers,
        json={
            "account_name": "maria2",
            "work_email": "MARIA@members.example",
            "display_name": "Other Maria",
            "initial_password": PASSWORD,
        },
    )
    error = assert_error(response, 409, "conflict")
    assert error["details"] == [{"field": "work_email", "problem": "taken"}]
    # A second org cannot take the email either (emails are logins); sign-up does not say
    # so (it answers as for a success: see test_signup.py), but nothing is created.
    response = await server.client.post(
        "/v1/orgs",
        json={
            "name": "Other",
            "owner": {
                "account_name": "xavier",
                "work_email": "olivia@acme.example",
                "display_name": "X",
                "password": PASSWORD,
            },
        },
    )
    assert response.status_code == 202
    listing = await server.client.get(f"/v1/orgs/{owner.org_id}/members", headers=owner.headers)
    assert sorted(m["account_name"] for m in listing.json()["members"]) == ["maria", "olivia"]
    await server.login("maria@members.example")  # the original member is untouched


async def test_directory_pages_with_a_cursor(server: Harness) -> None:
    owner = await server.create_org("Acme", "olivia")
    for name in ("bob", "carla", "dina"):
        await server.add_member(owner, name)
    seen: list[str] = []
    url = f"/v1/orgs/{owner.org_id}/members?limit=2"
    while True:
        page = (await server.client.get(url, headers=owner.headers)).json()
        seen += [m["account_name"] for m in page["members"]]
        if page["next"] is None:
            break
        url = f"/v1/orgs/{owner.org_id}/members?limit=2&after={page['next']}"
    assert seen == ["bob", "carla", "dina", "olivia"]
    bad = await server.client.get(
        f"/v1/orgs/{owner.org_id}/members?after=garbage", headers=owner.headers
    )
    assert_error(bad, 422, "invalid_request")
    bad = await server.client.get(f"/v1/orgs/{owner.org_id}/members?limit=0", headers=owner.headers)
    assert_error(bad, 422, "invalid_request")


async def test_members_cannot_read_another_org(server: Harness) -> None:
    acme = await server.create_org("Acme", "olivia")
    globex = await server.create_org("Globex", "gina")
    for path in ("", "/members", "/departments", f"/members/{acme.id}"):
        response = await server.client.get(f"/v1/orgs/{acme.org_id}{path}", headers=globex.headers)
        assert_error(response, 403, "forbidden")
    # An admin of another org cannot correct or deactivate members here either.
    response = await server.client.patch(
        f"/v1/orgs/{acme.org_id}/members/{acme.id}",
        headers=globex.headers,
        json={"display_name": "Hacked"},
    )
    assert_error(response, 403, "forbidden")
    me = await server.client.get("/v1/me", headers=acme.headers)
    assert me.json()["display_name"] == "Olivia"


async def test_member_can_read_but_not_administer(server: Harness) -> None:
    owner = await server.create_org("Acme", "olivia")
    member = await server.add_member(owner, "maria")
    response = await server.client.get(
        f"/v1/orgs/{owner.org_id}/members/{owner.id}", headers=member.headers
    )
    assert response.json()["account_name"] == "olivia"
    response = await server.client.post(
        f"/v1/orgs/{owner.org_id}/members",
        headers=member.headers,
        json={
            "account_name": "eve",
            "work_email": "eve@x.example",
            "display_name": "Eve",
            "initial_password": PASSWORD,
        },
    )
    assert_error(response, 403, "forbidden")
    response = await server.client.post(
        f"/v1/orgs/{owner.org_id}/departments", headers=member.headers, json={"name": "Ops"}
    )
    assert_error(response, 403, "forbidden")


DIRECTORY_FIELDS = {
    "id",
    "org_id",
    "account_name",
    "display_name",
    "work_email",
    "department_id",
    "position",
    "role",
    "status",
}
PRIVATE_FIELDS = {
    "phone",
    "admin_department_id",
    "password_change_required",
    "created_at",
    "updated_at",
}


async def test_who_sees_what_of_a_colleague(server: Harness) -> None:
    owner = await server.create_org("Acme", "olivia")
    sales = await server.department(owner, "Sales")
    support = await server.department(owner, "Support")
    boss = await server.add_member(
        owner, "sam", role="department_admin", admin_department_id=sales, department_id=sales
    )
    maria = await server.add_member(
        owner, "maria", phone="+62 812 555 0100", position="Engineer", department_id=sales
    )
    oscar = await server.add_member(owner, "oscar", phone="+62 812 555 0199", department_id=support)
    base = f"/v1/orgs/{owner.org_id}/members"

    async def seen(viewer: Session, target: Session) -> dict[str, Any]:
        response = await server.client.get(f"{base}/{target.id}", headers=viewer.headers)
        assert response.status_code == 200, response.text
        entry: dict[str, Any] = response.json()
        listing = await server.client.get(base, headers=viewer.headers)
        in_list = [m for m in listing.json()["members"] if m["id"] == target.id]
        assert in_list == [entry]  # the directory shows the same as the single read
        return entry

    # A plain member sees a colleague's directory fields only: nothing personal, no login data.
    entry = await seen(oscar, maria)
    assert set(entry) == DIRECTORY_FIELDS
    assert (entry["account_name"], entry["position"], entry["department_id"]) == (
        "maria",
        "Engineer",
        sales,
    )
    # Themselves, whole; owners and admins, everyone whole; a department admin, whole for the
    # members they manage and the directory fields for everyone else.
    assert (await seen(oscar, oscar))["phone"] == "+62 812 555 0199"
    for viewer, target, whole in (
        (owner, maria, True),
        (owner, boss, True),
        (boss, maria, True),
        (boss, oscar, False),
        (boss, owner, False),
        (maria, owner, False),
    ):
        entry = await seen(viewer, target)
        if whole:
            assert set(entry) >= PRIVATE_FIELDS | DIRECTORY_FIELDS
        else:
            assert set(entry) == DIRECTORY_FIELDS
    assert (await seen(owner, maria))["phone"] == "+62 812 555 0100"


async def test_unknown_ids_are_not_found(server: Harness) -> None:
    owner = await server.create_org()
    missing = "00000000-0000-4000-8000-000000000000"
    response = await server.client.get(
        f"/v1/orgs/{owner.org_id}/members/{missing}", headers=owner.headers
    )
    assert_error(response, 404, "not_found")
    response = await server.client.post(
        f"/v1/orgs/{owner.org_id}/departments",
        headers=owner.headers,
        json={"name": "Child", "parent_id": missing},
    )
    assert_error(response, 404, "not_found")
    response = await server.client.get("/v1/orgs/not-a-uuid/members", headers=owner.headers)
    assert_error(response, 404, "not_found")


async def test_department_tree(server: Harness) -> None:
    owner = await server.create_org()
    sales = await server.department(owner, "Sales")
    emea = await server.department(owner, "EMEA", sales)
    response = await server.client.post(
        f"/v1/orgs/{owner.org_id}/departments",
        headers=owner.headers,
        json={"name": "emea", "parent_id": sales},
    )
    assert_error(response, 409, "conflict")
    listing = await server.client.get(f"/v1/orgs/{owner.org_id}/departments", headers=owner.headers)
    tree = {d["name"]: d["parent_id"] for d in listing.json()["departments"]}
    assert tree == {"Sales": None, "EMEA": sales}
    renamed = await server.client.patch(
        f"/v1/orgs/{owner.org_id}/departments/{emea}",
        headers=owner.headers,
        json={"name": "Europe"},
    )
    assert renamed.json()["name"] == "Europe"
    # A department of another org is unknown here.
    other = await server.create_org("Globex", "gina")
    foreign = await server.department(other, "Foreign")
    response = await server.client.post(
        f"/v1/orgs/{owner.org_id}/departments",
        headers=owner.headers,
        json={"name": "Sneaky", "parent_id": foreign},
    )
    assert_error(response, 404, "not_found")


async def test_department_admin_acts_only_inside_their_subtree(server: Harness) -> None:
    owner = await server.create_org()
    sales = await server.department(owner, "Sales")
    emea = await server.department(owner, "EMEA", sales)
    support = await server.department(owner, "Support")
    boss = await server.add_member(
        owner, "sam", role="department_admin", admin_department_id=sales, department_id=sales
    )
    inside = await server.add_member(boss, "ian", department_id=emea)
    assert inside.account["department_id"] == emea
    outsider = await server.add_member(owner, "oscar", department_id=support)

    base = f"/v1/orgs/{owner.org_id}"
    # Placing, moving or correcting outside the subtree is refused; nothing changes.
    for request in (
        server.client.post(
            f"{base}/members",
            headers=boss.headers,
            json={
                "account_name": "zed",
                "work_email": "zed@x.example",
                "display_name": "Zed",
                "initial_password": PASSWORD,
                "department_id": support,
            },
        ),
        server.client.patch(
            f"{base}/members/{outsider.id}", headers=boss.headers, json={"position": "Chief"}
        ),
        server.client.patch(
            f"{base}/members/{inside.id}", headers=boss.headers, json={"department_id": support}
        ),
        server.client.patch(
            f"{base}/members/{inside.id}", headers=boss.headers, json={"role": "admin"}
        ),
        server.client.post(f"{base}/members/{outsider.id}/deactivate", headers=boss.headers),
        server.client.post(
            f"{base}/departments", headers=boss.headers, json={"name": "X", "parent_id": support}
        ),
    ):
        assert_error(await request, 403, "forbidden")
    oscar = await server.client.get(f"{base}/members/{outsider.id}", headers=owner.headers)
    assert oscar.json()["position"] is None and oscar.json()["status"] == "active"

    # Inside the subtree they may correct members and add departments.
    response = await server.client.patch(
        f"{base}/members/{inside.id}", headers=boss.headers, json={"position": "Lead"}
    )
    assert response.status_code == 200 and response.json()["position"] == "Lead"
    response = await server.client.post(
        f"{base}/departments", headers=boss.headers, json={"name": "Nordics", "parent_id": emea}
    )
    assert response.status_code == 201


async def test_role_rules(server: Harness) -> None:
    owner = await server.create_org()
    admin = await server.add_member(owner, "adam", role="admin")
    base = f"/v1/orgs/{owner.org_id}/members"
    assert_error(
        await server.client.patch(
            f"{base}/{owner.id}", headers=admin.headers, json={"phone": "+1 555"}
        ),
        403,
        "forbidden",
    )
    assert_error(
        await server.client.patch(
            f"{base}/{owner.id}", headers=owner.headers, json={"role": "member"}
        ),
        403,
        "forbidden",
    )
    response = await server.client.post(
        base,
        headers=admin.headers,
        json={
            "account_name": "ozzy",
            "work_email": "ozzy@x.example",
            "display_name": "Ozzy",
            "initial_password": PASSWORD,
            "role": "owner",
        },
    )
    assert_error(response, 403, "forbidden")
    response = await server.client.post(
        base,
        headers=owner.headers,
        json={
            "account_name": "dora",
            "work_email": "dora@x.example",
            "display_name": "Dora",
            "initial_password": PASSWORD,
            "role": "department_admin",
        },
    )
    error = assert_error(response, 422, "invalid_request")
    assert error["details"][0]["field"] == "admin_department_id"


async def test_deactivated_member_is_locked_out_at_once(server: Harness) -> None:
    owner = await server.create_org()
    member = await server.add_member(owner, "maria")
    response = await server.client.post(
        f"/v1/orgs/{owner.org_id}/members/{member.id}/deactivate", headers=owner.headers
    )
    assert response.json()["status"] == "deactivated"
    assert_error(await server.client.get("/v1/me", headers=member.headers), 401, "token_revoked")
    response = await server.client.post(
        "/v1/login",
        json={
            "email": "maria@members.example",
            "password": PASSWORD,
            "device": {"name": "x", "platform": "ios", "public_key": "A" * 43},
        },
    )
    assert_error(response, 403, "account_deactivated")
    assert_error(
        await server.client.post(
            f"/v1/orgs/{owner.org_id}/members/{owner.id}/deactivate", headers=owner.headers
        ),
        403,
        "forbidden",
    )


async def test_admin_corrects_a_member_and_bad_fields_are_refused(server: Harness) -> None:
    owner = await server.create_org()
    member = await server.add_member(owner, "maria")
    url = f"/v1/orgs/{owner.org_id}/members/{member.id}"
    response = await server.client.patch(
        url, headers=owner.headers, json={"display_name": "Maria Q.", "phone": "+62 21 555 0100"}
    )
    assert response.json()["display_name"] == "Maria Q."
    for bad in (
        {"display_name": "x" * 201},
        {"display_name": None},
        {"work_email": "not-an-email"},
        {"colour": "blue"},
        {"role": "emperor"},
    ):
        assert_error(
            await server.client.patch(url, headers=owner.headers, json=bad), 422, "invalid_request"
        )
    current = (await server.client.get(url, headers=owner.headers)).json()
    assert current["display_name"] == "Maria Q." and current["role"] == "member"
