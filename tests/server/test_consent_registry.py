"""The consent registry over REST: a person's own grants and history, what admins see, an
organization switching a purpose off. Real server, real PostgreSQL."""

from __future__ import annotations

from typing import Any

from tests.harness import Harness, Session, assert_error


def granted(body: dict[str, Any]) -> dict[str, bool]:
    return {c["purpose"]: c["granted"] for c in body["consents"]}


async def consents(server: Harness, who: Session) -> dict[str, Any]:
    response = await server.client.get("/v1/me/consents", headers=who.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_person_grants_and_withdraws_with_history(server: Harness) -> None:
    owner = await server.create_org()
    maria = await server.add_member(owner, "maria")
    assert granted(await consents(server, maria)) == {
        "location_share": False,
        "attendance": False,
        "media_share": False,
        "contacts_sync": False,
    }
    response = await server.client.put("/v1/me/consents/location_share", headers=maria.headers)
    assert granted(response.json())["location_share"] is True
    again = await server.client.put("/v1/me/consents/location_share", headers=maria.headers)
    assert again.status_code == 200  # granting twice records nothing new
    response = await server.client.delete("/v1/me/consents/location_share", headers=maria.headers)
    assert granted(response.json())["location_share"] is False
    history = (await server.client.get("/v1/me/consents/history", headers=maria.headers)).json()[
        "history"
    ]
    assert [(e["purpose"], e["action"]) for e in history] == [
        ("location_share", "granted"),
        ("location_share", "withdrawn"),
    ]
    assert all(e["device_id"] == maria.device["id"] for e in history)


async def test_bad_requests_get_clear_codes_and_change_nothing(server: Harness) -> None:
    owner = await server.create_org()
    maria = await server.add_member(owner, "maria")
    unknown = await server.client.put("/v1/me/consents/selling_data", headers=maria.headers)
    assert assert_error(unknown, 422, "invalid_request")["details"][0]["field"] == "purpose"
    never = await server.client.delete("/v1/me/consents/media_share", headers=maria.headers)
    assert_error(never, 409, "consent_not_granted")
    assert not any(granted(await consents(server, maria)).values())
    history = await server.client.get("/v1/me/consents/history", headers=maria.headers)
    assert history.json()["history"] == []
    assert_error(await server.client.get("/v1/me/consents"), 401, "unauthenticated")


async def test_admins_see_members_state_but_only_in_their_org(server: Harness) -> None:
    owner = await server.create_org()
    maria = await server.add_member(owner, "maria")
    await server.client.put("/v1/me/consents/media_share", headers=maria.headers)
    listed = await server.client.get(f"/v1/orgs/{owner.org_id}/consents", headers=owner.headers)
    assert listed.status_code == 200, listed.text
    by_account = {m["account_id"]: m["granted"] for m in listed.json()["members"]}
    assert set(by_account[maria.id]) == {"media_share"}
    assert by_account[owner.id] == {}
    member_view = await server.client.get(
        f"/v1/orgs/{owner.org_id}/consents", headers=maria.headers
    )
    assert_error(member_view, 403, "forbidden")
    stranger = await server.create_org("Other", "zoe")
    other_org = await server.client.get(
        f"/v1/orgs/{owner.org_id}/consents", headers=stranger.headers
    )
    assert_error(other_org, 403, "forbidden")


async def test_an_org_switching_a_purpose_off_withdraws_it_and_refuses_new_grants(
    server: Harness,
) -> None:
    owner = await server.create_org()
    maria = await server.add_member(owner, "maria")
    await server.client.put("/v1/me/consents/location_share", headers=maria.headers)
    refused = await server.client.put(
        f"/v1/orgs/{owner.org_id}/purposes/location_share/off", headers=maria.headers
    )
    assert_error(refused, 403, "forbidden")  # members cannot
    off = await server.client.put(
        f"/v1/orgs/{owner.org_id}/purposes/location_share/off", headers=owner.headers
    )
    assert off.status_code == 204, off.text
    state = {c["purpose"]: c for c in (await consents(server, maria))["consents"]}
    assert state["location_share"]["granted"] is False
    assert state["location_share"]["switched_off_by_org"] is True
    blocked = await server.client.put("/v1/me/consents/location_share", headers=maria.headers)
    assert_error(blocked, 403, "purpose_switched_off")
    history = (await server.client.get("/v1/me/consents/history", headers=maria.headers)).json()[
        "history"
    ]
    assert history[-1]["action"] == "withdrawn"
    assert history[-1]["reason"] == "org_switched_off" and history[-1]["device_id"] is None
    on = await server.client.delete(
        f"/v1/orgs/{owner.org_id}/purposes/location_share/off", headers=owner.headers
    )
    assert on.status_code == 204
    assert granted(await consents(server, maria))["location_share"] is False  # not restored
    again = await server.client.put("/v1/me/consents/location_share", headers=maria.headers)
    assert granted(again.json())["location_share"] is True
