"""Wire error codes and WebSocket close codes: the one place both are defined.

`ErrorCode` values travel in `err` frames and as the reason text of a WebSocket close.
`CloseCode` values are what the gateway (or a client) closes a WebSocket with. Every error
code has a close-code hint in `CLOSE_CODE_FOR`; whether an error actually closes the
connection is decided where it is caught (a bad frame inside a readable batch is answered
with an `err` frame, an unreadable batch closes the connection). PROTOCOL.md lists them all.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType


class ErrorCode(enum.StrEnum):
    """Every error code that can appear on the wire."""

    # A frame or batch could not be understood.
    MALFORMED_FRAME = "malformed_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    UNKNOWN_FRAME_TYPE = "unknown_frame_type"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    INVALID_FIELD = "invalid_field"
    # Handshake.
    VERSION_UNSUPPORTED = "version_unsupported"
    UNEXPECTED_MESSAGE = "unexpected_message"
    BAD_SIGNATURE = "bad_signature"
    SERVER_KEY_MISMATCH = "server_key_mismatch"
    UNKNOWN_DEVICE = "unknown_device"
    DEVICE_REVOKED = "device_revoked"
    ACCOUNT_DEACTIVATED = "account_deactivated"
    PASSWORD_CHANGE_REQUIRED = "password_change_required"
    SIGNED_OUT = "signed_out"
    GUARDIAN_CONSENT_REQUIRED = "guardian_consent_required"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    BUSY = "busy"
    # Encrypted channel.
    DECRYPT_FAILED = "decrypt_failed"
    CHANNEL_CLOSED = "channel_closed"
    # Refusals by the service.
    NOT_MEMBER = "not_member"
    CONSENT_REQUIRED = "consent_required"
    CONSENT_INVALID = "consent_invalid"
    CONSENT_NOT_GRANTED = "consent_not_granted"
    CONSENT_SCOPE_INVALID = "consent_scope_invalid"
    PURPOSE_SWITCHED_OFF = "purpose_switched_off"
    LIVE_SESSION_ENDED = "live_session_ended"
    RECONSENT_REQUIRED = "reconsent_required"
    UNKNOWN_FILE = "unknown_file"
    UNKNOWN_MESSAGE = "unknown_message"
    PUSH_PROVIDER_UNAVAILABLE = "push_provider_unavailable"
    RATE_LIMITED = "rate_limited"
    RESYNC_REQUIRED = "resync_required"
    IDLE_TIMEOUT = "idle_timeout"
    SHUTTING_DOWN = "shutting_down"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class CloseCode(enum.IntEnum):
    """WebSocket close codes: RFC 6455 ones we use, and ours in 4000-4999."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013

    MALFORMED = 4000
    TOO_LARGE = 4001
    VERSION_UNSUPPORTED = 4002
    HANDSHAKE_FAILED = 4003
    UNKNOWN_DEVICE = 4004
    DEVICE_REVOKED = 4005
    HANDSHAKE_TIMEOUT = 4006
    DECRYPT_FAILED = 4007
    RATE_LIMITED = 4008
    RESYNC_REQUIRED = 4009
    IDLE_TIMEOUT = 4010
    PASSWORD_CHANGE_REQUIRED = 4011
    ACCOUNT_DEACTIVATED = 4012
    SIGNED_OUT = 4013
    GUARDIAN_CONSENT_REQUIRED = 4014


CLOSE_CODE_FOR: Mapping[ErrorCode, CloseCode] = MappingProxyType(
    {
        ErrorCode.MALFORMED_FRAME: CloseCode.MALFORMED,
        ErrorCode.FRAME_TOO_LARGE: CloseCode.TOO_LARGE,
        ErrorCode.UNKNOWN_FRAME_TYPE: CloseCode.MALFORMED,
        ErrorCode.MISSING_FIELD: CloseCode.MALFORMED,
        ErrorCode.UNKNOWN_FIELD: CloseCode.MALFORMED,
        ErrorCode.INVALID_FIELD: CloseCode.MALFORMED,
        ErrorCode.VERSION_UNSUPPORTED: CloseCode.VERSION_UNSUPPORTED,
        ErrorCode.UNEXPECTED_MESSAGE: CloseCode.HANDSHAKE_FAILED,
        ErrorCode.BAD_SIGNATURE: CloseCode.HANDSHAKE_FAILED,
        ErrorCode.SERVER_KEY_MISMATCH: CloseCode.HANDSHAKE_FAILED,
        ErrorCode.UNKNOWN_DEVICE: CloseCode.UNKNOWN_DEVICE,
        ErrorCode.DEVICE_REVOKED: CloseCode.DEVICE_REVOKED,
        ErrorCode.ACCOUNT_DEACTIVATED: CloseCode.ACCOUNT_DEACTIVATED,
        ErrorCode.PASSWORD_CHANGE_REQUIRED: CloseCode.PASSWORD_CHANGE_REQUIRED,
        ErrorCode.SIGNED_OUT: CloseCode.SIGNED_OUT,
        ErrorCode.GUARDIAN_CONSENT_REQUIRED: CloseCode.GUARDIAN_CONSENT_REQUIRED,
        ErrorCode.HANDSHAKE_TIMEOUT: CloseCode.HANDSHAKE_TIMEOUT,
        ErrorCode.BUSY: CloseCode.TRY_AGAIN_LATER,
        ErrorCode.DECRYPT_FAILED: CloseCode.DECRYPT_FAILED,
        ErrorCode.CHANNEL_CLOSED: CloseCode.DECRYPT_FAILED,
        ErrorCode.NOT_MEMBER: CloseCode.POLICY_VIOLATION,
        ErrorCode.CONSENT_REQUIRED: CloseCode.POLICY_VIOLATION,
        ErrorCode.CONSENT_INVALID: CloseCode.POLICY_VIOLATION,
        ErrorCode.CONSENT_NOT_GRANTED: CloseCode.POLICY_VIOLATION,
        ErrorCode.CONSENT_SCOPE_INVALID: CloseCode.POLICY_VIOLATION,
        ErrorCode.PURPOSE_SWITCHED_OFF: CloseCode.POLICY_VIOLATION,
        ErrorCode.LIVE_SESSION_ENDED: CloseCode.POLICY_VIOLATION,
        ErrorCode.RECONSENT_REQUIRED: CloseCode.POLICY_VIOLATION,
        ErrorCode.UNKNOWN_FILE: CloseCode.POLICY_VIOLATION,
        ErrorCode.UNKNOWN_MESSAGE: CloseCode.POLICY_VIOLATION,
        ErrorCode.PUSH_PROVIDER_UNAVAILABLE: CloseCode.POLICY_VIOLATION,
        ErrorCode.RATE_LIMITED: CloseCode.RATE_LIMITED,
        ErrorCode.RESYNC_REQUIRED: CloseCode.RESYNC_REQUIRED,
        ErrorCode.IDLE_TIMEOUT: CloseCode.IDLE_TIMEOUT,
        ErrorCode.SHUTTING_DOWN: CloseCode.GOING_AWAY,
        ErrorCode.UNAVAILABLE: CloseCode.TRY_AGAIN_LATER,
        ErrorCode.INTERNAL: CloseCode.INTERNAL_ERROR,
    }
)
