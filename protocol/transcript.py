"""Handshake messages, transcript hashes and key derivation (the math of PROTOCOL.md §3).

    H(x)       = BLAKE2b-256(x)          (crypto_generichash, 32-byte output, no key)
    H_k(x)     = BLAKE2b-256(x, key=k)
    hello_hash = H(LABEL_HELLO || u32be(len(CH)) || CH || u16be(version) || s_epk || s_spk)
    key_c2s    = H_{kx client tx = server rx}(LABEL_KEY_C2S || hello_hash)
    key_s2c    = H_{kx server tx = client rx}(LABEL_KEY_S2C || hello_hash)
    server_sig_hash = H(LABEL_SERVER_SIG || hello_hash || server_header)
    client_sig_hash = H(LABEL_CLIENT_SIG || server_sig_hash || server_sig || client_header)

CH is the ClientHello exactly as sent. The signatures are Ed25519 over the 32-byte hashes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
import nacl.bindings as sodium
import nacl.exceptions

from protocol.channel import HEADER_BYTES
from protocol.codes import ErrorCode
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.unpack import UnpackLimits, unpack_values

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (PROTOCOL_VERSION,)
MAX_OFFERED_VERSIONS = 16

LABEL_HELLO = b"obrol handshake hello"
LABEL_SERVER_SIG = b"obrol handshake server signature"
LABEL_CLIENT_SIG = b"obrol handshake client signature"
LABEL_KEY_C2S = b"obrol key client to server"
LABEL_KEY_S2C = b"obrol key server to client"

DH_KEY_BYTES: int = sodium.crypto_kx_PUBLIC_KEY_BYTES
SIGN_PUBLIC_KEY_BYTES: int = sodium.crypto_sign_PUBLICKEYBYTES
SIGN_SECRET_KEY_BYTES: int = sodium.crypto_sign_SECRETKEYBYTES
SIGNATURE_BYTES: int = sodium.crypto_sign_BYTES
DEVICE_ID_BYTES = 16
HASH_BYTES = 32

HANDSHAKE_LIMITS = UnpackLimits(
    max_bytes=512,
    max_values=1,
    max_str_bytes=32,
    max_bin_bytes=64,
    max_array_len=512,
    max_map_len=8,
)
"""The size limits of a handshake message (PROTOCOL.md §3.2, §8). The offered versions are
the only array; how many there may be (1..MAX_OFFERED_VERSIONS) is a field rule, checked by
`decode_client_hello` as `invalid_field`, so the array limit here is only as tight as the
512 bytes already make it."""


def blake2b_256(data: bytes, key: bytes = b"") -> bytes:
    """BLAKE2b with a 32-byte output, optionally keyed: libsodium's crypto_generichash,
    computed by the standard library's BLAKE2b (the same function, a tenth of the call cost
    through PyNaCl's argument checks; the test vectors hold both to the same bytes)."""
    return hashlib.blake2b(data, digest_size=HASH_BYTES, key=key).digest()


def hello_hash(client_hello: bytes, version: int, server_epk: bytes, server_spk: bytes) -> bytes:
    """The hash both session keys and both signatures are bound to."""
    return blake2b_256(
        LABEL_HELLO
        + len(client_hello).to_bytes(4, "big")
        + client_hello
        + version.to_bytes(2, "big")
        + server_epk
        + server_spk
    )


def derive_keys(kx_c2s: bytes, kx_s2c: bytes, hello: bytes) -> tuple[bytes, bytes]:
    """Return (key_c2s, key_s2c): the crypto_kx keys bound to the transcript."""
    return blake2b_256(LABEL_KEY_C2S + hello, kx_c2s), blake2b_256(LABEL_KEY_S2C + hello, kx_s2c)


def server_signature_hash(hello: bytes, server_header: bytes) -> bytes:
    """What the server identity key signs."""
    return blake2b_256(LABEL_SERVER_SIG + hello + server_header)


def client_signature_hash(server_sig_hash: bytes, server_sig: bytes, client_header: bytes) -> bytes:
    """What the device key signs."""
    return blake2b_256(LABEL_CLIENT_SIG + server_sig_hash + server_sig + client_header)


def sign(secret_key: bytes, message: bytes) -> bytes:
    """Return the detached Ed25519 signature of `message`."""
    return sodium.crypto_sign(message, secret_key)[:SIGNATURE_BYTES]


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Return whether `signature` is a valid Ed25519 signature of `message` by `public_key`."""
    try:
        sodium.crypto_sign_open(signature + message, public_key)
    except nacl.exceptions.CryptoError:
        return False
    return True


def require_key(name: str, value: object, size: int) -> bytes:
    """Return `value` if it is `size` bytes; raise `LocalProtocolError` (caller's input)."""
    if type(value) is not bytes or len(value) != size:
        raise LocalProtocolError(ErrorCode.INTERNAL, f"{name} must be {size} bytes")
    return value


# --- the three handshake messages ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientHello:
    versions: tuple[int, ...]
    epk: bytes
    device_id: bytes


@dataclass(frozen=True, slots=True)
class ServerHello:
    version: int
    epk: bytes
    spk: bytes
    header: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class ClientAuth:
    header: bytes
    signature: bytes


def pack(message: dict[str, Any]) -> bytes:
    """msgpack-encode one handshake message (keys in the order given)."""
    return msgpack.packb(message, use_bin_type=True)  # type: ignore[no-any-return, unused-ignore]


def encode_client_hello(hello: ClientHello) -> bytes:
    return pack(
        {"t": "client_hello", "v": list(hello.versions), "epk": hello.epk, "dev": hello.device_id}
    )


def encode_server_hello(hello: ServerHello) -> bytes:
    return pack(
        {
            "t": "server_hello",
            "v": hello.version,
            "epk": hello.epk,
            "spk": hello.spk,
            "hdr": hello.header,
            "sig": hello.signature,
        }
    )


def encode_client_auth(auth: ClientAuth) -> bytes:
    return pack({"t": "client_auth", "hdr": auth.header, "sig": auth.signature})


def _message(data: bytes, expected: str, keys: tuple[str, ...]) -> dict[Any, Any]:
    (value,) = unpack_values(data, HANDSHAKE_LIMITS)
    if type(value) is not dict:
        raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "a handshake message must be a map")
    if value.get("t") != expected:
        raise RemoteProtocolError(
            ErrorCode.UNEXPECTED_MESSAGE, f"expected {expected}, got {value.get('t')!r:.40}"
        )
    for key in keys:
        if key not in value:
            raise RemoteProtocolError(ErrorCode.MISSING_FIELD, f"{key}: missing")
    if len(value) != len(keys) + 1:
        raise RemoteProtocolError(ErrorCode.UNKNOWN_FIELD, f"{expected} has unknown fields")
    return value


def _bin(message: dict[Any, Any], key: str, size: int) -> bytes:
    value = message[key]
    if type(value) is not bytes or len(value) != size:
        raise RemoteProtocolError(ErrorCode.INVALID_FIELD, f"{key}: must be {size} bytes")
    return value


def _version(value: object) -> int:
    if type(value) is not int or not 1 <= value <= 0xFFFF:
        raise RemoteProtocolError(ErrorCode.INVALID_FIELD, "v: versions are integers in 1..65535")
    return value


def decode_client_hello(data: bytes) -> ClientHello:
    """Parse a ClientHello. Raises `RemoteProtocolError`."""
    message = _message(data, "client_hello", ("v", "epk", "dev"))
    offered = message["v"]
    if type(offered) is not list or not 1 <= len(offered) <= MAX_OFFERED_VERSIONS:
        raise RemoteProtocolError(
            ErrorCode.INVALID_FIELD, f"v: must list 1..{MAX_OFFERED_VERSIONS} versions"
        )
    versions = tuple(_version(v) for v in offered)
    return ClientHello(
        versions=versions,
        epk=_bin(message, "epk", DH_KEY_BYTES),
        device_id=_bin(message, "dev", DEVICE_ID_BYTES),
    )


def decode_server_hello(data: bytes) -> ServerHello:
    """Parse a ServerHello. Raises `RemoteProtocolError`."""
    message = _message(data, "server_hello", ("v", "epk", "spk", "hdr", "sig"))
    return ServerHello(
        version=_version(message["v"]),
        epk=_bin(message, "epk", DH_KEY_BYTES),
        spk=_bin(message, "spk", SIGN_PUBLIC_KEY_BYTES),
        header=_bin(message, "hdr", HEADER_BYTES),
        signature=_bin(message, "sig", SIGNATURE_BYTES),
    )


def decode_client_auth(data: bytes) -> ClientAuth:
    """Parse a ClientAuth. Raises `RemoteProtocolError`."""
    message = _message(data, "client_auth", ("hdr", "sig"))
    return ClientAuth(
        header=_bin(message, "hdr", HEADER_BYTES), signature=_bin(message, "sig", SIGNATURE_BYTES)
    )
