"""Records -> JSON-ready dicts. ids are strings, times ISO 8601 UTC, keys base64url."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import msgpack

from storage.accounts import Account
from storage.cancellation import DELETED_NAME
from storage.conversations import Conversation
from storage.devices import Device
from storage.files import FileRecord
from storage.logins import LoginAttempt
from storage.messages import StoredMessage
from storage.orgs import Department, Org
from storage.receipts import ReceiptRecord


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def org_json(org: Org) -> dict[str, Any]:
    return {
        "id": str(org.id),
        "name": org.name,
        "created_at": iso(org.created_at),
        "serves_children": org.serves_children,
    }


def department_json(d: Department) -> dict[str, Any]:
    return {
        "id": str(d.id),
        "org_id": str(d.org_id),
        "parent_id": None if d.parent_id is None else str(d.parent_id),
        "name": d.name,
        "created_at": iso(d.created_at),
    }


def account_json(a: Account, *, birth_date: bool = False) -> dict[str, Any]:
    """The whole record; `birth_date` only when asked (for the person themselves and the
    org's owners and admins). A cancelled account is a "deleted user" to everyone: its id,
    organization and status, nothing else (README, "Account cancellation")."""
    if a.status == "cancelled":
        return deleted_user_json(a, birth_date=birth_date)
    record: dict[str, Any] = {
        "id": str(a.id),
        "org_id": str(a.org_id),
        "account_name": a.account_name,
        "work_email": a.work_email,
        "display_name": a.display_name,
        "phone": a.phone,
        "department_id": None if a.department_id is None else str(a.department_id),
        "position": a.position,
        "role": a.role,
        "admin_department_id": (
            None if a.admin_department_id is None else str(a.admin_department_id)
        ),
        "status": a.status,
        "password_change_required": a.password_change_required,
        "created_at": iso(a.created_at),
        "updated_at": iso(a.updated_at),
    }
    if birth_date:
        record["birth_date"] = None if a.birth_date is None else a.birth_date.isoformat()
    return record


def deleted_user_json(a: Account, *, birth_date: bool = False) -> dict[str, Any]:
    """A cancelled account (until the purge deletes its row): the same keys as
    `account_json`, naming nobody."""
    record: dict[str, Any] = {
        "id": str(a.id),
        "org_id": str(a.org_id),
        "account_name": None,
        "work_email": None,
        "display_name": DELETED_NAME,
        "phone": None,
        "department_id": None,
        "position": None,
        "role": a.role,
        "admin_department_id": None,
        "status": a.status,
        "password_change_required": False,
        "created_at": iso(a.created_at),
        "updated_at": iso(a.updated_at),
    }
    if birth_date:
        record["birth_date"] = None
    return record


# What any member of the organization sees of a colleague (README.md, "Who sees what of a
# colleague"): enough to find and address them at work, nothing personal or about logins.
DIRECTORY_FIELDS = (
    "id",
    "org_id",
    "account_name",
    "display_name",
    "work_email",
    "department_id",
    "position",
    "role",
    "status",
)


def member_json(account: Account, *, full: bool, birth_date: bool = False) -> dict[str, Any]:
    """The whole record for those allowed to see it, the directory fields otherwise; the
    birth date only with `birth_date`."""
    record = account_json(account, birth_date=birth_date)
    return record if full else {k: record[k] for k in DIRECTORY_FIELDS}


def device_json(d: Device) -> dict[str, Any]:
    return {
        "id": str(d.id),
        "name": d.name,
        "platform": d.platform,
        "public_key": b64url(d.public_key),
        "created_at": iso(d.created_at),
        "last_seen_at": iso(d.last_seen_at),
        "revoked_at": iso(d.revoked_at),
    }


def login_json(r: LoginAttempt) -> dict[str, Any]:
    return {
        "at": iso(r.at),
        "ip": r.ip,
        "user_agent": r.user_agent,
        "device_id": None if r.device_id is None else str(r.device_id),
        "outcome": r.outcome,
    }


def conversation_json(c: Conversation) -> dict[str, Any]:
    return {
        "id": str(c.id),
        "org_id": str(c.org_id),
        "kind": c.kind,
        "title": c.title,
        "created_by": None if c.created_by is None else str(c.created_by),
        "created_at": iso(c.created_at),
        "last_seq": c.last_seq,
        "member_ids": [str(m) for m in c.member_ids],
    }


def _jsonable(value: Any) -> Any:
    """msgpack values -> JSON values: bytes become base64url strings."""
    if isinstance(value, bytes):
        return b64url(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def message_json(m: StoredMessage) -> dict[str, Any]:
    """A stored message; `body` and `consent` as the JSON rendering of their msgpack. A
    message whose sender's data key was destroyed is a `system` message with the event
    `erased` (as on the channel, PROTOCOL.md 6.2)."""
    if m.erased:
        return {
            "id": str(m.id),
            "conversation_id": str(m.conversation_id),
            "seq": m.seq,
            "pos": m.pos,
            "sender_id": str(m.sender_id),
            "sender_device_id": str(m.sender_device_id),
            "client_id": m.client_id,
            "kind": "system",
            "body": {"event": "erased", "text": ""},
            "consent": None,
            "sent_at": iso(m.sent_at),
        }
    return {
        "id": str(m.id),
        "conversation_id": str(m.conversation_id),
        "seq": m.seq,
        "pos": m.pos,
        "sender_id": str(m.sender_id),
        "sender_device_id": str(m.sender_device_id),
        "client_id": m.client_id,
        "kind": m.kind,
        "body": _jsonable(msgpack.unpackb(m.body, raw=False)),
        "consent": None if m.consent is None else _jsonable(msgpack.unpackb(m.consent, raw=False)),
        "sent_at": iso(m.sent_at),
    }


def file_json(f: FileRecord) -> dict[str, Any]:
    return {
        "id": str(f.id),
        "conversation_id": str(f.conversation_id),
        "uploader_id": str(f.uploader_id),
        "name": f.name,
        "mime": f.mime,
        "size": f.size,
        "sha256": f.sha256.hex(),
        "created_at": iso(f.created_at),
    }


def receipt_json(r: ReceiptRecord) -> dict[str, Any]:
    return {
        "account_id": str(r.account_id),
        "device_id": str(r.device_id),
        "status": r.status,
        "at": iso(r.at),
    }
