"""Password login, device-bound tokens, refresh and logout."""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from server.errors import ApiError, ApiErrorCode
from server.handlers.access import Actor
from server.services import Services
from storage.accounts import Account
from storage.devices import Device
from storage.errors import ConflictError
from storage.logins import LoginAttempt
from storage.tokens import TokenHashes, TokenStatus

logger = logging.getLogger(__name__)

ACCESS_PREFIX = "oat_"
REFRESH_PREFIX = "ort_"


def token_hash(token: str) -> bytes:
    """Tokens are 256 random bits: a plain SHA-256 is the right hash to store."""
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class TokenPair:
    access: str
    refresh: str
    access_ttl_s: int
    refresh_ttl_s: int


@dataclass(frozen=True, slots=True)
class LoginResult:
    account: Account
    device: Device
    tokens: TokenPair


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    name: str
    platform: str
    public_key: bytes


def _new_pair(services: Services) -> tuple[TokenPair, TokenHashes]:
    settings = services.settings
    now = services.clock()
    pair = TokenPair(
        access=ACCESS_PREFIX + secrets.token_urlsafe(32),
        refresh=REFRESH_PREFIX + secrets.token_urlsafe(32),
        access_ttl_s=settings.access_token_ttl_s,
        refresh_ttl_s=settings.refresh_token_ttl_s,
    )
    hashes = TokenHashes(
        access=token_hash(pair.access),
        refresh=token_hash(pair.refresh),
        access_expires_at=now + timedelta(seconds=settings.access_token_ttl_s),
        refresh_expires_at=now + timedelta(seconds=settings.refresh_token_ttl_s),
    )
    return pair, hashes


class SessionHandler:
    def __init__(self, services: Services) -> None:
        self._s = services
        self._dummy_hash: bytes | None = None

    async def login(
        self, email: str, password: str, device: DeviceSpec, *, ip: str, user_agent: str
    ) -> LoginResult:
        """Check the password and open a session bound to `device` (enrolled if new).

        Every attempt is written to the login records. Raises ApiError: rate_limited,
        bad_credentials, account_deactivated, conflict (a key this account may not use).
        """
        s = self._s
        now = s.clock()

        def attempt(outcome: str, account: Account | None = None) -> LoginAttempt:
            return LoginAttempt(
                now, email, ip, user_agent, outcome, account.id if account else None
            )

        window = timedelta(seconds=s.settings.login_failure_window_s)
        by_name, by_ip = await s.logins.failures_since(email, ip, now - window)
        if by_name >= s.settings.login_failures_per_account or (
            by_ip >= s.settings.login_failures_per_ip
        ):
            await s.logins.record(attempt("rate_limited"))
            raise ApiError(
                ApiErrorCode.RATE_LIMITED,
                "too many failed logins; try again later",
                headers={"Retry-After": str(s.settings.login_failure_window_s)},
            )
        found = await s.accounts.find_for_login(email)
        if found is None:
            await s.passwords.verify(await self._dummy(), password)  # same time as a miss
            await s.logins.record(attempt("unknown_account"))
            raise ApiError(ApiErrorCode.BAD_CREDENTIALS, "wrong email or password")
        account, stored = found
        if not await s.passwords.verify(stored, password):
            await s.logins.record(attempt("bad_password", account))
            raise ApiError(ApiErrorCode.BAD_CREDENTIALS, "wrong email or password")
        if account.status != "active":
            await s.logins.record(attempt("deactivated", account))
            raise ApiError(ApiErrorCode.ACCOUNT_DEACTIVATED, "this account is deactivated")
        pair, hashes = _new_pair(s)
        try:
            enrolled = await s.tokens.open_session(
                account.id,
                device.name,
                device.platform,
                device.public_key,
                hashes,
                attempt("success", account),
            )
        except ConflictError:
            await s.logins.record(attempt("device_refused", account))
            raise
        logger.info("login account=%s device=%s", account.id, enrolled.id)
        return LoginResult(account, enrolled, pair)

    async def _dummy(self) -> bytes:
        if self._dummy_hash is None:
            self._dummy_hash = await self._s.passwords.hash(secrets.token_urlsafe(16))
        return self._dummy_hash

    async def authenticate(self, authorization: str | None) -> Actor:
        """The actor behind an `Authorization: Bearer <access token>` header."""
        if not authorization or not authorization.startswith("Bearer "):
            raise ApiError(ApiErrorCode.UNAUTHENTICATED, "send 'Authorization: Bearer <token>'")
        token = authorization.removeprefix("Bearer ").strip()
        check = await self._s.tokens.authenticate(token_hash(token), self._s.clock())
        _raise_unless_valid(check.status)
        assert check.account_id and check.org_id and check.device_id and check.role
        return Actor(
            check.account_id,
            check.org_id,
            check.device_id,
            check.role,
            check.admin_department_id,
        )

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Rotate a refresh token into a new pair; a reused one revokes its family."""
        pair, hashes = _new_pair(self._s)
        check = await self._s.tokens.rotate(token_hash(refresh_token), hashes, self._s.clock())
        _raise_unless_valid(check.status)
        return pair

    async def logout(self, actor: Actor) -> None:
        """End this device's session: every token bound to it stops working."""
        await self._s.tokens.revoke_device(actor.device_id, self._s.clock())


def _raise_unless_valid(status: TokenStatus) -> None:
    if status is TokenStatus.EXPIRED:
        raise ApiError(ApiErrorCode.TOKEN_EXPIRED, "the token has expired; refresh it")
    if status is TokenStatus.REVOKED:
        raise ApiError(ApiErrorCode.TOKEN_REVOKED, "the token was revoked; log in again")
    if status is not TokenStatus.VALID:
        raise ApiError(ApiErrorCode.UNAUTHENTICATED, "unknown token")
