"""The HTTP API application and the one place exceptions become HTTP responses."""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any

from quart import Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from server.api import (
    attendance,
    audit,
    auth,
    cancellation,
    consent,
    conversations,
    deletion,
    exports,
    files,
    me,
    meta,
    minors,
    orgs,
    policies,
    push,
    retention,
    rights,
)
from server.api.asgi import close_after_early_answers
from server.api.context import ApiContext, request_origin
from server.errors import ApiError, ApiErrorCode
from server.logs import request_id
from server.services import Services
from storage.attendance import NoSitesError
from storage.cancellation import CancellationError
from storage.consent import ConsentError
from storage.deletion import NotYoursError
from storage.errors import ConflictError, DatabaseUnavailableError, NotFoundError
from storage.exports import ExportError
from storage.keyring import KeyDestroyedError
from storage.minors import GuardianError
from storage.org_cancellation import OrgCancellationError
from storage.policies import PolicyError
from storage.requests import RequestError

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# Browsers that once reached us over https stay on https for a year.
HSTS = "max-age=31536000"

HTTP_CODES = {
    404: (ApiErrorCode.NOT_FOUND, "no such endpoint"),
    405: (ApiErrorCode.METHOD_NOT_ALLOWED, "this endpoint does not take that method"),
    413: (ApiErrorCode.PAYLOAD_TOO_LARGE, "the request body is too large"),
}


def _unwrap(exc: Exception) -> Exception:
    """What an exception group (from a nursery) stands for: a database outage if any task
    met one, else its only exception. Anything else is returned as it is."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending:
        item = pending.pop()
        if isinstance(item, BaseExceptionGroup):
            pending.extend(item.exceptions)
        else:
            leaves.append(item)
    outages = [e for e in leaves if isinstance(e, DatabaseUnavailableError)]
    if outages:
        return outages[0]
    if len(leaves) == 1 and isinstance(leaves[0], Exception):
        return leaves[0]
    return exc


# The code of each domain rule that refuses a change: (exception type, its reason).
RULE_CODES: dict[tuple[type[Exception], str | None], ApiErrorCode] = {
    (ConsentError, "not_granted"): ApiErrorCode.CONSENT_NOT_GRANTED,
    (ConsentError, "switched_off"): ApiErrorCode.PURPOSE_SWITCHED_OFF,
    (PolicyError, "unknown"): ApiErrorCode.UNKNOWN_POLICY,
    (PolicyError, "not_current"): ApiErrorCode.POLICY_NOT_CURRENT,
    (GuardianError, "not_a_minor"): ApiErrorCode.GUARDIAN_CONSENT_NOT_REQUIRED,
    (GuardianError, "not_serving_children"): ApiErrorCode.ORG_DOES_NOT_SERVE_CHILDREN,
    (GuardianError, "withdrawn"): ApiErrorCode.GUARDIAN_CONSENT_WITHDRAWN,
    (NoSitesError, None): ApiErrorCode.NO_SITES,
    (RequestError, "closed"): ApiErrorCode.REQUEST_CLOSED,
    (KeyDestroyedError, None): ApiErrorCode.ACCOUNT_DEACTIVATED,
    (NotYoursError, None): ApiErrorCode.FORBIDDEN,
    (CancellationError, "cancelled"): ApiErrorCode.ACCOUNT_CANCELLED,
    (CancellationError, "only_owner"): ApiErrorCode.ONLY_OWNER,
    (ExportError, "gone"): ApiErrorCode.GONE,
    (OrgCancellationError, "cancelled"): ApiErrorCode.ORG_CANCELLED,
    (OrgCancellationError, "export_first"): ApiErrorCode.EXPORT_FIRST,
}


def _refusal(exc: Exception) -> ApiError | None:
    """The ApiError for a storage rule that refused a change (None: not one of those)."""
    if isinstance(exc, NotFoundError):
        return ApiError(ApiErrorCode.NOT_FOUND, str(exc))
    code = RULE_CODES.get((type(exc), getattr(exc, "reason", None)))
    if code is not None:
        return ApiError(code, str(exc))
    if isinstance(exc, ConflictError):
        details = None if exc.field is None else [{"field": exc.field, "problem": "taken"}]
        return ApiError(ApiErrorCode.CONFLICT, str(exc), details=details)
    return None


def as_api_error(exc: Exception) -> ApiError:
    """Map any exception to the ApiError a client sees. Unexpected ones are logged.

    A database outage of any kind (storage raises DatabaseUnavailableError for all of them)
    is 503 `database_unavailable`, never 500: the client may retry later."""
    exc = _unwrap(exc)
    if isinstance(exc, ApiError):
        return exc
    refused = _refusal(exc)
    if refused is not None:
        return refused
    if isinstance(exc, DatabaseUnavailableError):
        logger.warning("database unavailable: %s", exc)
        return ApiError(ApiErrorCode.DATABASE_UNAVAILABLE, "the database is unavailable")
    if isinstance(exc, HTTPException) and exc.code is not None and exc.code < 500:
        code, message = HTTP_CODES.get(exc.code, (ApiErrorCode.INVALID_REQUEST, "bad request"))
        return ApiError(code, message)
    logger.exception("unexpected error", exc_info=exc)
    return ApiError(ApiErrorCode.INTERNAL, "internal error; quote the request id when asking")


def create_app(services: Services) -> QuartTrio:
    """The quart-trio application serving the REST API over `services`."""
    app = QuartTrio("obrol")
    app.config.update(
        # Uploads stream up to max_upload_bytes; JSON bodies are held to max_request_bytes
        # by server.api.context.body as they are read.
        MAX_CONTENT_LENGTH=max(
            services.settings.max_upload_bytes, services.settings.max_request_bytes
        ),
        BODY_TIMEOUT=services.settings.request_timeout_s,
        RESPONSE_TIMEOUT=services.settings.request_timeout_s,
        PROVIDE_AUTOMATIC_OPTIONS=True,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # Quart's documented way to add ASGI middleware is to replace this method.
    app.asgi_app = close_after_early_answers(  # type: ignore[method-assign,assignment]
        app.asgi_app, services.settings.request_timeout_s
    )
    app.extensions["obrol"] = ApiContext(services)
    tls = services.settings.tls_enabled
    blueprints = (
        meta.bp,
        auth.bp,
        orgs.bp,
        me.bp,
        conversations.bp,
        deletion.bp,
        files.bp,
        push.bp,
        consent.bp,
        attendance.bp,
        policies.bp,
        minors.bp,
        audit.bp,
        retention.bp,
        rights.bp,
        cancellation.bp,
        exports.bp,
    )
    for blueprint in blueprints:
        app.register_blueprint(blueprint)

    @app.before_request
    async def assign_request_id() -> None:
        given = request.headers.get("X-Request-Id", "")
        request_id.set(given if _REQUEST_ID.match(given) else secrets.token_hex(8))

    @app.after_request
    async def tag_response(response: Response) -> Response:
        response.headers["X-Request-Id"] = request_id.get()
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        if tls or request_origin().scheme == "https":
            response.headers["Strict-Transport-Security"] = HSTS
        return response

    @app.errorhandler(Exception)
    async def error_response(exc: Exception) -> tuple[Response, int, dict[str, str]]:
        error = as_api_error(exc)
        payload: dict[str, Any] = {
            "code": error.code.value,
            "message": error.message,
            "request_id": request_id.get(),
        }
        if error.details:
            payload["details"] = error.details
        return jsonify({"error": payload}), error.status, error.headers

    return app
