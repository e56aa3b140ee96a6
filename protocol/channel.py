"""The encrypted phase: one libsodium secretstream (XChaCha20-Poly1305) per direction.

After the handshake every WebSocket message is exactly one secretstream message: the
ciphertext of one batch plaintext. `SecureChannel.seal` encrypts the next outgoing batch,
`SecureChannel.open` decrypts the next incoming one. The stream's internal counter rejects
anything tampered with, replayed, reordered or cut short (`decrypt_failed`); after the peer's
FINAL-tagged message nothing more is accepted (`channel_closed`).

Rekeying: the sender tags a message TAG_REKEY every `RekeyPolicy.every_messages` messages,
or on the first message sealed at or after `interval_s` seconds since the last rekey (time
comes from the caller); libsodium then replaces the key on both sides, so a later key
compromise does not expose earlier messages. A receiver accepts any schedule.

Hot path: `seal`/`open` call the bound libsodium functions of `nacl.bindings` directly on
long-lived state objects (whose output buffers libsodium's bindings reuse).
"""

from __future__ import annotations

from dataclasses import dataclass

import nacl.bindings as sodium
import nacl.exceptions

from protocol.codes import ErrorCode
from protocol.errors import LocalProtocolError, RemoteProtocolError

KEY_BYTES: int = sodium.crypto_secretstream_xchacha20poly1305_KEYBYTES
HEADER_BYTES: int = sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES
ABYTES: int = sodium.crypto_secretstream_xchacha20poly1305_ABYTES
"""Bytes a sealed message is longer than its plaintext (1 tag byte + 16-byte MAC)."""

TAG_MESSAGE: int = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
TAG_PUSH: int = sodium.crypto_secretstream_xchacha20poly1305_TAG_PUSH
TAG_REKEY: int = sodium.crypto_secretstream_xchacha20poly1305_TAG_REKEY
TAG_FINAL: int = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL

StreamState = sodium.crypto_secretstream_xchacha20poly1305_state
_push = sodium.crypto_secretstream_xchacha20poly1305_push
_pull = sodium.crypto_secretstream_xchacha20poly1305_pull


@dataclass(frozen=True, slots=True)
class RekeyPolicy:
    """When the sending side of a channel marks a message with TAG_REKEY."""

    every_messages: int = 1_000
    interval_s: float = 120.0


DEFAULT_REKEY = RekeyPolicy()


def start_push(key: bytes, header: bytes | None = None) -> tuple[StreamState, bytes]:
    """Return a push (encrypting) stream state for `key` and the header to send the peer.

    Without `header`, libsodium picks a random one (`init_push`); that is what real use does.
    With `header` (test vectors only), the state is built with `init_pull(header, key)`,
    which yields exactly the state `init_push` would have built had it drawn that header.
    """
    state = StreamState()
    if header is None:
        header = sodium.crypto_secretstream_xchacha20poly1305_init_push(state, key)
    else:
        sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, header, key)
    return state, header


def start_pull(key: bytes, header: bytes) -> StreamState:
    """Return a pull (decrypting) stream state for the peer's `header` and `key`."""
    state = StreamState()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, header, key)
    return state


class SecureChannel:
    """Both directions of an established channel. Built by the handshake machines.

    `max_seal_bytes` is the largest plaintext the peer accepts, `max_open_bytes` the largest
    we accept; a bigger incoming message is refused (`frame_too_large`) and ends the channel,
    like every other receive error, since a stream cannot skip a message.
    """

    __slots__ = (
        "_max_open_bytes",
        "_max_seal_bytes",
        "_pull_state",
        "_push_state",
        "_receive_error",
        "_rekey_at",
        "_rekey_every",
        "_rekey_interval_s",
        "_sealed_since_rekey",
        "_sent_final",
        "peer_finished",
    )

    def __init__(
        self,
        *,
        push_state: StreamState,
        pull_state: StreamState,
        max_seal_bytes: int,
        max_open_bytes: int,
        rekey: RekeyPolicy = DEFAULT_REKEY,
    ) -> None:
        if rekey.every_messages < 1 or not rekey.interval_s > 0:
            raise LocalProtocolError(ErrorCode.INTERNAL, f"invalid rekey policy {rekey!r}")
        self._push_state = push_state
        self._pull_state = pull_state
        self._max_seal_bytes = max_seal_bytes
        self._max_open_bytes = max_open_bytes
        self._rekey_every = rekey.every_messages
        self._rekey_interval_s = rekey.interval_s
        self._rekey_at: float | None = None
        self._sealed_since_rekey = 0
        self._sent_final = False
        self._receive_error: RemoteProtocolError | None = None
        self.peer_finished = False
        """True once the peer's FINAL-tagged message arrived: it closed the channel itself."""

    def seal(self, plaintext: bytes, now: float | None = None, *, final: bool = False) -> bytes:
        """Encrypt the next outgoing batch (bytes); return one WebSocket message's bytes.

        `now` (any monotonic clock, seconds) drives time-based rekeying; pass it whenever it
        is at hand. `final=True` tags the message FINAL: the last one this side sends.
        Raises `LocalProtocolError` after a final message or for a plaintext larger than
        the peer accepts.
        """
        if self._sent_final:
            raise LocalProtocolError(ErrorCode.CHANNEL_CLOSED, "seal after the final message")
        if len(plaintext) > self._max_seal_bytes:
            raise LocalProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"{len(plaintext)} bytes, the peer accepts {self._max_seal_bytes}",
            )
        self._sealed_since_rekey += 1
        if final:
            tag = TAG_FINAL
            self._sent_final = True
        elif self._sealed_since_rekey >= self._rekey_every or (
            now is not None and self._rekey_at is not None and now >= self._rekey_at
        ):
            tag = TAG_REKEY
            self._sealed_since_rekey = 0
            self._rekey_at = None
        else:
            tag = TAG_MESSAGE
        if now is not None and self._rekey_at is None:
            self._rekey_at = now + self._rekey_interval_s
        return _push(self._push_state, plaintext, None, tag)

    def open(self, ciphertext: bytes) -> bytes:
        """Decrypt the next incoming WebSocket message; return its batch plaintext.

        Raises `RemoteProtocolError`: `decrypt_failed` for anything tampered with, replayed,
        reordered or truncated (and for every call after any receive error), `frame_too_large`
        for a message over the limit, `channel_closed` after the peer's final message.
        """
        if self._receive_error is not None:
            raise RemoteProtocolError(
                self._receive_error.code,
                "the channel already failed: " + self._receive_error.message,
            )
        if self.peer_finished:
            raise RemoteProtocolError(ErrorCode.CHANNEL_CLOSED, "message after the final one")
        if type(ciphertext) is not bytes:
            ciphertext = bytes(ciphertext)
        size = len(ciphertext)
        if size < ABYTES:
            raise self._fail(
                ErrorCode.DECRYPT_FAILED, f"{size} bytes is shorter than a sealed message"
            )
        if size - ABYTES > self._max_open_bytes:
            raise self._fail(
                ErrorCode.FRAME_TOO_LARGE,
                f"{size - ABYTES} bytes, the limit is {self._max_open_bytes}",
            )
        try:
            plaintext, tag = _pull(self._pull_state, ciphertext, None)
        except nacl.exceptions.CryptoError:
            raise self._fail(
                ErrorCode.DECRYPT_FAILED, "message tampered with, replayed, reordered or cut"
            ) from None
        if tag == TAG_FINAL:
            self.peer_finished = True
        elif tag == TAG_PUSH:
            raise self._fail(ErrorCode.MALFORMED_FRAME, "TAG_PUSH is not used by this protocol")
        return plaintext

    @property
    def closed_for_sending(self) -> bool:
        """True once a final message was sealed."""
        return self._sent_final

    def _fail(self, code: ErrorCode, message: str) -> RemoteProtocolError:
        self._receive_error = RemoteProtocolError(code, message)
        return self._receive_error
