"""Google's FCM HTTP v1 `POST /v1/projects/<project>/messages:send`.

Checks run in this order: path and method, the OAuth2 access token (401 UNAUTHENTICATED),
its project and scope (403 PERMISSION_DENIED), the body's shape (400 INVALID_ARGUMENT, worded
as Google's proto-JSON parser words it), the registration token (404 UNREGISTERED). Errors
are Google's `{"error": {"code", "message", "status", "details"}}`; FCM's own carry an
`FcmError` detail with the `errorCode`.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from push.standin.answers import Parsed, Verdict, json_bytes, parse_json
from push.standin.fcm_oauth import GOOGLE_JSON, AccessTokens
from push.standin.fcm_rules import Invalid, check_send_request
from push.standin.h2server import Request, Response

FCM_SCOPES = frozenset(
    {
        "https://www.googleapis.com/auth/firebase.messaging",
        "https://www.googleapis.com/auth/cloud-platform",
    }
)
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
# FCM's error codes: the HTTP status, Google's canonical status, and Google's message.
FCM_ERRORS: dict[str, tuple[int, str, str]] = {
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED", "Quota exceeded."),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"),
    "UNSPECIFIED_ERROR": (500, "UNKNOWN", "Unknown error."),
}
# A fault's errorCode when it names none, by status.
DEFAULT_ERROR_CODES = {
    400: "INVALID_ARGUMENT",
    401: "THIRD_PARTY_AUTH_ERROR",
    403: "SENDER_ID_MISMATCH",
    404: "UNREGISTERED",
    429: "QUOTA_EXCEEDED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
GOOGLE_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_PATH = re.compile(r"/v1/projects/([^/?]+)/messages:send")
_SEE = "See https://developers.google.com/identity/sign-in/web/devconsole-project."
_MISSING_CREDENTIAL = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, "
    f"login cookie or other valid authentication credential. {_SEE}"
)
_INVALID_CREDENTIAL = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, "
    f"login cookie or other valid authentication credential. {_SEE}"
)
_SEND_METHOD = {
    "service": "fcm.googleapis.com",
    "method": "google.firebase.fcm.v1.FcmService.SendMessage",
}


def google_error(
    status: int,
    message: str,
    google_status: str,
    details: list[dict[str, Any]] | None = None,
    *,
    headers: tuple[tuple[str, str], ...] = (),
) -> Response:
    """Google's error envelope."""
    error: dict[str, Any] = {"code": status, "message": message, "status": google_status}
    if details:
        error["details"] = details
    all_headers = (("content-type", GOOGLE_JSON), *headers)
    return Response(status, all_headers, json_bytes({"error": error}))


def fcm_error(
    error_code: str, message: str | None = None, *, retry_after_s: int | None = None
) -> Verdict:
    """An FCM error answer for `error_code` (an FcmError code such as "UNREGISTERED")."""
    status, google_status, default_message = FCM_ERRORS[error_code]
    details = [{"@type": FCM_ERROR, "errorCode": error_code}]
    headers = () if retry_after_s is None else (("retry-after", str(retry_after_s)),)
    response = google_error(
        status, message or default_message, google_status, details, headers=headers
    )
    return Verdict(response, error_code)


class FcmService:
    """FCM HTTP v1 for one Firebase project."""

    def __init__(
        self, project: str, tokens: AccessTokens, clock: Callable[[], float] = time.time
    ) -> None:
        self.project = project
        self._tokens = tokens
        self._clock = clock
        self._unregistered: set[str] = set()

    def unregister(self, token: str) -> None:
        """Later sends to registration token `token` get 404 UNREGISTERED."""
        self._unregistered.add(token)

    def identify(self, request: Request) -> Parsed:
        ok, body = parse_json(request.body)
        message = body.get("message") if ok and isinstance(body, dict) else None
        token = message.get("token") if isinstance(message, dict) else None
        return Parsed(token=token if isinstance(token, str) else None, payload=body if ok else None)

    def refuse(
        self, request: Request, status: int, reason: str | None, retry_after_s: int | None
    ) -> Verdict:
        """The answer a fault asks for: an FcmError code as reason, or a Google status."""
        code = reason or DEFAULT_ERROR_CODES.get(status)
        if code in FCM_ERRORS:
            _, google_status, message = FCM_ERRORS[code]
            details = [{"@type": FCM_ERROR, "errorCode": code}]
        else:
            google_status = code or GOOGLE_STATUSES.get(status, "UNKNOWN")
            message, details = "Injected by the stand-in.", []
        headers = () if retry_after_s is None else (("retry-after", str(retry_after_s)),)
        response = google_error(status, message, google_status, details, headers=headers)
        return Verdict(response, code or google_status)

    def answer(self, request: Request, parsed: Parsed) -> Verdict:
        match = _PATH.fullmatch(request.path)
        if match is None or request.method != "POST":
            return Verdict(google_error(404, "Method not found.", "NOT_FOUND"), "NOT_FOUND")
        refusal = self._check_access(request.header("authorization"), match.group(1))
        if refusal is not None:
            return refusal
        ok, body = parse_json(request.body)
        try:
            check_send_request(ok, body)
        except Invalid as invalid:
            return self._invalid(invalid)
        message = body["message"]
        token = message.get("token")
        if token is not None and token in self._unregistered:
            return fcm_error("UNREGISTERED")
        if body.get("validate_only") or body.get("validateOnly"):
            name = f"projects/{self.project}/messages/fake_message_id"
        else:
            millis = int(self._clock() * 1000)
            name = f"projects/{self.project}/messages/0:{millis}%{secrets.token_hex(8)}"
        response = Response(200, (("content-type", GOOGLE_JSON),), json_bytes({"name": name}))
        return Verdict(response, None)

    def _check_access(self, authorization: str | None, project: str) -> Verdict | None:
        """None if the bearer token may send for `project`, else Google's refusal."""
        scheme, _, token = (authorization or "").partition(" ")
        if not authorization or scheme.lower() != "bearer" or not token.strip():
            challenge = 'Bearer realm="https://accounts.google.com/"'
            response = google_error(
                401,
                _MISSING_CREDENTIAL,
                "UNAUTHENTICATED",
                headers=(("www-authenticate", challenge),),
            )
            return Verdict(response, "UNAUTHENTICATED")
        grant = self._tokens.check(token.strip())
        if grant is None:
            info = {
                "@type": ERROR_INFO,
                "reason": "ACCESS_TOKEN_EXPIRED",
                "domain": "googleapis.com",
                "metadata": _SEND_METHOD,
            }
            challenge = 'Bearer realm="https://accounts.google.com/", error="invalid_token"'
            response = google_error(
                401,
                _INVALID_CREDENTIAL,
                "UNAUTHENTICATED",
                [info],
                headers=(("www-authenticate", challenge),),
            )
            return Verdict(response, "UNAUTHENTICATED")
        if project != grant.project:
            info = {
                "@type": ERROR_INFO,
                "reason": "IAM_PERMISSION_DENIED",
                "domain": "cloudresourcemanager.googleapis.com",
                "metadata": {"permission": "cloudmessaging.messages.create"},
            }
            message = (
                "Permission 'cloudmessaging.messages.create' denied on resource "
                f"'//cloudresourcemanager.googleapis.com/projects/{project}' "
                "(or it may not exist)."
            )
            response = google_error(403, message, "PERMISSION_DENIED", [info])
            return Verdict(response, "PERMISSION_DENIED")
        if not grant.scopes & FCM_SCOPES:
            info = {
                "@type": ERROR_INFO,
                "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
                "domain": "googleapis.com",
                "metadata": _SEND_METHOD,
            }
            response = google_error(
                403, "Request had insufficient authentication scopes.", "PERMISSION_DENIED", [info]
            )
            return Verdict(response, "PERMISSION_DENIED")
        return None

    def _invalid(self, invalid: Invalid) -> Verdict:
        details: list[dict[str, Any]] = []
        if invalid.field is not None:
            violation = {"field": invalid.field, "description": invalid.message}
            details.append({"@type": BAD_REQUEST, "fieldViolations": [violation]})
        if invalid.fcm_error:
            details.append({"@type": FCM_ERROR, "errorCode": "INVALID_ARGUMENT"})
        response = google_error(400, invalid.message, "INVALID_ARGUMENT", details)
        return Verdict(response, "INVALID_ARGUMENT")
