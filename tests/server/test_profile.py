"""A person reads and corrects their own profile and changes their password."""

from __future__ import annotations

from tests.harness import INITIAL_PASSWORD, Harness, assert_error


async def test_profile_marks_admin_controlled_fields(server: Harness) -> None:
    owner = await server.create_org()
    member = await server.add_member(owner, "maria", change_password=False, position="Engineer")
    me = (await server.client.get("/v1/me", headers=member.headers)).json()
    assert me["position"] == "Engineer" and me["password_change_required"] is True
    assert {"work_email", "role", "position", "department_id"} <= set(me["admin_controlled_fields"])
    assert "display_name" not in me["admin_controlled_fields"]


async def test_person_corrects_own_fields_but_not_admin_ones(server: Harness) -> None:
    owner = await server.create_org()
    member = await server.add_member(owner, "maria")
    response = await server.client.patch(
        "/v1/me", headers=member.headers, json={"display_name": "Maria S.", "phone": "+62 812 555"}
    )
    assert response.status_code == 200
    assert response.json()["display_name"] == "Maria S."
    response = await server.client.patch(
        "/v1/me", headers=member.headers, json={"role": "owner", "position": "CEO"}
    )
    error = assert_error(response, 403, "forbidden")
    assert {d["field"] for d in error["details"]} == {"role", "position"}
    me = (await server.client.get("/v1/me", headers=member.headers)).json()
    assert me["role"] == "member" and me["position"] is None and me["phone"] == "+62 812 555"


async def test_password_change(server: Harness) -> None:
    owner = await server.create_org()
    member = await server.add_member(owner, "maria", change_password=False)
    url = "/v1/me/password"
    wrong = await server.client.post(
        url,
        headers=member.headers,
        json={"current_password": "Nope-Nope-123", "new_password": "Brand-New-Pass-7"},
    )
    assert_error(wrong, 401, "bad_credentials")
    weak = await server.client.post(
        url,
        headers=member.headers,
        json={"current_password": INITIAL_PASSWORD, "new_password": "short"},
    )
    assert_error(weak, 422, "weak_password")
    same = await server.client.post(
        url,
        headers=member.headers,
        json={"current_password": INITIAL_PASSWORD, "new_password": INITIAL_PASSWORD},
    )
    assert_error(same, 422, "weak_password")
    ok = await server.client.post(
        url,
        headers=member.headers,
        json={"current_password": INITIAL_PASSWORD, "new_password": "Brand-New-Pass-7"},
    )
    assert ok.status_code == 204
    session = await server.login("maria@members.example", "Brand-New-Pass-7")
    assert session.account["password_change_required"] is False
