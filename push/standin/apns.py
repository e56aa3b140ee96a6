"""Apple's rules for `POST /3/device/<token>`, as "Handling notification responses from APNs"
and "Sending notification requests to APNs" state them (token-based authentication).

Checks run in this order: method, path, provider token, headers, payload, device token,
the token's registration. Every answer carries `apns-id` (the client's, or a fresh one),
errors a JSON `{"reason": ...}` body, and 410 a `timestamp` in milliseconds.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import jwt

from push.standin.answers import JSON, Parsed, Verdict, json_bytes, parse_json
from push.standin.credentials import StandInCredentials
from push.standin.h2server import Request, Response

logger = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 4096
MAX_VOIP_PAYLOAD_BYTES = 5120
MAX_COLLAPSE_ID_BYTES = 64
PROVIDER_TOKEN_MAX_AGE_S = 3600
CLOCK_SKEW_S = 60
PUSH_TYPES = frozenset(
    {
        "alert",
        "background",
        "controls",
        "location",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "pushtotalk",
        "widgets",
    }
)
# Topics a push type other than alert/background uses: the bundle id plus one of these.
TOPIC_SUFFIXES = (
    ".voip",
    ".complication",
    ".pushkit.fileprovider",
    ".push-type.liveactivity",
    ".voip-ptt",
    ".location-query",
    ".push-type.widgets",
    ".push-type.controls",
)
PRIORITIES = frozenset({"1", "5", "10"})
# The reason a fault answers with when it names none: Apple's for that status (for 400, one
# about the payload, so a bare 400 fault reads as "refused for good", not "token dead").
DEFAULT_REASONS = {
    400: "PayloadEmpty",
    403: "Forbidden",
    404: "BadPath",
    405: "MethodNotAllowed",
    410: "Unregistered",
    413: "PayloadTooLarge",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}
_PATH = re.compile(r"/3/device/([^/?]*)")
_DEVICE_TOKEN = re.compile(r"[0-9a-fA-F]{64}")
_CANONICAL_UUID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_SINGLE_HEADERS = (
    "authorization",
    "apns-id",
    "apns-topic",
    "apns-push-type",
    "apns-priority",
    "apns-expiration",
    "apns-collapse-id",
)
_VERIFIED_CACHE_SIZE = 1024


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def apns_id_of(request: Request) -> str:
    """The request's apns-id if it sent a canonical one, else a fresh one (lower-case)."""
    given = request.header("apns-id")
    if given is not None and _CANONICAL_UUID.fullmatch(given):
        return given
    return str(uuid.uuid4())


def error_response(
    status: int,
    reason: str,
    apns_id: str,
    *,
    timestamp_ms: int | None = None,
    retry_after_s: int | None = None,
) -> Response:
    """Apple's error answer: `apns-id`, and `{"reason": ...}` (+ `timestamp` for 410)."""
    body: dict[str, Any] = {"reason": reason}
    if timestamp_ms is not None:
        body["timestamp"] = timestamp_ms
    headers = [("apns-id", apns_id), ("content-type", JSON)]
    if retry_after_s is not None:
        headers.append(("retry-after", str(retry_after_s)))
    return Response(status, tuple(headers), json_bytes(body))


class ApnsService:
    """Apple's APNs provider API for one key (key id + team id) and a set of topics."""

    def __init__(
        self,
        credentials: StandInCredentials,
        extra_topics: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key_id = credentials.apns_key_id
        self._team_id = credentials.apns_team_id
        self._public_key = credentials.apns_public_key()
        self.topics = {credentials.apns_topic, *extra_topics}
        self._clock = clock
        self._verified: dict[str, int] = {}  # provider token -> its iat
        self._unregistered: dict[str, int] = {}  # device token -> when, ms since epoch
        self._bundles: dict[str, str] = {}  # device token -> the bundle it was first used with

    def unregister(self, token: str) -> None:
        """Later pushes to `token` get 410 Unregistered, timestamped now."""
        self._unregistered[token.lower()] = int(self._clock() * 1000)

    def identify(self, request: Request) -> Parsed:
        match = _PATH.fullmatch(request.path)
        ok, payload = parse_json(request.body)
        return Parsed(token=match.group(1) if match else None, payload=payload if ok else None)

    def refuse(
        self, request: Request, status: int, reason: str | None, retry_after_s: int | None
    ) -> Verdict:
        """The answer a fault asks for; a 410 carries the timestamp Apple sends."""
        reason = reason or DEFAULT_REASONS.get(status, "InternalServerError")
        timestamp = int(self._clock() * 1000) if status == 410 else None
        response = error_response(
            status, reason, apns_id_of(request), timestamp_ms=timestamp, retry_after_s=retry_after_s
        )
        return Verdict(response, reason)

    def answer(self, request: Request, parsed: Parsed) -> Verdict:
        apns_id = apns_id_of(request)
        try:
            self._check(request, parsed)
        except _Refused as refused:
            timestamp = None
            if refused.status == 410:
                timestamp = self._unregistered.get((parsed.token or "").lower())
            response = error_response(
                refused.status, refused.reason, apns_id, timestamp_ms=timestamp
            )
            return Verdict(response, refused.reason)
        return Verdict(Response(200, (("apns-id", apns_id),)), None)

    def _check(self, request: Request, parsed: Parsed) -> None:
        """Raise _Refused with Apple's status and reason for the first rule broken."""
        if request.method != "POST":
            raise _Refused(405, "MethodNotAllowed")
        if parsed.token is None:
            raise _Refused(404, "BadPath")
        for name in _SINGLE_HEADERS:
            if request.header_count(name) > 1:
                raise _Refused(400, "DuplicateHeaders")
        self._check_provider_token(request.header("authorization"))
        push_type = self._check_headers(request)
        self._check_payload(request.body, request.raw_size, push_type)
        token = parsed.token
        if not token:
            raise _Refused(400, "MissingDeviceToken")
        if not _DEVICE_TOKEN.fullmatch(token):
            raise _Refused(400, "BadDeviceToken")
        if token.lower() in self._unregistered:
            raise _Refused(410, "Unregistered")
        if len(self.topics) > 1:  # a device token belongs to the first app it was used for
            topic = _bundle_of(request.header("apns-topic") or "")
            if self._bundles.setdefault(token.lower(), topic) != topic:
                raise _Refused(400, "DeviceTokenNotForTopic")

    def _check_provider_token(self, authorization: str | None) -> None:
        if not authorization:
            raise _Refused(403, "MissingProviderToken")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Refused(403, "InvalidProviderToken")
        token = token.strip()
        iat = self._verified.get(token)
        if iat is None:
            iat = self._verify(token)
            if len(self._verified) >= _VERIFIED_CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = iat
        now = self._clock()
        if iat > now + CLOCK_SKEW_S:
            raise _Refused(403, "InvalidProviderToken")
        if now - iat > PROVIDER_TOKEN_MAX_AGE_S:
            raise _Refused(403, "ExpiredProviderToken")

    def _verify(self, token: str) -> int:
        """The provider token's iat, if it is ES256-signed by our key for our team."""
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != "ES256" or header.get("kid") != self._key_id:
                raise _Refused(403, "InvalidProviderToken")
            claims = jwt.decode(
                token,
                self._public_key,
                algorithms=["ES256"],
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "verify_aud": False,
                    "require": ["iss", "iat"],
                },
            )
        except jwt.PyJWTError as exc:
            logger.info("provider token refused: %s", type(exc).__name__)
            raise _Refused(403, "InvalidProviderToken") from exc
        iat = claims.get("iat")
        if claims.get("iss") != self._team_id or not isinstance(iat, int | float):
            raise _Refused(403, "InvalidProviderToken")
        return int(iat)

    def _check_headers(self, request: Request) -> str | None:
        """Validate the apns-* headers; returns the push type (None if not given)."""
        topic = request.header("apns-topic")
        if not topic:
            raise _Refused(400, "MissingTopic")
        if _bundle_of(topic) not in self.topics:
            raise _Refused(400, "TopicDisallowed")
        push_type = request.header("apns-push-type")
        if push_type is not None and push_type not in PUSH_TYPES:
            raise _Refused(400, "InvalidPushType")
        priority = request.header("apns-priority")
        if priority is not None:
            if priority not in PRIORITIES:
                raise _Refused(400, "BadPriority")
            # "It's an error to specify priority 10 for a background notification."
            if priority == "10" and push_type == "background":
                raise _Refused(400, "BadPriority")
        expiration = request.header("apns-expiration")
        if expiration is not None and not re.fullmatch(r"[0-9]{1,19}", expiration):
            raise _Refused(400, "BadExpirationDate")
        collapse_id = request.header("apns-collapse-id")
        if collapse_id is not None and len(collapse_id.encode()) > MAX_COLLAPSE_ID_BYTES:
            raise _Refused(400, "BadCollapseId")
        apns_id = request.header("apns-id")
        if apns_id is not None and not _CANONICAL_UUID.fullmatch(apns_id):
            raise _Refused(400, "BadMessageId")
        return push_type

    def _check_payload(self, body: bytes, raw_size: int, push_type: str | None) -> None:
        if not raw_size:
            raise _Refused(400, "PayloadEmpty")
        limit = MAX_VOIP_PAYLOAD_BYTES if push_type == "voip" else MAX_PAYLOAD_BYTES
        if raw_size > limit:
            raise _Refused(413, "PayloadTooLarge")
        ok, payload = parse_json(body)
        # Apple documents no reason for a payload that is not a JSON dictionary with an
        # "aps" dictionary; "BadPayload" is the stand-in's own.
        if not ok or not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
            raise _Refused(400, "BadPayload")


def _bundle_of(topic: str) -> str:
    """The bundle id a topic belongs to (push-type suffixes such as ".voip" removed)."""
    for suffix in TOPIC_SUFFIXES:
        if topic.endswith(suffix):
            return topic[: -len(suffix)]
    return topic
