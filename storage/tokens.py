"""Device-bound bearer tokens. Only SHA-256 hashes of tokens are stored.

Access and refresh tokens are issued in pairs sharing a `family`. Refreshing rotates the
pair; presenting a refresh token that was already rotated away revokes the whole family
(a stolen token was used twice).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum
from typing import Any

from storage.audit import AuditEvent, account_actor, append
from storage.database import Database
from storage.devices import Device, enroll_device
from storage.logins import settle_login
from storage.policies import gate_columns
from storage.push_registrations import drop_registrations


@dataclass(frozen=True, slots=True)
class TokenHashes:
    access: bytes
    refresh: bytes
    access_expires_at: datetime
    refresh_expires_at: datetime
    fresh_until: datetime | None = None  # the password was confirmed (login or re-entry)


class TokenStatus(Enum):
    VALID = "valid"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    REVOKED = "revoked"
    CANCELLED = "cancelled"  # the account was cancelled (its tokens were revoked then)


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """What a presented token proves. Fields other than `status` are set unless UNKNOWN."""

    status: TokenStatus
    account_id: uuid.UUID | None = None
    org_id: uuid.UUID | None = None
    device_id: uuid.UUID | None = None
    role: str | None = None
    admin_department_id: uuid.UUID | None = None
    password_change_required: bool = False
    policy_blocked: bool = False  # a material privacy-policy version awaits acceptance
    fresh_until: datetime | None = None


async def issue_tokens(
    conn: Any,
    account_id: uuid.UUID,
    device_id: uuid.UUID,
    family: uuid.UUID,
    hashes: TokenHashes,
    now: datetime,
) -> None:
    """Store a new token pair (on an open transaction)."""
    await conn.executemany(
        """INSERT INTO auth_tokens (token_hash, kind, device_id, account_id, family,
               created_at, expires_at, fresh_until) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        [
            (
                token_hash,
                kind,
                device_id,
                account_id,
                family,
                now,
                expires_at,
                hashes.fresh_until,
            )
            for token_hash, kind, expires_at in (
                (hashes.access, "access", hashes.access_expires_at),
                (hashes.refresh, "refresh", hashes.refresh_expires_at),
            )
        ],
    )


async def _check(conn: Any, token_hash: bytes, kind: str, now: datetime) -> tuple[TokenCheck, Any]:
    row = await conn.fetchrow(
        f"""SELECT t.family, t.expires_at, t.revoked_at, t.device_id, t.account_id, t.fresh_until,
                  d.revoked_at AS device_revoked_at, a.org_id, a.role, a.admin_department_id,
                  a.status, a.password_change_required, {gate_columns("a.org_id", "a.id")}
           FROM auth_tokens t JOIN devices d ON d.id = t.device_id
                JOIN accounts a ON a.id = t.account_id
           WHERE t.token_hash = $1 AND t.kind = $2""",
        token_hash,
        kind,
    )
    if row is None:
        return TokenCheck(TokenStatus.UNKNOWN), None
    if row["status"] == "cancelled":
        status = TokenStatus.CANCELLED
    elif (
        row["revoked_at"] is not None
        or row["device_revoked_at"] is not None
        or row["status"] != "active"
    ):
        status = TokenStatus.REVOKED
    elif row["expires_at"] <= now:
        status = TokenStatus.EXPIRED
    else:
        status = TokenStatus.VALID
    check = TokenCheck(
        status,
        row["account_id"],
        row["org_id"],
        row["device_id"],
        row["role"],
        row["admin_department_id"],
        row["password_change_required"],
        row["material_policy"] > row["accepted_policy"],
        row["fresh_until"],
    )
    return check, row


async def _authenticate(conn: Any, token_hash: bytes, now: datetime) -> TokenCheck:
    check, _ = await _check(conn, token_hash, "access", now)
    return check


async def _rotate(conn: Any, refresh_hash: bytes, new: TokenHashes, now: datetime) -> TokenCheck:
    check, row = await _check(conn, refresh_hash, "refresh", now)
    if check.status is TokenStatus.REVOKED and row["revoked_at"] is not None:
        # A rotated-away refresh token came back: assume theft, end the whole family.
        await conn.execute(
            "UPDATE auth_tokens SET revoked_at = $2 WHERE family = $1 AND revoked_at IS NULL",
            row["family"],
            now,
        )
    if check.status is not TokenStatus.VALID:
        return check
    await conn.execute(
        "UPDATE auth_tokens SET revoked_at = $2 WHERE family = $1 AND revoked_at IS NULL",
        row["family"],
        now,
    )
    new = replace(new, fresh_until=row["fresh_until"])  # a refresh keeps a confirmation
    await issue_tokens(conn, row["account_id"], row["device_id"], row["family"], new, now)
    return check


async def _revoke_device_tokens(conn: Any, device_id: uuid.UUID, now: datetime) -> None:
    await conn.execute(
        "UPDATE auth_tokens SET revoked_at = $2 WHERE device_id = $1 AND revoked_at IS NULL",
        device_id,
        now,
    )


async def _sign_out(
    conn: Any, org_id: uuid.UUID, account_id: uuid.UUID, device_id: uuid.UUID, now: datetime
) -> None:
    await _revoke_device_tokens(conn, device_id, now)
    await conn.execute(
        "UPDATE devices SET signed_out_at = coalesce(signed_out_at, $2) WHERE id = $1",
        device_id,
        now,
    )
    await drop_registrations(conn, [device_id])  # a logged-out phone must not be woken
    actor = account_actor(account_id, device_id)
    await append(conn, [AuditEvent("logout", actor, account_id, org_id)], now)


async def _confirm(
    conn: Any,
    access_hash: bytes,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    device_id: uuid.UUID,
    record_id: int,
    until: datetime,
    now: datetime,
) -> None:
    await conn.execute(
        """UPDATE auth_tokens SET fresh_until = $2
           WHERE family = (SELECT family FROM auth_tokens WHERE token_hash = $1)
             AND revoked_at IS NULL""",
        access_hash,
        until,
    )
    await settle_login(conn, record_id, "reauthenticated", account_id, device_id)
    event = AuditEvent("reauthenticated", account_actor(account_id, device_id), account_id, org_id)
    await append(conn, [event], now)


async def _open_session(
    conn: Any,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    device_name: str,
    platform: str,
    public_key: bytes,
    hashes: TokenHashes,
    record_id: int,
    now: datetime,
) -> Device:
    device = await enroll_device(conn, account_id, device_name, platform, public_key)
    await _revoke_device_tokens(conn, device.id, now)  # one live session per device
    await issue_tokens(conn, account_id, device.id, uuid.uuid4(), hashes, now)
    # Logging in again is how a device signed out from elsewhere gets back on the gateway.
    await conn.execute("UPDATE devices SET signed_out_at = NULL WHERE id = $1", device.id)
    await settle_login(conn, record_id, "success", account_id, device.id)
    login = AuditEvent(
        "login",
        account_actor(account_id, device.id),
        account_id,
        org_id,
        {"login_record_id": record_id},
    )
    await append(conn, [login], now)
    return device


async def _delete_expired_before(conn: Any, cutoff: datetime, limit: int) -> int:
    deleted: int = await conn.fetchval(
        """WITH gone AS (
               DELETE FROM auth_tokens WHERE token_hash IN (
                   SELECT token_hash FROM auth_tokens WHERE expires_at < $1
                   ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)
               RETURNING 1)
           SELECT count(*) FROM gone""",
        cutoff,
        limit,
    )
    return deleted


class TokenStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def delete_expired_before(self, cutoff: datetime, limit: int) -> int:
        """Delete up to `limit` tokens that expired before `cutoff`; returns how many went.

        Expiry, not revocation, decides, for both kinds: a revoked refresh token must stay
        until it expires, for a rotated-away one presented again still ends its family (it
        would be merely unknown once deleted); a revoked access token expires within
        `access_token_ttl_s` of its issue anyway (at most a day)."""
        return await self._db.transaction(_delete_expired_before, cutoff, limit)

    async def open_session(
        self,
        org_id: uuid.UUID,
        account_id: uuid.UUID,
        device_name: str,
        platform: str,
        public_key: bytes,
        hashes: TokenHashes,
        record_id: int,
        now: datetime,
    ) -> Device:
        """After a good password: enroll (or reuse) the device, replace its tokens with a
        new pair, let it on the gateway again, settle the login record `record_id` as a
        success and record the login in the audit log, in one transaction. ConflictError
        for a key this account may not use."""
        return await self._db.transaction(
            _open_session,
            org_id,
            account_id,
            device_name,
            platform,
            public_key,
            hashes,
            record_id,
            now,
        )

    async def issue(
        self, account_id: uuid.UUID, device_id: uuid.UUID, hashes: TokenHashes, now: datetime
    ) -> None:
        await self._db.transaction(issue_tokens, account_id, device_id, uuid.uuid4(), hashes, now)

    async def authenticate(self, access_hash: bytes, now: datetime) -> TokenCheck:
        return await self._db.transaction(_authenticate, access_hash, now)

    async def rotate(self, refresh_hash: bytes, new: TokenHashes, now: datetime) -> TokenCheck:
        """Swap a valid refresh token for the new pair; VALID means `new` is now live."""
        return await self._db.transaction(_rotate, refresh_hash, new, now)

    async def revoke_device(self, device_id: uuid.UUID, now: datetime) -> None:
        await self._db.transaction(_revoke_device_tokens, device_id, now)

    async def confirm(
        self,
        access_hash: bytes,
        org_id: uuid.UUID,
        account_id: uuid.UUID,
        device_id: uuid.UUID,
        record_id: int,
        until: datetime,
        now: datetime,
    ) -> None:
        """The password was entered again on this session: mark its tokens fresh until
        `until`, settle the login record `record_id` as `reauthenticated` and record it in
        the audit log, in one transaction."""
        await self._db.transaction(
            _confirm, access_hash, org_id, account_id, device_id, record_id, until, now
        )

    async def sign_out(
        self, org_id: uuid.UUID, account_id: uuid.UUID, device_id: uuid.UUID, now: datetime
    ) -> None:
        """End the account's session on `device_id` (logout): its tokens are revoked and
        the gateway refuses it (signed out) until it logs in again. One transaction, which
        records the logout in the audit log."""
        await self._db.transaction(_sign_out, org_id, account_id, device_id, now)
