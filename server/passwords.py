"""Password hashing (argon2id through libsodium) and the complexity rule."""

from __future__ import annotations

import re

import nacl.exceptions
import trio
from nacl.pwhash import argon2id

# (opslimit, memlimit) per strength; "minimal" exists for test suites only.
STRENGTHS = {
    "minimal": (argon2id.OPSLIMIT_MIN, argon2id.MEMLIMIT_MIN),
    "interactive": (argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE),
    "moderate": (argon2id.OPSLIMIT_MODERATE, argon2id.MEMLIMIT_MODERATE),
    "sensitive": (argon2id.OPSLIMIT_SENSITIVE, argon2id.MEMLIMIT_SENSITIVE),
}

MIN_LENGTH = 10
MAX_LENGTH = 128


def password_problems(password: str, *, personal: tuple[str, ...] = ()) -> list[str]:
    """Why `password` is too weak (empty list: acceptable).

    Rule: 10 to 128 characters, at least three of lower case, upper case, digits and
    other characters, and not containing the account name or the email's local part.
    """
    problems = []
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        problems.append(f"must be {MIN_LENGTH} to {MAX_LENGTH} characters long")
    classes = [r"[a-z]", r"[A-Z]", r"[0-9]", r"[^a-zA-Z0-9]"]
    if sum(1 for c in classes if re.search(c, password)) < 3:
        problems.append("must mix at least three of: lower case, upper case, digits, symbols")
    lowered = password.lower()
    for word in personal:
        if len(word) >= 3 and word.lower() in lowered:
            problems.append("must not contain your account name or email")
            break
    return problems


class PasswordHasher:
    """argon2id hashing off the trio thread, a few at a time (each takes 64 MiB)."""

    def __init__(self, strength: str, *, concurrency: int = 4) -> None:
        self._ops, self._mem = STRENGTHS[strength]
        self._slots = trio.CapacityLimiter(concurrency)

    async def hash(self, password: str) -> bytes:
        """The argon2id hash of `password` in libsodium's string format."""
        async with self._slots:
            return await trio.to_thread.run_sync(
                argon2id.str, password.encode(), self._ops, self._mem
            )

    async def verify(self, stored: bytes, password: str) -> bool:
        """True if `password` matches the stored hash."""

        def check() -> bool:
            try:
                return bool(argon2id.verify(stored, password.encode()))
            except nacl.exceptions.InvalidkeyError:
                return False

        async with self._slots:
            return await trio.to_thread.run_sync(check)
