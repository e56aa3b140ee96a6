"""PROTOCOL.md's test vectors are exactly what the implementation produces, and what the
document's prose says they should be (checked here with hashlib and raw libsodium calls,
not with our own modules), so the document can never drift from the code.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from pathlib import Path

import msgpack  # type: ignore[import-untyped, unused-ignore]
import nacl.bindings as sodium
import nacl.exceptions
import nacl.signing
import pytest

from protocol import codec
from protocol import frames as f
from server.identity import fingerprint, public_key_b64
from tests.protocol import vectors as v
from tests.protocol.helpers import CLIENT_FRAMES, SERVER_FRAMES

DOC = Path(__file__).resolve().parents[2] / "PROTOCOL.md"
HEX_BLOCK = re.compile(r"^```hex ([a-z0-9_]+)\n(.*?)^```", re.MULTILINE | re.DOTALL)

LABEL_HELLO = b"obrol handshake hello"
LABEL_SERVER_SIG = b"obrol handshake server signature"
LABEL_CLIENT_SIG = b"obrol handshake client signature"
LABEL_KEY_C2S = b"obrol key client to server"
LABEL_KEY_S2C = b"obrol key server to client"


def doc_vectors() -> dict[str, bytes]:
    """Every ```hex name``` block of PROTOCOL.md, as bytes."""
    found: dict[str, bytes] = {}
    for name, body in HEX_BLOCK.findall(DOC.read_text(encoding="utf-8")):
        assert name not in found, f"vector {name} appears twice in PROTOCOL.md"
        found[name] = bytes.fromhex("".join(body.split()))
    return found


DOCUMENTED = doc_vectors()
COMPUTED = v.compute_vectors()


def test_the_document_lists_every_vector_and_no_other() -> None:
    assert list(DOCUMENTED) == list(COMPUTED)


@pytest.mark.parametrize("name", list(COMPUTED))
def test_the_implementation_reproduces_the_documented_vector(name: str) -> None:
    assert DOCUMENTED.get(name, b"").hex() == COMPUTED[name].hex()


def h(data: bytes, key: bytes = b"") -> bytes:
    return hashlib.blake2b(data, digest_size=32, key=key).digest()


def test_the_labels_in_the_prose_are_the_ones_used() -> None:
    text = DOC.read_text(encoding="utf-8")
    for label in (LABEL_HELLO, LABEL_SERVER_SIG, LABEL_CLIENT_SIG, LABEL_KEY_C2S, LABEL_KEY_S2C):
        assert f'"{label.decode()}"' in text


def test_the_handshake_vectors_follow_the_prose() -> None:
    d = DOCUMENTED
    server_pk = sodium.crypto_sign_seed_keypair(d["server_identity_seed"])[0]
    device_pk = sodium.crypto_sign_seed_keypair(d["device_seed"])[0]
    assert (server_pk, device_pk) == (d["server_identity_public_key"], d["device_public_key"])
    for side in ("client", "server"):
        public = sodium.crypto_scalarmult_base(d[f"{side}_ephemeral_secret_key"])
        assert public == d[f"{side}_ephemeral_public_key"]

    hello = msgpack.unpackb(d["client_hello"])
    assert hello == {
        "t": "client_hello",
        "v": [1],
        "epk": d["client_ephemeral_public_key"],
        "dev": d["device_id"],
    }
    ch = d["client_hello"]
    expected_hello_hash = h(
        LABEL_HELLO
        + len(ch).to_bytes(4, "big")
        + ch
        + (1).to_bytes(2, "big")
        + d["server_ephemeral_public_key"]
        + server_pk
    )
    assert d["hello_hash"] == expected_hello_hash

    kx_rx, kx_tx = sodium.crypto_kx_client_session_keys(
        d["client_ephemeral_public_key"],
        d["client_ephemeral_secret_key"],
        d["server_ephemeral_public_key"],
    )
    assert (d["kx_c2s"], d["kx_s2c"]) == (kx_tx, kx_rx)
    q = sodium.crypto_scalarmult(d["client_ephemeral_secret_key"], d["server_ephemeral_public_key"])
    kx = hashlib.blake2b(
        q + d["client_ephemeral_public_key"] + d["server_ephemeral_public_key"], digest_size=64
    ).digest()
    assert kx == d["kx_s2c"] + d["kx_c2s"]
    assert d["key_c2s"] == h(LABEL_KEY_C2S + d["hello_hash"], key=kx_tx)
    assert d["key_s2c"] == h(LABEL_KEY_S2C + d["hello_hash"], key=kx_rx)

    server_hello = msgpack.unpackb(d["server_hello"])
    assert list(server_hello) == ["t", "v", "epk", "spk", "hdr", "sig"]
    assert server_hello["hdr"] == d["server_stream_header"]
    assert d["server_signature_hash"] == h(LABEL_SERVER_SIG + d["hello_hash"] + server_hello["hdr"])
    nacl.signing.VerifyKey(server_pk).verify(d["server_signature_hash"], server_hello["sig"])

    auth = msgpack.unpackb(d["client_auth"])
    assert list(auth) == ["t", "hdr", "sig"] and auth["hdr"] == d["client_stream_header"]
    assert d["client_signature_hash"] == h(
        LABEL_CLIENT_SIG + d["server_signature_hash"] + server_hello["sig"] + auth["hdr"]
    )
    nacl.signing.VerifyKey(device_pk).verify(d["client_signature_hash"], auth["sig"])


@pytest.mark.parametrize(
    ("direction", "key", "header", "tags"),
    [
        ("c2s", "key_c2s", "client_stream_header", ["message", "message"]),
        ("s2c", "key_s2c", "server_stream_header", ["message", "rekey", "final"]),
    ],
)
def test_the_sample_batches_decrypt_with_raw_libsodium(
    direction: str, key: str, header: str, tags: list[str]
) -> None:
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(
        state, DOCUMENTED[header], DOCUMENTED[key]
    )
    tag_values = {
        "message": sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE,
        "rekey": sodium.crypto_secretstream_xchacha20poly1305_TAG_REKEY,
        "final": sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL,
    }
    for i, tag_name in enumerate(tags, 1):
        plaintext, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(
            state, DOCUMENTED[f"{direction}_{i}_ciphertext"]
        )
        assert (plaintext, tag) == (DOCUMENTED[f"{direction}_{i}_plaintext"], tag_values[tag_name])


def test_the_pull_vectors_decrypt_with_raw_libsodium_in_order_only() -> None:
    """§10.2: a library that can only pull checks its secretstream with these."""
    d = DOCUMENTED
    count = len(v.PULL_MESSAGES)
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, d["pull_header"], d["pull_key"])
    for i in range(1, count + 1):
        plaintext, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(
            state, d[f"pull_{i}_ciphertext"]
        )
        assert (plaintext, bytes([tag])) == (d[f"pull_{i}_plaintext"], d[f"pull_{i}_tag"])
    assert [d[f"pull_{i}_tag"][0] for i in range(1, count + 1)] == [
        sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE,
        sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE,
        sodium.crypto_secretstream_xchacha20poly1305_TAG_REKEY,
        sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE,
        sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL,
    ]
    # The 4th repeats the 1st plaintext, under the key the rekey replaced.
    assert d["pull_4_plaintext"] == d["pull_1_plaintext"]
    assert d["pull_4_ciphertext"] != d["pull_1_ciphertext"]
    for i, (_, frames) in enumerate(v.PULL_MESSAGES, 1):
        assert codec.decode_server_batch(d[f"pull_{i}_plaintext"]) == frames

    # Out of order, or altered: refused.
    for order in ([2], [1, 3], [1, 2, 4]):
        state = sodium.crypto_secretstream_xchacha20poly1305_state()
        sodium.crypto_secretstream_xchacha20poly1305_init_pull(
            state, d["pull_header"], d["pull_key"]
        )
        *fine, wrong = order
        for i in fine:
            sodium.crypto_secretstream_xchacha20poly1305_pull(state, d[f"pull_{i}_ciphertext"])
        with pytest.raises(nacl.exceptions.CryptoError):
            sodium.crypto_secretstream_xchacha20poly1305_pull(state, d[f"pull_{wrong}_ciphertext"])
    altered = bytearray(d["pull_1_ciphertext"])
    altered[-1] ^= 1
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, d["pull_header"], d["pull_key"])
    with pytest.raises(nacl.exceptions.CryptoError):
        sodium.crypto_secretstream_xchacha20poly1305_pull(state, bytes(altered))


def test_the_key_text_forms_and_fingerprint_in_the_prose() -> None:
    """§1 and §3.1: base64url without padding, fingerprint = SHA-256[:16] in hex groups."""
    text = " ".join(DOC.read_text(encoding="utf-8").split())
    public = DOCUMENTED["server_identity_public_key"]
    as_text = base64.urlsafe_b64encode(public).rstrip(b"=").decode()
    digest = hashlib.sha256(public).digest()[:16].hex()
    shown = ":".join(digest[i : i + 4] for i in range(0, 32, 4))
    assert f"the key is `{as_text}` and the fingerprint `{shown}`" in text
    server_key = nacl.signing.SigningKey(DOCUMENTED["server_identity_seed"])
    assert (public_key_b64(server_key), fingerprint(server_key)) == (as_text, shown)


def test_the_id_byte_order_example_in_the_prose() -> None:
    """§1: ids are the REST API's UUIDs in RFC 4122 byte order."""
    text = " ".join(DOC.read_text(encoding="utf-8").split())
    example = uuid.UUID("0f8fad5b-d9cb-469f-a165-70867728950e")
    spaced = " ".join(f"{b:02x}" for b in example.bytes)
    assert f"`{example}` is the bytes `{spaced}`" in text
    assert f"would begin `{' '.join(f'{b:02x}' for b in example.bytes_le[:4])}`" in text


def frame_table_row(direction: str, frame_type: str) -> str:
    """The row of PROTOCOL.md's frame table for one direction (5.1 or 5.2) and type."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"### {direction}")
    section = text[start : text.index("\n### ", start + 1)]
    rows = [line for line in section.splitlines() if line.startswith(f"| `{frame_type}` |")]
    assert len(rows) == 1, f"{frame_type} in {direction}"
    return rows[0]


@pytest.mark.parametrize("frame", [*CLIENT_FRAMES, *SERVER_FRAMES], ids=repr)
def test_the_frame_tables_name_every_key_the_encoder_writes(frame: f.Frame) -> None:
    direction = "5.1 Client -> server" if isinstance(frame, f.ClientFrame) else "5.2 Server"
    row = frame_table_row(direction, frame.TYPE)
    wire = msgpack.unpackb(codec.encode(frame))
    for key in wire:
        if key != "t":
            assert f"`{key}`" in row, f"{frame.TYPE}.{key}"


def test_the_sample_plaintexts_are_the_documented_frames() -> None:
    for i, frames in enumerate(v.CLIENT_BATCHES, 1):
        assert codec.decode_client_batch(DOCUMENTED[f"c2s_{i}_plaintext"]) == frames
    for i, server_frames in enumerate(v.SERVER_BATCHES, 1):
        assert codec.decode_server_batch(DOCUMENTED[f"s2c_{i}_plaintext"]) == server_frames
    consent_c2s = DOCUMENTED["consent_live_c2s_plaintext"]
    assert codec.decode_client_batch(consent_c2s) == v.CONSENT_LIVE_C2S
    consent_s2c = DOCUMENTED["consent_live_s2c_plaintext"]
    assert codec.decode_server_batch(consent_s2c) == v.CONSENT_LIVE_S2C
    assert codec.decode_server_batch(DOCUMENTED["erased_s2c_plaintext"]) == v.ERASED_S2C
