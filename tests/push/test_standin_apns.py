"""The APNs stand-in answers as Apple documents, over real TLS and HTTP/2: good pushes, each
refusal with its status and reason, injected faults, unregistered tokens, and the real
aioapns 4.0 client pushing through it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import httpx
import pytest
import trio

from push.standin import Fault, StandIn
from tests.push.helpers import (
    apns_headers,
    device_token,
    other_ec_key,
    provider_token,
    raw_h2_request,
)

ALERT = {"aps": {"alert": {"title": "New message"}, "badge": 1}}


def device_url(standin: StandIn, token: str) -> str:
    return f"{standin.url}/3/device/{token}"


async def test_a_good_push_is_accepted_with_its_apns_id_and_recorded(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    token, apns_id = device_token(), str(uuid.uuid4())
    response = await client.post(
        device_url(standin, token),
        json=ALERT,
        headers=apns_headers(standin, apns_id=apns_id, apns_collapse_id="c1"),
    )
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    assert response.headers["apns-id"] == apns_id
    assert response.content == b""

    [record] = standin.received
    assert (record.service, record.token, record.status, record.reason) == (
        "apns",
        token,
        200,
        None,
    )
    assert record.payload == ALERT
    assert record.headers["authorization"] == "bearer …"
    assert record.headers["apns-collapse-id"] == "c1"
    assert record.raw_size == len(response.request.content)


async def test_without_an_apns_id_one_is_made(standin: StandIn, client: httpx.AsyncClient) -> None:
    response = await client.post(
        device_url(standin, device_token()), json=ALERT, headers=apns_headers(standin)
    )
    assert response.status_code == 200
    assert uuid.UUID(response.headers["apns-id"])


async def test_a_missing_provider_token_is_refused(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    headers = apns_headers(standin)
    del headers["authorization"]
    response = await client.post(device_url(standin, device_token()), json=ALERT, headers=headers)
    assert (response.status_code, response.json()) == (403, {"reason": "MissingProviderToken"})
    assert uuid.UUID(response.headers["apns-id"])
    assert standin.received[-1].reason == "MissingProviderToken"


@pytest.mark.parametrize(
    "forgery", ["wrong key", "wrong kid", "wrong team", "not a JWT", "from the future"]
)
async def test_a_provider_token_we_did_not_issue_is_invalid(
    standin: StandIn, client: httpx.AsyncClient, forgery: str
) -> None:
    credentials = standin.credentials
    forgeries: dict[str, Callable[[], str]] = {
        "wrong key": lambda: provider_token(credentials, key=other_ec_key()),
        "wrong kid": lambda: provider_token(credentials, kid="ABCDEFGHIJ"),
        "wrong team": lambda: provider_token(credentials, iss="ABCDEFGHIJ"),
        "not a JWT": lambda: "not.a.jwt",
        "from the future": lambda: provider_token(credentials, iat=time.time() + 600),
    }
    token = forgeries[forgery]()
    response = await client.post(
        device_url(standin, device_token()),
        json=ALERT,
        headers=apns_headers(standin, authorization=f"bearer {token}"),
    )
    assert (response.status_code, response.json()) == (403, {"reason": "InvalidProviderToken"})


async def test_a_provider_token_older_than_an_hour_is_expired(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    old = provider_token(standin.credentials, iat=time.time() - 3700)
    response = await client.post(
        device_url(standin, device_token()),
        json=ALERT,
        headers=apns_headers(standin, authorization=f"bearer {old}"),
    )
    assert (response.status_code, response.json()) == (403, {"reason": "ExpiredProviderToken"})


@pytest.mark.parametrize(
    ("token", "headers", "body", "status", "reason"),
    [
        ("abc123", {}, ALERT, 400, "BadDeviceToken"),
        ("zz" * 32, {}, ALERT, 400, "BadDeviceToken"),
        ("", {}, ALERT, 400, "MissingDeviceToken"),
        (None, {"apns-topic": ""}, ALERT, 400, "MissingTopic"),
        (None, {"apns-topic": "com.example.other"}, ALERT, 400, "TopicDisallowed"),
        (None, {"apns-push-type": "shout"}, ALERT, 400, "InvalidPushType"),
        (None, {"apns-priority": "7"}, ALERT, 400, "BadPriority"),
        (None, {"apns-priority": "10", "apns-push-type": "background"}, ALERT, 400, "BadPriority"),
        (None, {"apns-expiration": "tomorrow"}, ALERT, 400, "BadExpirationDate"),
        (None, {"apns-collapse-id": "x" * 65}, ALERT, 400, "BadCollapseId"),
        (None, {"apns-id": "not-a-uuid"}, ALERT, 400, "BadMessageId"),
        (None, {}, None, 400, "PayloadEmpty"),
        (None, {}, ["not", "an", "object"], 400, "BadPayload"),
        (None, {}, {"no-aps": 1}, 400, "BadPayload"),
        (None, {}, {"aps": {"alert": "x" * 5000}}, 413, "PayloadTooLarge"),
    ],
)
async def test_refusals_carry_apples_status_and_reason(
    standin: StandIn,
    client: httpx.AsyncClient,
    token: str | None,
    headers: dict[str, str],
    body: object,
    status: int,
    reason: str,
) -> None:
    request_headers = {k: v for k, v in apns_headers(standin, **headers).items() if v}
    response = await client.post(
        device_url(standin, device_token() if token is None else token),
        json=body,
        headers=request_headers,
    )
    if body is None:
        assert response.request.content == b""
    assert (response.status_code, response.json()) == (status, {"reason": reason})
    assert standin.received[-1].status == status
    assert standin.received[-1].reason == reason


async def test_payload_limits_are_4096_bytes_and_5120_for_voip(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    url = device_url(standin, device_token())
    padding = 4096 - len(b'{"aps":{"alert":""}}')
    exactly = b'{"aps":{"alert":"' + b"x" * padding + b'"}}'
    assert len(exactly) == 4096
    response = await client.post(url, content=exactly, headers=apns_headers(standin))
    assert response.status_code == 200
    voip = apns_headers(
        standin, apns_push_type="voip", apns_topic=f"{standin.credentials.apns_topic}.voip"
    )
    bigger = b'{"aps":{"alert":"' + b"x" * (padding + 1000) + b'"}}'
    assert (await client.post(url, content=bigger, headers=voip)).status_code == 200
    response = await client.post(url, content=bigger, headers=apns_headers(standin))
    assert (response.status_code, response.json()["reason"]) == (413, "PayloadTooLarge")


async def test_a_body_past_the_flow_control_window_is_read_not_stalled(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    """The stand-in acknowledges what it receives, so 300 KiB (past the 64 KiB initial
    window) arrives, and Apple's answer to it is 413."""
    body = b'{"aps":{"alert":"' + b"x" * (300 * 1024) + b'"}}'
    with trio.fail_after(30):
        response = await client.post(
            device_url(standin, device_token()), content=body, headers=apns_headers(standin)
        )
    assert (response.status_code, response.json()["reason"]) == (413, "PayloadTooLarge")
    assert standin.received[-1].raw_size == len(body)


async def test_other_paths_and_methods(standin: StandIn, client: httpx.AsyncClient) -> None:
    response = await client.post(f"{standin.url}/3/devices/abc", json=ALERT)
    assert (response.status_code, response.json()) == (404, {"reason": "BadPath"})
    response = await client.get(device_url(standin, device_token()))
    assert (response.status_code, response.json()) == (405, {"reason": "MethodNotAllowed"})


async def test_repeated_headers_are_refused(standin: StandIn, client: httpx.AsyncClient) -> None:
    headers = [*apns_headers(standin).items(), ("apns-topic", standin.credentials.apns_topic)]
    response = await client.post(device_url(standin, device_token()), json=ALERT, headers=headers)
    assert (response.status_code, response.json()) == (400, {"reason": "DuplicateHeaders"})


async def test_a_token_belongs_to_the_app_it_was_first_pushed_for(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    standin.apns_topics.add("org.obrol.other")
    token = device_token()
    first = await client.post(device_url(standin, token), json=ALERT, headers=apns_headers(standin))
    assert first.status_code == 200
    other = apns_headers(standin, apns_topic="org.obrol.other")
    response = await client.post(device_url(standin, token), json=ALERT, headers=other)
    assert (response.status_code, response.json()) == (400, {"reason": "DeviceTokenNotForTopic"})


async def test_an_unregistered_token_gets_410_with_a_timestamp(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    token = device_token()
    before_ms = int(time.time() * 1000)
    standin.unregister(token)
    response = await client.post(
        device_url(standin, token), json=ALERT, headers=apns_headers(standin)
    )
    assert response.status_code == 410
    body = response.json()
    assert body["reason"] == "Unregistered"
    assert isinstance(body["timestamp"], int) and body["timestamp"] >= before_ms
    assert standin.received[-1].reason == "Unregistered"
    other = await client.post(
        device_url(standin, device_token()), json=ALERT, headers=apns_headers(standin)
    )
    assert other.status_code == 200


async def test_a_fault_with_count_two_answers_twice_then_the_rules_apply(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    standin.add_fault(Fault("apns", status=503, count=2, retry_after_s=7))
    url = device_url(standin, device_token())
    answers = [await client.post(url, json=ALERT, headers=apns_headers(standin)) for _ in range(3)]
    assert [r.status_code for r in answers] == [503, 503, 200]
    assert answers[0].json() == {"reason": "ServiceUnavailable"}
    assert answers[0].headers["retry-after"] == "7"
    assert [r.reason for r in standin.received] == ["ServiceUnavailable"] * 2 + [None]
    assert standin.faults() == []


async def test_a_fault_for_one_token_leaves_others_alone(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    doomed, fine = device_token(), device_token()
    standin.add_fault(Fault("apns", status=410, token=doomed, count=None))
    for _ in range(2):
        response = await client.post(
            device_url(standin, doomed), json=ALERT, headers=apns_headers(standin)
        )
        assert response.status_code == 410
        assert response.json()["reason"] == "Unregistered"
        assert isinstance(response.json()["timestamp"], int)
    response = await client.post(
        device_url(standin, fine), json=ALERT, headers=apns_headers(standin)
    )
    assert response.status_code == 200
    standin.clear_faults()
    response = await client.post(
        device_url(standin, doomed), json=ALERT, headers=apns_headers(standin)
    )
    assert response.status_code == 200


async def test_a_delayed_answer_does_not_hold_up_others_on_the_connection(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    slow, quick = device_token(), device_token()
    standin.add_fault(Fault("apns", status=200, token=slow, delay_s=3600))
    done = trio.Event()

    async def push_slow() -> None:
        await client.post(device_url(standin, slow), json=ALERT, headers=apns_headers(standin))
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(push_slow)
        with trio.fail_after(30):
            while not standin.received:  # noqa: ASYNC110 - the stand-in has no event for it
                await trio.sleep(0.01)
            response = await client.post(
                device_url(standin, quick), json=ALERT, headers=apns_headers(standin)
            )
        assert response.status_code == 200
        assert not done.is_set()
        nursery.cancel_scope.cancel()


async def test_a_drop_fault_closes_the_connection_and_records_status_0(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    standin.add_fault(Fault("apns", drop=True))
    url = device_url(standin, device_token())
    with pytest.raises(httpx.TransportError):
        await client.post(url, json=ALERT, headers=apns_headers(standin))
    assert (standin.received[-1].status, standin.received[-1].reason) == (0, None)
    response = await client.post(url, json=ALERT, headers=apns_headers(standin))  # reconnects
    assert response.status_code == 200


async def test_latency_delays_every_answer_but_answers(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    standin.latency_s = 0.05
    response = await client.post(
        device_url(standin, device_token()), json=ALERT, headers=apns_headers(standin)
    )
    assert response.status_code == 200


async def test_a_client_without_alpn_sending_the_preface_is_served(standin: StandIn) -> None:
    """aioapns 4.0 offers no ALPN and sends `host`, not `:authority`."""
    token = device_token()
    headers = [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", f"/3/device/{token}"),
        ("host", "api.push.apple.com"),
        *apns_headers(standin).items(),
    ]
    with trio.fail_after(30):
        response, body, alpn = await raw_h2_request(standin, headers, b'{"aps":{"badge":2}}')
    assert alpn is None
    assert response[":status"] == "200"
    assert uuid.UUID(response["apns-id"])
    assert body == b""
    assert standin.received[-1].token == token
    assert standin.received[-1].headers["host"] == "api.push.apple.com"


async def test_aioapns_pushes_through_the_stand_in(standin: StandIn) -> None:
    from tests.push.aioapns_client import push_with_aioapns

    good, gone = device_token(), device_token()
    standin.unregister(gone)
    with trio.fail_after(60):
        results = await trio.to_thread.run_sync(push_with_aioapns, standin, [good, gone])
    assert results[0].status == "200"
    assert results[1].status == "410"
    assert results[1].description == "Unregistered"
    assert isinstance(results[1].timestamp, int)
    apns_records = [r for r in standin.received if r.service == "apns"]
    assert [(r.token, r.status) for r in apns_records] == [(good, 200), (gone, 410)]
    assert apns_records[0].headers["host"] == "127.0.0.1"
    assert apns_records[0].payload == {"aps": {"badge": 3}}
