"""The pure parts of `--push-share`: choosing phones, their tokens, the push loss check."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from loadtest.cli import build_parser, config_from_args
from loadtest.config import ConfigError
from loadtest.phones import choose_phones, push_token
from loadtest.push_check import SentMessage, check_pushes, verdict
from push.registration import APNS_TOKEN, FCM_TOKEN


def test_phones_are_second_devices_half_apns_half_fcm_and_nested_by_share() -> None:
    small = choose_phones(2000, 1000, 0.1, seed=7)
    large = choose_phones(2000, 1000, 0.3, seed=7)
    assert len(small) == 200 and len(large) == 600
    assert all(device >= 1000 for device in large)  # a user's first device always connects
    assert list(large.values()).count("apns") == list(large.values()).count("fcm") == 300
    assert small.items() <= large.items()
    assert choose_phones(2000, 1000, 0.3, seed=7) == large
    assert choose_phones(2000, 1000, 0.3, seed=8) != large
    with pytest.raises(ValueError, match="second devices"):
        choose_phones(2000, 1000, 0.6, seed=7)


def test_tokens_are_what_the_server_accepts_and_stable() -> None:
    device = uuid.uuid4()
    assert APNS_TOKEN.fullmatch(push_token("apns", device))
    assert len(push_token("apns", device)) == 64
    assert FCM_TOKEN.fullmatch(push_token("fcm", device))
    assert push_token("fcm", device) == push_token("fcm", device) != push_token("fcm", uuid.uuid4())


def config(*argv: str) -> Any:
    return config_from_args(build_parser().parse_args(list(argv)))


def test_push_options_are_checked() -> None:
    assert config("--push-share", "0.5").push_share == 0.5
    with pytest.raises(ConfigError, match="only 1000 are a second device"):
        config("--devices", "2000", "--push-share", "0.51")
    with pytest.raises(ConfigError, match="a share of the devices"):
        config("--push-share", "1.5")
    with pytest.raises(ConfigError, match="needs --standin-url"):
        config("--url", "http://127.0.0.1:1", "--push-share", "0.2")
    with pytest.raises(ConfigError, match="needs --standin-ca"):
        config(
            "--url", "http://127.0.0.1:1", "--push-share", "0.2",
            "--standin-url", "https://127.0.0.1:2",
        )  # fmt: skip
    with pytest.raises(ConfigError, match="for a server given by --url"):
        config("--standin-url", "https://127.0.0.1:2")


# Users 0, 1, 2 in conversation 0; users 0 and 3 in conversation 1. Phones: device 10 of
# user 1, device 11 of user 2, device 12 of user 3.
CONVERSATIONS = [(0, 1, 2), (0, 3)]
PHONES = {10: 1, 11: 2, 12: 3}
TOKENS = {f"t{d}": d for d in (*PHONES, 4)}  # device 4: a connected device


def message(n: int, conversation: int, sender: int) -> SentMessage:
    return SentMessage(conversation, sender, pos=n, id=f"m{n}", at_ms=1_000_000 + n * 100)


def apns(token: str, m: str, at: float, apns_id: str = "", alert: bool = True) -> dict[str, Any]:
    aps = {"alert": {"loc-key": "NEW_MESSAGE"}, "badge": 1} if alert else {"badge": 0}
    return {
        "service": "apns",
        "token": token,
        "status": 200,
        "headers": {"apns-id": apns_id or f"{token}:{m}"},
        "payload": {"aps": aps, "m": m},
        "at": at,
    }


def fcm(token: str, m: str, at: float) -> dict[str, Any]:
    data = {"kind": "alert", "m": m, "badge": "1"}
    payload = {"message": {"data": data}}
    return {"service": "fcm", "token": token, "status": 200, "payload": payload, "at": at}


def test_only_the_latest_message_must_have_its_own_push() -> None:
    messages = [
        message(1, 0, sender=0),
        message(2, 0, sender=1),  # user 1's own: no push to its phone
        message(3, 0, sender=0),
        message(4, 1, sender=3),  # user 3's own; nothing else reaches device 12
    ]
    records = [
        apns("t10", "m3", 1003.0),  # a burst of 1 and 3 collapsed: m1 has no push of its own
        fcm("t11", "m2", 1002.5),
        fcm("t11", "m3", 1003.0),
    ]
    check = check_pushes(messages, CONVERSATIONS, PHONES, TOKENS, records)
    assert (check.phones_expected, check.lost, check.unexpected) == (2, 0, 0)
    assert check.messages_to_phones == 2 + 3  # device 10: m1, m3; device 11: m1, m2, m3
    assert check.latency.count == 5
    # m1 committed at 1000.1 and was first covered at 1002.5 (device 11) and 1003.0 (10)
    assert check.latency.max_ms() == pytest.approx(2900, rel=0.01)
    assert verdict(check, complete=True) == "passed"
    assert verdict(check, complete=False) == "incomplete"


def test_a_missing_latest_an_own_message_and_duplicates_are_counted() -> None:
    messages = [message(1, 0, sender=0), message(2, 0, sender=1), message(3, 0, sender=2)]
    records = [
        apns("t10", "m1", 1001.0, apns_id="a"),
        apns("t10", "m1", 1001.5, apns_id="a"),  # the same push again
        apns("t10", "m2", 1002.0),  # user 1 sent m2: its phone must not hear of it
        fcm("t11", "m2", 1002.5),  # device 11's latest is m2 (m3 is its own): fine
        apns("t4", "m3", 1003.0),  # a connected device
        apns("t10", "m1", 1004.0, apns_id="b", alert=False),  # a badge update
        apns("stranger", "m3", 1004.0),
        {"service": "apns", "token": "t10", "status": 410, "payload": {}, "at": 1005.0},
    ]
    check = check_pushes(messages, CONVERSATIONS, PHONES, TOKENS, records)
    assert check.lost == 1  # device 10's latest, m3, never came
    assert check.lost_sample == [{"device": 10, "message": "m3", "pos": 3}]
    assert (check.duplicates, check.unexpected, check.to_connected_devices) == (1, 1, 1)
    assert (check.badge_updates, check.unknown_tokens, dict(check.refused)) == (1, 1, {"410": 1})
    assert verdict(check, complete=True) == "failed"
