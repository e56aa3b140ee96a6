"""Password login, device-bound tokens, refresh and logout."""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass, replace
from datetime import timedelta

from server.errors import ApiError, ApiErrorCode
from server.handlers.access import Actor
from server.handlers.cancellation import cancelled_error
from server.handlers.minors import settle_at_login
from server.services import Services
from storage.accounts import Account
from storage.devices import Device
from storage.errors import ConflictError
from storage.logins import PENDING, AttemptLimits, LoginAttempt
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


def _new_pair(services: Services, *, fresh: bool = False) -> tuple[TokenPair, TokenHashes]:
    """A new token pair; `fresh` (a password login) lets it use the data-rights actions
    for settings.reauth_window_s."""
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
        fresh_until=now + timedelta(seconds=settings.reauth_window_s) if fresh else None,
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

        Every attempt is written to the login records; the rate limit is applied before
        the password is checked (see `admit_password_check`). Raises ApiError:
        rate_limited, bad_credentials, guardian_consent_required (a minor's account waiting
        for a guardian's consent), account_deactivated, account_cancelled (the password of
        an account cancelled and not purged yet); ConflictError for a key this account
        may not use.
        """
        s = self._s
        now = s.clock()
        record = await admit_password_check(s, LoginAttempt(now, email, ip, user_agent, PENDING))
        found = await s.accounts.find_for_login(email)
        if found is None:
            await s.passwords.verify(await self._dummy(), password)  # same time as a miss
            await s.logins.settle(record, "unknown_account")
            raise ApiError(ApiErrorCode.BAD_CREDENTIALS, "wrong email or password")
        account, stored = found
        if not await s.passwords.verify(stored, password):
            await s.logins.settle(record, "bad_password", account.id)
            raise ApiError(ApiErrorCode.BAD_CREDENTIALS, "wrong email or password")
        status = await settle_at_login(s, account)  # a minor may have come of age
        if status == "pending_guardian":
            await s.logins.settle(record, "guardian_consent_required", account.id)
            raise ApiError(
                ApiErrorCode.GUARDIAN_CONSENT_REQUIRED,
                "this account can be used once your organization has recorded a parent's or "
                "guardian's consent",
            )
        if status == "cancelled":
            await s.logins.settle(record, "cancelled", account.id)
            raise cancelled_error()
        if status != "active":
            await s.logins.settle(record, "deactivated", account.id)
            raise ApiError(ApiErrorCode.ACCOUNT_DEACTIVATED, "this account is deactivated")
        account = replace(account, status=status)
        pair, hashes = _new_pair(s, fresh=True)
        try:
            enrolled = await s.tokens.open_session(
                account.org_id,
                account.id,
                device.name,
                device.platform,
                device.public_key,
                hashes,
                record,
                now,
            )
        except ConflictError:
            await s.logins.settle(record, "device_refused", account.id)
            raise
        logger.info("login account=%s device=%s", account.id, enrolled.id)
        return LoginResult(account, enrolled, pair)

    async def _dummy(self) -> bytes:
        if self._dummy_hash is None:
            self._dummy_hash = await self._s.passwords.hash(secrets.token_urlsafe(16))
        return self._dummy_hash

    async def authenticate(
        self,
        authorization: str | None,
        *,
        before_password_change: bool = False,
        before_policy_acceptance: bool = False,
    ) -> Actor:
        """The actor behind an `Authorization: Bearer <access token>` header.

        An account that must still change its initial password gets password_change_required
        unless `before_password_change` (reading one's profile, changing the password,
        logging out). An account whose organization published a material privacy-policy
        version it has not accepted gets reconsent_required unless
        `before_policy_acceptance` (what it needs to read and accept the policy). Both come
        from the token check's one statement. Raises ApiError: unauthenticated,
        token_expired, token_revoked, password_change_required, reconsent_required.
        """
        if not authorization or not authorization.startswith("Bearer "):
            raise ApiError(ApiErrorCode.UNAUTHENTICATED, "send 'Authorization: Bearer <token>'")
        token = authorization.removeprefix("Bearer ").strip()
        check = await self._s.tokens.authenticate(token_hash(token), self._s.clock())
        _raise_unless_valid(check.status)
        assert check.account_id and check.org_id and check.device_id and check.role
        if check.password_change_required and not before_password_change:
            raise ApiError(
                ApiErrorCode.PASSWORD_CHANGE_REQUIRED,
                "change your initial password first (POST /v1/me/password)",
            )
        if check.policy_blocked and not before_policy_acceptance:
            raise ApiError(
                ApiErrorCode.RECONSENT_REQUIRED,
                "your organization published a new privacy policy: read it (GET /v1/me/policy)"
                " and accept it (POST /v1/me/policy/accept) first",
            )
        return Actor(
            check.account_id,
            check.org_id,
            check.device_id,
            check.role,
            check.admin_department_id,
            check.fresh_until,
        )

    async def reauthenticate(
        self, actor: Actor, authorization: str, password: str, *, ip: str, user_agent: str
    ) -> int:
        """Confirm the password on this session: its tokens may use the data-rights actions
        for the next settings.reauth_window_s seconds (returned). Rate limited and recorded
        exactly like a login. Raises ApiError: rate_limited, bad_credentials."""
        s = self._s
        now = s.clock()
        account = await s.accounts.get(actor.org_id, actor.account_id)
        attempt = LoginAttempt(
            now, account.work_email, ip, user_agent, PENDING, account.id, actor.device_id
        )
        record = await admit_password_check(s, attempt)
        if not await s.passwords.verify(await s.accounts.password_hash(account.id), password):
            await s.logins.settle(record, "bad_password", account.id)
            raise ApiError(ApiErrorCode.BAD_CREDENTIALS, "the password is wrong")
        window = s.settings.reauth_window_s
        token = authorization.removeprefix("Bearer ").strip()
        await s.tokens.confirm(
            token_hash(token),
            actor.org_id,
            actor.account_id,
            actor.device_id,
            record,
            now + timedelta(seconds=window),
            now,
        )
        return window

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Rotate a refresh token into a new pair; a reused one revokes its family."""
        pair, hashes = _new_pair(self._s)
        check = await self._s.tokens.rotate(token_hash(refresh_token), hashes, self._s.clock())
        _raise_unless_valid(check.status)
        return pair

    async def logout(self, actor: Actor) -> None:
        """End this device's session: every token bound to it stops working, and its
        gateway connections close (4013 signed out) and stay refused until it logs in."""
        await self._s.tokens.sign_out(
            actor.org_id, actor.account_id, actor.device_id, self._s.clock()
        )
        self._s.hub.disconnect_device(actor.device_id, signed_out=True)


async def admit_password_check(services: Services, attempt: LoginAttempt) -> int:
    """Let one password check go ahead under the login rate limits, or refuse it.

    Counted before the check and atomically with every concurrent attempt (in any server
    process), so no more than the limit are ever checked; `attempt` is recorded as pending
    and its record id returned (settle it with the outcome). Raises ApiError rate_limited
    (recorded, but never counted as a failure) over the limit.
    """
    settings = services.settings
    window_s = settings.login_failure_window_s
    limits = AttemptLimits(
        since=attempt.at - timedelta(seconds=window_s),
        per_name=settings.login_failures_per_account,
        per_ip=settings.login_failures_per_ip,
    )
    record = await services.logins.reserve(attempt, limits)
    if record is None:
        raise ApiError(
            ApiErrorCode.RATE_LIMITED,
            "too many failed attempts; try again later",
            headers={"Retry-After": str(window_s)},
        )
    return record


def _raise_unless_valid(status: TokenStatus) -> None:
    if status is TokenStatus.EXPIRED:
        raise ApiError(ApiErrorCode.TOKEN_EXPIRED, "the token has expired; refresh it")
    if status is TokenStatus.CANCELLED:
        raise cancelled_error()
    if status is TokenStatus.REVOKED:
        raise ApiError(ApiErrorCode.TOKEN_REVOKED, "the token was revoked; log in again")
    if status is not TokenStatus.VALID:
        raise ApiError(ApiErrorCode.UNAUTHENTICATED, "unknown token")
