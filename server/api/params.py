"""Query parameters, parsed once for every view: bounded whole numbers, page sizes, text.

A value that is missing takes its default; one that is malformed or out of range is a 422
`invalid_request` naming the parameter - never a number PostgreSQL cannot hold.
"""

from __future__ import annotations

import re
import uuid

from quart import request

from server.errors import invalid
from server.text import text_problem

BIGINT_MAX = 2**63 - 1  # PostgreSQL bigint: sequence numbers and stream positions
PAGE_DEFAULT = 50
PAGE_MAX = 200

_WHOLE_NUMBER = re.compile(r"^-?[0-9]{1,19}$")  # ASCII digits only: int() takes "٣" and "1_0"


def int_arg(name: str, *, minimum: int, maximum: int) -> int | None:
    """The parameter as a whole number in [minimum, maximum], or None if it is absent."""
    raw = request.args.get(name)
    if raw is None:
        return None
    if not _WHOLE_NUMBER.match(raw):
        raise invalid(f"must be a whole number from {minimum} to {maximum}", name)
    value = int(raw)
    if not minimum <= value <= maximum:
        raise invalid(f"must be a whole number from {minimum} to {maximum}", name)
    return value


def uuid_arg(name: str, problem: str = "must be an id") -> uuid.UUID | None:
    """The parameter as an id, or None if it is absent; 422 saying `problem` otherwise."""
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise invalid(problem, name) from None


def page_limit(name: str = "limit", default: int = PAGE_DEFAULT, maximum: int = PAGE_MAX) -> int:
    """The page size of every paged endpoint: 1..maximum, `default` when absent."""
    value = int_arg(name, minimum=1, maximum=maximum)
    return default if value is None else value


def text_arg(name: str, *, max_length: int) -> str | None:
    """The parameter as one line of text (no control characters), or None if absent."""
    raw = request.args.get(name)
    if raw is None:
        return None
    if len(raw) > max_length:
        raise invalid(f"must be at most {max_length} characters", name)
    problem = text_problem(raw)
    if problem is not None:
        raise invalid(problem, name)
    return raw
