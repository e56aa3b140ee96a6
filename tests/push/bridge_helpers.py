"""Shared by the push tests: stand-in settings for the server, sending, waiting for pushes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import trio

from loadtest.client import GatewayClient
from protocol import Send, Sent, Synced, TextBody
from push.standin import Received, StandIn
from tests.harness import Harness, Session

OPERATOR_TOKEN = "operator-" + "7" * 40
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
APNS_PHONE = "a1" * 32
APNS_OTHER = "b2" * 32
FCM_PHONE = "fcm-token:" + "x" * 40


def push_settings(standin: StandIn, **overrides: Any) -> dict[str, Any]:
    c = standin.credentials
    return {
        "apns_key_file": c.apns_key_file,
        "apns_key_id": c.apns_key_id,
        "apns_team_id": c.apns_team_id,
        "apns_topics": [c.apns_topic],
        "apns_production_host": "127.0.0.1",
        "apns_sandbox_host": "127.0.0.1",
        "apns_port": standin.port,
        "fcm_service_account_file": c.fcm_service_account_file,
        "fcm_base_url": standin.url,
        "push_ca_file": c.ca_file,
        "push_grace_s": 0.3,
        "operator_token": OPERATOR_TOKEN,
        **overrides,
    }


async def register(server: Harness, who: Session, **registration: Any) -> dict[str, Any]:
    response = await server.client.put(
        "/v1/push/registration", headers=who.headers, json=registration
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def pushes(standin: StandIn, token: str) -> list[Received]:
    return [r for r in standin.received if r.token == token and r.service in ("apns", "fcm")]


async def wait_for_pushes(standin: StandIn, token: str, count: int) -> list[Received]:
    with trio.fail_after(20):
        while True:  # the stand-in records as requests arrive; poll it
            found = pushes(standin, token)
            if len(found) >= count:
                return found
            await trio.sleep(0.02)


async def quiet_period(server: Harness) -> None:
    """Long enough for any push still due to have gone out (several graces and polls)."""
    await trio.sleep(server.settings.push_grace_s * 3 + 1.5)


async def send_texts(client: GatewayClient, conv: uuid.UUID, *texts: str) -> list[Sent]:
    await client.send(
        *(
            Send(cid=f"t{i}-{uuid.uuid4().hex[:8]}", conv=conv.bytes, body=TextBody(text=t))
            for i, t in enumerate(texts)
        )
    )
    return await receive_sent(client, len(texts))


async def receive_sent(client: GatewayClient, count: int) -> list[Sent]:
    sent: list[Sent] = []
    with trio.fail_after(20):
        while len(sent) < count:
            sent += [f for f in await client.receive() if isinstance(f, Sent)]
    return sent


async def synced(client: GatewayClient) -> None:
    await client.sync(0)
    with trio.fail_after(20):
        while not any(isinstance(f, Synced) for f in await client.receive()):
            pass


async def wait_until(done: Callable[[], bool], timeout_s: float = 20) -> None:
    """Poll `done` (what the stand-in recorded, say) until it holds; fail after timeout_s."""
    with trio.fail_after(timeout_s):
        while True:
            if done():
                return
            await trio.sleep(0.02)
