"""Field rules shared by the frame types: types, ranges and lengths, checked in one place.

Each `check_*` returns the value (normalised where said) or raises `LocalProtocolError`
with `ErrorCode.INVALID_FIELD` (or the code given). Frames call these from `__post_init__`,
so building a frame with bad contents fails where it is built; the decoder builds frames
from the wire and turns those errors into `RemoteProtocolError`.

String lengths are counted in Unicode code points unless a rule says ASCII; every integer
on the wire lies in 0 .. 2**53 - 1 so that JavaScript clients can hold it in a number.
"""

from __future__ import annotations

import enum
import math
import re
from typing import Literal, TypeVar

from protocol.codes import ErrorCode
from protocol.errors import LocalProtocolError

MAX_SAFE_INTEGER = 2**53 - 1
"""Largest integer any field may hold (JavaScript's Number.MAX_SAFE_INTEGER)."""

ID_BYTES = 16
"""Every id (message, conversation, account, device, file) is a 16-byte UUID."""

MAX_CID_CHARS = 64
MAX_TEXT_CHARS = 16_000
MAX_FILE_NAME_CHARS = 255
MAX_MIME_CHARS = 127
MAX_THUMB_BYTES = 16 * 1024
MAX_ERR_MESSAGE_CHARS = 1_000
MAX_SCOPE_MEMBERS = 1_000
MAX_RETENTION_S = 2**32 - 1
MAX_IDENTIFIER_CHARS = 64
MAX_ACCURACY_M = 10_000_000.0
MAX_POLICY_VERSION_CHARS = 32
POLICY_VERSION_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}"
"""A privacy-policy version label: 1..32 ASCII letters, digits, '.', '_', '-' (e.g.
"2026-01", "v3.1"), starting with a letter or digit."""

_CID_RE = re.compile(r"[\x21-\x7e]{1,64}\Z")
_IDENTIFIER_RE = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
_MIME_TOKEN = r"[A-Za-z0-9!#$&^_.+-]+"
_MIME_RE = re.compile(rf"{_MIME_TOKEN}/{_MIME_TOKEN}\Z")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_POLICY_VERSION_RE = re.compile(POLICY_VERSION_PATTERN + r"\Z")

Scope = Literal["conversation"] | tuple[bytes, ...]
"""Who may see consent-tagged data: the whole conversation or the listed accounts."""

E = TypeVar("E", bound=enum.StrEnum)


def invalid(name: str, why: str, code: ErrorCode = ErrorCode.INVALID_FIELD) -> LocalProtocolError:
    """Build the error for field `name` breaking a rule (the caller raises it)."""
    return LocalProtocolError(code, f"{name}: {why}")


def check_id(name: str, value: object, code: ErrorCode = ErrorCode.INVALID_FIELD) -> bytes:
    """Return `value` if it is exactly 16 bytes; raise otherwise."""
    if type(value) is not bytes or len(value) != ID_BYTES:
        raise invalid(name, "must be 16 bytes", code)
    return value


def check_bytes(name: str, value: object, *, min_len: int, max_len: int) -> bytes:
    """Return `value` if it is bytes with min_len <= length <= max_len; raise otherwise."""
    if type(value) is not bytes or not min_len <= len(value) <= max_len:
        raise invalid(name, f"must be {min_len}..{max_len} bytes")
    return value


def check_int(
    name: str,
    value: object,
    lo: int = 0,
    hi: int = MAX_SAFE_INTEGER,
    code: ErrorCode = ErrorCode.INVALID_FIELD,
) -> int:
    """Return `value` if it is an int (never a bool) in lo..hi; raise otherwise."""
    if type(value) is not int or not lo <= value <= hi:
        raise invalid(name, f"must be an integer in {lo}..{hi}", code)
    return value


def check_optional_int(name: str, value: object, lo: int = 0) -> int | None:
    """Like `check_int`, but None passes."""
    return None if value is None else check_int(name, value, lo)


def check_float(name: str, value: object, lo: float, hi: float) -> float:
    """Return `value` as a float if it is a finite int or float in lo..hi; raise otherwise.

    Integers are accepted because some msgpack encoders write 1.0 as 1.
    """
    if type(value) is int:
        value = float(value)
    if type(value) is not float or not math.isfinite(value) or not lo <= value <= hi:
        raise invalid(name, f"must be a number in {lo}..{hi}")
    return value


def check_bool(name: str, value: object) -> bool:
    """Return `value` if it is a bool; raise otherwise."""
    if type(value) is not bool:
        raise invalid(name, "must be a boolean")
    return value


def check_text(
    name: str, value: object, *, min_len: int, max_len: int, controls: bool = True
) -> str:
    """Return `value` if it is a str of min_len..max_len code points; raise otherwise.

    With `controls=False`, C0 control characters and DEL are refused too.
    """
    if type(value) is not str or not min_len <= len(value) <= max_len:
        raise invalid(name, f"must be a string of {min_len}..{max_len} characters")
    if not controls and _CONTROL_RE.search(value):
        raise invalid(name, "must not contain control characters")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise invalid(name, "must be valid Unicode (no lone surrogates)") from None
    return value


def check_cid(name: str, value: object) -> str:
    """Return `value` if it is a client message id: 1..64 printable ASCII, no space."""
    if type(value) is not str or not _CID_RE.match(value):
        raise invalid(name, "must be 1..64 printable ASCII characters without spaces")
    return value


def check_identifier(name: str, value: object, code: ErrorCode = ErrorCode.INVALID_FIELD) -> str:
    """Return `value` if it matches [a-z][a-z0-9_]{0,63}; raise otherwise."""
    if type(value) is not str or not _IDENTIFIER_RE.match(value):
        raise invalid(name, "must match [a-z][a-z0-9_]{0,63}", code)
    return value


def check_policy_version(name: str, value: object) -> str:
    """Return `value` if it is a privacy-policy version label (POLICY_VERSION_PATTERN)."""
    if type(value) is not str or not _POLICY_VERSION_RE.match(value):
        raise invalid(name, "must match [A-Za-z0-9][A-Za-z0-9._-]{0,31}")
    return value


def check_mime(name: str, value: object) -> str:
    """Return `value` if it looks like type/subtype (ASCII, at most 127 characters)."""
    if type(value) is not str or len(value) > MAX_MIME_CHARS or not _MIME_RE.match(value):
        raise invalid(name, "must be a MIME type like image/png (ASCII, <= 127 characters)")
    return value


def check_enum(name: str, value: object, enum_type: type[E]) -> E:
    """Return the member of `enum_type` (a StrEnum) equal to `value`; raise otherwise."""
    if not isinstance(value, str):
        raise invalid(name, "must be a string")
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(m.value for m in enum_type)
        raise invalid(name, f"must be one of: {allowed}") from None


def check_scope(name: str, value: object, code: ErrorCode = ErrorCode.INVALID_FIELD) -> None:
    """Refuse a scope that is neither "conversation" nor 1..MAX_SCOPE_MEMBERS distinct
    account ids."""
    if type(value) is str and value == "conversation":
        return
    if type(value) is not tuple or not 1 <= len(value) <= MAX_SCOPE_MEMBERS:
        raise invalid(
            name, f'must be "conversation" or a list of 1..{MAX_SCOPE_MEMBERS} account ids', code
        )
    for member in value:
        check_id(f"{name}[]", member, code)
    if len(set(value)) != len(value):
        raise invalid(name, "must not repeat an account id", code)
