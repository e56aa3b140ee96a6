"""obrol's wire protocol, sans-IO: frames, codec, secure channel, error codes.

Imports nothing else from the project and no trio, asyncio or quart. Bytes go in, frames
and bytes come out; PROTOCOL.md is the specification.

    handshake  ClientHandshake / ServerHandshake -> SecureChannel
    channel    SecureChannel.seal(batch) / .open(message)   (one WebSocket message each)
    codec      encode(frame), encode_batch(frames), decode_client_batch, decode_server_batch
               (decode_server_frame: one frame of a batch split by the caller)
    frames     the frame dataclasses (frames_live: consent grants and live location)
    codes      ErrorCode, CloseCode
    errors     ObrolError > ProtocolError > RemoteProtocolError | LocalProtocolError
    keys       SigningKeyPair (server identity and device keys)
"""

from protocol.channel import RekeyPolicy, SecureChannel
from protocol.codec import (
    CLIENT_TO_SERVER_LIMITS,
    SERVER_TO_CLIENT_LIMITS,
    decode_client_batch,
    decode_client_batch_lenient,
    decode_server_batch,
    decode_server_frame,
    encode,
    encode_batch,
)
from protocol.codes import CLOSE_CODE_FOR, CloseCode, ErrorCode
from protocol.errors import LocalProtocolError, ObrolError, ProtocolError, RemoteProtocolError
from protocol.frames import (
    Ack,
    Body,
    ClientFrame,
    Consent,
    Err,
    FileBody,
    Frame,
    LocationBody,
    MessageKind,
    Msg,
    OrgNotice,
    Ping,
    PolicyNotice,
    Pong,
    PushOk,
    PushRegister,
    PushUnregister,
    Receipt,
    ReceiptNotice,
    ReceiptStatus,
    Resync,
    Send,
    Sent,
    ServerFrame,
    Sync,
    Synced,
    SystemBody,
    TextBody,
    Typing,
    TypingNotice,
)
from protocol.frames_live import (
    ConsentGet,
    ConsentRevoked,
    Consents,
    ConsentSet,
    Erased,
    GrantState,
    LiveEnd,
    LiveOk,
    LivePos,
    LiveStart,
    LiveStop,
)
from protocol.handshake import ClientHandshake, ServerHandshake
from protocol.keys import SigningKeyPair
from protocol.transcript import PROTOCOL_VERSION, SUPPORTED_VERSIONS

GATEWAY_PATH = "/v1/ws"
"""The WebSocket path of the gateway."""

__all__ = [
    "CLIENT_TO_SERVER_LIMITS",
    "CLOSE_CODE_FOR",
    "GATEWAY_PATH",
    "PROTOCOL_VERSION",
    "SERVER_TO_CLIENT_LIMITS",
    "SUPPORTED_VERSIONS",
    "Ack",
    "Body",
    "ClientFrame",
    "ClientHandshake",
    "CloseCode",
    "Consent",
    "ConsentGet",
    "ConsentRevoked",
    "ConsentSet",
    "Consents",
    "Erased",
    "Err",
    "ErrorCode",
    "FileBody",
    "Frame",
    "GrantState",
    "LiveEnd",
    "LiveOk",
    "LivePos",
    "LiveStart",
    "LiveStop",
    "LocalProtocolError",
    "LocationBody",
    "MessageKind",
    "Msg",
    "ObrolError",
    "OrgNotice",
    "Ping",
    "PolicyNotice",
    "Pong",
    "ProtocolError",
    "PushOk",
    "PushRegister",
    "PushUnregister",
    "Receipt",
    "ReceiptNotice",
    "ReceiptStatus",
    "RekeyPolicy",
    "RemoteProtocolError",
    "Resync",
    "SecureChannel",
    "Send",
    "Sent",
    "ServerFrame",
    "ServerHandshake",
    "SigningKeyPair",
    "Sync",
    "Synced",
    "SystemBody",
    "TextBody",
    "Typing",
    "TypingNotice",
    "decode_client_batch",
    "decode_client_batch_lenient",
    "decode_server_batch",
    "decode_server_frame",
    "encode",
    "encode_batch",
]
