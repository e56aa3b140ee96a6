"""FCM's OAuth2 access tokens, from a Google service account, done on trio.

The service-account flow (RFC 7523 JWT bearer grant): sign a JWT with the account's RSA key
(PyJWT, RS256), post it to the account's `token_uri`, get an access token valid for about an
hour. Tokens are cached until shortly before they expire; one refresh runs at a time, and
every send that waited on a refresh which failed fails with it instead of trying again.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jwt
import trio
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from protocol.errors import ObrolError
from push.http_body import without_generator
from push.providers import PushConfigError

logger = logging.getLogger(__name__)

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME_S = 3600  # Google's maximum
REFRESH_MARGIN_S = 60.0  # refresh this long before the token expires (less for short tokens)

# Google project ids: lowercase letters, digits and hyphens, optionally domain-scoped
# ("example.com:project"). Checked because the id goes into the request path.
PROJECT_ID = re.compile(r"[a-z0-9][a-z0-9.:-]{0,99}")


class AuthError(ObrolError):
    """The token endpoint did not give us an access token; `str()` says why (no secrets)."""


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """The parts of a Google service-account JSON file the FCM flow needs."""

    client_email: str
    private_key_id: str
    private_key: rsa.RSAPrivateKey = field(repr=False)
    project_id: str
    token_uri: str


def _field(data: dict[str, object], name: str, path: Path) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise PushConfigError(f"FCM service account file {path}: missing or empty {name!r}")
    return value


def load_service_account(path: Path) -> ServiceAccount:
    """Read and check a service-account file. Raises `PushConfigError` naming the file and
    the field at fault, never the key itself."""
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise PushConfigError(
            f"FCM service account file {path}: cannot read it "
            f"({exc.strerror or type(exc).__name__})"
        ) from None
    except ValueError:
        raise PushConfigError(f"FCM service account file {path}: not JSON") from None
    if not isinstance(data, dict):
        raise PushConfigError(f"FCM service account file {path}: not a JSON object")
    kind = data.get("type", "service_account")
    if kind != "service_account":
        raise PushConfigError(
            f"FCM service account file {path}: 'type' is {kind!r}, not 'service_account'"
        )
    client_email = _field(data, "client_email", path)
    private_key_id = _field(data, "private_key_id", path)
    pem = _field(data, "private_key", path)
    project_id = _field(data, "project_id", path)
    token_uri = _field(data, "token_uri", path)
    if not PROJECT_ID.fullmatch(project_id):
        raise PushConfigError(f"FCM service account file {path}: 'project_id' is not a project id")
    if not token_uri.startswith("https://"):
        raise PushConfigError(f"FCM service account file {path}: 'token_uri' is not https")
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (TypeError, ValueError, UnsupportedAlgorithm):
        raise PushConfigError(
            f"FCM service account file {path}: 'private_key' is not an unencrypted PEM key"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise PushConfigError(
            f"FCM service account file {path}: 'private_key' is not an RSA key (RS256)"
        )
    return ServiceAccount(client_email, private_key_id, key, project_id, token_uri)


class AccessTokens:
    """A cached OAuth2 access token for one service account."""

    def __init__(
        self, account: ServiceAccount, client: httpx.AsyncClient, *, timeout_s: float
    ) -> None:
        self._account = account
        self._client = client
        self._timeout_s = timeout_s
        self._lock = trio.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0  # time.monotonic()
        self._attempts = 0  # refreshes started, successful or not
        self._last_error: AuthError | None = None
        self.fetched = 0  # tokens obtained (for tests and metrics)

    def _fresh(self) -> str | None:
        if self._token is not None and time.monotonic() < self._refresh_at:
            return self._token
        return None

    async def get(self) -> str:
        """A valid access token, fetched if needed. Raises `AuthError` if that failed."""
        token = self._fresh()
        if token is not None:
            return token
        attempts_seen = self._attempts
        async with self._lock:
            token = self._fresh()
            if token is not None:
                return token
            if self._attempts != attempts_seen and self._last_error is not None:
                raise self._last_error  # a refresh we waited behind just failed
            self._attempts += 1
            try:
                self._token, self._refresh_at = await self._fetch()
            except AuthError as exc:
                self._last_error = exc
                logger.warning("FCM access token refresh failed: %s", exc)
                raise
            self._last_error = None
            self.fetched += 1
            return self._token

    def invalidate(self, token: str) -> None:
        """Forget `token` (FCM refused it); a no-op if it was already replaced."""
        if self._token == token:
            self._token = None

    def _assertion(self) -> str:
        now = int(time.time())
        claims = {
            "iss": self._account.client_email,
            "scope": SCOPE,
            "aud": self._account.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_S,
        }
        return jwt.encode(
            claims,
            self._account.private_key,
            algorithm="RS256",
            headers={"kid": self._account.private_key_id},
        )

    async def _fetch(self) -> tuple[str, float]:
        """`(access_token, refresh_at)`. Raises `AuthError`."""
        form = {"grant_type": GRANT_TYPE, "assertion": self._assertion()}
        started = time.monotonic()
        try:
            with trio.fail_after(self._timeout_s):
                request = self._client.build_request("POST", self._account.token_uri, data=form)
                response = await self._client.send(without_generator(request))
        except (trio.TooSlowError, httpx.TimeoutException):
            raise AuthError("the token endpoint timed out") from None
        except httpx.HTTPError as exc:
            raise AuthError(f"the token endpoint failed: {type(exc).__name__}") from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code != 200 or not isinstance(answer, dict):
            error = answer.get("error") if isinstance(answer, dict) else None
            raise AuthError(
                f"the token endpoint answered {response.status_code}"
                + (f" ({error})" if isinstance(error, str) else "")
            )
        token, expires_in = answer.get("access_token"), answer.get("expires_in")
        if not isinstance(token, str) or not token or not isinstance(expires_in, int | float):
            raise AuthError("the token endpoint's answer has no access_token/expires_in")
        margin = min(REFRESH_MARGIN_S, expires_in / 2)
        return token, started + expires_in - margin
