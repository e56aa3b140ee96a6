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
- Outbound flow control: aioapns sends a request body whatever the connection's window, so
  once a batch's bodies pass the peer's window (64 KiB unless it says more) h2 raises
  FlowControlError after the headers went out: the stream is left half-open on the server,
  its channel is never released, and aioapns sleeps a second before resending. We wait for
  the window first, and take the stream id only when we send (ids must go out in order).
- JWT: aioapns makes a JWT per connection, so connections that come and go (it closes one
  after 10 s idle) would each mint a token, and Apple refuses more than one new token per 20
  minutes (TooManyProviderTokenUpdates). Every connection here shares one header provider.
Still as aioapns does it: the same request headers (`host` rather than `:authority`), no ALPN
of its own (our SSL context offers "h2"), and RST_STREAM ignored (that request resolves only
through our timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any, ClassVar

from aioapns.common import NotificationRequest, NotificationResult
from aioapns.connection import APNsProductionClientProtocol, AuthorizationHeaderProvider
from aioapns.exceptions import ConnectionClosed
from h2.exceptions import FlowControlError, H2Error

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
        self._window_changed: asyncio.Future[None] | None = None

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        """Send `request` on this connection and wait for Apple's answer.

        aioapns's request, flow-controlled (see the module docstring). Raises what aioapns's
        pool expects: ConnectionClosed (it resends elsewhere), FlowControlError (a peer whose
        stream window cannot take one payload), NoAvailableStreamIDError (stream ids used up).
        """
        data = json.dumps(request.message, ensure_ascii=False).encode()
        await self.free_channels.acquire()  # bounds our streams; we take its id ourselves
        stream_id: int | None = None
        try:
            await self._wait_for_window(len(data))
            stream_id = self.conn.get_next_available_stream_id()
            self.conn.send_headers(stream_id=stream_id, headers=self._headers(request))
            self.conn.send_data(stream_id=stream_id, data=data, end_stream=True)
        except BaseException:
            self.free_channels.release()
            if stream_id is not None:
                with contextlib.suppress(H2Error):
                    self.conn.reset_stream(stream_id)
            raise
        self.flush()
        answer: asyncio.Future[NotificationResult] = self.loop.create_future()
        self.requests[request.notification_id] = answer
        self.request_streams[stream_id] = request.notification_id
        return await answer

    def _headers(self, request: NotificationRequest) -> list[tuple[str, str]]:
        """The request headers, as aioapns 4.0 writes them."""
        headers = [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", f"/3/device/{request.device_token}"),
            ("host", self.APNS_SERVER),
            ("apns-id", request.notification_id),
            ("apns-topic", request.apns_topic or self.apns_topic),
        ]
        if request.time_to_live is not None:
            headers.append(("apns-expiration", str(int(time.time()) + request.time_to_live)))
        if request.priority is not None:
            headers.append(("apns-priority", str(request.priority)))
        if request.collapse_key is not None:
            headers.append(("apns-collapse-id", request.collapse_key))
        if request.push_type is not None:
            headers.append(("apns-push-type", request.push_type.value))
        if self.auth_provider is not None:
            headers.append(("authorization", self.auth_provider.get_header()))
        return headers

    async def _wait_for_window(self, size: int) -> None:
        """Return once the connection's send window takes `size` bytes."""
        if size > self.conn.remote_settings.initial_window_size:
            raise FlowControlError("the peer's stream window is smaller than the payload")
        while self.conn.outbound_flow_control_window < size:
            if self.transport is None or self.transport.is_closing():
                raise ConnectionClosed("connection closed while waiting to send")
            if self._window_changed is None or self._window_changed.done():
                self._window_changed = self.loop.create_future()
            # Shared by every waiter: one of them being cancelled must not cancel it.
            await asyncio.shield(self._window_changed)

    def _wake_window_waiters(self) -> None:
        if self._window_changed is not None and not self._window_changed.done():
            self._window_changed.set_result(None)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._wake_window_waiters()  # a WINDOW_UPDATE or SETTINGS may have come in

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
        self._wake_window_waiters()  # they find the transport closed


def protocol_class(
    host: str, port: int, auth: AuthorizationHeaderProvider
) -> type[FixedApnsProtocol]:
    """A `FixedApnsProtocol` subclass connecting to `host:port` and signing with `auth`."""
    return type(
        "ApnsProtocol",
        (FixedApnsProtocol,),
        {"APNS_SERVER": host, "APNS_PORT": port, "SHARED_AUTH": auth},
    )
