"""Open sign-up is off unless enabled, the first org is made with `obrol org create`, and
a sign-up answer never tells whether an email is registered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from server.settings import load_settings
from tests.harness import PASSWORD, Harness, assert_error, start_harness


def signup(name: str, email: str, password: str = PASSWORD) -> dict[str, Any]:
    return {
        "name": name,
        "owner": {
            "account_name": email.split("@", maxsplit=1)[0].lower(),
            "work_email": email,
            "display_name": "Someone",
            "password": password,
        },
    }


async def test_signup_is_closed_unless_enabled(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    assert load_settings(None).allow_org_signup is False
    async with start_harness(nursery, database_url, tmp_path, allow_org_signup=False) as server:
        response = await server.client.post("/v1/orgs", json=signup("Acme", "o@acme.example"))
        assert_error(response, 403, "signup_closed")


async def test_a_registered_email_is_answered_exactly_like_a_success(server: Harness) -> None:
    owner = await server.create_org("Acme", "olivia")
    await server.add_member(owner, "maria")
    fresh = await server.client.post("/v1/orgs", json=signup("New", "nadia@new.example"))
    answers = [fresh]
    for taken in ("olivia@acme.example", "MARIA@members.example"):
        answers.append(
            await server.client.post("/v1/orgs", json=signup("Probe", taken, "Guess-Pass-99"))
        )
    for answer in answers:
        assert answer.status_code == 202
        assert answer.json() == fresh.json()
        assert set(answer.headers) == set(fresh.headers)
    assert "org" not in fresh.json() and "owner" not in fresh.json()  # no ids either way
    # Only the fresh address got an org; the probes changed nothing.
    await server.login("nadia@new.example")
    for taken in ("olivia@acme.example", "maria@members.example"):
        response = await server.client.post(
            "/v1/login",
            json={
                "email": taken,
                "password": "Guess-Pass-99",
                "device": {"name": "x", "platform": "ios", "public_key": "A" * 43},
            },
        )
        assert_error(response, 401, "bad_credentials")
        await server.login(taken)
    # Problems with the request itself (which reveal nothing about anyone) are still told.
    weak = await server.client.post("/v1/orgs", json=signup("W", "wendy@w.example", "weakweak"))
    assert_error(weak, 422, "weak_password")


async def org_create(
    database_url: str, data_dir: Path, stdin: bytes, *args: str
) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "server.cli", "org", "create", "--database-url"]
    command += [database_url, "--data-dir", str(data_dir), "--password-stdin", *args]
    env = {**os.environ, "OBROL_PASSWORD_HASH_STRENGTH": "minimal"}
    with trio.fail_after(60):
        return await trio.run_process(
            command, stdin=stdin, capture_stdout=True, capture_stderr=True, check=False, env=env
        )


async def test_the_first_org_is_made_with_the_cli(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    owner = ("--name", "Acme", "--owner-email", "olivia@acme.example")
    done = await org_create(database_url, tmp_path, f"{PASSWORD}\n".encode(), *owner)
    assert done.returncode == 0, done.stderr
    assert b"organization 'Acme' created" in done.stdout
    again = await org_create(
        database_url,
        tmp_path,
        b"Other-Pass-123\n",
        "--name",
        "B",
        "--owner-email",
        "OLIVIA@acme.example",
    )
    assert again.returncode == 2
    assert b"already has an account" in again.stderr
    weak = await org_create(
        database_url, tmp_path, b"weakweakweak\n", "--name", "C", "--owner-email", "carl@c.example"
    )
    assert weak.returncode == 2 and b"too weak" in weak.stderr
    empty = await org_create(
        database_url, tmp_path, b"\n", "--name", "D", "--owner-email", "dina@d.example"
    )
    assert empty.returncode == 2 and b"empty" in empty.stderr

    async with start_harness(nursery, database_url, tmp_path, allow_org_signup=False) as server:
        session = await server.login("olivia@acme.example")
        assert session.account["role"] == "owner"
        assert session.account["password_change_required"] is False
        assert session.account["account_name"] == "olivia"
        org = await server.client.get(f"/v1/orgs/{session.org_id}", headers=session.headers)
        assert org.json()["name"] == "Acme"
