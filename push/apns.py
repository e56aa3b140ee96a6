"""The APNs provider: pushes to Apple through aioapns, on the asyncio bridge's loop.

aioapns is asyncio code, so everything of it lives on the `AsyncioBridge` loop: the clients
are built there on first use, and a batch crosses in one hop (`asyncio.gather` inside). Only
this module and `push/apns_protocol.py` / `push/apns_wire.py` know aioapns exists.

Every send is bounded by `timeout_s`: aioapns can leave a request unresolved for good (an
RST_STREAM, a connection that dies with a timed-out waiter on it), so the timeout, not
aioapns, decides when we give up. One push's failure never raises: a timeout is RETRY
"timeout", anything a send raises (refused connection, TLS failure, aioapns giving up after
its own 5 attempts on dropped connections) is RETRY "connection_error". Those retries inside
aioapns can make one push reach Apple twice; the stable apns-id (the push id) and collapse id
make that harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Sequence
from pathlib import Path

from aioapns import APNs
from aioapns.common import NotificationRequest, NotificationResult
from aioapns.connection import JWTAuthorizationHeaderProvider
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from push import apns_wire
from push.apns_protocol import ApnsAnswer, protocol_class
from push.batch_log import log_results
from push.providers import Outcome, Push, PushConfigError, Result
from push.tls import client_context
from storage.bridge import AsyncioBridge, BridgeClosedError

logger = logging.getLogger(__name__)


def load_signing_key(key_file: Path) -> str:
    """The PEM text of the APNs auth key (.p8) in `key_file`, checked to be an EC P-256
    private key. Raises `PushConfigError` naming the file (never its contents)."""
    try:
        data = key_file.read_bytes()
    except OSError as exc:
        raise PushConfigError(
            f"APNs key file {key_file}: cannot read it ({exc.strerror or type(exc).__name__})"
        ) from None
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError:  # encrypted: we would need a password, and Apple's .p8 has none
        raise PushConfigError(f"APNs key file {key_file}: the key is encrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise PushConfigError(
            f"APNs key file {key_file}: not a PEM private key (expected Apple's .p8 auth key)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise PushConfigError(
            f"APNs key file {key_file}: not an EC P-256 private key (APNs signs with ES256)"
        )
    return data.decode("ascii", "replace")


def _check_identifier(value: str, what: str) -> None:
    if not value or not value.isascii() or not value.isprintable() or " " in value:
        raise PushConfigError(f"APNs {what} must be a non-empty printable ASCII word")


async def _dont_log(request: NotificationRequest, result: NotificationResult) -> None:
    """aioapns's error hook: we log ourselves, without device tokens."""


class ApnsProvider:
    """Pushes to APNs (token-based auth) for both environments; see the module docstring."""

    name = "apns"

    def __init__(
        self,
        bridge: AsyncioBridge,
        *,
        key_file: Path,
        key_id: str,
        team_id: str,
        default_topic: str,
        production_host: str = "api.push.apple.com",
        sandbox_host: str = "api.sandbox.push.apple.com",
        port: int = 443,
        ca_file: Path | None = None,
        timeout_s: float = 10.0,
        max_connections: int = 4,
    ) -> None:
        """Checks every setting now. Raises `PushConfigError` for an unreadable or wrong key
        file, a bad CA file, or a bad id, topic or limit."""
        _check_identifier(key_id, "key id")
        _check_identifier(team_id, "team id")
        _check_identifier(default_topic, "default topic")
        if not timeout_s > 0:
            raise PushConfigError("APNs timeout_s must be positive")
        if max_connections < 1:
            raise PushConfigError("APNs max_connections must be at least 1")
        self._bridge = bridge
        self._key = load_signing_key(key_file)
        self._key_id = key_id
        self._team_id = team_id
        self._default_topic = default_topic
        self._ssl_context: ssl.SSLContext = client_context(ca_file, alpn=["h2"], what="APNs")
        self._addresses = {"production": (production_host, port), "sandbox": (sandbox_host, port)}
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        # One JWT for every connection of both environments. aioapns signs a new one when
        # it is 30 minutes old: inside Apple's window (not more often than every 20 minutes,
        # not less often than every 60).
        self._auth = JWTAuthorizationHeaderProvider(key=self._key, key_id=key_id, team_id=team_id)
        self._clients: dict[str, APNs] = {}  # by environment; touched on the loop only
        self._closed = False

    async def send(self, pushes: Sequence[Push]) -> list[Result]:
        """One `Result` per push, in order. Raises only when cancelled."""
        now = time.time()
        results: list[Result | None] = []
        batch: list[tuple[int, str, NotificationRequest]] = []
        for index, push in enumerate(pushes):
            rendered = apns_wire.render(push, default_topic=self._default_topic, now=now)
            if isinstance(rendered, Result):
                results.append(rendered)
                continue
            results.append(None)
            environment = apns_wire.environment_of(push.target) or "production"
            batch.append((index, environment, rendered))
        if batch:
            answers: list[Result]
            if self._closed:
                answers = [Result(Outcome.RETRY, None, "closed")] * len(batch)
            else:
                requests = [(environment, request) for _, environment, request in batch]
                try:
                    answers = await self._bridge.run(self._send_on_loop, requests)
                except BridgeClosedError:
                    answers = [Result(Outcome.RETRY, None, "bridge_closed")] * len(batch)
            for (index, _, _), answer in zip(batch, answers, strict=True):
                results[index] = answer
        done = [result for result in results if result is not None]
        assert len(done) == len(pushes)
        log_results(logger, "APNs", pushes, done)
        return done

    async def aclose(self) -> None:
        """Close every connection. Later sends answer RETRY "closed"."""
        self._closed = True
        with contextlib.suppress(BridgeClosedError):  # the loop is gone, its connections too
            await self._bridge.run(self._close_on_loop)

    # --- on the asyncio loop -------------------------------------------------------------

    def _client(self, environment: str) -> APNs:
        client = self._clients.get(environment)
        if client is None:
            host, port = self._addresses[environment]
            client = APNs(
                key=self._key,
                key_id=self._key_id,
                team_id=self._team_id,
                topic=self._default_topic,
                max_connections=self._max_connections,
                use_sandbox=environment == "sandbox",
                ssl_context=self._ssl_context,
                err_func=_dont_log,
            )
            client.pool.protocol_class = protocol_class(host, port, self._auth)
            self._clients[environment] = client
        return client

    async def _send_on_loop(self, requests: list[tuple[str, NotificationRequest]]) -> list[Result]:
        sends = [self._send_one(environment, request) for environment, request in requests]
        return list(await asyncio.gather(*sends))

    async def _send_one(self, environment: str, request: NotificationRequest) -> Result:
        try:
            client = self._client(environment)
            answer = await asyncio.wait_for(
                client.send_notification(request), timeout=self._timeout_s
            )
        except TimeoutError:
            return Result(Outcome.RETRY, None, "timeout")
        except Exception as exc:  # refused, TLS, MaxAttemptsExceeded, InvalidStateError, ...
            logger.debug(
                "APNs push %s: send failed: %s", request.notification_id, type(exc).__name__
            )
            return Result(Outcome.RETRY, None, "connection_error")
        retry_after_s = answer.retry_after_s if isinstance(answer, ApnsAnswer) else None
        return apns_wire.classify(
            answer.status, answer.description, answer.timestamp, retry_after_s
        )

    async def _close_on_loop(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.pool.close()
        await asyncio.sleep(0)  # let the transports start closing
