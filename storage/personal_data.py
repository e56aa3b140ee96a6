"""Every category of data obrol holds on a person (and on an organization), in one place.

The access summary (`GET /v1/me/data`) counts these categories and the export archive
writes one JSON file per category, both from the definitions below, so the two cannot
drift apart: a category added here appears in both. Each category names the rules of the
retention schedule (server/retention.py) that say how long it is kept.

A category is one SQL source (`FROM ... WHERE ...`, `$1` the person's or the
organization's id) read in pages by a unique key; its `opener` turns a page of rows into
JSON-ready dicts, opening what is sealed (`storage.sealing`) with the owners' data keys.
`count` and `page` read the same source, so the summary's count is the number of items
the archive holds (when nothing changed in between).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]

from storage.accounts import COLUMNS as ACCOUNT_COLUMNS
from storage.accounts import open_accounts
from storage.files import open_file_rows
from storage.keyring import Keyring
from storage.messages import open_messages

Opener = Callable[[Any, Keyring, list[Any]], Awaitable[list[dict[str, Any]]]]


def jsonable(value: Any) -> Any:
    """`value` as JSON can hold it: ids and times as text, bytes as base64url."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.urlsafe_b64encode(bytes(value)).rstrip(b"=").decode()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)  # ids, decimals


async def _plain(conn: Any, keyring: Keyring, rows: list[Any]) -> list[dict[str, Any]]:
    return [{k: jsonable(v) for k, v in row.items() if k != "_key"} for row in rows]


async def _accounts(conn: Any, keyring: Keyring, rows: list[Any]) -> list[dict[str, Any]]:
    accounts = await open_accounts(conn, keyring, rows)
    return [{name: jsonable(getattr(a, name)) for name in type(a).__slots__} for a in accounts]


def _unpacked(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return jsonable(msgpack.unpackb(data, raw=False, strict_map_key=False))
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        return {"undecodable": jsonable(data)}


async def _messages(conn: Any, keyring: Keyring, rows: list[Any]) -> list[dict[str, Any]]:
    out = []
    for m in await open_messages(conn, keyring, rows):
        out.append(
            {
                "id": str(m.id),
                "conversation_id": str(m.conversation_id),
                "seq": m.seq,
                "sender_id": str(m.sender_id),
                "sender_device_id": str(m.sender_device_id),
                "client_id": m.client_id,
                "kind": m.kind,
                "sent_at": m.sent_at.isoformat(),
                "body": None if m.erased else _unpacked(m.body),
                "erased": m.erased,
                "consent": _unpacked(m.consent),
                "scope": None if m.scope is None else [str(a) for a in m.scope],
            }
        )
    return out


def file_entry(file_id: str, name: str) -> str:
    """Where a file's bytes are in the archive."""
    return f"files/{file_id}/{name or 'file'}"


async def _files(conn: Any, keyring: Keyring, rows: list[Any]) -> list[dict[str, Any]]:
    out = []
    for f in open_file_rows(rows, await keyring.for_read(conn, {r["uploader_id"] for r in rows})):
        out.append(
            {
                "id": str(f.id),
                "conversation_id": str(f.conversation_id),
                "uploader_id": str(f.uploader_id),
                "name": f.name,
                "mime": f.mime,
                "size": f.size,
                "sha256": f.sha256.hex(),
                "created_at": f.created_at.isoformat(),
                "erased": f.erased,
                "archive_path": None if f.erased else file_entry(str(f.id), f.name),
            }
        )
    return out


async def _audit(conn: Any, keyring: Keyring, rows: list[Any]) -> list[dict[str, Any]]:
    plain = await _plain(conn, keyring, rows)
    for item in plain:
        item["detail"] = json.loads(item["detail"])
    return plain


@dataclass(frozen=True, slots=True)
class Category:
    name: str  # the archive holds `<name>.json`
    what: str  # what it is, in words
    retention: tuple[str, ...]  # the rules of server/retention.py that keep or erase it
    source: str  # FROM ... WHERE ... ($1: the subject's id)
    columns: str
    key: str  # unique; pages are read in its order
    key_type: str  # its SQL type
    opener: Opener = _plain
    bytes_column: str | None = None  # summed as `bytes` in the summary
    blobs: bool = False  # the rows are files: their bytes go in the archive too

    def count_sql(self) -> str:
        total = f"coalesce(sum({self.bytes_column}), 0)::bigint" if self.bytes_column else "0"
        return f"SELECT count(*) AS n, {total} AS bytes {self.source}"

    def page_sql(self) -> str:
        return (
            f"SELECT {self.columns}, {self.key} AS _key {self.source} "
            f"AND ($2::{self.key_type} IS NULL OR {self.key} > $2::{self.key_type}) "
            f"ORDER BY {self.key} LIMIT $3"
        )


_MESSAGE_COLUMNS = """m.id, m.conversation_id, m.seq, m.pos, m.sender_id, m.sender_device_id,
    m.client_id, m.kind, m.body, m.consent, m.scope, m.sent_at"""
_FILE_COLUMNS = "f.*"
_ACCOUNT_COLUMNS = ", ".join(f"a.{c.strip()}" for c in ACCOUNT_COLUMNS.split(","))

PERSON: tuple[Category, ...] = (
    Category(
        "profile",
        "your account: names, work email, phone, department, position, role, birth date",
        ("account_data",),
        "FROM accounts a WHERE a.id = $1",
        _ACCOUNT_COLUMNS,
        "a.id",
        "uuid",
        _accounts,
    ),
    Category(
        "devices",
        "the devices you logged in from (name, platform, public key, last seen)",
        ("account_data",),
        "FROM devices d WHERE d.account_id = $1",
        "d.id, d.name, d.platform, d.public_key, d.created_at, d.last_seen_at, d.revoked_at, "
        "d.signed_out_at",
        "d.id",
        "uuid",
    ),
    Category(
        "login_records",
        "every login attempt on your account (time, login name, address, client, outcome)",
        ("login_records",),
        "FROM login_records l WHERE l.account_id = $1",
        "l.id, l.at, l.login_name, l.device_id, l.ip, l.user_agent, l.outcome",
        "l.id",
        "bigint",
    ),
    Category(
        "consent_grants",
        "your consent for each purpose as it stands",
        ("account_data",),
        "FROM consent_grants g WHERE g.account_id = $1",
        "g.purpose, g.granted, g.changed_at, g.device_id, g.policy_version",
        "g.purpose",
        "text",
    ),
    Category(
        "consent_history",
        "every grant and withdrawal of consent",
        ("account_data",),
        "FROM consent_history h WHERE h.account_id = $1",
        "h.id, h.purpose, h.action, h.at, h.device_id, h.policy_version, h.reason",
        "h.id",
        "bigint",
    ),
    Category(
        "policy_acceptances",
        "the privacy-policy versions you accepted",
        ("account_data",),
        "FROM policy_acceptances p JOIN policy_versions v ON v.id = p.policy_id "
        "WHERE p.account_id = $1",
        "p.id, p.policy_id, v.version, v.language, p.accepted_at, p.device_id",
        "p.id",
        "bigint",
    ),
    Category(
        "messages",
        "the messages you sent, with their text",
        ("consent_clocks", "org_messages"),
        "FROM messages m WHERE m.sender_id = $1",
        _MESSAGE_COLUMNS,
        "m.pos",
        "bigint",
        _messages,
    ),
    Category(
        "files",
        "the files you shared (the archive holds each one's bytes under files/)",
        ("consent_clocks", "org_messages"),
        "FROM files f WHERE f.uploader_id = $1",
        _FILE_COLUMNS,
        "f.id",
        "uuid",
        _files,
        bytes_column="f.size",
        blobs=True,
    ),
    Category(
        "read_receipts",
        "which messages your devices received and read, and when",
        ("consent_clocks", "org_messages"),
        "FROM message_receipts r WHERE r.account_id = $1",
        "r.message_id, r.conversation_id, r.device_id, r.status, r.at",
        "(r.message_id::text || r.device_id::text || r.status)",
        "text",
    ),
    Category(
        "attendance_records",
        "your attendance check-ins and check-outs (inside or outside a site; never a position)",
        ("account_data",),
        "FROM attendance_records t WHERE t.account_id = $1",
        "t.id, t.device_id, t.action, t.at, t.site_id, t.outcome",
        "t.id",
        "bigint",
    ),
    Category(
        "live_location_sessions",
        "when you shared your live location, with which conversation (never a position)",
        ("live_sessions_open", "live_sessions_ended"),
        "FROM live_sessions s WHERE s.account_id = $1",
        "s.id, s.device_id, s.conversation_id, s.scope, s.started_at, s.expires_at, "
        "s.ended_at, s.end_reason",
        "s.id",
        "uuid",
    ),
    Category(
        "push_registrations",
        "your devices' push tokens and settings",
        ("account_data",),
        "FROM push_registrations r JOIN devices d ON d.id = r.device_id WHERE d.account_id = $1",
        "r.device_id, r.provider, r.token, r.environment, r.topic, r.project, r.preview, "
        "r.created_at, r.updated_at, r.disabled_at, r.disabled_reason",
        "r.device_id",
        "uuid",
    ),
    Category(
        "rights_requests",
        "your data-rights requests, their deadlines and answers",
        ("rights_requests",),
        "FROM rights_requests q WHERE q.account_id = $1",
        "q.id, q.kind, q.details, q.opened_at, q.due_at, q.status, q.note, q.updated_at, "
        "q.closed_at",
        "q.id",
        "uuid",
    ),
    Category(
        "notices",
        "the notices your organization sent you (service ending, security incidents)",
        ("notices",),
        "FROM notices n JOIN accounts a ON a.id = $1 AND a.org_id = n.org_id "
        "WHERE (n.everyone OR EXISTS (SELECT 1 FROM notice_recipients r "
        "WHERE r.notice_id = n.id AND r.account_id = $1))",
        "n.id, n.kind, n.title, n.body, n.sent_at, n.ends_at",
        "n.id",
        "uuid",
    ),
    Category(
        "guardian_consents",
        "a guardian's consent recorded for you as a minor, and its withdrawal",
        ("account_data",),
        "FROM guardian_consents g LEFT JOIN guardian_consent_withdrawals w "
        "ON w.consent_id = g.id WHERE g.account_id = $1",
        "g.id, g.guardian_name, g.relation, g.given_on, g.evidence_ref, g.recorded_at, "
        "g.recorded_by, w.withdrawn_at, w.withdrawn_by",
        "g.id",
        "uuid",
    ),
    Category(
        "audit_entries",
        "the audit log's entries about you or by you (ids and counts only)",
        ("audit_log",),
        "FROM audit_log e WHERE (e.subject_id = $1 OR e.actor_account = $1)",
        "e.seq, e.at, e.actor_kind, e.actor_account, e.actor_device, e.subject_id, e.action, "
        "e.detail",
        "e.seq",
        "bigint",
        _audit,
    ),
)

ORGANIZATION: tuple[Category, ...] = (
    Category(
        "organization",
        "the organization and its settings",
        ("org_messages",),
        "FROM orgs o WHERE o.id = $1",
        "o.id, o.name, o.created_at, o.message_retention_days, o.request_deadline_days, "
        "o.serves_children",
        "o.id",
        "uuid",
    ),
    Category(
        "departments",
        "its departments",
        ("account_data",),
        "FROM departments d WHERE d.org_id = $1",
        "d.id, d.parent_id, d.name, d.created_at",
        "d.id",
        "uuid",
    ),
    Category(
        "members",
        "its members' profiles",
        ("account_data",),
        "FROM accounts a WHERE a.org_id = $1",
        _ACCOUNT_COLUMNS,
        "a.id",
        "uuid",
        _accounts,
    ),
    Category(
        "conversations",
        "its conversations",
        ("org_messages",),
        "FROM conversations c WHERE c.org_id = $1",
        "c.id, c.kind, c.title, c.created_by, c.created_at",
        "c.id",
        "uuid",
    ),
    Category(
        "conversation_members",
        "who is and was in each conversation",
        ("org_messages",),
        "FROM conversation_members cm JOIN conversations c ON c.id = cm.conversation_id "
        "WHERE c.org_id = $1",
        "cm.conversation_id, cm.account_id, cm.role, cm.joined_at, cm.left_pos IS NOT NULL AS left",
        "(cm.conversation_id::text || cm.account_id::text)",
        "text",
    ),
    Category(
        "messages",
        "every stored message, with its text",
        ("consent_clocks", "org_messages"),
        "FROM messages m JOIN conversations c ON c.id = m.conversation_id WHERE c.org_id = $1",
        _MESSAGE_COLUMNS,
        "m.pos",
        "bigint",
        _messages,
    ),
    Category(
        "files",
        "every stored file (the archive holds each one's bytes under files/)",
        ("consent_clocks", "org_messages"),
        "FROM files f WHERE f.org_id = $1",
        _FILE_COLUMNS,
        "f.id",
        "uuid",
        _files,
        bytes_column="f.size",
        blobs=True,
    ),
)

SCOPES = {"account": PERSON, "org": ORGANIZATION}


@dataclass(frozen=True, slots=True)
class Count:
    name: str
    count: int
    bytes: int | None


async def count_all(conn: Any, categories: tuple[Category, ...], subject: uuid.UUID) -> list[Count]:
    """The count (and bytes, where a category has them) of every category, in one
    transaction."""
    out = []
    for category in categories:
        row = await conn.fetchrow(category.count_sql(), subject)
        out.append(Count(category.name, row["n"], row["bytes"] if category.bytes_column else None))
    return out


async def read_page(
    conn: Any, keyring: Keyring, category: Category, subject: uuid.UUID, after: Any, limit: int
) -> tuple[list[dict[str, Any]], Any]:
    """One page of the category after key `after` (None: from the start): the items, and
    the key to continue after (None: this was the last page)."""
    rows = await conn.fetch(category.page_sql(), subject, after, limit)
    items = await category.opener(conn, keyring, rows)
    return items, (rows[-1]["_key"] if len(rows) == limit else None)
