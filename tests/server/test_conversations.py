"""Opening conversations and managing their members over REST."""

from __future__ import annotations

from tests.harness import Harness, assert_error


async def test_groups_and_direct_conversations(server: Harness) -> None:
    owner = await server.create_org()
    maria = await server.add_member(owner, "maria")
    ian = await server.add_member(owner, "ian")
    response = await server.client.post(
        "/v1/conversations",
        headers=owner.headers,
        json={"kind": "group", "title": "Launch", "member_ids": [maria.id, ian.id]},
    )
    assert response.status_code == 201
    group = response.json()
    assert set(group["member_ids"]) == {owner.id, maria.id, ian.id}

    first = await server.client.post(
        "/v1/conversations",
        headers=owner.headers,
        json={"kind": "direct", "member_ids": [maria.id]},
    )
    again = await server.client.post(
        "/v1/conversations",
        headers=maria.headers,
        json={"kind": "direct", "member_ids": [owner.id]},
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]

    mine = (await server.client.get("/v1/conversations", headers=ian.headers)).json()
    assert [c["id"] for c in mine["conversations"]] == [group["id"]]
    history = await server.client.get(
        f"/v1/conversations/{group['id']}/messages", headers=ian.headers
    )
    assert history.json() == {"messages": [], "next_before": None}


async def test_outsiders_cannot_see_or_join(server: Harness) -> None:
    owner = await server.create_org()
    maria = await server.add_member(owner, "maria")
    ian = await server.add_member(owner, "ian")
    stranger = await server.create_org("Globex", "gina")
    group = (
        await server.client.post(
            "/v1/conversations",
            headers=owner.headers,
            json={"kind": "group", "title": "Launch", "member_ids": [maria.id]},
        )
    ).json()
    for who in (ian, stranger):
        response = await server.client.get(f"/v1/conversations/{group['id']}", headers=who.headers)
        assert_error(response, 404, "not_found")
        response = await server.client.get(
            f"/v1/conversations/{group['id']}/messages", headers=who.headers
        )
        assert_error(response, 404, "not_found")
    # Members of another org cannot be added, nor can a chat with them be opened.
    response = await server.client.post(
        f"/v1/conversations/{group['id']}/members",
        headers=owner.headers,
        json={"account_ids": [stranger.id]},
    )
    assert_error(response, 404, "not_found")
    response = await server.client.post(
        "/v1/conversations",
        headers=owner.headers,
        json={"kind": "direct", "member_ids": [stranger.id]},
    )
    assert_error(response, 404, "not_found")
    check = (
        await server.client.get(f"/v1/conversations/{group['id']}", headers=owner.headers)
    ).json()
    assert set(check["member_ids"]) == {owner.id, maria.id}


async def test_leaving_and_removing(server: Harness) -> None:
    owner = await server.create_org()
    maria = await server.add_member(owner, "maria")
    ian = await server.add_member(owner, "ian")
    group = (
        await server.client.post(
            "/v1/conversations",
            headers=maria.headers,
            json={"kind": "group", "title": "Lunch", "member_ids": [ian.id, owner.id]},
        )
    ).json()
    url = f"/v1/conversations/{group['id']}/members"
    assert_error(
        await server.client.delete(f"{url}/{maria.id}", headers=ian.headers), 403, "forbidden"
    )
    response = await server.client.delete(f"{url}/{ian.id}", headers=ian.headers)  # leave
    assert set(response.json()["member_ids"]) == {maria.id, owner.id}
    response = await server.client.delete(f"{url}/{owner.id}", headers=maria.headers)  # creator
    assert response.json()["member_ids"] == [maria.id]
    assert_error(
        await server.client.get(f"/v1/conversations/{group['id']}", headers=ian.headers),
        404,
        "not_found",
    )


async def test_bad_conversation_requests(server: Harness) -> None:
    owner = await server.create_org()
    for body in (
        {"kind": "direct", "member_ids": []},
        {"kind": "direct", "member_ids": [owner.id]},
        {"kind": "group", "member_ids": []},
        {"kind": "channel", "title": "x"},
        {"kind": "group", "title": "x", "member_ids": ["not-a-uuid"]},
    ):
        response = await server.client.post("/v1/conversations", headers=owner.headers, json=body)
        assert_error(response, 422, "invalid_request")
