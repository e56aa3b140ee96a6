"""The APNs provider against the APNs stand-in: real TLS, real HTTP/2, aioapns on a real
asyncio bridge. Every test bounds its sends with a generous deadline: a hang is a failure."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from push.apns import ApnsProvider
from push.providers import Outcome, Push, PushConfigError, PushKind, Result, Target
from push.standin import Fault, StandIn, running_standin
from storage.bridge import AsyncioBridge
from tests.push.pushes import apns_token, push

HANG_GUARD_S = 60


@pytest.fixture
def bridge() -> Iterator[AsyncioBridge]:
    b = AsyncioBridge()
    b.start()
    yield b
    b.stop()


def make_apns(bridge: AsyncioBridge, standin: StandIn, **overrides: Any) -> ApnsProvider:
    c = standin.credentials
    settings: dict[str, Any] = {
        "key_file": c.apns_key_file,
        "key_id": c.apns_key_id,
        "team_id": c.apns_team_id,
        "default_topic": c.apns_topic,
        "production_host": "127.0.0.1",
        "sandbox_host": "localhost",
        "port": standin.port,
        "ca_file": c.ca_file,
        "timeout_s": 10.0,
    }
    settings.update(overrides)
    return ApnsProvider(bridge, **settings)


@pytest.fixture
async def apns(bridge: AsyncioBridge, standin: StandIn) -> AsyncIterator[ApnsProvider]:
    provider = make_apns(bridge, standin)
    yield provider
    await provider.aclose()


async def send(provider: ApnsProvider, pushes: list[Push]) -> list[Result]:
    with trio.fail_after(HANG_GUARD_S):
        return await provider.send(pushes)


async def send_one(provider: ApnsProvider, one: Push) -> Result:
    [result] = await send(provider, [one])
    return result


def received(standin: StandIn) -> list[Any]:
    return [r for r in standin.received if r.service == "apns"]


def to(token: str, **target: Any) -> Target:
    return Target("apns", token, **target)


# --- what goes out ------------------------------------------------------------------------


async def test_alert_carries_only_ids_and_counts_with_apples_headers(
    apns: ApnsProvider, standin: StandIn
) -> None:
    token = apns_token()
    expires_at = int(time.time()) + 3600
    p = push(to(token), collapse_id="conv-1", expires_at=expires_at)
    assert await send_one(apns, p) == Result(Outcome.ACCEPTED, 200, "accepted")
    [seen] = received(standin)
    assert seen.token == token
    assert seen.status == 200
    assert seen.payload == {
        "aps": {
            "alert": {"loc-key": "NEW_MESSAGE"},
            "badge": 2,
            "sound": "default",
            "thread-id": str(p.conversation_id),
        },
        "c": str(p.conversation_id),
        "m": str(p.message_id),
    }
    headers = seen.headers
    assert headers["apns-id"] == str(p.push_id)
    assert headers["apns-push-type"] == "alert"
    assert headers["apns-priority"] == "10"
    assert headers["apns-collapse-id"] == "conv-1"
    assert headers["apns-topic"] == standin.credentials.apns_topic
    # aioapns derives the header from its own clock: the same second, or the next.
    assert expires_at <= int(headers["apns-expiration"]) <= expires_at + 1
    # The stand-in checked the provider token (ES256, our key id and team) to answer 200.
    assert headers["authorization"] == "bearer …"


async def test_title_and_body_only_when_opted_in(apns: ApnsProvider, standin: StandIn) -> None:
    generic = push(to(apns_token()))
    opted_in = push(to(apns_token()), title="Ana", body="lunch at one?")
    title_only = push(to(apns_token()), title="Ana")
    results = await send(apns, [generic, opted_in, title_only])
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 3
    alerts = {r.token: r.payload["aps"]["alert"] for r in received(standin)}
    assert alerts == {
        generic.target.token: {"loc-key": "NEW_MESSAGE"},
        opted_in.target.token: {"title": "Ana", "body": "lunch at one?"},
        title_only.target.token: {"title": "Ana", "loc-key": "NEW_MESSAGE"},
    }


async def test_badge_push_is_a_quiet_badge(apns: ApnsProvider, standin: StandIn) -> None:
    p = push(to(apns_token()), kind=PushKind.BADGE, badge=0, message_id=None)
    assert (await send_one(apns, p)).outcome is Outcome.ACCEPTED
    [seen] = received(standin)
    assert seen.payload == {"aps": {"badge": 0}, "c": str(p.conversation_id)}
    assert seen.headers["apns-priority"] == "5"
    assert seen.headers["apns-push-type"] == "alert"
    assert "apns-collapse-id" not in seen.headers
    assert "apns-expiration" not in seen.headers


async def test_target_topic_overrides_the_default(apns: ApnsProvider, standin: StandIn) -> None:
    p = push(to(apns_token(), topic="com.example.elsewhere"))
    result = await send_one(apns, p)
    # The stand-in serves only our topic, as Apple serves only the key's team's apps.
    assert result == Result(Outcome.DEAD_LETTER, 400, "TopicDisallowed")
    assert received(standin)[0].headers["apns-topic"] == "com.example.elsewhere"


async def test_sandbox_and_production_both_work(apns: ApnsProvider, standin: StandIn) -> None:
    pushes = [
        push(to(apns_token(), environment="sandbox")),
        push(to(apns_token(), environment="production")),
        push(to(apns_token())),
    ]
    results = await send(apns, pushes)
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 3
    hosts = {r.token: r.headers["host"] for r in received(standin)}
    assert hosts == {
        pushes[0].target.token: "localhost",
        pushes[1].target.token: "127.0.0.1",
        pushes[2].target.token: "127.0.0.1",
    }


async def test_batch_of_200_in_one_call(apns: ApnsProvider, standin: StandIn) -> None:
    pushes = [push(to(apns_token())) for _ in range(200)]
    results = await send(apns, pushes)
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 200
    ids = sorted(r.headers["apns-id"] for r in received(standin))
    assert ids == sorted(str(p.push_id) for p in pushes)


async def test_pushes_not_worth_sending_never_leave(apns: ApnsProvider, standin: StandIn) -> None:
    results = await send(
        apns,
        [
            push(to(apns_token()), body="x" * 5000),
            push(to("not-a-token")),
            push(to(apns_token()), expires_at=int(time.time()) - 1),
            push(to(apns_token(), environment="staging")),
        ],
    )
    assert results == [
        Result(Outcome.DEAD_LETTER, None, "payload_too_large"),
        Result(Outcome.DISABLE, None, "bad_token"),
        Result(Outcome.DEAD_LETTER, None, "expired"),
        Result(Outcome.DEAD_LETTER, None, "bad_environment"),
    ]
    assert received(standin) == []


# --- Apple's answers ----------------------------------------------------------------------


async def test_unregistered_token_is_disabled_with_apples_timestamp(
    apns: ApnsProvider, standin: StandIn
) -> None:
    token = apns_token()
    before = time.time()
    standin.unregister(token)
    after = time.time()
    result = await send_one(apns, push(to(token)))
    assert (result.outcome, result.status, result.reason) == (Outcome.DISABLE, 410, "Unregistered")
    assert result.provider_timestamp is not None
    assert before - 0.001 <= result.provider_timestamp.timestamp() <= after + 0.001


async def test_bad_device_tokens_are_disabled(apns: ApnsProvider, standin: StandIn) -> None:
    faulted = apns_token()
    standin.add_fault(Fault("apns", status=400, reason="BadDeviceToken", token=faulted))
    too_long = secrets.token_hex(33)  # hex, but not a token APNs issues
    results = await send(apns, [push(to(faulted)), push(to(too_long))])
    assert results == [Result(Outcome.DISABLE, 400, "BadDeviceToken")] * 2


async def test_token_of_another_app_is_disabled(bridge: AsyncioBridge, tmp_path: Path) -> None:
    other_app = "org.obrol.other"
    async with running_standin(tmp_path / "two-apps", extra_topics=[other_app]) as standin:
        provider = make_apns(bridge, standin)
        try:
            token = apns_token()
            # The token is the other app's: it was registered (first used) with that topic.
            first = await send_one(provider, push(to(token, topic=other_app)))
            assert first.outcome is Outcome.ACCEPTED
            assert await send_one(provider, push(to(token))) == Result(
                Outcome.DISABLE, 400, "DeviceTokenNotForTopic"
            )
        finally:
            await provider.aclose()


@pytest.mark.parametrize(
    ("status", "reason", "retry_after_s", "expected"),
    [
        (500, None, None, Result(Outcome.RETRY, 500, "InternalServerError")),
        (503, None, None, Result(Outcome.RETRY, 503, "ServiceUnavailable")),
        (429, None, 7, Result(Outcome.RETRY, 429, "TooManyRequests", retry_after_s=7.0)),
        (403, "ExpiredProviderToken", None, Result(Outcome.RETRY, 403, "ExpiredProviderToken")),
        (413, None, None, Result(Outcome.DEAD_LETTER, 413, "PayloadTooLarge")),
        (400, "BadCollapseId", None, Result(Outcome.DEAD_LETTER, 400, "BadCollapseId")),
        (404, None, None, Result(Outcome.DEAD_LETTER, 404, "BadPath")),
        (405, None, None, Result(Outcome.DEAD_LETTER, 405, "MethodNotAllowed")),
    ],
)
async def test_answers_are_classified(
    apns: ApnsProvider,
    standin: StandIn,
    status: int,
    reason: str | None,
    retry_after_s: int | None,
    expected: Result,
) -> None:
    standin.add_fault(Fault("apns", status=status, reason=reason, retry_after_s=retry_after_s))
    assert await send_one(apns, push(to(apns_token()))) == expected
    # The connection is still good for the next push.
    assert (await send_one(apns, push(to(apns_token())))).outcome is Outcome.ACCEPTED


# --- trouble on the wire ------------------------------------------------------------------


async def test_stalled_answer_is_a_timeout(bridge: AsyncioBridge, standin: StandIn) -> None:
    provider = make_apns(bridge, standin, timeout_s=0.5)
    try:
        standin.add_fault(Fault("apns", status=200, delay_s=5.0))
        assert await send_one(provider, push(to(apns_token()))) == Result(
            Outcome.RETRY, None, "timeout"
        )
    finally:
        await provider.aclose()


async def test_dropped_connection_is_retried_or_accepted_never_a_hang(
    apns: ApnsProvider, standin: StandIn
) -> None:
    standin.add_fault(Fault("apns", drop=True))
    pushes = [push(to(apns_token())) for _ in range(20)]
    results = await send(apns, pushes)
    assert {r.outcome for r in results} <= {Outcome.ACCEPTED, Outcome.RETRY}
    assert (await send_one(apns, push(to(apns_token())))).outcome is Outcome.ACCEPTED


async def test_connection_dropped_under_a_timed_out_send_fails_over_the_others(
    bridge: AsyncioBridge, standin: StandIn
) -> None:
    # aioapns raised InvalidStateError on the abandoned waiter and left the others hanging.
    provider = make_apns(bridge, standin, timeout_s=1.5, max_connections=1)
    try:
        slow = apns_token()
        standin.add_fault(Fault("apns", status=200, delay_s=30.0, token=slow))
        assert await send_one(provider, push(to(slow))) == Result(Outcome.RETRY, None, "timeout")
        waiting = [apns_token() for _ in range(5)]
        for token in waiting:
            standin.add_fault(Fault("apns", status=200, delay_s=0.5, token=token))
        dropper = apns_token()
        standin.add_fault(Fault("apns", drop=True, token=dropper))
        results = await send(provider, [*(push(to(t)) for t in waiting), push(to(dropper))])
        # The five were in flight when the connection dropped: aioapns resends them on a new one.
        assert [r.outcome for r in results[:5]] == [Outcome.ACCEPTED] * 5
        assert results[5].outcome in {Outcome.ACCEPTED, Outcome.RETRY}
    finally:
        await provider.aclose()


async def test_late_answer_to_a_timed_out_send_leaves_the_connection_alone(
    bridge: AsyncioBridge, standin: StandIn
) -> None:
    # aioapns resolved the abandoned waiter, raised InvalidStateError inside data_received,
    # and lost the connection: the pushes in flight on it were sent a second time.
    provider = make_apns(bridge, standin, timeout_s=3.0, max_connections=1)
    try:
        slow = apns_token()  # times out at 3 s, answered at 4 s
        standin.add_fault(Fault("apns", status=200, delay_s=4.0, token=slow))
        assert await send_one(provider, push(to(slow))) == Result(Outcome.RETRY, None, "timeout")
        waiting = [apns_token() for _ in range(5)]
        for token in waiting:  # sent at 3 s, still in flight when the late answer comes
            standin.add_fault(Fault("apns", status=200, delay_s=1.5, token=token))
        results = await send(provider, [push(to(t)) for t in waiting])
        assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 5
        assert sorted(r.token for r in received(standin) if r.token != slow) == sorted(waiting)
    finally:
        await provider.aclose()


async def test_many_error_answers_on_one_connection_do_not_stall_later_ones(
    bridge: AsyncioBridge, standin: StandIn
) -> None:
    # ~1 KiB error bodies: 120 of them are well past HTTP/2's initial 64 KiB window, which
    # aioapns never reopened.
    provider = make_apns(bridge, standin, timeout_s=5.0, max_connections=1)
    reason = "BadCollapseId" + "x" * 1000
    try:
        standin.add_fault(Fault("apns", status=400, reason=reason, count=120))
        for _ in range(6):
            results = await send(provider, [push(to(apns_token())) for _ in range(20)])
            assert results == [Result(Outcome.DEAD_LETTER, 400, reason)] * 20
        standin.add_fault(Fault("apns", status=400, reason="BadCollapseId"))
        assert await send_one(provider, push(to(apns_token()))) == Result(
            Outcome.DEAD_LETTER, 400, "BadCollapseId"
        )
        assert (await send_one(provider, push(to(apns_token())))).outcome is Outcome.ACCEPTED
    finally:
        await provider.aclose()


async def test_request_bodies_past_the_send_window_wait_for_it(
    bridge: AsyncioBridge, standin: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    # 300 x ~1.5 KiB is far past the 64 KiB a peer grants at first. aioapns sent the headers,
    # hit FlowControlError on the body, left the stream half-open and slept before resending.
    caplog.set_level(logging.DEBUG, logger="aioapns")
    provider = make_apns(bridge, standin, max_connections=1)
    try:
        pushes = [push(to(apns_token()), body="b" * 1500) for _ in range(300)]
        results = await send(provider, pushes)
        assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 300
        ids = sorted(r.headers["apns-id"] for r in received(standin))
        assert ids == sorted(str(p.push_id) for p in pushes)
        assert not [r for r in caplog.records if "FlowControlError" in r.getMessage()]
    finally:
        await provider.aclose()


async def test_unreachable_server_is_a_retry(bridge: AsyncioBridge, standin: StandIn) -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = make_apns(bridge, standin, port=port, timeout_s=3.0)
    try:
        result = await send_one(provider, push(to(apns_token())))
        assert (result.outcome, result.status) == (Outcome.RETRY, None)
        assert result.reason in {"connection_error", "timeout"}
    finally:
        await provider.aclose()


async def test_untrusted_server_is_a_retry(bridge: AsyncioBridge, standin: StandIn) -> None:
    provider = make_apns(bridge, standin, ca_file=None, timeout_s=3.0)  # system CAs only
    try:
        result = await send_one(provider, push(to(apns_token())))
        assert (result.outcome, result.status) == (Outcome.RETRY, None)
        assert received(standin) == []
    finally:
        await provider.aclose()


async def test_cancelled_send_leaves_the_provider_usable(
    apns: ApnsProvider, standin: StandIn
) -> None:
    standin.add_fault(Fault("apns", status=200, delay_s=1.0))
    with trio.move_on_after(0.2) as scope:
        await apns.send([push(to(apns_token())) for _ in range(5)])
    assert scope.cancelled_caught
    assert await send(apns, []) == []
    results = await send(apns, [push(to(apns_token())) for _ in range(5)])
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 5


async def test_closed_provider_answers_retry(bridge: AsyncioBridge, standin: StandIn) -> None:
    provider = make_apns(bridge, standin)
    assert (await send_one(provider, push(to(apns_token())))).outcome is Outcome.ACCEPTED
    await provider.aclose()
    assert await send_one(provider, push(to(apns_token()))) == Result(Outcome.RETRY, None, "closed")


# --- configuration ------------------------------------------------------------------------


def pem(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, password: bytes | None = None
) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


@pytest.mark.parametrize(
    ("contents", "complaint"),
    [
        (None, "cannot read"),
        (b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n", "not a PEM"),
        (pem(rsa.generate_private_key(65537, 2048)), "not an EC P-256"),
        (pem(ec.generate_private_key(ec.SECP384R1())), "not an EC P-256"),
        (pem(ec.generate_private_key(ec.SECP256R1()), b"secret"), "encrypted"),
    ],
)  # fmt: skip
def test_bad_key_file_is_a_config_error(
    tmp_path: Path, contents: bytes | None, complaint: str
) -> None:
    key_file = tmp_path / "AuthKey_TEST.p8"
    if contents is not None:
        key_file.write_bytes(contents)
    with pytest.raises(PushConfigError) as raised:
        ApnsProvider(
            AsyncioBridge(), key_file=key_file, key_id="ABC123DEFG", team_id="TEAM123456",
            default_topic="org.obrol.app",
        )  # fmt: skip
    message = str(raised.value)
    assert str(key_file) in message
    assert complaint in message
    assert "BEGIN" not in message and "not base64" not in message


def test_good_key_file_is_accepted(tmp_path: Path) -> None:
    key_file = tmp_path / "AuthKey_TEST.p8"
    key_file.write_bytes(pem(ec.generate_private_key(ec.SECP256R1())))
    provider = ApnsProvider(
        AsyncioBridge(), key_file=key_file, key_id="ABC123DEFG", team_id="TEAM123456",
        default_topic="org.obrol.app",
    )  # fmt: skip
    assert provider.name == "apns"


def test_bad_ca_file_is_a_config_error(tmp_path: Path) -> None:
    key_file = tmp_path / "AuthKey_TEST.p8"
    key_file.write_bytes(pem(ec.generate_private_key(ec.SECP256R1())))
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("nope")
    with pytest.raises(PushConfigError, match="CA file"):
        ApnsProvider(
            AsyncioBridge(), key_file=key_file, key_id="ABC123DEFG", team_id="TEAM123456",
            default_topic="org.obrol.app", ca_file=ca_file,
        )  # fmt: skip
