"""The stand-in itself: one TLS listener serving APNs, FCM and Google's token endpoint,
recording every request and injecting the faults it is told to."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Protocol

import trio

from push.standin.answers import Parsed, Verdict
from push.standin.apns import ApnsService
from push.standin.control import (
    CONTROL_PREFIX,
    ControlApi,
    Fault,
    FaultBook,
    Received,
    redacted_headers,
)
from push.standin.credentials import StandInCredentials
from push.standin.fcm import FcmService
from push.standin.fcm_oauth import AccessTokens, OAuthService
from push.standin.h2server import Request, Response, serve_h2

logger = logging.getLogger(__name__)


class _Service(Protocol):
    def identify(self, request: Request) -> Parsed: ...

    def answer(self, request: Request, parsed: Parsed) -> Verdict: ...

    def refuse(
        self, request: Request, status: int, reason: str | None, retry_after_s: int | None
    ) -> Verdict: ...


class StandIn:
    """A running stand-in: its address, credentials, records and fault controls.

    Everything here is plain state touched from the trio thread that runs the stand-in.
    """

    def __init__(
        self,
        credentials: StandInCredentials,
        url: str,
        port: int,
        *,
        access_token_ttl_s: int = 3599,
        latency_s: float = 0.0,
        extra_topics: Iterable[str] = (),
    ) -> None:
        self.credentials = credentials
        self.url = url
        self.port = port
        self.received: list[Received] = []  # accepted and refused alike, in arrival order
        self.latency_s = latency_s  # added to every answer
        self._faults = FaultBook()
        self._tokens = AccessTokens(access_token_ttl_s)
        self._apns = ApnsService(credentials, extra_topics)
        self._fcm = FcmService(credentials.fcm_project, self._tokens)
        self._services: dict[str, _Service] = {
            "apns": self._apns,
            "fcm": self._fcm,
            "fcm_token": OAuthService(credentials, f"{url}/token", self._tokens),
        }
        self._control = ControlApi(self)

    @property
    def fcm_token_uri(self) -> str:
        return f"{self.url}/token"

    @property
    def apns_topics(self) -> set[str]:
        """The topics (bundle ids) APNs accepts; add to it to allow more."""
        return self._apns.topics

    def add_fault(self, fault: Fault) -> None:
        """Arm `fault` (after those already armed). Raises ValueError if it is malformed."""
        self._faults.add(fault)

    def clear_faults(self) -> None:
        self._faults.clear()

    def faults(self) -> list[Fault]:
        """The faults still armed, each with the count it has left."""
        return self._faults.armed()

    def unregister(self, token: str, service: str = "apns") -> None:
        """Later pushes to `token`: APNs 410 Unregistered (+timestamp) / FCM 404 UNREGISTERED."""
        if service == "apns":
            self._apns.unregister(token)
        elif service == "fcm":
            self._fcm.unregister(token)
        else:
            raise ValueError("service must be 'apns' or 'fcm'")

    def expire_access_tokens(self) -> None:
        """Every FCM access token issued so far stops working (401 from now on)."""
        self._tokens.expire_all()

    def describe(self) -> dict[str, str]:
        """What a client needs to reach the stand-in: URL, files and ids (no key material)."""
        return {"url": self.url, "fcm_token_uri": self.fcm_token_uri, **self.credentials.describe()}

    async def handle(self, request: Request) -> Response:
        """Answer one request: control, fault, or the service's own rules; record it."""
        if request.path.startswith(CONTROL_PREFIX):
            return await self._control.handle(request)
        name = _service_name(request.path)
        service = self._services[name]
        parsed = service.identify(request)
        fault = self._faults.take(name, parsed.token)
        delay_s = self.latency_s + (fault.delay_s if fault else 0.0)
        if fault is not None and fault.drop:
            verdict = None
        elif fault is not None and fault.status >= 400:
            verdict = service.refuse(request, fault.status, fault.reason, fault.retry_after_s)
        else:
            verdict = service.answer(request, parsed)
        status = 0 if verdict is None else verdict.response.status
        reason = None if verdict is None else verdict.reason
        self.received.append(
            Received(
                service=name,
                token=parsed.token,
                headers=redacted_headers(request),
                payload=parsed.payload,
                raw_size=request.raw_size,
                status=status,
                reason=reason,
                at=time.time(),
            )
        )
        log = logger.info if fault is not None else logger.debug
        log(
            "conn %d: %s %s… -> %d %s%s",
            request.connection_id,
            name,
            (parsed.token or "-")[:8],
            status,
            reason or "",
            " (fault)" if fault is not None else "",
        )
        if delay_s > 0:
            await trio.sleep(delay_s)
        return Response(0, drop=True) if verdict is None else verdict.response


def _service_name(path: str) -> str:
    bare = path.split("?", 1)[0]
    if bare == "/token":
        return "fcm_token"
    if bare.startswith("/v1/"):
        return "fcm"
    return "apns"  # Apple answers any other path with 404 BadPath


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - naming the wildcard, not binding it
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


@asynccontextmanager
async def running_standin(
    directory: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    access_token_ttl_s: int = 3599,
    latency_s: float = 0.0,
    extra_topics: Iterable[str] = (),
    idle_timeout_s: float = 3600.0,
) -> AsyncIterator[StandIn]:
    """Serve the stand-in on `host:port` (0: any free port) until the block exits (trio).

    Credentials are made in `directory` if absent, reused if present; either way the
    service account's token_uri on disk points at this stand-in before the block starts.
    Use one directory per running stand-in.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    try:
        if port == 0:  # each address got its own free port: keep the first
            for extra in listeners[1:]:
                await extra.aclose()
            listeners = listeners[:1]
        bound_port = int(listeners[0].socket.getsockname()[1])
        url = f"https://{_url_host(host)}:{bound_port}"
        credentials = await trio.to_thread.run_sync(
            partial(StandInCredentials.load_or_create, directory, base_url=url)
        )
        ssl_context = credentials.server_ssl_context()
    except BaseException:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
        raise
    standin = StandIn(
        credentials,
        url,
        bound_port,
        access_token_ttl_s=access_token_ttl_s,
        latency_s=latency_s,
        extra_topics=extra_topics,
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    serve_h2, listeners, ssl_context, standin.handle, idle_timeout_s=idle_timeout_s
                )
            )
            logger.info("push stand-in listening on %s (credentials in %s)", url, directory)
            try:
                yield standin
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The caller's own exception, not wrapped by our nursery: `pytest.raises` and
        # `except` around the block work as they would without the stand-in.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
