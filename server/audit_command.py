"""`obrol audit`: verify the audit log's chain, export it for an auditor, sign its head.

- `obrol audit verify` walks the chain from its start (or, after a pruning, from the
  checkpoint the pruning kept), recomputes every hash, checks every checkpoint's signature
  against the server's public key, and prints "audit log OK: ..." (exit 0) or the first
  broken link: its seq and what is wrong - an entry edited (hash mismatch), deleted (a
  gap), reordered (written at another seq), or a forged checkpoint (exit 1).
- `obrol audit export [--from SEQ] [--to SEQ] --out FILE` writes JSON lines (a header with
  the server's public key, the checkpoints, every entry with its hashes) that
  `storage.audit_chain.verify_export` checks offline.
- `obrol audit checkpoint` signs the chain's head now (the server does so by itself; this
  is for before a backup or an export).

The public key is read from the data folder's identity key, or given with --public-key
(base64url, as `GET /.well-known/obrol/server-key` and `obrol serve` show it): an auditor
should give the key they know to be the server's. Like `obrol org`, these work on the
embedded database while `obrol serve` is stopped, or on any --database-url.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
from pathlib import Path
from typing import Any

import trio

from protocol.errors import ObrolError
from server.audit import sign_head
from server.identity import load_identity
from server.org_command import command_database
from server.services import utc_now
from server.settings import Settings, load_settings
from storage.audit import AuditStore, CheckpointRule
from storage.audit_chain import ChainVerifier, Report, export_header, export_line

PAGE = 2000  # entries per read


class AuditCommandError(ObrolError):
    """`obrol audit` cannot do what was asked; the message says why."""


def add_audit_commands(commands: Any) -> None:
    """Register `obrol audit verify|export|checkpoint` on the CLI's subcommands."""
    audit = commands.add_parser("audit", help="verify or export the tamper-evident audit log")
    actions = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = actions.add_parser(
        "verify",
        help="walk the hash chain and check every checkpoint's signature",
        description="Exit 0 if the audit log is intact; 1 naming the first broken link.",
    )
    export = actions.add_parser(
        "export", help="write the log as JSON lines an auditor can verify offline"
    )
    export.add_argument("--from", dest="from_seq", type=int, metavar="SEQ", help="first seq")
    export.add_argument("--to", dest="to_seq", type=int, metavar="SEQ", help="last seq")
    export.add_argument("--out", type=Path, required=True, metavar="FILE", help="output file")
    sign = actions.add_parser("checkpoint", help="sign the chain's head now")
    for action in (verify, export, sign):
        action.add_argument("--data-dir", type=Path, help="data folder (default ./obrol-data)")
        action.add_argument("--database-url", help="PostgreSQL URL (default: the embedded one)")
        action.add_argument("--config", type=Path, help="TOML settings file")
    for action in (verify, export):
        action.add_argument(
            "--public-key",
            help="the server's public key (base64url) to trust; default: the data folder's",
        )


def run_audit_command(args: argparse.Namespace) -> int:
    """Run `obrol audit ...`: 0 done (or the log is intact), 1 the log is broken; raises
    ObrolError (the CLI prints it, exit 2) when it cannot."""
    settings = load_settings(args.config, data_dir=args.data_dir, database_url=args.database_url)
    if args.audit_command == "checkpoint":
        print(trio.run(_checkpoint, settings))
        return 0
    public_key = _public_key(settings, args.public_key)
    if args.audit_command == "verify":
        report = trio.run(_verify, settings, public_key)
        print(report.describe())
        return 0 if report.ok else 1
    print(trio.run(_export, settings, public_key, args.from_seq, args.to_seq, args.out))
    return 0


def _public_key(settings: Settings, given: str | None) -> bytes:
    if given is None:
        return bytes(load_identity(settings.data_dir).verify_key)
    try:
        key = base64.urlsafe_b64decode(given + "=" * (-len(given) % 4))
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise AuditCommandError("--public-key must be a 32-byte Ed25519 key in base64url")
    return key


async def _verify(settings: Settings, public_key: bytes) -> Report:
    async with command_database(settings) as db:
        store = AuditStore(db)
        head = await store.head()  # entries appended from now on are not looked at
        verifier = ChainVerifier(public_key, await store.checkpoints(high=head.seq))
        after = 0
        while after < head.seq and verifier.broken is None:
            entries = await store.page(after, head.seq, PAGE)
            if not entries:
                break
            for entry in entries:
                if verifier.feed(entry) is not None:
                    break
            after = entries[-1].seq
        return verifier.finish((head.seq, head.hash))


async def _export(
    settings: Settings, public_key: bytes, low: int | None, high: int | None, out: Path
) -> str:
    async with command_database(settings) as db:
        store = AuditStore(db)
        head = await store.head()
        first = head.first_seq or head.seq + 1
        start = first if low is None else max(low, first)
        through = head.seq if high is None else min(high, head.seq)
        if start > through and head.first_seq is not None:
            raise AuditCommandError(f"nothing to export: the log holds seq {first} to {head.seq}")
        partial = start > first
        checkpoints = await store.checkpoints(start - 1 if partial else 0, through)
        written = 0
        opener = lambda path, flags: os.open(path, flags, 0o600)  # noqa: E731
        async with await trio.open_file(out, "w", encoding="utf-8", opener=opener) as f:
            await f.write(export_header(public_key, utc_now(), partial) + "\n")
            for checkpoint in checkpoints:
                await f.write(export_line(checkpoint) + "\n")
            after = start - 1
            while after < through:
                entries = await store.page(after, through, PAGE)
                if not entries:
                    break
                await f.write("".join(export_line(e) + "\n" for e in entries))
                written += len(entries)
                after = entries[-1].seq
    return f"{written} entries and {len(checkpoints)} checkpoints written to {out}"


async def _checkpoint(settings: Settings) -> str:
    key = load_identity(settings.data_dir)
    async with command_database(settings) as db:
        rule = CheckpointRule(1, 0, force=True)
        made = await sign_head(AuditStore(db), key, rule, utc_now())
    if made is None:
        return "nothing to sign: the chain's head is signed already"
    return f"checkpoint signed at seq {made.seq}"
