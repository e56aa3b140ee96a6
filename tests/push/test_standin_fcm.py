"""The FCM stand-in answers as Google does: the service-account token flow (RFC 7523 JWT
bearer), then messages:send with the access token, refusals in Google's error format."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from push.standin import Fault, StandIn, running_standin
from tests.push.helpers import JWT_BEARER, assertion, other_rsa_key

FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
REGISTRATION_TOKEN = "dGhpcyBpcyBub3QgYSByZWFs:APA91bH-example_registration_token-0123456789"


def send_url(standin: StandIn, project: str | None = None) -> str:
    return f"{standin.url}/v1/projects/{project or standin.credentials.fcm_project}/messages:send"


def message(token: str = REGISTRATION_TOKEN, **fields: Any) -> dict[str, Any]:
    return {
        "message": {
            "token": token,
            "data": {"conversation": "c1", "badge": "2"},
            "android": {"priority": "high", "collapse_key": "c1", "ttl": "3600s"},
            **fields,
        }
    }


async def access_token(standin: StandIn, client: httpx.AsyncClient, **claims: Any) -> str:
    token_uri = standin.credentials.service_account()["token_uri"]
    response = await client.post(
        token_uri,
        data={"grant_type": JWT_BEARER, "assertion": assertion(standin.credentials, **claims)},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def fcm_error_code(response: httpx.Response) -> str | None:
    for detail in response.json()["error"].get("details", []):
        if detail["@type"] == FCM_ERROR:
            return str(detail["errorCode"])
    return None


async def test_the_service_account_file_points_at_the_stand_in(standin: StandIn) -> None:
    account = standin.credentials.service_account()
    assert account["token_uri"] == f"{standin.url}/token"
    assert account["project_id"] == standin.credentials.fcm_project


async def test_a_signed_assertion_gets_an_access_token(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    response = await client.post(
        f"{standin.url}/token",
        data={"grant_type": JWT_BEARER, "assertion": assertion(standin.credentials)},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3599
    assert body["access_token"].startswith("ya29.")
    record = standin.received[-1]
    assert (record.service, record.status, record.reason) == ("fcm_token", 200, None)
    assert record.payload == {"grant_type": JWT_BEARER, "assertion": "…"}


@pytest.mark.parametrize(
    ("claims", "error", "description"),
    [
        ({"key": "other"}, "invalid_grant", "Invalid JWT Signature."),
        ({"kid": "0" * 40}, "invalid_grant", "Invalid JWT Signature."),
        ({"aud": "https://oauth2.googleapis.com/token"}, "invalid_grant", "audience"),
        ({"iat": time.time() - 7200}, "invalid_grant", "short-lived"),
        ({"lifetime_s": 7200}, "invalid_grant", "short-lived"),
        ({"scope": None}, "invalid_scope", "scope"),
    ],
)
async def test_a_bad_assertion_is_refused_as_google_does(
    standin: StandIn,
    client: httpx.AsyncClient,
    claims: dict[str, Any],
    error: str,
    description: str,
) -> None:
    if claims.get("key") == "other":
        claims["key"] = other_rsa_key()
    response = await client.post(
        f"{standin.url}/token",
        data={"grant_type": JWT_BEARER, "assertion": assertion(standin.credentials, **claims)},
    )
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert description in response.json()["error_description"]
    assert standin.received[-1].reason == error


async def test_another_grant_type_is_unsupported(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    response = await client.post(f"{standin.url}/token", data={"grant_type": "client_credentials"})
    assert (response.status_code, response.json()["error"]) == (400, "unsupported_grant_type")


async def test_a_message_to_a_token_is_sent(standin: StandIn, client: httpx.AsyncClient) -> None:
    token = await access_token(standin, client)
    response = await client.post(
        send_url(standin), json=message(), headers={"authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200
    name = response.json()["name"]
    assert name.startswith(f"projects/{standin.credentials.fcm_project}/messages/0:")
    record = standin.received[-1]
    assert (record.service, record.token, record.status) == ("fcm", REGISTRATION_TOKEN, 200)
    assert record.headers["authorization"] == "bearer …"
    assert record.payload == message()


async def test_validate_only_answers_googles_fake_id(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    token = await access_token(standin, client)
    response = await client.post(
        send_url(standin),
        json={**message(), "validate_only": True},
        headers={"authorization": f"Bearer {token}"},
    )
    assert response.json() == {
        "name": f"projects/{standin.credentials.fcm_project}/messages/fake_message_id"
    }


@pytest.mark.parametrize("authorization", [None, "Bearer ya29.c.made-up", "Basic dXNlcjpwYXNz"])
async def test_no_valid_access_token_is_401_unauthenticated(
    standin: StandIn, client: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    response = await client.post(send_url(standin), json=message(), headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (401, "UNAUTHENTICATED")
    assert "authentication credential" in error["message"]
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert standin.received[-1].reason == "UNAUTHENTICATED"


async def test_expired_access_tokens_are_refused(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    token = await access_token(standin, client)
    standin.expire_access_tokens()
    response = await client.post(
        send_url(standin), json=message(), headers={"authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401
    fresh = await access_token(standin, client)
    response = await client.post(
        send_url(standin), json=message(), headers={"authorization": f"Bearer {fresh}"}
    )
    assert response.status_code == 200


async def test_access_tokens_live_as_long_as_configured(tmp_path: Path) -> None:
    async with running_standin(tmp_path / "short", access_token_ttl_s=1) as standin:
        context = standin.credentials.client_ssl_context()
        async with httpx.AsyncClient(http2=True, verify=context) as client:
            response = await client.post(
                f"{standin.url}/token",
                data={"grant_type": JWT_BEARER, "assertion": assertion(standin.credentials)},
            )
            assert response.json()["expires_in"] == 1
            token = response.json()["access_token"]
            await trio.sleep(1.5)  # past its lifetime (not a timing assertion)
            response = await client.post(
                send_url(standin), json=message(), headers={"authorization": f"Bearer {token}"}
            )
            assert response.status_code == 401


async def test_another_project_is_permission_denied(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    token = await access_token(standin, client)
    response = await client.post(
        send_url(standin, "someone-else"),
        json=message(),
        headers={"authorization": f"Bearer {token}"},
    )
    assert response.status_code == 403
    assert response.json()["error"]["status"] == "PERMISSION_DENIED"


async def test_a_token_without_the_messaging_scope_cannot_send(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    token = await access_token(
        standin, client, scope="https://www.googleapis.com/auth/userinfo.email"
    )
    response = await client.post(
        send_url(standin), json=message(), headers={"authorization": f"Bearer {token}"}
    )
    assert response.status_code == 403
    assert response.json()["error"]["message"] == "Request had insufficient authentication scopes."


async def test_an_unregistered_token_is_404_unregistered(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    token = await access_token(standin, client)
    standin.unregister(REGISTRATION_TOKEN, "fcm")
    response = await client.post(
        send_url(standin), json=message(), headers={"authorization": f"Bearer {token}"}
    )
    assert response.status_code == 404
    assert response.json()["error"]["status"] == "NOT_FOUND"
    assert fcm_error_code(response) == "UNREGISTERED"
    assert standin.received[-1].reason == "UNREGISTERED"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "Invalid JSON payload"),
        (b'{"validate_only": false}', "Recipient of the message is not set."),
        (b'{"message": {"token": "t"}, "extra": 1}', 'Unknown name "extra"'),
        (b'{"message": {"data": {"a": "b"}}}', "Recipient of the message is not set."),
        (b'{"message": {"token": "t", "topic": "news"}}', "oneof field 'target'"),
        (b'{"message": {"token": "t", "android": {"priority": "urgent"}}}', "android.priority"),
        (b'{"message": {"token": "t", "android": {"ttl": "3600"}}}', "android.ttl"),
        (b'{"message": {"token": "t", "data": {"badge": 2}}}', "message.data[0].value"),
        (b'{"message": {"token": "t", "data": {"from": "x"}}}', "Invalid data payload key"),
        (b'{"message": {"token": "not valid!"}}', "not a valid FCM registration token"),
        (b'{"message": {"token": "t", "colour": "red"}}', 'Unknown name "colour"'),
    ],
)
async def test_malformed_messages_are_400_invalid_argument(
    standin: StandIn, client: httpx.AsyncClient, body: bytes, fragment: str
) -> None:
    token = await access_token(standin, client)
    response = await client.post(
        send_url(standin),
        content=body,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert fragment in error["message"]
    assert standin.received[-1].reason == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("status", "reason", "google_status"),
    [
        (503, None, "UNAVAILABLE"),
        (429, None, "RESOURCE_EXHAUSTED"),
        (500, None, "INTERNAL"),
        (403, None, "PERMISSION_DENIED"),
        (401, None, "UNAUTHENTICATED"),
        (400, None, "INVALID_ARGUMENT"),
    ],
)
async def test_faults_answer_in_googles_format(
    standin: StandIn,
    client: httpx.AsyncClient,
    status: int,
    reason: str | None,
    google_status: str,
) -> None:
    token = await access_token(standin, client)
    standin.add_fault(Fault("fcm", status=status, reason=reason, retry_after_s=30))
    headers = {"authorization": f"Bearer {token}"}
    response = await client.post(send_url(standin), json=message(), headers=headers)
    assert response.status_code == status
    assert response.json()["error"]["status"] == google_status
    assert fcm_error_code(response) == standin.received[-1].reason
    assert response.headers["retry-after"] == "30"
    again = await client.post(send_url(standin), json=message(), headers=headers)
    assert again.status_code == 200


async def test_a_token_endpoint_fault(standin: StandIn, client: httpx.AsyncClient) -> None:
    standin.add_fault(Fault("fcm_token", status=503))
    response = await client.post(
        f"{standin.url}/token",
        data={"grant_type": JWT_BEARER, "assertion": assertion(standin.credentials)},
    )
    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable"
    assert await access_token(standin, client)
