"""aioapns 4.0's HTTP/2 connection, pointed at our host and with its known faults fixed.

aioapns targets its protocol class's `APNS_SERVER`/`APNS_PORT`, so `protocol_class` makes one
per host. What the subclass fixes (see DESIGN.md, "Push bridge"):
- Flow control: aioapns never sends WINDOW_UPDATE, so after ~64 KiB of error bodies on one
  connection Apple can send no more DATA and every later error answer stalls (200s, which
  have no body, still pass). We hand the window back for every byte received.
- Error bodies: aioapns parses each DATA frame as a whole JSON document (a body split over two
  frames, or one that is not JSON, raised inside `data_received` and killed the connection,
  and aioapns then resent every request on it). We collect the body until the stream ends.
- Waiters that gave up: when our timeout cancels a send, its future stays in `requests`;
  aioapns then calls `set_result`/`set_exception` on it, which raises InvalidStateError (on
  `connection_lost`, before the other waiters are failed: they hang). We skip done futures.
- JWT: aioapns makes a JWT per connection, so connections that come and go (it closes one
  after 10 s idle) would each mint a token, and Apple refuses more than one new token per 20
  minutes (TooManyProviderTokenUpdates). Every connection here shares one header provider.
Still as aioapns does it: no ALPN of its own (our SSL context offers "h2"), `host` rather than
`:authority`, and RST_STREAM ignored (that request resolves only through our timeout).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, ClassVar

from aioapns.common import NotificationResult
from aioapns.connection import APNsProductionClientProtocol, AuthorizationHeaderProvider

from push.timing import parse_retry_after

# An APNs error body is ~100 bytes; a peer sending more gets the rest ignored (but its flow
# control window back, so the connection keeps working).
MAX_ERROR_BODY_BYTES = 8192


class ApnsAnswer(NotificationResult):
    """An error answer, with the Retry-After the server sent (Apple documents none)."""

    __slots__ = ("retry_after_s",)

    def __init__(
        self,
        notification_id: str,
        status: str,
        description: str | None,
        timestamp: Any,
        retry_after_s: float | None,
    ) -> None:
        super().__init__(notification_id, status, description=description, timestamp=timestamp)
        self.retry_after_s = retry_after_s


def parse_error_body(body: bytes) -> tuple[str | None, Any]:
    """`(reason, timestamp)` from an APNs error body; `(None, None)` if it has no reason."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    reason = data.get("reason")
    if not isinstance(reason, str) or not reason:
        return None, None
    return reason, data.get("timestamp")


class FixedApnsProtocol(APNsProductionClientProtocol):
    """aioapns's TLS client protocol with the fixes listed in this module's docstring."""

    SHARED_AUTH: ClassVar[AuthorizationHeaderProvider | None] = None

    def __init__(
        self,
        apns_topic: str,
        loop: asyncio.AbstractEventLoop | None = None,
        on_connection_lost: Any = None,
        auth_provider: AuthorizationHeaderProvider | None = None,
    ) -> None:
        super().__init__(apns_topic, loop, on_connection_lost, self.SHARED_AUTH or auth_provider)
        self._bodies: dict[int, bytearray] = {}
        self._retry_after: dict[str, str] = {}  # by apns-id, for error answers

    def _drop_if_abandoned(self, notification_id: str) -> None:
        request = self.requests.get(notification_id)
        if request is not None and request.done():  # its sender timed out and went away
            del self.requests[notification_id]

    def on_response_received(self, headers: dict[bytes, bytes]) -> None:
        notification_id = headers.get(b"apns-id", b"").decode("utf-8", "replace")
        self._drop_if_abandoned(notification_id)
        retry_after = headers.get(b"retry-after")
        if retry_after is not None and headers.get(b":status") != b"200":
            self._retry_after[notification_id] = retry_after.decode("latin-1")
        super().on_response_received(headers)

    def on_data_received(self, raw_data: bytes, stream_id: int) -> None:
        # Give the flow-control window back; `data_received` flushes the WINDOW_UPDATE once
        # it has handled every event of this read. (aioapns hands us the data without the
        # frame's padding; APNs does not pad.)
        self.conn.acknowledge_received_data(len(raw_data), stream_id)
        body = self._bodies.setdefault(stream_id, bytearray())
        if len(body) < MAX_ERROR_BODY_BYTES:
            body.extend(raw_data[: MAX_ERROR_BODY_BYTES - len(body)])

    def on_stream_ended(self, stream_id: int) -> None:
        body = self._bodies.pop(stream_id, None)
        notification_id = self.request_streams.pop(stream_id, None)
        if notification_id is not None:
            status = self.request_statuses.pop(notification_id, None)
            retry_after = self._retry_after.pop(notification_id, None)
            # A 200 resolved (and removed) its request in `on_response_received`; anything
            # else ends here. No status means the answer did not echo our apns-id: "" makes
            # that a bad answer rather than a request left hanging.
            request = self.requests.pop(notification_id, None)
            if request is not None and not request.done():
                reason, timestamp = parse_error_body(bytes(body or b""))
                retry_after_s = parse_retry_after(retry_after, time.time())
                request.set_result(
                    ApnsAnswer(notification_id, status or "", reason, timestamp, retry_after_s)
                )
        super().on_stream_ended(stream_id)

    def connection_lost(self, exc: Exception | None) -> None:
        for notification_id in [n for n, request in self.requests.items() if request.done()]:
            del self.requests[notification_id]
        super().connection_lost(exc)


def protocol_class(
    host: str, port: int, auth: AuthorizationHeaderProvider
) -> type[FixedApnsProtocol]:
    """A `FixedApnsProtocol` subclass connecting to `host:port` and signing with `auth`."""
    return type(
        "ApnsProtocol",
        (FixedApnsProtocol,),
        {"APNS_SERVER": host, "APNS_PORT": port, "SHARED_AUTH": auth},
    )
