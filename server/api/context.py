"""What every view uses: the handlers, the request body parser and the caller."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from quart import current_app, request

from server.errors import ApiError, ApiErrorCode
from server.handlers.access import Actor
from server.handlers.conversations import ConversationHandler
from server.handlers.files import FileHandler
from server.handlers.orgs import OrgHandler
from server.handlers.profile import ProfileHandler
from server.handlers.sessions import SessionHandler
from server.services import Services

M = TypeVar("M", bound=BaseModel)


@dataclass
class ApiContext:
    services: Services
    sessions: SessionHandler = field(init=False)
    orgs: OrgHandler = field(init=False)
    profile: ProfileHandler = field(init=False)
    conversations: ConversationHandler = field(init=False)
    files: FileHandler = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = SessionHandler(self.services)
        self.orgs = OrgHandler(self.services)
        self.profile = ProfileHandler(self.services)
        self.conversations = ConversationHandler(self.services)
        self.files = FileHandler(self.services, self.conversations)


def ctx() -> ApiContext:
    context: ApiContext = current_app.extensions["obrol"]
    return context


def invalid(message: str, field: str | None = None) -> ApiError:
    details = None if field is None else [{"field": field, "problem": message}]
    return ApiError(ApiErrorCode.INVALID_REQUEST, message, details=details)


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


async def body(model: type[M]) -> M:
    """The JSON body validated against `model`; invalid_json / invalid_request otherwise."""
    data = await read_limited(ctx().services.settings.max_request_bytes)
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise ApiError(ApiErrorCode.INVALID_JSON, "the body is not valid JSON") from None
        raise ApiError(
            ApiErrorCode.INVALID_REQUEST,
            "the request body is invalid",
            details=[
                {"field": ".".join(str(p) for p in e["loc"]) or "body", "problem": e["msg"]}
                for e in errors
            ],
        ) from None


async def actor() -> Actor:
    """The authenticated caller; unauthenticated / token_expired / token_revoked otherwise."""
    return await ctx().sessions.authenticate(request.headers.get("Authorization"))


def client_ip() -> str:
    return request.remote_addr or "unknown"


def user_agent() -> str:
    return request.headers.get("User-Agent", "")[:512]
