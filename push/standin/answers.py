"""What each stand-in service hands the dispatcher: the request's identity, then its answer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from push.standin.h2server import Response

JSON = "application/json"


@dataclass(frozen=True)
class Parsed:
    """What a service read from a request before deciding: enough to match faults and record."""

    token: str | None  # the device token it is for, if any
    payload: Any  # the parsed body (redacted where it holds credentials), or None


@dataclass(frozen=True)
class Verdict:
    """A service's answer and the reason to record with it (None for a success)."""

    response: Response
    reason: str | None


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def parse_json(body: bytes) -> tuple[bool, Any]:
    """(True, value) if `body` is one JSON document, else (False, None)."""
    try:
        return True, json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False, None
