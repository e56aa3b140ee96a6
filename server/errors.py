"""HTTP API errors: one enum of codes, one exception type, one JSON shape.

Handlers raise `ApiError` (or let storage errors through); `server.app` turns every
exception into the JSON error body in exactly one place:

    {"error": {"code": "not_found", "message": "no such member", "request_id": "..."}}
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from protocol.errors import ObrolError


class ApiErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    UNAUTHENTICATED = "unauthenticated"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_REVOKED = "token_revoked"
    BAD_CREDENTIALS = "bad_credentials"
    ACCOUNT_DEACTIVATED = "account_deactivated"
    ACCOUNT_CANCELLED = "account_cancelled"
    ONLY_OWNER = "only_owner"
    ORG_CANCELLED = "org_cancelled"
    EXPORT_FIRST = "export_first"
    WEAK_PASSWORD = "weak_password"
    PASSWORD_CHANGE_REQUIRED = "password_change_required"
    REAUTH_REQUIRED = "reauth_required"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    GONE = "gone"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    RATE_LIMITED = "rate_limited"
    SIGNUP_CLOSED = "signup_closed"
    PUSH_PROVIDER_UNAVAILABLE = "push_provider_unavailable"
    PURPOSE_SWITCHED_OFF = "purpose_switched_off"
    CONSENT_NOT_GRANTED = "consent_not_granted"
    NO_SITES = "no_sites"
    RECONSENT_REQUIRED = "reconsent_required"
    UNKNOWN_POLICY = "unknown_policy"
    POLICY_NOT_CURRENT = "policy_not_current"
    GUARDIAN_CONSENT_REQUIRED = "guardian_consent_required"
    GUARDIAN_CONSENT_NOT_REQUIRED = "guardian_consent_not_required"
    GUARDIAN_CONSENT_WITHDRAWN = "guardian_consent_withdrawn"
    ORG_DOES_NOT_SERVE_CHILDREN = "org_does_not_serve_children"
    REQUEST_CLOSED = "request_closed"
    NOTICE_PERIOD_TOO_SHORT = "notice_period_too_short"
    DATABASE_UNAVAILABLE = "database_unavailable"
    INTERNAL = "internal"


STATUS = {
    ApiErrorCode.INVALID_JSON: 400,
    ApiErrorCode.INVALID_REQUEST: 422,
    ApiErrorCode.UNAUTHENTICATED: 401,
    ApiErrorCode.TOKEN_EXPIRED: 401,
    ApiErrorCode.TOKEN_REVOKED: 401,
    ApiErrorCode.BAD_CREDENTIALS: 401,
    ApiErrorCode.ACCOUNT_DEACTIVATED: 403,
    ApiErrorCode.ACCOUNT_CANCELLED: 403,
    ApiErrorCode.ONLY_OWNER: 409,
    ApiErrorCode.ORG_CANCELLED: 409,
    ApiErrorCode.EXPORT_FIRST: 409,
    ApiErrorCode.WEAK_PASSWORD: 422,
    ApiErrorCode.PASSWORD_CHANGE_REQUIRED: 403,
    ApiErrorCode.REAUTH_REQUIRED: 403,
    ApiErrorCode.FORBIDDEN: 403,
    ApiErrorCode.NOT_FOUND: 404,
    ApiErrorCode.GONE: 410,
    ApiErrorCode.METHOD_NOT_ALLOWED: 405,
    ApiErrorCode.CONFLICT: 409,
    ApiErrorCode.PAYLOAD_TOO_LARGE: 413,
    ApiErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ApiErrorCode.RATE_LIMITED: 429,
    ApiErrorCode.SIGNUP_CLOSED: 403,
    ApiErrorCode.PUSH_PROVIDER_UNAVAILABLE: 422,
    ApiErrorCode.PURPOSE_SWITCHED_OFF: 403,
    ApiErrorCode.CONSENT_NOT_GRANTED: 409,
    ApiErrorCode.NO_SITES: 409,
    ApiErrorCode.RECONSENT_REQUIRED: 403,
    ApiErrorCode.UNKNOWN_POLICY: 404,
    ApiErrorCode.POLICY_NOT_CURRENT: 409,
    ApiErrorCode.GUARDIAN_CONSENT_REQUIRED: 403,
    ApiErrorCode.GUARDIAN_CONSENT_NOT_REQUIRED: 409,
    ApiErrorCode.GUARDIAN_CONSENT_WITHDRAWN: 409,
    ApiErrorCode.ORG_DOES_NOT_SERVE_CHILDREN: 409,
    ApiErrorCode.REQUEST_CLOSED: 409,
    ApiErrorCode.NOTICE_PERIOD_TOO_SHORT: 422,
    ApiErrorCode.DATABASE_UNAVAILABLE: 503,
    ApiErrorCode.INTERNAL: 500,
}


class ApiError(ObrolError):
    """An error a client caused or must know about; becomes one JSON error response."""

    def __init__(
        self,
        code: ApiErrorCode,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return STATUS[self.code]


def forbidden(message: str = "you may not do this") -> ApiError:
    return ApiError(ApiErrorCode.FORBIDDEN, message)


def invalid(message: str, field: str | None = None) -> ApiError:
    """invalid_request, naming the field at fault when there is one."""
    details = None if field is None else [{"field": field, "problem": message}]
    return ApiError(ApiErrorCode.INVALID_REQUEST, message, details=details)


def not_found(message: str) -> ApiError:
    return ApiError(ApiErrorCode.NOT_FOUND, message)
