"""Cancelling an account: everything that must hold from the moment the person says so, in
one transaction.

`cancel(conn, ...)` - the caller (server/handlers/cancellation.py) commits it, then
disconnects the devices, forgets the key in the keyring cache and tells the watchers of
the live sessions it ended:

- the account's status becomes `cancelled`, and its directory entry a placeholder: display
  name "deleted user", account name `deleted-<id>`, work email `<id>@deleted.invalid`, no
  phone, birth date, department or position, role `member`, no password. Whatever shows
  the account from then on (directory, push previews, admin tools) shows nobody;
- every device revoked, every token revoked, every push registration dropped (with its
  pending pushes), every live-location session ended;
- the account's data key destroyed (`Keyring.destroy_in`): message bodies, files and
  sealed fields of theirs read as erased from the commit on, everywhere, backups included;
- a `cancellation` rights request opened and set in progress (the purge closes it), and an
  audit `deletion` entry (ids only);
- a row in `cancellations`: the purge's work list (storage/purge.py), holding the work
  email the account had (to find login records made under it) until the purge deletes it.

Refused (CancellationError, nothing changed): an account cancelled already ("cancelled"),
and the organization's only owner ("only_owner": the organization must keep an owner; make
someone else owner first).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from storage.audit import AuditActor, AuditEvent, append
from storage.database import Database
from storage.errors import NotFoundError, StorageError
from storage.keyring import Keyring
from storage.live import LiveSession, end_all
from storage.push_registrations import drop_registrations
from storage.requests import open_request, set_status

DELETED_NAME = "deleted user"
DELETED_EMAIL_DOMAIN = "deleted.invalid"  # RFC 2606: never a real address


class CancellationError(StorageError):
    """`reason`: "cancelled" (done already) or "only_owner" (the org's last owner)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Cancelled:
    account_id: uuid.UUID
    devices: list[uuid.UUID]  # revoked now: disconnect them
    live_ended: list[LiveSession]  # ended now: tell whoever watched them
    request_id: uuid.UUID
    purge_after: datetime


async def cancel(
    conn: Any,
    keyring: Keyring,
    org_id: uuid.UUID,
    account_id: uuid.UUID,
    by: AuditActor,
    now: datetime,
    purge_delay: timedelta,
    *,
    keep_an_owner: bool = True,
) -> Cancelled:
    """Cancel the account in the caller's transaction (see the module doc); the purge may
    start `purge_delay` after `now`. Call `keyring.forget(account_id)` after the commit.
    Without `keep_an_owner` (the organization itself is being deleted) its last owner may
    go too. Raises NotFoundError, CancellationError."""
    row = await conn.fetchrow(
        "SELECT status, role, work_email FROM accounts WHERE org_id = $1 AND id = $2 FOR UPDATE",
        org_id,
        account_id,
    )
    if row is None:
        raise NotFoundError("no such member")
    if row["status"] == "cancelled":
        raise CancellationError("this account is cancelled already", "cancelled")
    if row["role"] == "owner" and keep_an_owner:
        # Owners are locked in a stable order, so two owners cancelling at once cannot
        # both see the other as the remaining owner.
        owners = await conn.fetch(
            """SELECT id FROM accounts WHERE org_id = $1 AND role = 'owner'
                 AND status = 'active' ORDER BY id FOR UPDATE""",
            org_id,
        )
        if not any(r["id"] != account_id for r in owners):
            raise CancellationError(
                "you are your organization's only owner: make another member owner first, "
                "so that the organization keeps one",
                "only_owner",
            )
    await conn.execute(
        f"""UPDATE accounts SET status = 'cancelled', display_name = $2,
               account_name = 'deleted-' || id::text,
               work_email = id::text || '@{DELETED_EMAIL_DOMAIN}',
               phone = NULL, birth_date = NULL, department_id = NULL, position = NULL,
               role = 'member', admin_department_id = NULL, password_change_required = false,
               updated_at = $3
           WHERE id = $1""",
        account_id,
        DELETED_NAME,
        now,
    )
    await conn.execute(
        "UPDATE auth_tokens SET revoked_at = $2 WHERE account_id = $1 AND revoked_at IS NULL",
        account_id,
        now,
    )
    devices = [
        r["id"]
        for r in await conn.fetch(
            """UPDATE devices SET revoked_at = coalesce(revoked_at, $2)
               WHERE account_id = $1 RETURNING id""",
            account_id,
            now,
        )
    ]
    await drop_registrations(conn, devices)
    live_ended = await end_all(conn, account_id, now)
    await keyring.destroy_in(conn, account_id, now)
    request = await open_request(conn, org_id, account_id, "cancellation", now)
    await set_status(conn, request.id, "in_progress", now)
    purge_after = now + purge_delay
    await conn.execute(
        """INSERT INTO cancellations (account_id, org_id, email, request_id, cancelled_at,
               purge_after) VALUES ($1, $2, $3, $4, $5, $6)""",
        account_id,
        org_id,
        row["work_email"],
        request.id,
        now,
        purge_after,
    )
    event = AuditEvent(
        "deletion", by, account_id, org_id, {"what": "account", "count": len(devices)}
    )
    await append(conn, [event], now)
    return Cancelled(account_id, devices, live_ended, request.id, purge_after)


class CancellationStore:
    def __init__(self, db: Database, keyring: Keyring) -> None:
        self._db = db
        self._keyring = keyring

    async def cancel(
        self,
        org_id: uuid.UUID,
        account_id: uuid.UUID,
        by: AuditActor,
        now: datetime,
        purge_delay: timedelta,
    ) -> Cancelled:
        """`cancel` in a transaction of its own; the keyring cache forgets the key after
        it (committed or not)."""
        try:
            return await self._db.transaction(
                cancel, self._keyring, org_id, account_id, by, now, purge_delay
            )
        finally:
            self._keyring.forget(account_id)
