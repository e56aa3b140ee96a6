"""What every view uses: the handlers, the request body parser and the caller."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import from_json
from quart import current_app, request

from server.api.forwarded import Origin, TrustedProxies
from server.errors import ApiError, ApiErrorCode
from server.handlers.access import Actor
from server.handlers.attendance import AttendanceHandler
from server.handlers.audit import AuditHandler
from server.handlers.cancellation import CancellationHandler
from server.handlers.consent import ConsentHandler
from server.handlers.conversations import ConversationHandler
from server.handlers.deletion import DeletionHandler
from server.handlers.exports import ExportHandler
from server.handlers.files import FileHandler
from server.handlers.minors import MinorHandler
from server.handlers.notices import NoticeHandler
from server.handlers.orgs import OrgHandler
from server.handlers.policies import PolicyHandler
from server.handlers.profile import ProfileHandler
from server.handlers.push import PushHandler
from server.handlers.requests import RequestHandler
from server.handlers.retention import RetentionHandler
from server.handlers.sessions import SessionHandler
from server.services import Services

M = TypeVar("M", bound=BaseModel)

_JSON_SUFFIX = re.compile(r"^application/[a-z0-9.!#$&^_-]+\+json$")


@dataclass
class ApiContext:
    services: Services
    sessions: SessionHandler = field(init=False)
    orgs: OrgHandler = field(init=False)
    profile: ProfileHandler = field(init=False)
    conversations: ConversationHandler = field(init=False)
    files: FileHandler = field(init=False)
    push: PushHandler = field(init=False)
    consent: ConsentHandler = field(init=False)
    attendance: AttendanceHandler = field(init=False)
    policies: PolicyHandler = field(init=False)
    minors: MinorHandler = field(init=False)
    audit: AuditHandler = field(init=False)
    retention: RetentionHandler = field(init=False)
    requests: RequestHandler = field(init=False)
    notices: NoticeHandler = field(init=False)
    deletion: DeletionHandler = field(init=False)
    cancellation: CancellationHandler = field(init=False)
    exports: ExportHandler = field(init=False)
    proxies: TrustedProxies = field(init=False)

    def __post_init__(self) -> None:
        self.proxies = TrustedProxies(self.services.settings.trusted_proxies)
        self.sessions = SessionHandler(self.services)
        self.orgs = OrgHandler(self.services)
        self.profile = ProfileHandler(self.services)
        self.conversations = ConversationHandler(self.services)
        self.files = FileHandler(self.services, self.conversations)
        self.push = PushHandler(self.services)
        self.consent = ConsentHandler(self.services)
        self.attendance = AttendanceHandler(self.services)
        self.policies = PolicyHandler(self.services)
        self.minors = MinorHandler(self.services)
        self.audit = AuditHandler(self.services)
        self.retention = RetentionHandler(self.services)
        self.requests = RequestHandler(self.services)
        self.notices = NoticeHandler(self.services)
        self.deletion = DeletionHandler(self.services)
        self.cancellation = CancellationHandler(self.services)
        self.exports = ExportHandler(self.services)


def ctx() -> ApiContext:
    context: ApiContext = current_app.extensions["obrol"]
    return context


async def read_limited(limit: int) -> bytes:
    """The request body, refused (payload_too_large) as soon as it passes `limit` bytes."""
    too_large = ApiError(ApiErrorCode.PAYLOAD_TOO_LARGE, f"the body is larger than {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    data = bytearray()
    async for chunk in request.body:
        data += chunk
        if len(data) > limit:
            raise too_large
    return bytes(data)


def require_json() -> None:
    """unsupported_media_type unless the body is declared `application/json` (or `+json`)."""
    mime = request.mimetype
    if mime != "application/json" and not _JSON_SUFFIX.match(mime):
        raise ApiError(
            ApiErrorCode.UNSUPPORTED_MEDIA_TYPE,
            "send the body as JSON, with 'Content-Type: application/json'",
            details=[{"field": "Content-Type", "problem": "must be application/json"}],
        )


async def body(model: type[M]) -> M:
    """The JSON body validated against `model`.

    payload_too_large past max_request_bytes, unsupported_media_type unless declared JSON,
    invalid_json unless it parses as strict JSON (no NaN or Infinity), invalid_request
    (naming each field) unless it fits `model`.
    """
    data = await read_limited(ctx().services.settings.max_request_bytes)
    require_json()
    try:
        parsed = from_json(data, allow_inf_nan=False)
    except ValueError as exc:
        raise ApiError(ApiErrorCode.INVALID_JSON, f"the body is not valid JSON: {exc}") from None
    try:
        return model.model_validate(parsed)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise ApiError(
            ApiErrorCode.INVALID_REQUEST,
            "the request body is invalid",
            details=[
                {"field": ".".join(str(p) for p in e["loc"]) or "body", "problem": e["msg"]}
                for e in errors
            ],
        ) from None


# The views an account may use while a material privacy-policy version awaits its
# acceptance (every other authenticated call is 403 reconsent_required): reading and
# accepting the policy; what a password change needs (a new member may have to do both, in
# that order); stopping things - logging out, withdrawing a consent, dropping this device's
# push registration - which is never made to wait for an acceptance; and a person's rights:
# confirming the password again, opening and following a data-rights request (someone who
# does not accept a new policy may want their data or their account gone), the access
# summary and their own export, deleting their own messages and files, cancelling the
# account, and reading notices.
BEFORE_POLICY_ACCEPTANCE = frozenset(
    {
        "policies.mine",
        "policies.accept",
        "policies.versions",
        "policies.version",
        "auth.logout",
        "me.me",
        "me.change_password",
        "me.reauthenticate",
        "consent.withdraw",
        "push.unregister",
        "rights.open_request",
        "rights.my_requests",
        "rights.my_notices",
        "deletion.delete_message",
        "deletion.delete_file",
        "cancellation.cancel",
        "exports.summary",
        "exports.request_export",
        "exports.my_exports",
        "exports.my_export",
    }
)


async def actor(*, before_password_change: bool = False) -> Actor:
    """The authenticated caller; unauthenticated / token_expired / token_revoked otherwise.

    Every authenticated view comes through here, so this is where both gates are.
    A caller who must still change their initial password is refused with
    password_change_required, except where `before_password_change` (the few views they may
    use: reading their profile, changing the password, logging out). A caller who must
    accept a new material privacy policy is refused with reconsent_required, except in the
    views of BEFORE_POLICY_ACCEPTANCE (by endpoint name, so a new view is gated unless it
    is listed there).
    """
    return await ctx().sessions.authenticate(
        request.headers.get("Authorization"),
        before_password_change=before_password_change,
        before_policy_acceptance=request.endpoint in BEFORE_POLICY_ACCEPTANCE,
    )


def request_origin() -> Origin:
    """The client's address and scheme for this request: the connection's own, or what a
    trusted proxy says (server.api.forwarded). Everything that records or limits by
    client address goes through here."""
    return ctx().proxies.origin(
        request.remote_addr,
        request.scheme,
        request.headers.getlist("X-Forwarded-For"),
        request.headers.getlist("X-Forwarded-Proto"),
    )


def client_ip() -> str:
    return request_origin().ip


def user_agent() -> str:
    return request.headers.get("User-Agent", "")[:512]
