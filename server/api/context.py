"""What every view uses: the handlers, the request body parser and the caller."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from quart import current_app, request

from server.errors import ApiError, ApiErrorCode
from server.handlers.access import Actor
from server.handlers.conversations import ConversationHandler
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

    def __post_init__(self) -> None:
        self.sessions = SessionHandler(self.services)
        self.orgs = OrgHandler(self.services)
        self.profile = ProfileHandler(self.services)
        self.conversations = ConversationHandler(self.services)


def ctx() -> ApiContext:
    context: ApiContext = current_app.extensions["obrol"]
    return context


def invalid(message: str, field: str | None = None) -> ApiError:
    details = None if field is None else [{"field": field, "problem": message}]
    return ApiError(ApiErrorCode.INVALID_REQUEST, message, details=details)


async def body(model: type[M]) -> M:
    """The JSON body validated against `model`; invalid_json / invalid_request otherwise."""
    data = await request.get_data(cache=False)
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
