"""Attendance over REST: sites, one-shot check-in/out under the `attendance` grant, the
records members and admins read, and the promise that the position is never kept. Real
server, real PostgreSQL."""

from __future__ import annotations

import logging
from typing import Any

import httpx

from tests.harness import Harness, Session, assert_error
from tests.privacy_search import capture_logs, coordinate_needles, find_everywhere

# Sites near Jakarta. The check-in positions below differ from every site coordinate in
# every rendering, so a search for them cannot hit the stored geometry.
HQ = {"name": "HQ", "circle": {"lat": -6.12, "lon": 106.99, "radius_m": 1000}}
WAREHOUSE = {
    "name": "Warehouse",
    "polygon": [
        {"lat": -6.30, "lon": 106.70},
        {"lat": -6.30, "lon": 106.71},
        {"lat": -6.31, "lon": 106.71},
        {"lat": -6.31, "lon": 106.70},
    ],
}
AT_HQ = (-6.123457, 106.987653)  # ~464 m from HQ's centre
AT_WAREHOUSE = (-6.305432, 106.704321)
ELSEWHERE = (-6.234568, 106.876542)  # ~18 km from both


async def create_site(server: Harness, admin: Session, site: dict[str, Any]) -> dict[str, Any]:
    response = await server.client.post(
        f"/v1/orgs/{admin.org_id}/sites", headers=admin.headers, json=site
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def granted_member(server: Harness, admin: Session, name: str, **fields: Any) -> Session:
    member = await server.add_member(admin, name, **fields)
    response = await server.client.put("/v1/me/consents/attendance", headers=member.headers)
    assert response.status_code == 200, response.text
    return member


async def check(
    server: Harness, who: Session, action: str, at: tuple[float, float], **extra: Any
) -> httpx.Response:
    return await server.client.post(
        "/v1/me/attendance",
        headers=who.headers,
        json={"action": action, "lat": at[0], "lon": at[1], **extra},
    )


async def my_records(server: Harness, who: Session, query: str = "") -> list[dict[str, Any]]:
    response = await server.client.get(f"/v1/me/attendance{query}", headers=who.headers)
    assert response.status_code == 200, response.text
    records: list[dict[str, Any]] = response.json()["records"]
    return records


async def org_records(server: Harness, admin: Session, query: str = "") -> list[dict[str, Any]]:
    response = await server.client.get(
        f"/v1/orgs/{admin.org_id}/attendance{query}", headers=admin.headers
    )
    assert response.status_code == 200, response.text
    records: list[dict[str, Any]] = response.json()["records"]
    return records


async def test_check_in_inside_a_circle_out_outside_and_in_inside_a_polygon(
    server: Harness,
) -> None:
    owner = await server.create_org()
    hq = await create_site(server, owner, HQ)
    warehouse = await create_site(server, owner, WAREHOUSE)
    assert hq["circle"] == HQ["circle"] and hq["polygon"] is None
    assert warehouse["polygon"] == WAREHOUSE["polygon"] and warehouse["circle"] is None
    maria = await granted_member(server, owner, "maria")

    inside = await check(server, maria, "in", AT_HQ, acc=12.5)
    assert inside.status_code == 201, inside.text
    answer = inside.json()
    assert set(answer) == {"id", "action", "at", "site", "outcome"}
    assert answer["action"] == "in" and answer["outcome"] == "inside"
    assert answer["site"] == {"id": hq["id"], "name": "HQ"}
    outside = (await check(server, maria, "out", ELSEWHERE)).json()
    assert (outside["outcome"], outside["site"]) == ("outside", None)
    polygon = (await check(server, maria, "in", AT_WAREHOUSE)).json()
    assert polygon["outcome"] == "inside"
    assert polygon["site"] == {"id": warehouse["id"], "name": "Warehouse"}

    records = await my_records(server, maria)
    assert [(r["action"], r["outcome"], r["site"] and r["site"]["name"]) for r in records] == [
        ("in", "inside", "HQ"),
        ("out", "outside", None),
        ("in", "inside", "Warehouse"),
    ]
    assert {r["device_id"] for r in records} == {maria.device["id"]}
    assert set(records[0]) == {"id", "account_id", "device_id", "action", "at", "site", "outcome"}
    first_page = await my_records(server, maria, "?limit=2")
    rest = await my_records(server, maria, f"?after={first_page[-1]['id']}")
    assert first_page + rest == records
    assert await org_records(server, owner) == records
    assert await org_records(server, owner, f"?account={owner.id}") == []


async def test_no_check_in_without_an_active_attendance_grant(server: Harness) -> None:
    owner = await server.create_org()
    await create_site(server, owner, HQ)
    maria = await server.add_member(owner, "maria")
    never = await check(server, maria, "in", AT_HQ)
    assert_error(never, 409, "consent_not_granted")
    other = await server.client.put("/v1/me/consents/location_share", headers=maria.headers)
    assert other.status_code == 200  # another purpose is no attendance grant
    assert_error(await check(server, maria, "in", AT_HQ), 409, "consent_not_granted")
    assert await my_records(server, maria) == []

    await server.client.put("/v1/me/consents/attendance", headers=maria.headers)
    assert (await check(server, maria, "in", AT_HQ)).status_code == 201
    withdrawn = await server.client.delete("/v1/me/consents/attendance", headers=maria.headers)
    assert withdrawn.status_code == 200
    assert_error(await check(server, maria, "out", AT_HQ), 409, "consent_not_granted")

    await server.client.put("/v1/me/consents/attendance", headers=maria.headers)
    off = await server.client.put(
        f"/v1/orgs/{owner.org_id}/purposes/attendance/off", headers=owner.headers
    )
    assert off.status_code == 204
    assert_error(await check(server, maria, "out", AT_HQ), 403, "purpose_switched_off")
    assert [r["action"] for r in await my_records(server, maria)] == ["in"]
    assert len(await org_records(server, owner)) == 1


async def test_bad_positions_are_refused_without_repeating_them(server: Harness) -> None:
    owner = await server.create_org()
    await create_site(server, owner, HQ)
    maria = await granted_member(server, owner, "maria")
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"lat": 91.25, "lon": 106.987653}, "lat", "91.25"),
        ({"lat": -90.000001, "lon": 106.987653}, "lat", "90.000001"),
        ({"lat": -6.123457, "lon": -180.75}, "lon", "180.75"),
        ({"lat": "-6.123457", "lon": 106.987653}, "lat", "6.123457"),
        ({"lat": True, "lon": 106.987653}, "lat", "true"),
        ({"lat": None, "lon": 106.987653}, "lat", "null"),
        ({"lat": [-6.123457], "lon": 106.987653}, "lat", "6.123457"),
        ({"lat": -6.123457, "lon": 106.987653, "acc": -4.5}, "acc", "4.5"),
    ]
    for position, field, value in cases:
        response = await server.client.post(
            "/v1/me/attendance", headers=maria.headers, json={"action": "in", **position}
        )
        error = assert_error(response, 422, "invalid_request")
        assert error["details"] == [{"field": field, "problem": error["message"]}], response.text
        assert error["message"].startswith(f"{field} must be a number in ")
        assert value not in response.text
        assert "6.123457" not in response.text and "106.987653" not in response.text

    raw = [
        b'{"action": "in", "lat": NaN, "lon": 106.987653}',
        b'{"action": "in", "lat": -6.123457, "lon": Infinity}',
        b'{"action": "in", "lat": 1e400, "lon": 106.987653}',  # parses as infinity
    ]
    for content in raw:
        response = await server.client.post(
            "/v1/me/attendance",
            headers={**maria.headers, "Content-Type": "application/json"},
            content=content,
        )
        assert response.status_code in (400, 422), response.text
        assert response.json()["error"]["code"] in ("invalid_json", "invalid_request")
        for value in ("6.123457", "106.987653", "1e400", "inf"):
            assert value not in response.text.lower()

    sideways = await check(server, maria, "sideways", AT_HQ)
    assert assert_error(sideways, 422, "invalid_request")["details"][0]["field"] == "action"
    missing = await server.client.post(
        "/v1/me/attendance", headers=maria.headers, json={"action": "in", "lat": -6.123457}
    )
    assert assert_error(missing, 422, "invalid_request")["details"][0]["field"] == "lon"
    assert "6.123457" not in missing.text
    assert await my_records(server, maria) == []


async def test_bad_sites_are_refused(server: Harness) -> None:
    owner = await server.create_org()
    square = WAREHOUSE["polygon"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "A", "circle": {"lat": -6.1, "lon": 106.9, "radius_m": 0.5}}, "circle.radius_m"),
        (
            {"name": "A", "circle": {"lat": -6.1, "lon": 106.9, "radius_m": 50001}},
            "circle.radius_m",
        ),
        ({"name": "A", "circle": {"lat": 95, "lon": 106.9, "radius_m": 100}}, "circle.lat"),
        ({"name": "A", "circle": {"lat": -6.1, "lon": 106.9}}, "circle.radius_m"),
        ({"name": "A"}, "circle"),
        ({**HQ, "polygon": square}, "circle"),
        ({"name": "A", "polygon": square[:2]}, "polygon"),
        ({"name": "A", "polygon": [*square, square[0]]}, "polygon"),  # closed: a repeat
        ({"name": "A", "polygon": [square[0], square[2], square[1], square[3]]}, "polygon"),
        ({"name": "A", "polygon": [{"lat": 0, "lon": 0}, {"lat": 0, "lon": 1}] * 2}, "polygon"),
        (
            {"name": "A", "polygon": [{"lat": 0, "lon": i / 1000} for i in range(3)]},
            "polygon",
        ),  # on one line
        ({"name": "A", "polygon": [{"lat": 0, "lon": 0}] * 101}, "polygon"),
        (
            {
                "name": "A",
                "polygon": [{"lat": 0, "lon": 0}, {"lat": 0, "lon": 2}, {"lat": 1, "lon": 1}],
            },
            "polygon",
        ),  # wider than a site
        ({"name": "A", "polygon": [*square[:3], {"lat": -6.31, "lon": -181}]}, "polygon.3.lon"),
        ({**HQ, "name": ""}, "name"),
    ]
    for site, field in cases:
        response = await server.client.post(
            f"/v1/orgs/{owner.org_id}/sites", headers=owner.headers, json=site
        )
        error = assert_error(response, 422, "invalid_request")
        assert field in [d["field"] for d in error["details"]], (site, error)
    nan = await server.client.post(
        f"/v1/orgs/{owner.org_id}/sites",
        headers={**owner.headers, "Content-Type": "application/json"},
        content=b'{"name": "A", "circle": {"lat": 1e999, "lon": 1, "radius_m": 10}}',
    )
    assert_error(nan, 422, "invalid_request")
    await create_site(server, owner, HQ)
    taken = await server.client.post(
        f"/v1/orgs/{owner.org_id}/sites", headers=owner.headers, json={**HQ, "name": "hq"}
    )
    assert_error(taken, 409, "conflict")
    listed = await server.client.get(f"/v1/orgs/{owner.org_id}/sites", headers=owner.headers)
    assert [s["name"] for s in listed.json()["sites"]] == ["HQ"]


async def test_an_org_without_sites_refuses_check_ins(server: Harness) -> None:
    owner = await server.create_org()
    maria = await granted_member(server, owner, "maria")
    assert_error(await check(server, maria, "in", AT_HQ), 409, "no_sites")
    hq = await create_site(server, owner, HQ)
    assert (await check(server, maria, "in", AT_HQ)).status_code == 201
    removed = await server.client.delete(
        f"/v1/orgs/{owner.org_id}/sites/{hq['id']}", headers=owner.headers
    )
    assert removed.status_code == 204
    gone = await server.client.get(
        f"/v1/orgs/{owner.org_id}/sites/{hq['id']}", headers=owner.headers
    )
    assert_error(gone, 404, "not_found")
    again = await server.client.delete(
        f"/v1/orgs/{owner.org_id}/sites/{hq['id']}", headers=owner.headers
    )
    assert_error(again, 404, "not_found")
    assert_error(await check(server, maria, "out", AT_HQ), 409, "no_sites")
    records = await my_records(server, maria)
    assert [r["site"] for r in records] == [{"id": hq["id"], "name": "HQ"}]  # still named
    recreated = await create_site(server, owner, HQ)  # the name is free again
    assert recreated["id"] != hq["id"]


async def test_only_admins_define_sites_and_read_the_orgs_records(server: Harness) -> None:
    owner = await server.create_org()
    admin = await server.add_member(owner, "adam", role="admin")
    maria = await granted_member(server, owner, "maria")
    refused = await server.client.post(
        f"/v1/orgs/{owner.org_id}/sites", headers=maria.headers, json=HQ
    )
    assert_error(refused, 403, "forbidden")
    hq = await create_site(server, admin, HQ)
    delete = await server.client.delete(
        f"/v1/orgs/{owner.org_id}/sites/{hq['id']}", headers=maria.headers
    )
    assert_error(delete, 403, "forbidden")
    seen = await server.client.get(f"/v1/orgs/{owner.org_id}/sites", headers=maria.headers)
    assert [s["id"] for s in seen.json()["sites"]] == [hq["id"]]  # members see where
    assert (await check(server, maria, "in", AT_HQ)).status_code == 201
    member_view = await server.client.get(
        f"/v1/orgs/{owner.org_id}/attendance", headers=maria.headers
    )
    assert_error(member_view, 403, "forbidden")
    mine = await org_records(server, admin, f"?account={maria.id}")
    assert [r["account_id"] for r in mine] == [maria.id]
    bad = await server.client.get(
        f"/v1/orgs/{owner.org_id}/attendance?account=maria", headers=admin.headers
    )
    assert assert_error(bad, 422, "invalid_request")["details"][0]["field"] == "account"

    stranger = await server.create_org("Other", "zoe")
    for path in ("attendance", "sites", f"sites/{hq['id']}"):
        response = await server.client.get(
            f"/v1/orgs/{owner.org_id}/{path}", headers=stranger.headers
        )
        assert_error(response, 403, "forbidden")
    foreign = await server.client.post(
        f"/v1/orgs/{owner.org_id}/sites", headers=stranger.headers, json=WAREHOUSE
    )
    assert_error(foreign, 403, "forbidden")
    own_path = await server.client.get(
        f"/v1/orgs/{stranger.org_id}/sites/{hq['id']}", headers=stranger.headers
    )
    assert_error(own_path, 404, "not_found")  # another org's site is not found through yours
    assert await org_records(server, stranger) == []


async def test_department_sites_and_department_admins(server: Harness) -> None:
    owner = await server.create_org()
    sales = await server.department(owner, "Sales")
    jakarta = await server.department(owner, "Jakarta", parent=sales)
    support = await server.department(owner, "Support")
    await create_site(server, owner, {**HQ, "department_id": sales})
    maria = await granted_member(server, owner, "maria", department_id=jakarta)
    sam = await granted_member(server, owner, "sam", department_id=support)
    inside = (await check(server, maria, "in", AT_HQ)).json()
    assert inside["site"]["name"] == "HQ"  # a Sales site applies below Sales
    assert_error(await check(server, sam, "in", AT_HQ), 409, "no_sites")
    await create_site(server, owner, WAREHOUSE)  # the whole organization's
    assert (await check(server, sam, "in", AT_HQ)).json()["outcome"] == "outside"
    assert (await check(server, sam, "in", AT_WAREHOUSE)).json()["outcome"] == "inside"

    lead = await server.add_member(
        owner, "lena", role="department_admin", admin_department_id=sales
    )
    seen = await org_records(server, lead)
    assert {r["account_id"] for r in seen} == {maria.id}
    assert await org_records(server, lead, f"?account={sam.id}") == []
    assert len(await org_records(server, owner)) == 3
    unknown = await server.client.post(
        f"/v1/orgs/{owner.org_id}/sites",
        headers=owner.headers,
        json={**HQ, "name": "Elsewhere", "department_id": "00000000-0000-4000-8000-000000000000"},
    )
    assert_error(unknown, 404, "not_found")


async def test_the_positions_are_found_nowhere(server: Harness) -> None:
    """After check-ins inside, outside and refused, no rendering of their coordinates is in
    any table, the log output, the data folder, PostgreSQL's log or its cluster files."""
    accuracy = 987.654321
    with capture_logs() as logs:
        owner = await server.create_org()
        await create_site(server, owner, HQ)
        await create_site(server, owner, WAREHOUSE)
        maria = await granted_member(server, owner, "maria")
        for action, at in (("in", AT_HQ), ("out", ELSEWHERE), ("in", AT_WAREHOUSE)):
            response = await check(server, maria, action, at, acc=accuracy)
            assert response.status_code == 201, response.text
        zoe = await server.add_member(owner, "zoe")  # no grant: refused
        assert_error(await check(server, zoe, "in", AT_HQ), 409, "consent_not_granted")
        out_of_range = await check(server, maria, "in", (AT_HQ[0], 186.987653))
        assert_error(out_of_range, 422, "invalid_request")
        records = await my_records(server, maria)
        assert len(records) == 3
    needles = coordinate_needles(*AT_HQ, *ELSEWHERE, *AT_WAREHOUSE, accuracy, 186.987653)
    findings = await find_everywhere(server, needles, logs)
    assert findings.found == []
    assert logs.lines, "the log capture saw nothing"
    places = " ".join(findings.searched)
    assert "database" in places and "log output" in places and "data folder" in places
    if server.postgres is not None:
        assert "PostgreSQL log" in places and "PostgreSQL cluster" in places


async def test_the_search_finds_what_is_there(server: Harness) -> None:
    """The search is not vacuous: a site's centre is stored (org data), and a logged value
    is in the log output."""
    with capture_logs() as logs:
        owner = await server.create_org()
        await create_site(
            server,
            owner,
            {"name": "Depot", "circle": {"lat": -7.654321, "lon": 110.5, "radius_m": 50}},
        )
        logging.getLogger("tests.privacy").info("a value %s", 123.456789)
    findings = await find_everywhere(server, coordinate_needles(-7.654321, 123.456789), logs)
    found = "\n".join(findings.found)
    assert "table attendance_sites: '-7.654321'" in found
    assert "log output: '123.456789'" in found
    if server.postgres is not None:
        assert "PostgreSQL cluster" in found  # the stored double, in the table's file or WAL
