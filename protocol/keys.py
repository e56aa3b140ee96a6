"""Long-term Ed25519 keys: the server identity key and each device's key.

The server's public key is what clients pin; a device's public key is what it registers at
enrolment. Secret keys use libsodium's 64-byte layout (seed || public key).
"""

from __future__ import annotations

from dataclasses import dataclass

import nacl.bindings as sodium

from protocol.codes import ErrorCode
from protocol.errors import LocalProtocolError

SEED_BYTES: int = sodium.crypto_sign_SEEDBYTES


@dataclass(frozen=True, slots=True, repr=False)
class SigningKeyPair:
    """An Ed25519 key pair: `public` (32 bytes) and `secret` (64 bytes, never log it)."""

    public: bytes
    secret: bytes

    @classmethod
    def generate(cls) -> SigningKeyPair:
        """Return a fresh random key pair."""
        public, secret = sodium.crypto_sign_keypair()
        return cls(public=public, secret=secret)

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKeyPair:
        """Return the key pair a 32-byte seed determines (store only the seed, if you like).

        Raises `LocalProtocolError` when `seed` is not 32 bytes.
        """
        if type(seed) is not bytes or len(seed) != SEED_BYTES:
            raise LocalProtocolError(ErrorCode.INTERNAL, f"seed must be {SEED_BYTES} bytes")
        public, secret = sodium.crypto_sign_seed_keypair(seed)
        return cls(public=public, secret=secret)

    @property
    def seed(self) -> bytes:
        """The 32-byte seed the pair derives from."""
        return self.secret[:SEED_BYTES]

    def __repr__(self) -> str:
        return f"SigningKeyPair(public={self.public.hex()})"
