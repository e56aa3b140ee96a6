"""The project's root exception, and the protocol's errors.

Every error obrol raises on purpose derives from `ObrolError`. The protocol splits its
errors the way h11 does: `RemoteProtocolError` means the peer sent something we refuse;
`LocalProtocolError` means our own caller misused the API (a bug on this side). Feeding any
bytes to a decoder or state machine in `protocol/` raises nothing but `RemoteProtocolError`;
anything else escaping is a bug.
"""

from __future__ import annotations

from protocol.codes import CLOSE_CODE_FOR, CloseCode, ErrorCode


class ObrolError(Exception):
    """Root of every exception obrol raises on purpose."""


class ProtocolError(ObrolError):
    """A protocol rule was broken.

    `code` is the wire error code; `close_code` is the WebSocket close code to use if the
    connection is closed because of it (a hint: the catcher decides). `ref` is the client
    message id (`cid`) of the frame at fault and `ref_type` its frame type, when known, so the
    server can point its `err` frame at the frame it refuses.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        close_code: CloseCode | None = None,
        ref: str | None = None,
        ref_type: str | None = None,
    ) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.close_code = CLOSE_CODE_FOR[code] if close_code is None else close_code
        self.ref = ref
        self.ref_type = ref_type


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol."""


class LocalProtocolError(ProtocolError):
    """Our caller misused the protocol API (wrong state, invalid frame contents)."""
