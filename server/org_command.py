"""`obrol org create`: the operator makes an organization and its first owner.

Open sign-up (`allow_org_signup`) is off by default, so this is how a server gets its first
organization. It works on the server's database directly (the embedded one in the data
folder while `obrol serve` is stopped, or any `--database-url` at any time). The owner's
password is read from a prompt (typed twice, not echoed) or, with `--password-stdin`, from
the first line of standard input; never from the command line, where every local user can
read it in the process list.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from pydantic import ValidationError

from protocol.errors import ObrolError
from server.api.models import CreateOrgIn
from server.errors import ApiError
from server.handlers.orgs import create_org
from server.keys import open_keyring
from server.passwords import PasswordHasher
from server.runner import embedded_postgres
from server.settings import Settings, load_settings
from storage.bridge import AsyncioBridge
from storage.database import Database
from storage.embedded import EmbeddedPostgres
from storage.errors import ConflictError
from storage.orgs import OrgStore


class OrgCommandError(ObrolError):
    """`obrol org` cannot do what was asked; the message says why and what to do."""


def add_org_commands(commands: Any) -> None:
    """Register `obrol org create` on the CLI's subcommands."""
    org = commands.add_parser("org", help="create an organization (the first one, or any)")
    actions = org.add_subparsers(dest="org_command", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="create an organization and its owner (prompts for the owner's password)",
        description="Create an organization and its owner, who can then log in. Works on "
        "the embedded database while `obrol serve` is stopped, or on --database-url.",
    )
    create.add_argument("--name", required=True, help="the organization's name")
    create.add_argument("--owner-email", required=True, help="the owner's work email (login)")
    create.add_argument("--owner-account-name", help="default: the email's part before @")
    create.add_argument("--owner-display-name", help="default: the account name")
    create.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the owner's password from the first line of standard input",
    )
    create.add_argument("--data-dir", type=Path, help="data folder (default ./obrol-data)")
    create.add_argument("--database-url", help="PostgreSQL URL (default: the embedded one)")
    create.add_argument("--config", type=Path, help="TOML settings file")


def run_org_command(args: argparse.Namespace) -> int:
    """Run `obrol org ...`; raises ObrolError (the CLI prints it) when it cannot."""
    request = _request(args, _read_password(args.password_stdin))
    settings = load_settings(args.config, data_dir=args.data_dir, database_url=args.database_url)
    org_id, owner_id = trio.run(_create, settings, request)
    print(
        f"organization {request.name!r} created: {org_id}\n"
        f"owner {request.owner.work_email} (account {owner_id}) can now log in "
        f"(POST /v1/login)"
    )
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("Owner's password: ")
        if getpass.getpass("Again: ") != password:
            raise OrgCommandError("the two passwords differ")
    else:
        raise OrgCommandError("no terminal to ask for the password: pass --password-stdin")
    if not password:
        raise OrgCommandError("the password is empty")
    return password


def _request(args: argparse.Namespace, password: str) -> CreateOrgIn:
    """The same checks as the sign-up endpoint's."""
    account_name = args.owner_account_name or args.owner_email.split("@", 1)[0]
    try:
        return CreateOrgIn.model_validate(
            {
                "name": args.name,
                "owner": {
                    "account_name": account_name,
                    "work_email": args.owner_email,
                    "display_name": args.owner_display_name or account_name,
                    "password": password,
                },
            }
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        raise OrgCommandError(f"invalid organization or owner: {problems}") from None


async def _create(settings: Settings, request: CreateOrgIn) -> tuple[str, str]:
    owner = request.owner.model_dump(exclude={"password"})
    async with command_database(settings) as db:
        passwords = PasswordHasher(settings.password_hash_strength)
        keyring = await open_keyring(settings, db)
        try:
            org, account = await create_org(
                OrgStore(db, keyring), passwords, request.name, owner, request.owner.password
            )
        except ApiError as exc:  # weak_password: say why
            reasons = "; ".join(str(d["problem"]) for d in exc.details or [])
            raise OrgCommandError(f"{exc.message}: {reasons}" if reasons else exc.message) from None
        except ConflictError:
            raise OrgCommandError(
                f"{request.owner.work_email} already has an account on this server"
            ) from None
    return str(org.id), str(account.id)


@asynccontextmanager
async def command_database(settings: Settings) -> AsyncIterator[Database]:
    """The server's database (embedded, started for the command, or by URL), migrated:
    for the operator's commands (`obrol org`, `obrol audit`)."""
    embedded: EmbeddedPostgres | None = None
    if settings.database_url is not None:
        url = settings.database_url.get_secret_value()
    else:
        embedded = embedded_postgres(settings)
        url = await trio.to_thread.run_sync(embedded.start)
    bridge = AsyncioBridge()
    bridge.start()
    try:
        db = await Database.connect(bridge, url, pool_size=1)
        try:
            yield db
        finally:
            await db.close()
    finally:
        bridge.stop()
        if embedded is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(embedded.stop)
