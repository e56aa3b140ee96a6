"""The real aioapns 4.0 client, on its own asyncio loop (call from a worker thread), aimed
at a stand-in the way DESIGN.md says: a protocol subclass naming the stand-in's address,
an ssl_context trusting its CA, `APNs()` built inside the running loop."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aioapns import APNs, NotificationRequest, PushType
from aioapns.connection import APNsProductionClientProtocol

from push.standin import StandIn


def push_with_aioapns(standin: StandIn, tokens: list[str]) -> list[Any]:
    """Send one badge push to each token in turn; their NotificationResults."""
    return asyncio.run(_push(standin, tokens))


async def _push(standin: StandIn, tokens: list[str]) -> list[Any]:
    credentials = standin.credentials

    lost: list[asyncio.Event] = []

    class StandInProtocol(APNsProductionClientProtocol):
        APNS_SERVER = "127.0.0.1"
        APNS_PORT = standin.port

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.lost = asyncio.Event()
            lost.append(self.lost)
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            self.lost.set()

    context = ssl.create_default_context(cafile=str(credentials.ca_file))
    apns = APNs(
        key=credentials.apns_key_pem(),
        key_id=credentials.apns_key_id,
        team_id=credentials.apns_team_id,
        topic=credentials.apns_topic,
        ssl_context=context,
        max_connection_attempts=1,
    )
    apns.pool.protocol_class = StandInProtocol
    results = []
    try:
        for token in tokens:
            request = NotificationRequest(
                device_token=token,
                message={"aps": {"badge": 3}},
                priority=10,
                push_type=PushType.ALERT,
            )
            results.append(await asyncio.wait_for(apns.send_notification(request), 30))
    finally:
        apns.pool.close()
        # Let the transports finish closing before the loop goes (no unclosed-transport
        # warnings).
        async with asyncio.timeout(10):
            for event in lost:
                await event.wait()
    return results
