"""The server's long-term Ed25519 identity key, which clients pin."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from nacl.signing import SigningKey

from protocol.errors import ObrolError

KEY_FILE = "server-identity.key"


class IdentityKeyError(ObrolError):
    """The identity key file is unreadable, malformed or readable by others."""


def load_identity(data_dir: Path) -> SigningKey:
    """Read the identity key from `data_dir`; IdentityKeyError if it is missing, malformed
    or readable by others."""
    path = data_dir / KEY_FILE
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        raise IdentityKeyError(f"no server identity key in {data_dir} ({KEY_FILE})") from None
    if mode & 0o077:
        raise IdentityKeyError(f"{path} is readable by other users (mode {mode:o}); chmod 600 it")
    seed = path.read_bytes()
    if len(seed) != 32:
        raise IdentityKeyError(f"{path} must hold a 32-byte Ed25519 seed")
    return SigningKey(seed)


def load_or_create_identity(data_dir: Path) -> SigningKey:
    """Read the identity key from `data_dir`, creating it (mode 0600) on first start."""
    path = data_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_identity(data_dir)
    key = SigningKey.generate()
    with os.fdopen(fd, "wb") as out:
        out.write(bytes(key))
    return key


def public_key_b64(key: SigningKey) -> str:
    """The public key, base64url without padding: what clients pin."""
    return base64.urlsafe_b64encode(bytes(key.verify_key)).rstrip(b"=").decode()


def fingerprint(key: SigningKey) -> str:
    """A short human-comparable fingerprint of the public key (SHA-256, first 16 bytes)."""
    digest = hashlib.sha256(bytes(key.verify_key)).hexdigest()[:32]
    return ":".join(digest[i : i + 4] for i in range(0, 32, 4))
