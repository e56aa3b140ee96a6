"""What sealed data looks like: values in columns, and blobs on disk.

A sealed value is `0x01 || nonce (24 bytes) || XChaCha20-Poly1305 ciphertext and tag`, under
the owner's data key (`storage.keyring`), with associated data naming the column and the
row (`ad(label, row_id)`): a sealed value copied into another row or column does not open.
The leading version byte makes every value say what it is, so no flag column can disagree
with its value: the values written before migration 0013 are plaintext, and none of them
starts with 0x01 and is 41 bytes or longer (a message body is a msgpack map, 0x80-0x8f or
0xde/0xdf; phone numbers, ISO dates and file names are text without control characters; a
plain SHA-256 digest is 32 bytes).

A sealed blob is `MAGIC || secretstream header (24 bytes)` followed by frames: each holds
`BLOB_FRAME_BYTES` of the file (the last one less, possibly none), pushed through libsodium's
secretstream (XChaCha20-Poly1305) with the file id as associated data, the last one tagged
FINAL. A truncated, reordered or edited blob fails to open. Writing and reading need one
frame of memory whatever the file's size.

Nothing here touches the database or the disk. Values are sealed and opened by calling
libsodium through pynacl's own cffi module (`nacl._sodium`, what `nacl.bindings` wraps):
1.6 us to open a 100-byte body against 3.9 us through `nacl.bindings`, which matters on
the catch-up path, where every message is opened (BENCHMARKS.md, "Encryption at rest").
"""

from __future__ import annotations

import importlib
import logging
import os
import uuid
from typing import Any

import nacl.bindings as sodium
import nacl.exceptions

from storage.errors import StorageError

SEALED_V1 = 0x01
NONCE_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
TAG_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_ABYTES  # 16
KEY_BYTES = 32
MIN_SEALED_BYTES = 1 + NONCE_BYTES + TAG_BYTES

# Associated-data labels: which column a sealed value belongs to.
MESSAGE_BODY = b"messages.body:"
ACCOUNT_PHONE = b"accounts.phone:"
ACCOUNT_BIRTH_DATE = b"accounts.birth_date:"
FILE_NAME = b"files.name:"
FILE_SHA256 = b"files.sha256:"
BLOB = b"blob:"
EXPORT_ARCHIVE = b"exports.archive:"  # an export archive on disk (a stream like a blob's)
EXPORT_KEY = b"exports.archive_key:"  # its key, sealed under the requester's data key

BLOB_MAGIC = b"\x00obrol-blob-v1\x00"  # 15 bytes, never the start of a plaintext we wrote
BLOB_FRAME_BYTES = 64 * 1024
_STREAM_HEADER_BYTES = sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES
_STREAM_ABYTES = sodium.crypto_secretstream_xchacha20poly1305_ABYTES
BLOB_HEAD_BYTES = len(BLOB_MAGIC) + _STREAM_HEADER_BYTES
BLOB_SEALED_FRAME_BYTES = BLOB_FRAME_BYTES + _STREAM_ABYTES
_TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
_TAG_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL

logger = logging.getLogger(__name__)

# pynacl's cffi module: the libsodium functions themselves, without the per-call checks
# and copies of nacl.bindings (every argument is checked here instead).
_sodium: Any = importlib.import_module("nacl._sodium")
_ffi, _lib = _sodium.ffi, _sodium.lib
_NULL = _ffi.NULL
_HEAD = 1 + NONCE_BYTES
_NO_KEY = b""  # an owner that never had a data key


class UnreadableError(StorageError):
    """A sealed value or blob does not open with the key it should: damaged or edited."""


def ad(label: bytes, row_id: uuid.UUID) -> bytes:
    """The associated data of a value in column `label` of row `row_id`."""
    return label + row_id.bytes


def _check_key(key: bytes) -> None:
    if type(key) is not bytes or len(key) != KEY_BYTES:
        raise TypeError(f"a data key is {KEY_BYTES} bytes")


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """`plaintext` sealed under `key`, bound to `associated`."""
    _check_key(key)
    head = b"\x01" + os.urandom(NONCE_BYTES)
    size = _HEAD + len(plaintext) + TAG_BYTES
    out = _ffi.new("unsigned char[]", size)
    _ffi.memmove(out, head, _HEAD)
    _lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
        out + _HEAD,
        _NULL,
        plaintext,
        len(plaintext),
        associated,
        len(associated),
        _NULL,
        head[1:],
        key,
    )
    return bytes(_ffi.buffer(out, size))


def is_sealed(value: bytes) -> bool:
    """Whether `value` is a sealed value (else a plaintext written before sealing)."""
    return len(value) >= MIN_SEALED_BYTES and value[0] == SEALED_V1


def open_sealed(key: bytes, value: bytes, associated: bytes) -> bytes:
    """The plaintext of a sealed value; UnreadableError if it does not open."""
    _check_key(key)
    if len(value) < MIN_SEALED_BYTES:
        raise UnreadableError("a sealed value is cut short")
    size = len(value) - MIN_SEALED_BYTES
    out = _ffi.new("unsigned char[]", max(size, 1))
    failed = _lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
        out,
        _NULL,
        _NULL,
        value[_HEAD:],
        len(value) - _HEAD,
        associated,
        len(associated),
        value[1:_HEAD],
        key,
    )
    if failed:
        raise UnreadableError("a sealed value does not open with its owner's key")
    return bytes(_ffi.buffer(out, size))


def open_message_body(
    keys: dict[uuid.UUID, bytes | None], message_id: uuid.UUID, sender_id: uuid.UUID, stored: bytes
) -> bytes | None:
    """The plaintext body of a stored message; None if it is erased (its sender's key was
    destroyed) or does not open (logged, without contents). `keys`: `Keyring.for_read` of
    the senders."""
    key = keys.get(sender_id, _NO_KEY)
    if key is None:
        return None  # erased
    if not (len(stored) >= MIN_SEALED_BYTES and stored[0] == SEALED_V1):
        return stored  # written before bodies were sealed
    try:
        if key is _NO_KEY:
            raise UnreadableError("its sender has no data key")
        return open_sealed(key, stored, MESSAGE_BODY + message_id.bytes)
    except UnreadableError as exc:
        logger.error("the body of message %s is unreadable (%s); shown as erased", message_id, exc)
        return None


class BlobSealer:
    """Seals one blob as it streams: `head`, then what each `update` returns, then `final()`.
    `label`: what the stream is (BLOB, or EXPORT_ARCHIVE for an export archive)."""

    def __init__(self, key: bytes, file_id: uuid.UUID, label: bytes = BLOB) -> None:
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        header = sodium.crypto_secretstream_xchacha20poly1305_init_push(self._state, key)
        self.head = BLOB_MAGIC + header
        self._ad = ad(label, file_id)
        self._pending = bytearray()

    def update(self, data: bytes) -> bytes:
        """The sealed frames `data` completes (often none)."""
        self._pending += data
        if len(self._pending) < BLOB_FRAME_BYTES:
            return b""
        out = []
        view = memoryview(self._pending)
        start = 0
        while len(self._pending) - start >= BLOB_FRAME_BYTES:
            frame = bytes(view[start : start + BLOB_FRAME_BYTES])
            out.append(self._push(frame, _TAG_MESSAGE))
            start += BLOB_FRAME_BYTES
        view.release()
        del self._pending[:start]
        return b"".join(out)

    def final(self) -> bytes:
        """The last frame (tagged FINAL), holding what is left."""
        frame = self._push(bytes(self._pending), _TAG_FINAL)
        self._pending.clear()
        return frame

    def _push(self, frame: bytes, tag: int) -> bytes:
        return sodium.crypto_secretstream_xchacha20poly1305_push(self._state, frame, self._ad, tag)


class BlobOpener:
    """Opens one sealed blob frame by frame: `start(head)`, then `open(frame)` for each
    `BLOB_SEALED_FRAME_BYTES` read (the last one shorter), until `done`."""

    def __init__(self, key: bytes, file_id: uuid.UUID, head: bytes, label: bytes = BLOB) -> None:
        if len(head) != BLOB_HEAD_BYTES or not head.startswith(BLOB_MAGIC):
            raise UnreadableError("not a sealed blob")
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        try:
            sodium.crypto_secretstream_xchacha20poly1305_init_pull(
                self._state, head[len(BLOB_MAGIC) :], key
            )
        except nacl.exceptions.CryptoError:
            raise UnreadableError("the blob's header does not open") from None
        self._ad = ad(label, file_id)
        self.done = False

    def open(self, frame: bytes) -> bytes:
        """The plaintext of the next frame; UnreadableError if it does not open or comes
        after the last one."""
        if self.done:
            raise UnreadableError("the blob goes on past its last frame")
        try:
            plain, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(
                self._state, frame, self._ad
            )
        except nacl.exceptions.CryptoError:
            raise UnreadableError("a blob frame does not open") from None
        if tag == _TAG_FINAL:
            self.done = True
        elif len(frame) != BLOB_SEALED_FRAME_BYTES:
            raise UnreadableError("the blob is cut short")
        return bytes(plain)
