"""The audit log's hash chain and signed checkpoints: encoding, hashing and verification.

No I/O here: `storage.audit` stores entries, `obrol audit verify` walks the database, and
`verify_export` checks a file written by `obrol audit export`, all with this code. An
auditor can also recompute everything with nothing but SHA-256 and Ed25519:

Entry hash (exact encoding)
    payload = canonical JSON of the array
        ["obrol-audit-v1", seq, at, actor_kind, actor_account, actor_device,
         subject_id, org_id, action, detail]
    hash = SHA-256(prev_hash || payload)            (prev_hash: the 32 raw bytes)

    - seq: the entry's sequence number (integer, 1 for the first entry ever);
    - at: UTC time with microseconds, "YYYY-MM-DDTHH:MM:SS.ffffffZ";
    - actor_kind: "account", "system", "operator" or "anonymous" (an unauthenticated
      caller, e.g. a failed login);
    - actor_account, actor_device, subject_id, org_id: lowercase hyphenated UUID strings,
      or null;
    - action: an identifier such as "login" or "consent_withdrawn";
    - detail: a JSON object of ids and counts (strings, integers, booleans, null, lists of
      those); never a float;
    - canonical JSON: UTF-8 of `json.dumps(value, sort_keys=True, separators=(",", ":"),
      ensure_ascii=True, allow_nan=False)` (keys sorted, no spaces, non-ASCII as \\uXXXX);
    - the first entry's prev_hash is 32 zero bytes; every other entry's is the hash of the
      entry before it (seq - 1).

Checkpoint signature (exact encoding)
    message = canonical JSON of ["obrol-audit-checkpoint-v1", seq, hash_hex, at]
    signature = Ed25519(server identity key, message)

    seq and hash_hex (lowercase hex) are the chain's last entry and its hash when the
    checkpoint was made; at is its time, formatted as above. The public key is the one
    clients pin (GET /.well-known/obrol/server-key).

Pruning: the retention sweeper may delete only a prefix of the chain, up to a checkpoint
(seq N), and first appends an `audit_pruned` entry saying so (detail `through_seq` N and
`checkpoint_at`, the checkpoint's time). A chain whose first kept entry is seq F > 1 is
valid only if it holds such an entry with `through_seq` >= F - 1, written at least
MIN_RETENTION after `checkpoint_at`; its walk starts from the first kept entry's
prev_hash, which the checkpoint at F - 1 (kept by the pruning) vouches for.

What a verification proves: every entry up to the last checkpoint is exactly as written
(edits, deletions, insertions and reorderings break a hash or a signature); entries after
the last checkpoint are only chained, so someone able to rewrite the database could rewrite
that tail consistently. Checkpoints are made every few minutes (settings) to keep it short.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

ENTRY_TAG = "obrol-audit-v1"
CHECKPOINT_TAG = "obrol-audit-checkpoint-v1"
EXPORT_FORMAT = "obrol-audit-export-v1"
GENESIS = bytes(32)  # the prev_hash of entry 1
HASH_BYTES = 32
# Access records are kept at least 6 months: a pruning must not delete younger entries.
MIN_RETENTION = timedelta(days=183)
PRUNED_ACTION = "audit_pruned"
ACTOR_KINDS = ("account", "system", "operator", "anonymous")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# How far from its place a reordered entry is looked for, to tell reordering from editing.
_REORDER_SEARCH = 10_000


def canonical(value: Any) -> bytes:
    """The canonical JSON encoding (see the module docstring)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def format_time(at: datetime) -> str:
    """UTC with microseconds: "2026-01-05T09:00:00.000000Z"."""
    if at.tzinfo is None:
        raise ValueError("audit times must carry a time zone")
    return at.astimezone(UTC).strftime(_TIME_FORMAT)


def parse_time(text: str) -> datetime:
    """The inverse of `format_time`; ValueError for any other form."""
    parsed = datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)
    if format_time(parsed) != text:
        raise ValueError(f"not a canonical audit time: {text!r}")
    return parsed


def _uuid_text(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


def _uuid_or_none(value: Any) -> uuid.UUID | None:
    return None if value is None else uuid.UUID(str(value))


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One link of the chain, as stored."""

    seq: int
    at: datetime
    actor_kind: str
    actor_account: uuid.UUID | None
    actor_device: uuid.UUID | None
    subject_id: uuid.UUID | None
    org_id: uuid.UUID | None
    action: str
    detail: dict[str, Any]
    prev_hash: bytes
    hash: bytes

    def payload(self, seq: int | None = None) -> bytes:
        """The canonical payload (as if written at `seq`, by default its own)."""
        return canonical(
            [
                ENTRY_TAG,
                self.seq if seq is None else seq,
                format_time(self.at),
                self.actor_kind,
                _uuid_text(self.actor_account),
                _uuid_text(self.actor_device),
                _uuid_text(self.subject_id),
                _uuid_text(self.org_id),
                self.action,
                self.detail,
            ]
        )

    def computed_hash(self, prev_hash: bytes | None = None, seq: int | None = None) -> bytes:
        """SHA-256(prev_hash || payload), by default over its own prev_hash and seq."""
        prev = self.prev_hash if prev_hash is None else prev_hash
        return hashlib.sha256(prev + self.payload(seq)).digest()

    def to_json(self) -> dict[str, Any]:
        """Every field, as the REST API and the export show it."""
        return {
            "seq": self.seq,
            "at": format_time(self.at),
            "actor": {
                "kind": self.actor_kind,
                "account_id": _uuid_text(self.actor_account),
                "device_id": _uuid_text(self.actor_device),
            },
            "subject_id": _uuid_text(self.subject_id),
            "org_id": _uuid_text(self.org_id),
            "action": self.action,
            "detail": self.detail,
            "prev_hash": self.prev_hash.hex(),
            "hash": self.hash.hex(),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> AuditEntry:
        """The inverse of `to_json`; ValueError, KeyError or TypeError if malformed."""
        actor = obj["actor"]
        detail = obj["detail"]
        if not isinstance(detail, dict):
            raise ValueError("detail must be an object")
        return cls(
            seq=int(obj["seq"]),
            at=parse_time(obj["at"]),
            actor_kind=str(actor["kind"]),
            actor_account=_uuid_or_none(actor["account_id"]),
            actor_device=_uuid_or_none(actor["device_id"]),
            subject_id=_uuid_or_none(obj["subject_id"]),
            org_id=_uuid_or_none(obj["org_id"]),
            action=str(obj["action"]),
            detail=detail,
            prev_hash=bytes.fromhex(obj["prev_hash"]),
            hash=bytes.fromhex(obj["hash"]),
        )


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The chain's head at one moment, signed with the server identity key."""

    seq: int
    hash: bytes
    at: datetime
    public_key: bytes
    signature: bytes

    def message(self) -> bytes:
        return checkpoint_message(self.seq, self.hash, self.at)

    def signed_by(self, public_key: bytes) -> bool:
        try:
            VerifyKey(public_key).verify(self.message(), self.signature)
        except (BadSignatureError, ValueError, TypeError):
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "hash": self.hash.hex(),
            "at": format_time(self.at),
            "public_key": self.public_key.hex(),
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Checkpoint:
        return cls(
            seq=int(obj["seq"]),
            hash=bytes.fromhex(obj["hash"]),
            at=parse_time(obj["at"]),
            public_key=bytes.fromhex(obj["public_key"]),
            signature=bytes.fromhex(obj["signature"]),
        )


def checkpoint_message(seq: int, chain_hash: bytes, at: datetime) -> bytes:
    """What a checkpoint's signature covers (see the module docstring)."""
    return canonical([CHECKPOINT_TAG, seq, chain_hash.hex(), format_time(at)])


@dataclass(frozen=True, slots=True)
class Break:
    """The first broken link: where, what kind, and what it means."""

    seq: int
    kind: str  # edited, deleted, reordered, forged_checkpoint, pruned_too_early
    message: str


@dataclass(frozen=True, slots=True)
class Report:
    """What a verification found. `broken` is None when the chain holds."""

    entries: int
    first_seq: int | None
    last_seq: int | None
    checkpoints: int  # checkpoints whose signature and hash were checked
    start: str  # "genesis", or "checkpoint N" after a pruning
    unsigned_tail: int  # entries after the last checkpoint
    broken: Break | None

    @property
    def ok(self) -> bool:
        return self.broken is None

    def describe(self) -> str:
        if self.broken is not None:
            b = self.broken
            return f"audit log BROKEN at seq {b.seq} ({b.kind}): {b.message}"
        if not self.entries:
            return "audit log OK: no entries yet"
        return (
            f"audit log OK: {self.entries} entries (seq {self.first_seq}-{self.last_seq}) "
            f"verified from {self.start}, {self.checkpoints} signed checkpoints checked, "
            f"{self.unsigned_tail} entries after the last checkpoint"
        )


class ChainVerifier:
    """Checks entries fed in sequence order against the checkpoints and a trusted key.

    `feed` returns the first Break it finds (and every later call returns it again);
    `finish` reports. `head` (seq, hash) is what the database says the chain's end is,
    when there is one to compare. With `partial_start` (an export of a slice) a first
    entry after seq 1 is not taken for a pruning.
    """

    def __init__(
        self, public_key: bytes, checkpoints: Iterable[Checkpoint], *, partial_start: bool = False
    ) -> None:
        self._key = public_key
        self._checkpoints = {c.seq: c for c in checkpoints}
        self._partial_start = partial_start
        self._checked = 0
        self._entries = 0
        self._first: int | None = None
        self._last: int | None = None
        self._prev = GENESIS
        self._start = "genesis"
        self._pruned_before = 0  # entries up to this seq were pruned: a record must say so
        self._pruning_recorded = False
        self._last_signed = 0
        self.broken: Break | None = None

    def _fail(self, seq: int, kind: str, message: str) -> Break:
        if self.broken is None:
            self.broken = Break(seq, kind, message)
        return self.broken

    def _forged(self, seqs: Iterable[int]) -> Break | None:
        """A Break for the first of these checkpoints whose signature is not valid."""
        for seq in sorted(seqs):
            if not self._checkpoints[seq].signed_by(self._key):
                return self._fail(
                    seq, "forged_checkpoint", "the checkpoint's signature is not valid: forged"
                )
        return None

    def _begin(self, entry: AuditEntry) -> Break | None:
        self._first = entry.seq
        if self._forged(seq for seq in self._checkpoints if seq < entry.seq):
            return self.broken
        if entry.seq == 1:
            if entry.prev_hash != GENESIS:
                return self._fail(1, "edited", "the first entry's prev_hash was changed")
            return None
        if not self._partial_start:
            self._pruned_before = entry.seq - 1
        anchor = self._checkpoints.get(entry.seq - 1)
        if anchor is not None:
            self._start = f"checkpoint {anchor.seq}"
            self._last_signed = anchor.seq
            if entry.prev_hash != anchor.hash:
                return self._fail(
                    entry.seq,
                    "edited",
                    f"the entry does not continue from the signed checkpoint at seq {anchor.seq}",
                )
            self._checked += 1
        else:
            self._start = f"seq {entry.seq} (no checkpoint at seq {entry.seq - 1})"
        self._prev = entry.prev_hash
        return None

    def _in_order(self, entry: AuditEntry) -> Break | None:
        """Whether `entry` comes right after the previous one (or starts the walk)."""
        if self._last is None:
            return self._begin(entry)
        expected = self._last + 1
        if entry.seq > expected:
            missing = (
                f"seq {expected} is"
                if entry.seq == expected + 1
                else f"seqs {expected}-{entry.seq - 1} are"
            )
            return self._fail(expected, "deleted", f"{missing} missing: deleted")
        if entry.seq < expected:
            return self._fail(
                entry.seq, "reordered", f"seq {entry.seq} comes after seq {self._last}"
            )
        return None

    def feed(self, entry: AuditEntry) -> Break | None:
        if self.broken is not None:
            return self.broken
        if self._in_order(entry) is not None or self._link(entry) is not None:
            return self.broken
        self._prev = entry.hash
        self._last = entry.seq
        self._entries += 1
        if entry.action == PRUNED_ACTION:
            self._note_pruning(entry)
        if entry.seq in self._checkpoints and self._forged([entry.seq]) is None:
            if self._checkpoints[entry.seq].hash != entry.hash:
                return self._fail(
                    entry.seq,
                    "edited",
                    "the signed checkpoint at this seq holds another hash: entries up to "
                    "here were changed and re-hashed",
                )
            self._checked += 1
            self._last_signed = entry.seq
        return self.broken

    def _link(self, entry: AuditEntry) -> Break | None:
        """Whether `entry` is intact and follows the previous one; which break if not."""
        if entry.prev_hash == self._prev and entry.computed_hash() == entry.hash:
            return None
        if entry.prev_hash == self._prev:
            return self._fail(
                entry.seq, "edited", "hash mismatch: the entry was changed after it was written"
            )
        if entry.computed_hash() == entry.hash:
            # Intact in itself, but the entry before it is not the one it was chained to.
            return self._fail(
                entry.seq - 1,
                "edited",
                f"hash mismatch: the entry was changed and re-hashed (entry {entry.seq} "
                "records another hash for it)",
            )
        written_at = self._written_seq(entry)
        if written_at is not None:
            return self._fail(
                entry.seq,
                "reordered",
                f"out of order: the entry at seq {entry.seq} was written as seq {written_at}",
            )
        return self._fail(
            entry.seq, "edited", "hash mismatch: the entry was changed after it was written"
        )

    @staticmethod
    def _written_seq(entry: AuditEntry) -> int | None:
        """The seq the entry was written with, if it is intact apart from its seq."""
        low = max(1, entry.seq - _REORDER_SEARCH)
        for seq in range(low, entry.seq + _REORDER_SEARCH + 1):
            if seq != entry.seq and entry.computed_hash(seq=seq) == entry.hash:
                return seq
        return None

    def _note_pruning(self, entry: AuditEntry) -> None:
        through = entry.detail.get("through_seq")
        checkpoint_at = entry.detail.get("checkpoint_at")
        if not isinstance(through, int) or not isinstance(checkpoint_at, str):
            self._fail(entry.seq, "edited", "an audit_pruned entry without its through_seq")
            return
        try:
            age = entry.at - parse_time(checkpoint_at)
        except ValueError:
            self._fail(entry.seq, "edited", "an audit_pruned entry with a malformed time")
            return
        if age < MIN_RETENTION:
            self._fail(
                entry.seq,
                "pruned_too_early",
                f"entries through seq {through} were pruned {age.days} days after their "
                f"checkpoint, before the minimum retention of {MIN_RETENTION.days} days",
            )
            return
        if through >= self._pruned_before:
            self._pruning_recorded = True

    def finish(self, head: tuple[int, bytes] | None = None) -> Report:
        if self.broken is None:
            self._check_end(head)
        last = self._last or 0
        return Report(
            entries=self._entries,
            first_seq=self._first,
            last_seq=self._last,
            checkpoints=self._checked,
            start=self._start,
            unsigned_tail=last - self._last_signed if self._last is not None else 0,
            broken=self.broken,
        )

    def _check_end(self, head: tuple[int, bytes] | None) -> None:
        last = self._last or 0
        if self._pruned_before and not self._pruning_recorded:
            self._fail(
                self._pruned_before,
                "deleted",
                f"entries up to seq {self._pruned_before} are missing and no audit_pruned "
                "entry records their pruning: deleted",
            )
            return
        beyond = [seq for seq in self._checkpoints if seq > last]
        if beyond and self._forged(beyond) is None:
            self._fail(
                last + 1,
                "deleted",
                f"a signed checkpoint covers the chain up to seq {max(beyond)} but it ends "
                f"at seq {last}: the entries after it were deleted",
            )
            return
        if head is not None:
            head_seq, head_hash = head
            if head_seq > last:
                self._fail(
                    last + 1,
                    "deleted",
                    f"the chain head is at seq {head_seq} but the last entry is seq {last}: "
                    "the entries after it were deleted",
                )
            elif head_seq == last and last and head_hash != self._prev:
                self._fail(last, "edited", "the last entry's hash differs from the chain head's")


def verify_entries(
    entries: Iterable[AuditEntry],
    checkpoints: Iterable[Checkpoint],
    public_key: bytes,
    *,
    head: tuple[int, bytes] | None = None,
    partial_start: bool = False,
) -> Report:
    """Walk `entries` (in seq order) against the checkpoints, trusting `public_key`."""
    verifier = ChainVerifier(public_key, checkpoints, partial_start=partial_start)
    for entry in entries:
        if verifier.feed(entry) is not None:
            break
    return verifier.finish(head)


def export_header(public_key: bytes, exported_at: datetime, partial_start: bool) -> str:
    """The first line of an export file. `partial_start`: the file begins after the
    chain's first kept entry (an export `--from` a later seq)."""
    return json.dumps(
        {
            "type": "header",
            "format": EXPORT_FORMAT,
            "public_key": public_key.hex(),
            "exported_at": format_time(exported_at),
            "partial_start": partial_start,
            "encoding": "see storage/audit_chain.py: sha256(prev_hash || canonical payload)",
        },
        sort_keys=True,
    )


def export_line(item: AuditEntry | Checkpoint) -> str:
    """One line of an export file: an entry or a checkpoint."""
    kind = "entry" if isinstance(item, AuditEntry) else "checkpoint"
    return json.dumps({"type": kind, **item.to_json()}, sort_keys=True)


def verify_export(path: Path, public_key: bytes | None = None) -> Report:
    """Verify a file written by `obrol audit export`, offline.

    `public_key` is the server key the auditor trusts (the one clients pin); without it
    the key named in the file's header is used, which proves integrity only if that key is
    known to be the server's. Needs nothing but this module (hashlib, json, PyNaCl).
    Raises ValueError if the file is not an export at all.
    """
    header: dict[str, Any] | None = None
    checkpoints: list[Checkpoint] = []
    entries: list[AuditEntry] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                kind = obj["type"]
                if kind == "header":
                    header = obj
                elif kind == "checkpoint":
                    checkpoints.append(Checkpoint.from_json(obj))
                elif kind == "entry":
                    entries.append(AuditEntry.from_json(obj))
                else:
                    raise ValueError(f"unknown line type {kind!r}")
            except (ValueError, KeyError, TypeError) as exc:
                seq = entries[-1].seq + 1 if entries else 1
                broken = Break(seq, "edited", f"line {number} is malformed: {exc}")
                return Report(len(entries), None, None, 0, "genesis", 0, broken)
    if header is None or header.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path} is not an {EXPORT_FORMAT} file")
    key = public_key if public_key is not None else bytes.fromhex(header["public_key"])
    entries.sort(key=lambda e: e.seq)
    return verify_entries(
        entries, checkpoints, key, partial_start=bool(header.get("partial_start"))
    )
