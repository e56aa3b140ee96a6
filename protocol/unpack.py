"""Strict msgpack reading: bytes -> a list of plain values, under limits, or our error.

Used for batches and for handshake messages. Rules beyond msgpack's own: strings must be
valid UTF-8 and stay str, binaries stay bytes; map keys must be strings or binaries and
must not repeat; extension types (including the timestamp type) are refused; maps and
arrays nest at most `max_depth` levels (the deepest frame, `send` -> consent -> scope, has
three), checked without recursion before anything else looks at the values, so no later
step (validation, error messages, repr) can recurse on attacker-chosen depth. Raises
nothing but `RemoteProtocolError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack  # type: ignore[import-untyped, unused-ignore]

from protocol.codes import ErrorCode
from protocol.errors import RemoteProtocolError


@dataclass(frozen=True, slots=True)
class UnpackLimits:
    """Limits for one msgpack byte string. Sizes in bytes, lengths in elements."""

    max_bytes: int
    max_values: int
    max_str_bytes: int
    max_bin_bytes: int
    max_array_len: int
    max_map_len: int
    max_depth: int = 3
    """Containers (maps, arrays) inside one another, the outermost counting as 1."""


class _DuplicateKeyError(ValueError):
    pass


def _pairs_to_dict(pairs: list[tuple[object, object]]) -> dict[object, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _DuplicateKeyError("duplicate map key")
    return result


def _check_depth(value: object, max_depth: int) -> None:
    """Refuse `value` if containers nest deeper than `max_depth`; iterative, so any depth
    msgpack could build costs a bounded walk and no Python recursion."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if type(node) is dict else node
        for child in children:  # type: ignore[attr-defined]
            kind = type(child)
            if kind is dict or kind is list:
                if depth >= max_depth:
                    raise RemoteProtocolError(
                        ErrorCode.MALFORMED_FRAME,
                        f"maps and arrays nested deeper than {max_depth} levels",
                    )
                stack.append((child, depth + 1))


def unpack_values(data: bytes, limits: UnpackLimits) -> list[object]:
    """Return the msgpack values concatenated in `data`, in order (at least one).

    Raises `RemoteProtocolError`: FRAME_TOO_LARGE when `data`, the value count or any
    string/binary/array/map exceeds `limits`; MALFORMED_FRAME for anything that is not a
    complete, well-formed sequence of msgpack values under the rules above, or nests
    deeper than `limits.max_depth`.
    """
    if len(data) > limits.max_bytes:
        raise RemoteProtocolError(
            ErrorCode.FRAME_TOO_LARGE, f"{len(data)} bytes, the limit is {limits.max_bytes}"
        )
    if not data:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "empty message")
    unpacker = msgpack.Unpacker(
        None,
        raw=False,
        use_list=True,
        strict_map_key=True,
        object_pairs_hook=_pairs_to_dict,
        max_buffer_size=max(limits.max_bytes, 1),
        max_str_len=limits.max_str_bytes,
        max_bin_len=limits.max_bin_bytes,
        max_array_len=limits.max_array_len,
        max_map_len=limits.max_map_len,
        max_ext_len=0,
    )
    unpacker.feed(data)
    values: list[object] = []
    end = 0
    while True:
        try:
            value = unpacker.unpack()
        except msgpack.OutOfData:
            break
        except _DuplicateKeyError:
            raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "duplicate map key") from None
        except ValueError as error:
            # msgpack reports every limit it enforces as "... exceeds max_..._len(...)";
            # extension types are refused through max_ext_len=0, and are malformed here.
            if "max_ext_len" in str(error):
                raise RemoteProtocolError(
                    ErrorCode.MALFORMED_FRAME, "msgpack extension types are not allowed"
                ) from None
            if "exceeds max_" in str(error):
                raise RemoteProtocolError(ErrorCode.FRAME_TOO_LARGE, str(error)) from None
            raise RemoteProtocolError(
                ErrorCode.MALFORMED_FRAME, f"not valid msgpack ({type(error).__name__})"
            ) from None
        except (msgpack.UnpackException, TypeError, OverflowError, RecursionError) as error:
            raise RemoteProtocolError(
                ErrorCode.MALFORMED_FRAME, f"not valid msgpack ({type(error).__name__})"
            ) from None
        kind = type(value)
        if kind is dict or kind is list:
            _check_depth(value, limits.max_depth)
        values.append(value)
        if len(values) > limits.max_values:
            raise RemoteProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"more than {limits.max_values} msgpack values in one message",
            )
        end = unpacker.tell()
    if end != len(data):
        raise RemoteProtocolError(
            ErrorCode.MALFORMED_FRAME, f"truncated msgpack value at byte {end} of {len(data)}"
        )
    return values
