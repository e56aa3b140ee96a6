"""The handshake: mutual authentication, no downgrade, and a state machine that says no."""

from __future__ import annotations

from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
import nacl.bindings as sodium
import pytest

from protocol.codes import CloseCode, ErrorCode
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.handshake import ClientState, ServerHandshake, ServerState
from protocol.keys import SigningKeyPair
from protocol.transcript import blake2b_256, decode_server_hello, encode_server_hello
from tests.protocol.helpers import DEVICE_ID, DEVICE_KEY, SERVER_KEY, handshakes


def unpack(data: bytes) -> dict[str, Any]:
    return msgpack.unpackb(data)  # type: ignore[no-any-return, unused-ignore]


def pack(value: dict[str, Any]) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return, unused-ignore]


def test_both_sides_agree_and_the_channel_works() -> None:
    client, server = handshakes()
    server.receive_client_hello(client.client_hello())
    assert server.device_id == DEVICE_ID
    assert server.state is ServerState.HELLO_RECEIVED
    auth, client_channel = client.receive_server_hello(server.server_hello())
    server_channel = server.receive_client_auth(auth, DEVICE_KEY.public)
    assert (client.state, server.state) == (ClientState.ESTABLISHED, ServerState.ESTABLISHED)
    assert client.version == server.version == 1
    assert client.session_keys == server.session_keys
    assert client.client_signature_hash == server.client_signature_hash
    assert server_channel.open(client_channel.seal(b"up")) == b"up"
    assert client_channel.open(server_channel.seal(b"down")) == b"down"


def test_every_handshake_has_fresh_keys() -> None:
    keys = set()
    for _ in range(3):
        client, server = handshakes()
        server.receive_client_hello(client.client_hello())
        client.receive_server_hello(server.server_hello())
        keys.add(client.session_keys)
    assert len(keys) == 3


def remote_error(call: Any, *args: Any) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        call(*args)
    return info.value


def test_a_server_with_another_key_than_the_pinned_one_is_refused() -> None:
    client, server = handshakes(pinned_key=SigningKeyPair.from_seed(b"x" * 32).public)
    server.receive_client_hello(client.client_hello())
    error = remote_error(client.receive_server_hello, server.server_hello())
    assert (error.code, error.close_code) == (
        ErrorCode.SERVER_KEY_MISMATCH,
        CloseCode.HANDSHAKE_FAILED,
    )
    assert client.state is ClientState.FAILED


def test_an_impostor_claiming_the_pinned_key_fails_the_signature_check() -> None:
    client, _ = handshakes()
    impostor = ServerHandshake(identity_secret_key=SigningKeyPair.from_seed(b"x" * 32).secret)
    impostor.receive_client_hello(client.client_hello())
    forged = unpack(impostor.server_hello()) | {"spk": SERVER_KEY.public}
    assert remote_error(client.receive_server_hello, pack(forged)).code is ErrorCode.BAD_SIGNATURE


@pytest.mark.parametrize("field", ["epk", "hdr", "sig"])
def test_a_tampered_server_hello_fails_the_signature_check(field: str) -> None:
    client, server = handshakes()
    server.receive_client_hello(client.client_hello())
    hello = unpack(server.server_hello())
    hello[field] = bytes([hello[field][0] ^ 1]) + hello[field][1:]
    assert remote_error(client.receive_server_hello, pack(hello)).code is ErrorCode.BAD_SIGNATURE


def test_a_device_signing_with_another_key_is_refused() -> None:
    client, server = handshakes()
    server.receive_client_hello(client.client_hello())
    auth, _ = client.receive_server_hello(server.server_hello())
    other_device = SigningKeyPair.from_seed(b"o" * 32)
    error = remote_error(server.receive_client_auth, auth, other_device.public)
    assert (error.code, error.close_code) == (ErrorCode.BAD_SIGNATURE, CloseCode.HANDSHAKE_FAILED)
    assert server.state is ServerState.FAILED


def test_a_client_auth_from_another_session_is_refused() -> None:
    client, server = handshakes()
    server.receive_client_hello(client.client_hello())
    old_auth, _ = client.receive_server_hello(server.server_hello())
    client, server = handshakes()
    server.receive_client_hello(client.client_hello())
    server.server_hello()
    error = remote_error(server.receive_client_auth, old_auth, DEVICE_KEY.public)
    assert error.code is ErrorCode.BAD_SIGNATURE


def test_a_tampered_client_stream_header_is_refused() -> None:
    client, server = handshakes()
    server.receive_client_hello(client.client_hello())
    auth = unpack(client.receive_server_hello(server.server_hello())[0])
    auth["hdr"] = b"\x00" * 24
    error = remote_error(server.receive_client_auth, pack(auth), DEVICE_KEY.public)
    assert error.code is ErrorCode.BAD_SIGNATURE


def test_stripping_a_version_from_the_client_hello_is_detected() -> None:
    """An attacker who removes version 2 from the offer forces 1, and the client notices."""
    client, server = handshakes(versions=(1, 2), server_versions=(1, 2))
    hello = unpack(client.client_hello())
    assert hello["v"] == [1, 2]
    server.receive_client_hello(pack(hello | {"v": [1]}))
    assert server.version == 1
    error = remote_error(client.receive_server_hello, server.server_hello())
    assert error.code is ErrorCode.BAD_SIGNATURE


def test_rewriting_the_chosen_version_is_detected() -> None:
    client, server = handshakes(versions=(1, 2), server_versions=(1, 2))
    server.receive_client_hello(client.client_hello())
    assert server.version == 2
    hello = unpack(server.server_hello()) | {"v": 1}
    assert remote_error(client.receive_server_hello, pack(hello)).code is ErrorCode.BAD_SIGNATURE


def test_no_common_version_is_refused_by_the_server() -> None:
    client, server = handshakes(versions=(7,))
    error = remote_error(server.receive_client_hello, client.client_hello())
    assert (error.code, error.close_code) == (
        ErrorCode.VERSION_UNSUPPORTED,
        CloseCode.VERSION_UNSUPPORTED,
    )


def test_a_version_the_client_did_not_offer_is_refused_by_the_client() -> None:
    client, server = handshakes()
    server.receive_client_hello(client.client_hello())
    hello = decode_server_hello(server.server_hello())
    forged = encode_server_hello(
        type(hello)(
            version=2, epk=hello.epk, spk=hello.spk, header=hello.header, signature=hello.signature
        )
    )
    error = remote_error(client.receive_server_hello, forged)
    assert error.code is ErrorCode.VERSION_UNSUPPORTED


def test_messages_out_of_order_are_unexpected() -> None:
    client, server = handshakes()
    hello = client.client_hello()
    assert remote_error(client.receive_server_hello, hello).code is ErrorCode.UNEXPECTED_MESSAGE
    server.receive_client_hello(hello)
    server.server_hello()
    error = remote_error(server.receive_client_auth, hello, DEVICE_KEY.public)
    assert error.code is ErrorCode.UNEXPECTED_MESSAGE


BAD_HELLOS: list[tuple[str, Any, ErrorCode]] = [
    ("missing device", {"t": "client_hello", "v": [1], "epk": b"k" * 32}, ErrorCode.MISSING_FIELD),
    (
        "extra field",
        {"t": "client_hello", "v": [1], "epk": b"k" * 32, "dev": b"d" * 16, "x": 1},
        ErrorCode.UNKNOWN_FIELD,
    ),
    (
        "short key",
        {"t": "client_hello", "v": [1], "epk": b"k" * 31, "dev": b"d" * 16},
        ErrorCode.INVALID_FIELD,
    ),
    (
        "no versions",
        {"t": "client_hello", "v": [], "epk": b"k" * 32, "dev": b"d" * 16},
        ErrorCode.INVALID_FIELD,
    ),
    (
        "version 0",
        {"t": "client_hello", "v": [0], "epk": b"k" * 32, "dev": b"d" * 16},
        ErrorCode.INVALID_FIELD,
    ),
    (
        "str device id",
        {"t": "client_hello", "v": [1], "epk": b"k" * 32, "dev": "d" * 16},
        ErrorCode.INVALID_FIELD,
    ),
    (
        "low-order key",
        {"t": "client_hello", "v": [1], "epk": b"\x00" * 32, "dev": b"d" * 16},
        ErrorCode.INVALID_FIELD,
    ),
    (
        "17 versions",
        {"t": "client_hello", "v": list(range(1, 18)), "epk": b"k" * 32, "dev": b"d" * 16},
        ErrorCode.INVALID_FIELD,
    ),
    (
        "400 versions",
        {"t": "client_hello", "v": [1] * 400, "epk": b"k" * 32, "dev": b"d" * 16},
        ErrorCode.INVALID_FIELD,
    ),
    (
        "over 512 bytes",
        {"t": "client_hello", "v": [0xFFFF] * 150, "epk": b"k" * 32, "dev": b"d" * 16},
        ErrorCode.FRAME_TOO_LARGE,
    ),
    ("not a map", [1], ErrorCode.MALFORMED_FRAME),
]


@pytest.mark.parametrize(
    ("wire", "code"), [(w, c) for _, w, c in BAD_HELLOS], ids=[n for n, _, _ in BAD_HELLOS]
)
def test_bad_client_hellos_are_refused(wire: Any, code: ErrorCode) -> None:
    _, server = handshakes()
    assert remote_error(server.receive_client_hello, pack(wire)).code is code
    assert server.state is ServerState.FAILED


def test_too_many_versions_is_a_field_error_not_a_size_error() -> None:
    """PROTOCOL.md §3.2, §7.1, §8: at most 16 versions; a 17th is `invalid_field` (4000),
    whereas `frame_too_large` is for a hello over 512 bytes."""
    sixteen = pack(
        {"t": "client_hello", "v": list(range(1, 17)), "epk": b"k" * 32, "dev": DEVICE_ID}
    )
    _, server = handshakes()
    server.receive_client_hello(sixteen)
    assert server.state is ServerState.HELLO_RECEIVED
    seventeen = pack(
        {"t": "client_hello", "v": list(range(1, 18)), "epk": b"k" * 32, "dev": DEVICE_ID}
    )
    assert len(seventeen) < 512
    _, server = handshakes()
    error = remote_error(server.receive_client_hello, seventeen)
    assert (error.code, error.close_code) == (ErrorCode.INVALID_FIELD, CloseCode.MALFORMED)
    assert error.close_code == 4000


def test_misuse_by_the_caller_is_a_local_error() -> None:
    client, server = handshakes()
    with pytest.raises(LocalProtocolError):
        server.device_id  # noqa: B018 - the property raises
    with pytest.raises(LocalProtocolError):
        server.server_hello()
    with pytest.raises(LocalProtocolError):
        client.receive_server_hello(b"")
    hello = client.client_hello()
    with pytest.raises(LocalProtocolError):
        client.client_hello()
    server.receive_client_hello(hello)
    server.server_hello()
    with pytest.raises(LocalProtocolError):
        server.receive_client_auth(b"", b"short key")
    remote_error(server.receive_client_auth, b"\xc1", DEVICE_KEY.public)
    with pytest.raises(LocalProtocolError):
        server.receive_client_auth(b"", DEVICE_KEY.public)
    with pytest.raises(LocalProtocolError):
        ServerHandshake(identity_secret_key=b"too short")


@pytest.mark.parametrize("key", [b"", bytes(range(32))])
@pytest.mark.parametrize("size", [0, 1, 127, 128, 129, 1000])
def test_the_transcript_hash_is_libsodiums_generichash(key: bytes, size: int) -> None:
    """PROTOCOL.md §3 names crypto_generichash; we compute it with hashlib's BLAKE2b."""
    data = bytes(i % 251 for i in range(size))
    expected = sodium.crypto_generichash_blake2b_salt_personal(data, digest_size=32, key=key)
    assert blake2b_256(data, key) == expected
