"""The providers' pure parts: rendering a Push and classifying an answer, with exact values."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from push import apns_wire, fcm_wire
from push.apns_protocol import parse_error_body
from push.fcm_wire import FcmRequest
from push.providers import Outcome, Push, PushKind, Result, Target
from push.timing import MAX_RETRY_AFTER_S, parse_retry_after, seconds_left

NOW = 1_700_000_000.0
HEX_TOKEN = "ab" * 32
CONVERSATION = uuid.UUID("11111111-1111-1111-1111-111111111111")
MESSAGE = uuid.UUID("22222222-2222-2222-2222-222222222222")
PUSH_ID = uuid.UUID("33333333-3333-3333-3333-333333333333")


def apns_push(**changes: object) -> Push:
    fields: dict[str, object] = {
        "push_id": PUSH_ID,
        "target": Target("apns", HEX_TOKEN),
        "kind": PushKind.ALERT,
        "badge": 3,
        "conversation_id": CONVERSATION,
        "message_id": MESSAGE,
    }
    fields.update(changes)
    return Push(**fields)  # type: ignore[arg-type]


def fcm_push(**changes: object) -> Push:
    return apns_push(**{"target": Target("fcm", "fcm-token-1"), **changes})


# --- timing -------------------------------------------------------------------------------


def test_seconds_left() -> None:
    assert seconds_left(None, NOW) is None
    assert seconds_left(int(NOW) + 60, NOW + 0.5) == 60
    assert seconds_left(int(NOW) + 60, NOW + 1) == 59
    assert seconds_left(int(NOW), NOW) == 0


def test_retry_after_forms() -> None:
    assert parse_retry_after(None, NOW) is None
    assert parse_retry_after("", NOW) is None
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("7", NOW) == 7.0
    assert parse_retry_after("999999", NOW) == MAX_RETRY_AFTER_S
    http_date = "Tue, 14 Nov 2023 22:13:40 GMT"  # NOW + 20 s
    assert parse_retry_after(http_date, NOW) == 20.0
    assert parse_retry_after(http_date, NOW + 100) == 0.0


# --- APNs ---------------------------------------------------------------------------------


def test_apns_generic_alert_payload_is_ids_and_counts() -> None:
    assert apns_wire.payload(apns_push()) == {
        "aps": {
            "alert": {"loc-key": "NEW_MESSAGE"},
            "badge": 3,
            "sound": "default",
            "thread-id": str(CONVERSATION),
        },
        "c": str(CONVERSATION),
        "m": str(MESSAGE),
    }


def test_apns_opted_in_alert_carries_title_and_body() -> None:
    assert apns_wire.payload(apns_push(title="Ana", body="lunch?"))["aps"]["alert"] == {
        "title": "Ana",
        "body": "lunch?",
    }
    assert apns_wire.payload(apns_push(title="Ana"))["aps"]["alert"] == {
        "title": "Ana",
        "loc-key": "NEW_MESSAGE",
    }


def test_apns_badge_push_is_a_badge_only() -> None:
    push = apns_push(kind=PushKind.BADGE, badge=0, message_id=None)
    assert apns_wire.payload(push) == {"aps": {"badge": 0}, "c": str(CONVERSATION)}
    request = apns_wire.render(push, default_topic="org.obrol.app", now=NOW)
    assert not isinstance(request, Result)
    assert request.priority == 5
    assert request.push_type is not None and request.push_type.value == "alert"


def test_apns_request_headers() -> None:
    push = apns_push(
        target=Target("apns", HEX_TOKEN, topic="org.obrol.beta"),
        collapse_id="c1",
        expires_at=int(NOW) + 600,
    )
    request = apns_wire.render(push, default_topic="org.obrol.app", now=NOW)
    assert not isinstance(request, Result)
    assert request.notification_id == str(PUSH_ID)
    assert request.device_token == HEX_TOKEN
    assert request.priority == 10
    assert request.collapse_key == "c1"
    assert request.time_to_live == 600
    assert request.apns_topic == "org.obrol.beta"
    default = apns_wire.render(apns_push(), default_topic="org.obrol.app", now=NOW)
    assert not isinstance(default, Result)
    assert default.apns_topic == "org.obrol.app"
    assert default.time_to_live is None
    assert default.collapse_key is None


@pytest.mark.parametrize(
    ("push", "outcome", "reason"),
    [
        (apns_push(target=Target("fcm", HEX_TOKEN)), Outcome.DEAD_LETTER, "wrong_provider"),
        (
            apns_push(target=Target("apns", HEX_TOKEN, environment="staging")),
            Outcome.DEAD_LETTER,
            "bad_environment",
        ),
        (apns_push(target=Target("apns", "not-hex/../x")), Outcome.DISABLE, "bad_token"),
        (apns_push(expires_at=int(NOW)), Outcome.DEAD_LETTER, "expired"),
        (apns_push(body="x" * 4000), Outcome.DEAD_LETTER, "payload_too_large"),
    ],
)
def test_apns_pushes_not_worth_sending(push: Push, outcome: Outcome, reason: str) -> None:
    assert apns_wire.render(push, default_topic="org.obrol.app", now=NOW) == Result(
        outcome, None, reason
    )


def test_apns_payload_limit_counts_encoded_bytes() -> None:
    # 4096 bytes exactly is allowed; one more is not (multi-byte characters count as bytes).
    base = apns_wire.encoded_size(apns_wire.payload(apns_push(body="")))
    fits = apns_push(body="é" * ((4096 - base) // 2))
    assert apns_wire.encoded_size(apns_wire.payload(fits)) <= 4096
    assert not isinstance(apns_wire.render(fits, default_topic="t", now=NOW), Result)
    over = apns_push(body="é" * ((4096 - base) // 2 + 1))
    assert apns_wire.render(over, default_topic="t", now=NOW) == Result(
        Outcome.DEAD_LETTER, None, "payload_too_large"
    )


@pytest.mark.parametrize(
    ("status", "reason", "outcome"),
    [
        ("200", None, Outcome.ACCEPTED),
        ("410", "Unregistered", Outcome.DISABLE),
        ("410", "ExpiredToken", Outcome.DISABLE),
        ("400", "BadDeviceToken", Outcome.DISABLE),
        ("400", "DeviceTokenNotForTopic", Outcome.DISABLE),
        ("400", "BadCollapseId", Outcome.DEAD_LETTER),
        ("400", "TopicDisallowed", Outcome.DEAD_LETTER),
        ("404", "BadPath", Outcome.DEAD_LETTER),
        ("405", "MethodNotAllowed", Outcome.DEAD_LETTER),
        ("413", "PayloadTooLarge", Outcome.DEAD_LETTER),
        ("403", "ExpiredProviderToken", Outcome.RETRY),
        ("403", "InvalidProviderToken", Outcome.RETRY),
        ("429", "TooManyRequests", Outcome.RETRY),
        ("500", "InternalServerError", Outcome.RETRY),
        ("503", "ServiceUnavailable", Outcome.RETRY),
    ],
)
def test_apns_classification(status: str, reason: str | None, outcome: Outcome) -> None:
    result = apns_wire.classify(status, reason)
    assert result.outcome is outcome
    assert result.status == int(status)
    assert result.reason == (reason or "accepted")


def test_apns_unregistered_carries_apples_timestamp() -> None:
    result = apns_wire.classify("410", "Unregistered", 1_700_000_000_123)
    assert result.provider_timestamp == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert apns_wire.classify("410", "Unregistered", "yesterday").provider_timestamp is None


def test_apns_retry_after_only_on_retry() -> None:
    assert apns_wire.classify("429", "TooManyRequests", None, 5.0).retry_after_s == 5.0
    assert apns_wire.classify("400", "BadTopic", None, 5.0).retry_after_s is None


@pytest.mark.parametrize(
    ("status", "outcome"),
    [("500", Outcome.RETRY), ("502", Outcome.RETRY), ("429", Outcome.RETRY),
     ("400", Outcome.DEAD_LETTER), ("410", Outcome.DEAD_LETTER), ("", Outcome.RETRY),
     ("banana", Outcome.RETRY)],
)  # fmt: skip
def test_apns_answers_without_a_reason(status: str, outcome: Outcome) -> None:
    result = apns_wire.classify(status, None)
    assert (result.outcome, result.reason) == (outcome, "bad_provider_answer")


def test_apns_error_bodies() -> None:
    assert parse_error_body(b'{"reason":"Unregistered","timestamp":12}') == ("Unregistered", 12)
    assert parse_error_body(b'{"reason":"BadTopic"}') == ("BadTopic", None)
    assert parse_error_body(b"<html>oops</html>") == (None, None)
    assert parse_error_body(b"\xff\xfe") == (None, None)
    assert parse_error_body(b'["reason"]') == (None, None)
    assert parse_error_body(b'{"reason": 7}') == (None, None)
    assert parse_error_body(b"") == (None, None)


# --- FCM ----------------------------------------------------------------------------------


def test_fcm_generic_alert_message() -> None:
    push = fcm_push(collapse_id="c1", expires_at=int(NOW) + 90)
    assert fcm_wire.render(push, default_project="obrol-test", now=NOW) == FcmRequest(
        "obrol-test",
        {
            "message": {
                "token": "fcm-token-1",
                "data": {"badge": "3", "kind": "alert", "c": str(CONVERSATION), "m": str(MESSAGE)},
                "android": {
                    "priority": "HIGH",
                    "collapse_key": "c1",
                    "ttl": "90s",
                    "notification": {"body_loc_key": "new_message", "notification_count": 3},
                },
            }
        },
    )


def test_fcm_opted_in_and_badge_messages() -> None:
    opted_in = fcm_wire.message(fcm_push(title="Ana", body="lunch?"), NOW)
    assert opted_in["android"]["notification"] == {
        "title": "Ana",
        "body": "lunch?",
        "notification_count": 3,
    }
    badge = fcm_wire.message(
        fcm_push(kind=PushKind.BADGE, conversation_id=None, message_id=None), NOW
    )
    assert badge == {
        "token": "fcm-token-1",
        "data": {"badge": "3", "kind": "badge"},
        "android": {"priority": "NORMAL"},
    }


def test_fcm_target_project_wins() -> None:
    push = fcm_push(target=Target("fcm", "t", project="other-project"))
    rendered = fcm_wire.render(push, default_project="obrol-test", now=NOW)
    assert isinstance(rendered, FcmRequest) and rendered.project == "other-project"


@pytest.mark.parametrize(
    ("push", "outcome", "reason"),
    [
        (fcm_push(target=Target("apns", "t")), Outcome.DEAD_LETTER, "wrong_provider"),
        (fcm_push(target=Target("fcm", "t", project="../x")), Outcome.DEAD_LETTER, "bad_project"),
        (fcm_push(target=Target("fcm", "")), Outcome.DISABLE, "bad_token"),
        (fcm_push(expires_at=int(NOW) - 5), Outcome.DEAD_LETTER, "expired"),
    ],
)
def test_fcm_pushes_not_worth_sending(push: Push, outcome: Outcome, reason: str) -> None:
    assert fcm_wire.render(push, default_project="obrol-test", now=NOW) == Result(
        outcome, None, reason
    )


GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def fcm_error(status: int, code: str | None = None, google_status: str | None = None) -> bytes:
    """Google's error envelope, with an FcmError detail when `code` is given."""
    details = [] if code is None else [
        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}
    ]  # fmt: skip
    error = {
        "code": status,
        "message": "m",
        "status": google_status or GOOGLE_STATUS[status],
        "details": details,
    }
    return json.dumps({"error": error}).encode()


RETRY, DISABLE, DEAD_LETTER = Outcome.RETRY, Outcome.DISABLE, Outcome.DEAD_LETTER


@pytest.mark.parametrize(
    ("status", "body", "outcome", "reason"),
    [
        (200, b'{"name": "projects/p/messages/1"}', Outcome.ACCEPTED, "accepted"),
        (404, fcm_error(404, "UNREGISTERED"), DISABLE, "UNREGISTERED"),
        (404, fcm_error(404), DISABLE, "NOT_FOUND"),
        (403, fcm_error(403, "SENDER_ID_MISMATCH"), DISABLE, "SENDER_ID_MISMATCH"),
        (403, fcm_error(403), RETRY, "PERMISSION_DENIED"),
        (400, fcm_error(400, "INVALID_ARGUMENT"), DEAD_LETTER, "INVALID_ARGUMENT"),
        (400, fcm_error(400, None, "FAILED_PRECONDITION"), DEAD_LETTER, "FAILED_PRECONDITION"),
        (429, fcm_error(429, "QUOTA_EXCEEDED"), RETRY, "QUOTA_EXCEEDED"),
        (503, fcm_error(503, "UNAVAILABLE"), RETRY, "UNAVAILABLE"),
        (500, fcm_error(500, "INTERNAL"), RETRY, "INTERNAL"),
        (401, fcm_error(401, "THIRD_PARTY_AUTH_ERROR"), RETRY, "THIRD_PARTY_AUTH_ERROR"),
        (401, fcm_error(401), RETRY, "UNAUTHENTICATED"),
        (502, b"<html>bad gateway</html>", RETRY, "bad_provider_answer"),
        (404, b"<html>not found</html>", DEAD_LETTER, "bad_provider_answer"),
        (400, b"", DEAD_LETTER, "bad_provider_answer"),
        (302, b"", RETRY, "bad_provider_answer"),
    ],
)  # fmt: skip
def test_fcm_classification(status: int, body: bytes, outcome: Outcome, reason: str) -> None:
    result = fcm_wire.classify(status, body, None, NOW)
    assert (result.outcome, result.status, result.reason) == (outcome, status, reason)


def test_fcm_retry_after() -> None:
    quota = fcm_error(429, "QUOTA_EXCEEDED")
    assert fcm_wire.classify(429, quota, "30", NOW).retry_after_s == 30.0
    assert fcm_wire.classify(429, quota, None, NOW).retry_after_s is None
    invalid = fcm_error(400, "INVALID_ARGUMENT")
    assert fcm_wire.classify(400, invalid, "30", NOW).retry_after_s is None
