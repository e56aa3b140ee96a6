"""Sealed values and blobs (storage/sealing.py): they open only with their key, in their
place, whole and in order; plaintext from before sealing is never taken for sealed."""

from __future__ import annotations

import hashlib
import os
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import FileBody, LocationBody, TextBody
from protocol.codec import encode_body
from storage.sealing import (
    BLOB_FRAME_BYTES,
    BLOB_HEAD_BYTES,
    BLOB_SEALED_FRAME_BYTES,
    MESSAGE_BODY,
    BlobOpener,
    BlobSealer,
    UnreadableError,
    ad,
    is_sealed,
    open_sealed,
    seal,
)

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))


def sealed_blob(key: bytes, file_id: uuid.UUID, data: bytes, chunks: list[int]) -> bytes:
    sealer = BlobSealer(key, file_id)
    out, start = [sealer.head], 0
    for size in chunks:
        out.append(sealer.update(data[start : start + size]))
        start += size
    out.append(sealer.update(data[start:]))
    out.append(sealer.final())
    return b"".join(out)


def opened_blob(key: bytes, file_id: uuid.UUID, blob: bytes) -> bytes:
    opener = BlobOpener(key, file_id, blob[:BLOB_HEAD_BYTES])
    rest, out = blob[BLOB_HEAD_BYTES:], []
    while rest:
        frame, rest = rest[:BLOB_SEALED_FRAME_BYTES], rest[BLOB_SEALED_FRAME_BYTES:]
        out.append(opener.open(frame))
    if not opener.done:
        raise UnreadableError("the blob is cut short")
    return b"".join(out)


def test_a_value_opens_with_its_key_in_its_place_only() -> None:
    row = uuid.uuid4()
    value = seal(KEY, b"hello", ad(MESSAGE_BODY, row))
    assert is_sealed(value) and b"hello" not in value
    assert open_sealed(KEY, value, ad(MESSAGE_BODY, row)) == b"hello"
    assert seal(KEY, b"hello", ad(MESSAGE_BODY, row)) != value  # a fresh nonce each time
    for key, place in ((OTHER, ad(MESSAGE_BODY, row)), (KEY, ad(MESSAGE_BODY, uuid.uuid4()))):
        with pytest.raises(UnreadableError):
            open_sealed(key, value, place)
    edited = bytearray(value)
    edited[-1] ^= 1
    with pytest.raises(UnreadableError):
        open_sealed(KEY, bytes(edited), ad(MESSAGE_BODY, row))


def test_plaintext_stored_before_sealing_is_never_taken_for_sealed() -> None:
    bodies = [
        encode_body(TextBody(text="x" * 100)),
        encode_body(LocationBody(lat=1.0, lon=2.0, acc=3.0)),
        encode_body(FileBody(file_id=b"\x01" * 16, name="a" * 60, size=1, mime="text/plain")),
    ]
    texts = [b"+62 812 5550 7788", b"1990-01-31", b"laporan tahunan.pdf"]
    digest = b"\x01" + hashlib.sha256(b"x").digest()[1:]  # a digest may start with 0x01
    for plain in (*bodies, *texts, digest):
        assert not is_sealed(plain)


@given(
    size=st.sampled_from([0, 1, BLOB_FRAME_BYTES - 1, BLOB_FRAME_BYTES, 3 * BLOB_FRAME_BYTES + 7]),
    chunks=st.lists(st.integers(1, 100_000), max_size=6),
)
def test_any_chunking_of_a_blob_seals_to_what_opens_to_the_same_bytes(
    size: int, chunks: list[int]
) -> None:
    file_id = uuid.uuid4()
    data = os.urandom(size)
    blob = sealed_blob(KEY, file_id, data, chunks)
    assert opened_blob(KEY, file_id, blob) == data


def test_a_blob_cut_short_reordered_edited_or_moved_does_not_open() -> None:
    file_id = uuid.uuid4()
    data = os.urandom(3 * BLOB_FRAME_BYTES + 10)
    blob = sealed_blob(KEY, file_id, data, [])
    frames = [
        blob[BLOB_HEAD_BYTES + i : BLOB_HEAD_BYTES + i + BLOB_SEALED_FRAME_BYTES]
        for i in range(0, len(blob) - BLOB_HEAD_BYTES, BLOB_SEALED_FRAME_BYTES)
    ]
    head = blob[:BLOB_HEAD_BYTES]
    cut = head + b"".join(frames[:-1])  # the last frame dropped
    swapped = head + frames[1] + frames[0] + b"".join(frames[2:])
    edited = bytearray(blob)
    edited[BLOB_HEAD_BYTES + 100] ^= 1
    for broken in (cut, swapped, bytes(edited), blob[:-1], blob + frames[0]):
        with pytest.raises(UnreadableError):
            opened_blob(KEY, file_id, broken)
    with pytest.raises(UnreadableError):
        opened_blob(KEY, uuid.uuid4(), blob)  # another file's place
    with pytest.raises(UnreadableError):
        opened_blob(OTHER, file_id, blob)
