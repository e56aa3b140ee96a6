"""Input refused at the edge, over real HTTP: NUL and control characters in any text, numbers
out of range, NaN, bodies not declared as JSON - a 4xx naming the field, never a 500."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import httpx

from tests.harness import PASSWORD, Harness, Session, assert_error, b64

BAD_TEXT = {
    "nul": "a\u0000b",
    "escape": "a\u001b[31mb",
    "newline": "a\nb",
    "c1 control": "a\u0085b",
    "bidi override": "invoice\u202efdp.exe",
}


def refused(response: httpx.Response, field: str) -> None:
    """A 422 invalid_request whose details name `field`."""
    error = assert_error(response, 422, "invalid_request")
    assert field in {d["field"] for d in error.get("details", [])}, error


async def test_control_characters_in_body_text_are_refused_by_field(server: Harness) -> None:
    owner = await server.create_org()
    org = f"/v1/orgs/{owner.org_id}"
    member = {
        "account_name": "maria",
        "work_email": "maria@members.example",
        "display_name": "Maria",
        "initial_password": PASSWORD,
    }
    device = {"name": "phone", "platform": "ios", "public_key": b64(bytes(32))}
    department = await server.department(owner, "Sales")
    new_owner = {
        "account_name": "xavier",
        "work_email": "xavier@x.example",
        "display_name": "Xavier",
        "password": PASSWORD,
    }
    for bad in BAD_TEXT.values():
        signup = {"name": bad, "owner": new_owner}
        refused(await server.client.post("/v1/orgs", json=signup), "name")
        signup = {"name": "Globex", "owner": {**new_owner, "display_name": bad}}
        refused(await server.client.post("/v1/orgs", json=signup), "owner.display_name")
        cases: list[tuple[str, str, dict[str, Any], str]] = [
            ("POST", f"{org}/members", {**member, "display_name": bad}, "display_name"),
            ("POST", f"{org}/members", {**member, "work_email": f"m{bad}@x.example"}, "work_email"),
            ("POST", f"{org}/members", {**member, "position": bad}, "position"),
            ("POST", f"{org}/departments", {"name": bad}, "name"),
            ("PATCH", f"{org}/departments/{department}", {"name": bad}, "name"),
            ("POST", "/v1/conversations", {"kind": "group", "title": bad}, "title"),
            ("PATCH", "/v1/me", {"display_name": bad}, "display_name"),
            ("POST", "/v1/devices", {**device, "name": bad}, "name"),
            ("PATCH", f"{org}/members/{owner.id}", {"display_name": bad}, "display_name"),
        ]
        for method, path, body, field in cases:
            response = await server.client.request(method, path, headers=owner.headers, json=body)
            refused(response, field)
        login = {"email": f"o{bad}@x.example", "password": PASSWORD, "device": device}
        refused(await server.client.post("/v1/login", json=login), "email")
        login = {"email": "x@x.example", "password": PASSWORD, "device": {**device, "name": bad}}
        refused(await server.client.post("/v1/login", json=login), "device.name")
        refresh = {"refresh_token": f"r{bad}"}
        refused(await server.client.post("/v1/tokens/refresh", json=refresh), "refresh_token")
    # The password may hold any character but NUL.
    nul_password = {"email": "x@x.example", "password": "a\u0000b", "device": device}
    refused(await server.client.post("/v1/login", json=nul_password), "password")
    change = {"current_password": PASSWORD, "new_password": "Tab\tIn-Password-42"}
    response = await server.client.post("/v1/me/password", headers=owner.headers, json=change)
    assert response.status_code == 204, response.text
    # Nothing was stored: the directory still holds the owner alone, under the old name.
    listing = await server.client.get(f"{org}/members", headers=owner.headers)
    assert [m["display_name"] for m in listing.json()["members"]] == ["Olivia"]


async def test_ordinary_unicode_text_is_kept(server: Harness) -> None:
    owner = await server.create_org()
    name = "Siti Nurhaliza \u200f\u05e9\u05dc\u05d5\u05dd \u4e2d\u6587 \U0001f600"
    response = await server.client.patch(
        "/v1/me", headers=owner.headers, json={"display_name": name}
    )
    assert response.status_code == 200, response.text
    assert response.json()["display_name"] == name


def cursor(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()


async def test_query_parameters_are_bounded(server: Harness) -> None:
    owner = await server.create_org()
    conversation = await server.group(owner)
    history = f"/v1/conversations/{conversation}/messages"
    directory = f"/v1/orgs/{owner.org_id}/members"
    ident = str(uuid.uuid4())
    cases = [
        (history, {"before": "99999999999999999999"}, "before"),
        (history, {"before": "9223372036854775808"}, "before"),
        (history, {"before": "-1"}, "before"),
        (history, {"before": "0"}, "before"),
        (history, {"before": " 5"}, "before"),
        (history, {"before": "1_0"}, "before"),
        (history, {"before": "\u0663"}, "before"),  # an Arabic-Indic 3: int() would take it
        (history, {"before": "5\u0000"}, "before"),
        (history, {"limit": "0"}, "limit"),
        (history, {"limit": "201"}, "limit"),
        (history, {"limit": "-5"}, "limit"),
        (history, {"limit": "1e2"}, "limit"),
        (directory, {"limit": "0"}, "limit"),
        (directory, {"limit": "201"}, "limit"),
        (directory, {"limit": "99999999999999999999"}, "limit"),
        (directory, {"after": "\u0000"}, "after"),
        (directory, {"after": "x" * 2000}, "after"),
        (directory, {"after": cursor(["a\u0000b", ident])}, "after"),
        (directory, {"after": cursor(["a", 5])}, "after"),
        (directory, {"after": cursor({"a": 1})}, "after"),
        (directory, {"after": base64.urlsafe_b64encode(b"\xff\xfe").decode()}, "after"),
    ]
    for path, params, field in cases:
        response = await server.client.get(path, params=params, headers=owner.headers)
        refused(response, field)
    # The edges of the ranges are fine.
    for path, params in (
        (history, {"before": str(2**63 - 1), "limit": "200"}),
        (history, {"before": "1", "limit": "1"}),
        (directory, {"limit": "200"}),
        (directory, {"limit": "1", "after": cursor(["\u00e9mile", ident])}),
    ):
        response = await server.client.get(path, params=params, headers=owner.headers)
        assert response.status_code == 200, (params, response.text)


async def test_nan_and_infinity_are_not_json(server: Harness) -> None:
    owner = await server.create_org()
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        response = await server.client.patch(
            "/v1/me",
            headers={**owner.headers, "Content-Type": "application/json"},
            content=b'{"display_name": ' + literal + b"}",
        )
        assert_error(response, 400, "invalid_json")
    response = await server.client.post(
        "/v1/conversations",
        headers={**owner.headers, "Content-Type": "application/json"},
        content=b'{"kind": "group", "title": "\\ud800"}',  # a lone surrogate
    )
    assert_error(response, 400, "invalid_json")


async def test_json_bodies_must_be_declared_json(server: Harness) -> None:
    owner = await server.create_org()
    body = json.dumps({"display_name": "Olive"}).encode()
    for content_type in (
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        None,
    ):
        headers = dict(owner.headers)
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = await server.client.patch("/v1/me", headers=headers, content=body)
        error = assert_error(response, 415, "unsupported_media_type")
        assert error["details"] == [
            {"field": "Content-Type", "problem": "must be application/json"}
        ]
    for content_type in (
        "application/json",
        "application/json; charset=utf-8",
        "application/merge-patch+json",
    ):
        response = await server.client.patch(
            "/v1/me", headers={**owner.headers, "Content-Type": content_type}, content=body
        )
        assert response.status_code == 200, (content_type, response.text)
    me = await server.client.get("/v1/me", headers=owner.headers)
    assert me.json()["display_name"] == "Olive"


async def test_every_paged_endpoint_takes_the_same_limits(server: Harness) -> None:
    owner: Session = await server.create_org()
    conversation = await server.group(owner)
    for path in (f"/v1/conversations/{conversation}/messages", f"/v1/orgs/{owner.org_id}/members"):
        for limit, status in (("0", 422), ("1", 200), ("200", 200), ("201", 422), ("x", 422)):
            response = await server.client.get(path, params={"limit": limit}, headers=owner.headers)
            assert response.status_code == status, (path, limit, response.text)
