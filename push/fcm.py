"""The FCM provider: pushes to Android devices through FCM HTTP v1, natively on trio.

`messages:send` goes through push/h2client.py (h2 on trio: a few HTTP/2 connections, many
streams each; it replaced httpx there, whose connection pool cost more CPU per push than
HTTP/2 and TLS together); the hourly OAuth2 token requests go through httpx. A batch is
sent concurrently in one nursery, bounded by a CapacityLimiter (`max_connections` x
`STREAMS_PER_CONNECTION` requests in flight), each request bounded by `timeout_s`.

Why not google-auth for the access token: its service-account credentials refresh through
`requests` (blocking: a thread per refresh) or aiohttp (asyncio: a bridge hop), so it is not
trio-native, and it would be one more dependency for what is ~100 lines on PyJWT, which aioapns
already brings (`push/fcm_auth.py`). What google-auth adds beyond that (metadata-server and
workload-identity credentials) obrol does not use: it is configured with a key file.

One push's failure never raises: a timeout is RETRY "timeout", a transport failure RETRY
"connection_error", a token endpoint failure RETRY "auth_failed" for the whole batch. A 401
from FCM drops the cached access token and sends that push once more with a fresh one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import trio

from push import fcm_wire
from push.batch_log import log_results
from push.fcm_auth import AccessTokens, AuthError, load_service_account
from push.fcm_wire import FcmRequest
from push.h2client import H2Client, H2ConnectionError
from push.providers import Outcome, Push, PushConfigError, Result
from push.tls import client_context

logger = logging.getLogger(__name__)

# Requests in flight per connection: FCM's front ends allow ~100 concurrent HTTP/2 streams.
STREAMS_PER_CONNECTION = 100


class FcmProvider:
    """Pushes through FCM HTTP v1 with a service account; see the module docstring."""

    name = "fcm"

    def __init__(
        self,
        *,
        service_account_file: Path,
        base_url: str = "https://fcm.googleapis.com",
        ca_file: Path | None = None,
        timeout_s: float = 10.0,
        max_connections: int = 4,
    ) -> None:
        """Checks every setting now. Raises `PushConfigError` for an unreadable or incomplete
        service-account file, an unusable key in it, a bad CA file, or a bad URL or limit."""
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
            raise PushConfigError("FCM base_url must be an https:// URL without a path")
        if not timeout_s > 0:
            raise PushConfigError("FCM timeout_s must be positive")
        if max_connections < 1:
            raise PushConfigError("FCM max_connections must be at least 1")
        self._account = load_service_account(service_account_file)
        self._timeout_s = timeout_s
        self._sender = H2Client(
            parts.hostname,
            parts.port or 443,
            client_context(ca_file, alpn=["h2"], what="FCM"),
            max_connections=max_connections,
            streams_per_connection=STREAMS_PER_CONNECTION,
        )
        self._client = httpx.AsyncClient(  # the OAuth2 token endpoint only
            http2=True,
            verify=client_context(ca_file, alpn=["h2", "http/1.1"], what="FCM"),
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            trust_env=False,  # no proxy or CA settings from the environment: config says all
            follow_redirects=False,
        )
        self._tokens = AccessTokens(self._account, self._client, timeout_s=timeout_s)
        self._limiter = trio.CapacityLimiter(max_connections * STREAMS_PER_CONNECTION)
        self._closed = False

    @property
    def tokens_fetched(self) -> int:
        """How many access tokens this provider has obtained so far."""
        return self._tokens.fetched

    async def send(self, pushes: Sequence[Push]) -> list[Result]:
        """One `Result` per push, in order. Raises only when cancelled."""
        now = time.time()
        results: list[Result | None] = [None] * len(pushes)
        batch: list[tuple[int, FcmRequest]] = []
        for index, push in enumerate(pushes):
            rendered = fcm_wire.render(push, default_project=self._account.project_id, now=now)
            if isinstance(rendered, Result):
                results[index] = rendered
            else:
                batch.append((index, rendered))
        if batch:
            await self._send_batch(batch, results)
        done = [result for result in results if result is not None]
        assert len(done) == len(pushes)
        log_results(logger, "FCM", pushes, done)
        return done

    async def aclose(self) -> None:
        """Close the HTTP connections. Later sends answer RETRY "closed"."""
        self._closed = True
        await self._sender.aclose()
        await self._client.aclose()

    async def _send_batch(
        self, batch: list[tuple[int, FcmRequest]], results: list[Result | None]
    ) -> None:
        if self._closed:
            for index, _ in batch:
                results[index] = Result(Outcome.RETRY, None, "closed")
            return
        try:
            token = await self._tokens.get()
        except AuthError:
            for index, _ in batch:
                results[index] = Result(Outcome.RETRY, None, "auth_failed")
            return

        async def send_one(index: int, request: FcmRequest) -> None:
            async with self._limiter:
                results[index] = await self._send_one(request, token)

        async with trio.open_nursery() as nursery:
            for index, request in batch:
                nursery.start_soon(send_one, index, request)

    async def _send_one(self, request: FcmRequest, token: str) -> Result:
        result = await self._post(request, token)
        if result.status != 401:
            return result
        self._tokens.invalidate(token)
        try:
            token = await self._tokens.get()
        except AuthError:
            return Result(Outcome.RETRY, None, "auth_failed")
        return await self._post(request, token)

    async def _post(self, request: FcmRequest, token: str) -> Result:
        path = f"/v1/projects/{request.project}/messages:send"
        body = json.dumps(request.body, separators=(",", ":")).encode()
        headers = [
            (b"content-type", b"application/json; charset=UTF-8"),
            (b"authorization", f"Bearer {token}".encode()),
        ]
        try:
            with trio.fail_after(self._timeout_s):
                response = await self._sender.post(path, headers, body)
        except trio.TooSlowError:
            return Result(Outcome.RETRY, None, "timeout")
        except H2ConnectionError as exc:  # refused, reset, TLS, drained, HTTP/2 trouble
            logger.debug("FCM send failed: %s", exc)
            return Result(Outcome.RETRY, None, "connection_error")
        except Exception:  # a bug below us must not lose the batch: retried, and said loudly
            logger.warning("FCM send failed unexpectedly", exc_info=True)
            return Result(Outcome.RETRY, None, "connection_error")
        return fcm_wire.classify(
            response.status, response.body, response.headers.get("retry-after"), time.time()
        )
