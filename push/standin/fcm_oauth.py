"""Google's OAuth2 token endpoint for a service account (the JWT-bearer grant, RFC 7523),
as `https://oauth2.googleapis.com/token` answers it, and the access tokens it hands out.

A client signs an assertion with the service account's key (RS256, `kid` = private_key_id,
`iss` = client_email, `aud` = token_uri, a `scope`, and `exp` at most an hour after `iat`)
and posts it as a form; it gets `{"access_token", "expires_in", "token_type": "Bearer"}` or
a 400 `{"error": ..., "error_description": ...}` worded as Google words it.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import jwt

from push.standin.answers import Parsed, Verdict, json_bytes, parse_json
from push.standin.credentials import StandInCredentials
from push.standin.h2server import Request, Response

logger = logging.getLogger(__name__)

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_ASSERTION_LIFETIME_S = 3600
CLOCK_SKEW_S = 60
GOOGLE_JSON = "application/json; charset=utf-8"
_NO_CACHE = (
    ("cache-control", "no-cache, no-store, max-age=0, must-revalidate"),
    ("pragma", "no-cache"),
)
_SHORT_LIVED = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
    "timeframe. Check your iat and exp values in the JWT claim."
)
_BAD_SIGNATURE = "Invalid JWT Signature."
# A fault's error code when it names none, by status.
DEFAULT_ERRORS = {
    400: "invalid_grant",
    401: "invalid_client",
    403: "access_denied",
    429: "rate_limit_exceeded",
    500: "internal_failure",
    503: "temporarily_unavailable",
}


@dataclass(frozen=True)
class Grant:
    """What an access token allows, and until when (time.time() seconds)."""

    project: str
    scopes: frozenset[str]
    expires_at: float


class AccessTokens:
    """The access tokens issued so far; each lives `ttl_s` seconds."""

    def __init__(self, ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        if ttl_s < 1:
            raise ValueError("access token lifetime must be at least 1 s")
        self.ttl_s = ttl_s
        self._clock = clock
        self._grants: dict[str, Grant] = {}

    def issue(self, project: str, scopes: frozenset[str]) -> str:
        now = self._clock()
        if len(self._grants) > 10_000:
            self._grants = {t: g for t, g in self._grants.items() if g.expires_at > now}
        token = "ya29.c." + secrets.token_urlsafe(96)
        self._grants[token] = Grant(project, scopes, now + self.ttl_s)
        return token

    def check(self, token: str) -> Grant | None:
        """The grant behind `token`, or None if it is unknown or expired."""
        grant = self._grants.get(token)
        if grant is None or grant.expires_at <= self._clock():
            return None
        return grant

    def expire_all(self) -> None:
        """Every token issued so far is expired from now on (as if its hour had passed)."""
        self._grants.clear()


class _Refused(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def error_response(
    status: int, error: str, description: str, retry_after_s: int | None = None
) -> Response:
    headers = [("content-type", GOOGLE_JSON), *_NO_CACHE]
    if retry_after_s is not None:
        headers.append(("retry-after", str(retry_after_s)))
    body = {"error": error, "error_description": description}
    return Response(status, tuple(headers), json_bytes(body))


class OAuthService:
    """The token endpoint for one service account, whose token_uri is `token_uri`."""

    def __init__(
        self,
        credentials: StandInCredentials,
        token_uri: str,
        tokens: AccessTokens,
        clock: Callable[[], float] = time.time,
    ) -> None:
        account = credentials.service_account()
        self._key_id: str = account["private_key_id"]
        self._email: str = account["client_email"]
        self._project = credentials.fcm_project
        self._public_key = credentials.fcm_public_key()
        self._token_uri = token_uri
        self._tokens = tokens
        self._clock = clock

    def identify(self, request: Request) -> Parsed:
        """The form's fields, the assertion itself redacted (it is a credential)."""
        form = _form(request)
        redacted = {k: ("…" if k == "assertion" else v) for k, v in form.items()}
        return Parsed(token=None, payload=redacted)

    def refuse(
        self, request: Request, status: int, reason: str | None, retry_after_s: int | None
    ) -> Verdict:
        error = reason or DEFAULT_ERRORS.get(status, "internal_failure")
        response = error_response(status, error, "Injected by the stand-in.", retry_after_s)
        return Verdict(response, error)

    def answer(self, request: Request, parsed: Parsed) -> Verdict:
        if request.method != "POST":
            return Verdict(
                error_response(405, "invalid_request", "Method not allowed."), "invalid_request"
            )
        try:
            scopes = self._check(_form(request))
        except _Refused as refused:
            return Verdict(error_response(400, refused.error, refused.description), refused.error)
        token = self._tokens.issue(self._project, scopes)
        body = {"access_token": token, "expires_in": self._tokens.ttl_s, "token_type": "Bearer"}
        headers = (("content-type", GOOGLE_JSON), *_NO_CACHE)
        return Verdict(Response(200, headers, json_bytes(body)), None)

    def _check(self, form: dict[str, str]) -> frozenset[str]:
        """The scopes granted, or _Refused with Google's error and description."""
        grant_type = form.get("grant_type", "")
        if grant_type != JWT_BEARER:
            raise _Refused("unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        assertion = form.get("assertion")
        if not assertion:
            raise _Refused("invalid_request", "Missing required parameter: assertion")
        claims = self._verify(assertion)
        if claims.get("iss") != self._email:
            raise _Refused("invalid_grant", "Invalid grant: account not found")
        if claims.get("aud") != self._token_uri:
            raise _Refused(
                "invalid_grant",
                f"Invalid JWT: Failed audience check. The right audience is {self._token_uri}",
            )
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int | float) or not isinstance(exp, int | float):
            raise _Refused("invalid_grant", _SHORT_LIVED)
        now = self._clock()
        if exp - iat > MAX_ASSERTION_LIFETIME_S or exp <= now or iat > now + CLOCK_SKEW_S:
            raise _Refused("invalid_grant", _SHORT_LIVED)
        scope = claims.get("scope")
        scopes = frozenset(scope.split()) if isinstance(scope, str) else frozenset()
        if not scopes:
            raise _Refused("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        return scopes

    def _verify(self, assertion: str) -> dict[str, Any]:
        """The assertion's claims if it is RS256-signed with the service account's key."""
        try:
            header = jwt.get_unverified_header(assertion)
            kid = header.get("kid")
            if header.get("alg") != "RS256" or (kid is not None and kid != self._key_id):
                raise _Refused("invalid_grant", _BAD_SIGNATURE)
            return jwt.decode(
                assertion,
                self._public_key,
                algorithms=["RS256"],
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "verify_aud": False,
                },
            )
        except jwt.InvalidSignatureError as exc:
            raise _Refused("invalid_grant", _BAD_SIGNATURE) from exc
        except jwt.PyJWTError as exc:
            logger.info("assertion refused: %s", type(exc).__name__)
            raise _Refused("invalid_grant", "Invalid JWT: malformed assertion.") from exc


def _form(request: Request) -> dict[str, str]:
    """The request's fields: a form (as Google's clients send it) or a JSON object."""
    content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
    if content_type == "application/json":
        ok, value = parse_json(request.body)
        if ok and isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        return {}
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        return {}
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}
