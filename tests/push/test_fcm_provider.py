"""The FCM provider against the FCM stand-in: real TLS, real HTTP/2 (httpx on trio), the real
OAuth2 service-account flow. Every test bounds its sends with a generous deadline."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from push.fcm import FcmProvider
from push.providers import Outcome, Push, PushConfigError, PushKind, Result, Target
from push.standin import Fault, StandIn, running_standin
from tests.push.pushes import fcm_token, push

HANG_GUARD_S = 60


def make_fcm(standin: StandIn, **overrides: Any) -> FcmProvider:
    c = standin.credentials
    settings: dict[str, Any] = {
        "service_account_file": c.fcm_service_account_file,
        "base_url": standin.url,
        "ca_file": c.ca_file,
        "timeout_s": 10.0,
    }
    settings.update(overrides)
    return FcmProvider(**settings)


@pytest.fixture
async def fcm(standin: StandIn) -> AsyncIterator[FcmProvider]:
    provider = make_fcm(standin)
    yield provider
    await provider.aclose()


async def send(provider: FcmProvider, pushes: list[Push]) -> list[Result]:
    with trio.fail_after(HANG_GUARD_S):
        return await provider.send(pushes)


async def send_one(provider: FcmProvider, one: Push) -> Result:
    [result] = await send(provider, [one])
    return result


def received(standin: StandIn, service: str = "fcm") -> list[Any]:
    return [r for r in standin.received if r.service == service]


def to(token: str, **target: Any) -> Target:
    return Target("fcm", token, **target)


# --- what goes out ------------------------------------------------------------------------


async def test_alert_carries_only_ids_and_counts(fcm: FcmProvider, standin: StandIn) -> None:
    token = fcm_token()
    p = push(to(token), collapse_id="conv-1", expires_at=int(time.time()) + 3600)
    assert await send_one(fcm, p) == Result(Outcome.ACCEPTED, 200, "accepted")
    [seen] = received(standin)
    assert seen.token == token
    ttl = seen.payload["message"]["android"].pop("ttl")
    assert ttl in {"3600s", "3599s"}  # counted from the send's clock
    assert seen.payload == {
        "message": {
            "token": token,
            "data": {
                "badge": "2",
                "kind": "alert",
                "c": str(p.conversation_id),
                "m": str(p.message_id),
            },
            "android": {
                "priority": "HIGH",
                "collapse_key": "conv-1",
                "notification": {"body_loc_key": "new_message", "notification_count": 2},
            },
        }
    }
    assert seen.headers["authorization"] == "bearer …"  # the stand-in checked it


async def test_title_and_body_only_when_opted_in(fcm: FcmProvider, standin: StandIn) -> None:
    generic = push(to(fcm_token()))
    opted_in = push(to(fcm_token()), title="Ana", body="lunch at one?")
    results = await send(fcm, [generic, opted_in])
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 2
    notifications = {
        r.token: r.payload["message"]["android"]["notification"] for r in received(standin)
    }
    assert notifications == {
        generic.target.token: {"body_loc_key": "new_message", "notification_count": 2},
        opted_in.target.token: {"title": "Ana", "body": "lunch at one?", "notification_count": 2},
    }


async def test_badge_push_is_data_only(fcm: FcmProvider, standin: StandIn) -> None:
    p = push(to(fcm_token()), kind=PushKind.BADGE, badge=0, message_id=None)
    assert (await send_one(fcm, p)).outcome is Outcome.ACCEPTED
    [seen] = received(standin)
    assert seen.payload == {
        "message": {
            "token": p.target.token,
            "data": {"badge": "0", "kind": "badge", "c": str(p.conversation_id)},
            "android": {"priority": "NORMAL"},
        }
    }


async def test_batch_of_200_in_one_call(fcm: FcmProvider, standin: StandIn) -> None:
    pushes = [push(to(fcm_token())) for _ in range(200)]
    results = await send(fcm, pushes)
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 200
    assert sorted(r.token for r in received(standin)) == sorted(p.target.token for p in pushes)


# --- the access token ---------------------------------------------------------------------


async def test_access_token_is_fetched_once_and_reused(fcm: FcmProvider, standin: StandIn) -> None:
    for _ in range(3):
        results = await send(fcm, [push(to(fcm_token())) for _ in range(20)])
        assert {r.outcome for r in results} == {Outcome.ACCEPTED}
    assert len(received(standin, "fcm_token")) == 1
    assert fcm.tokens_fetched == 1


async def test_access_token_is_refreshed_before_it_expires(tmp_path: Path) -> None:
    async with running_standin(tmp_path / "standin", access_token_ttl_s=2) as standin:
        provider = make_fcm(standin)
        try:
            assert (await send_one(provider, push(to(fcm_token())))).outcome is Outcome.ACCEPTED
            await trio.sleep(1.5)  # past the refresh point (half of a short token's life)
            assert (await send_one(provider, push(to(fcm_token())))).outcome is Outcome.ACCEPTED
            assert len(received(standin, "fcm_token")) == 2
        finally:
            await provider.aclose()


async def test_refused_access_token_is_replaced_once(fcm: FcmProvider, standin: StandIn) -> None:
    assert (await send_one(fcm, push(to(fcm_token())))).outcome is Outcome.ACCEPTED
    standin.expire_access_tokens()  # revoked early, or our clock is off: 401 from now on
    results = await send(fcm, [push(to(fcm_token())) for _ in range(20)])
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 20
    assert len(received(standin, "fcm_token")) == 2  # one refresh for the whole batch
    # Refused again after the fresh token: a retry later, not a loop.
    standin.add_fault(Fault("fcm", status=401, reason="THIRD_PARTY_AUTH_ERROR", count=2))
    assert await send_one(fcm, push(to(fcm_token()))) == Result(
        Outcome.RETRY, 401, "THIRD_PARTY_AUTH_ERROR"
    )
    assert len(received(standin, "fcm_token")) == 3
    assert fcm.tokens_fetched == 3


async def test_token_endpoint_refusing_retries_the_batch(
    fcm: FcmProvider, standin: StandIn
) -> None:
    standin.add_fault(Fault("fcm_token", status=400, reason="invalid_grant"))
    results = await send(fcm, [push(to(fcm_token())) for _ in range(5)])
    assert results == [Result(Outcome.RETRY, None, "auth_failed")] * 5
    assert received(standin) == []
    # The next batch tries again and gets through.
    assert (await send_one(fcm, push(to(fcm_token())))).outcome is Outcome.ACCEPTED


async def test_token_endpoint_failing_retries_the_batch(fcm: FcmProvider, standin: StandIn) -> None:
    standin.add_fault(Fault("fcm_token", status=503))
    assert await send_one(fcm, push(to(fcm_token()))) == Result(Outcome.RETRY, None, "auth_failed")


# --- Google's answers ---------------------------------------------------------------------


async def test_unregistered_token_is_disabled(fcm: FcmProvider, standin: StandIn) -> None:
    token = fcm_token()
    standin.unregister(token, service="fcm")
    assert await send_one(fcm, push(to(token))) == Result(Outcome.DISABLE, 404, "UNREGISTERED")


@pytest.mark.parametrize(
    ("status", "reason", "retry_after_s", "expected"),
    [
        (400, "INVALID_ARGUMENT", None, Result(Outcome.DEAD_LETTER, 400, "INVALID_ARGUMENT")),
        (403, "SENDER_ID_MISMATCH", None, Result(Outcome.DISABLE, 403, "SENDER_ID_MISMATCH")),
        (429, "QUOTA_EXCEEDED", 30, Result(Outcome.RETRY, 429, "QUOTA_EXCEEDED", 30.0)),
        (503, "UNAVAILABLE", None, Result(Outcome.RETRY, 503, "UNAVAILABLE")),
        (500, "INTERNAL", None, Result(Outcome.RETRY, 500, "INTERNAL")),
    ],
)
async def test_answers_are_classified(
    fcm: FcmProvider,
    standin: StandIn,
    status: int,
    reason: str,
    retry_after_s: int | None,
    expected: Result,
) -> None:
    standin.add_fault(Fault("fcm", status=status, reason=reason, retry_after_s=retry_after_s))
    assert await send_one(fcm, push(to(fcm_token()))) == expected
    assert (await send_one(fcm, push(to(fcm_token())))).outcome is Outcome.ACCEPTED


async def test_other_project_is_refused_for_now(fcm: FcmProvider, standin: StandIn) -> None:
    # Our access token is not good for another project: credentials an operator can fix.
    result = await send_one(fcm, push(to(fcm_token(), project="someone-elses-project")))
    assert result == Result(Outcome.RETRY, 403, "PERMISSION_DENIED")


# --- trouble on the wire ------------------------------------------------------------------


async def test_stalled_answer_is_a_timeout(standin: StandIn) -> None:
    provider = make_fcm(standin, timeout_s=0.5)
    try:
        assert (await send_one(provider, push(to(fcm_token())))).outcome is Outcome.ACCEPTED
        standin.add_fault(Fault("fcm", status=200, delay_s=5.0))
        assert await send_one(provider, push(to(fcm_token()))) == Result(
            Outcome.RETRY, None, "timeout"
        )
    finally:
        await provider.aclose()


async def test_dropped_connection_is_a_retry_never_a_hang(
    fcm: FcmProvider, standin: StandIn
) -> None:
    assert (await send_one(fcm, push(to(fcm_token())))).outcome is Outcome.ACCEPTED
    standin.add_fault(Fault("fcm", drop=True))
    results = await send(fcm, [push(to(fcm_token())) for _ in range(10)])
    assert {r.outcome for r in results} <= {Outcome.ACCEPTED, Outcome.RETRY}
    assert Result(Outcome.RETRY, None, "connection_error") in results
    assert (await send_one(fcm, push(to(fcm_token())))).outcome is Outcome.ACCEPTED


async def test_unreachable_server_is_a_retry(standin: StandIn) -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = make_fcm(standin, base_url=f"https://127.0.0.1:{port}")
    try:
        # The token endpoint (the stand-in) answers; FCM itself does not.
        assert await send_one(provider, push(to(fcm_token()))) == Result(
            Outcome.RETRY, None, "connection_error"
        )
    finally:
        await provider.aclose()


async def test_cancelled_send_leaves_the_provider_usable(
    fcm: FcmProvider, standin: StandIn
) -> None:
    standin.add_fault(Fault("fcm", status=200, delay_s=1.0))
    with trio.move_on_after(0.2) as scope:
        await fcm.send([push(to(fcm_token())) for _ in range(5)])
    assert scope.cancelled_caught
    assert await send(fcm, []) == []
    results = await send(fcm, [push(to(fcm_token())) for _ in range(5)])
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 5


async def test_closed_provider_answers_retry(standin: StandIn) -> None:
    provider = make_fcm(standin)
    await provider.aclose()
    assert await send_one(provider, push(to(fcm_token()))) == Result(Outcome.RETRY, None, "closed")


# --- configuration ------------------------------------------------------------------------


def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def service_account() -> dict[str, Any]:
    """A well-formed service account with a fresh RSA key."""
    return {
        "type": "service_account",
        "project_id": "obrol-test",
        "private_key_id": "0123456789abcdef",
        "private_key": key_pem(rsa.generate_private_key(65537, 2048)),
        "client_email": "push@obrol-test.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


BAD_PEM = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"client_email": None}, "'client_email'"),
        ({"private_key_id": ""}, "'private_key_id'"),
        ({"token_uri": None}, "'token_uri'"),
        ({"project_id": None}, "'project_id'"),
        ({"project_id": "../other"}, "'project_id'"),
        ({"private_key": BAD_PEM}, "'private_key'"),
        ({"private_key": key_pem(ec.generate_private_key(ec.SECP256R1()))}, "not an RSA key"),
        ({"type": "authorized_user"}, "'type'"),
        ({"token_uri": "http://oauth2.example/token"}, "'token_uri'"),
    ],
)
def test_bad_service_account_is_a_config_error(
    tmp_path: Path, change: dict[str, Any], complaint: str
) -> None:
    data = service_account()
    key = data["private_key"]
    for name, value in change.items():
        if value is None:
            del data[name]
        else:
            data[name] = value
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PushConfigError) as raised:
        FcmProvider(service_account_file=path)
    message = str(raised.value)
    assert str(path) in message
    assert complaint in message
    assert key not in message and "BEGIN" not in message


def test_good_service_account_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps(service_account()))
    assert FcmProvider(service_account_file=path).name == "fcm"


@pytest.mark.parametrize("contents", [None, "{not json", "[1, 2]"])
def test_unreadable_service_account_is_a_config_error(tmp_path: Path, contents: str | None) -> None:
    path = tmp_path / "service-account.json"
    if contents is not None:
        path.write_text(contents)
    with pytest.raises(PushConfigError, match="FCM service account file"):
        FcmProvider(service_account_file=path)
