"""The audit log over the real server: every hooked action leaves an entry (and a refused
one none), people and admins read what is theirs, concurrent changes form one chain, and
`obrol audit verify` - run as a real process - names the row someone with database access
edited, deleted or reordered, or the checkpoint they forged. An export verifies offline,
and pruning by the sweeper keeps the chain verifiable. Real PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import stat
import sys
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import trio

from server.settings import SettingsError, load_settings
from storage.audit_chain import verify_export
from tests.harness import INITIAL_PASSWORD, Harness, Session, assert_error, start_harness
from tests.server.test_attendance import AT_HQ, HQ, check, create_site

ROOT = Path(__file__).resolve().parents[2]
GUARDIAN = {
    "guardian_name": "Siti Rahma",
    "relation": "parent",
    "given_on": "2024-01-15",
    "evidence_ref": "DOC-2024-0042",
}
PHONE = "+62 812 7766 5544"


async def audit_cli(database_url: str, data_dir: Path, action: str, *args: str) -> tuple[int, str]:
    """`obrol audit <action>` as an operator runs it: (exit code, what it printed)."""
    command = [sys.executable, "-m", "server.cli", "audit", action, *args]
    command += ["--database-url", database_url, "--data-dir", str(data_dir)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBROL_")}
    with trio.fail_after(120):
        done = await trio.run_process(
            command,
            cwd=ROOT,
            env=env | {"PYTHONPATH": str(ROOT)},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, (done.stdout + done.stderr).decode()


async def verify(server: Harness, database_url: str) -> tuple[int, str]:
    return await audit_cli(database_url, server.settings.data_dir, "verify")


async def tamper(database_url: str, *statements: str) -> list[Any]:
    """What an attacker with database access does: the guard triggers switched off for
    one transaction, the statements run, the triggers back on. The last one's rows."""

    async def run() -> list[Any]:
        conn = await asyncpg.connect(database_url)
        try:
            async with conn.transaction():
                await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
                await conn.execute("ALTER TABLE audit_checkpoints DISABLE TRIGGER USER")
                rows: list[Any] = []
                for statement in statements:
                    rows = await conn.fetch(statement)
                await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")
                await conn.execute("ALTER TABLE audit_checkpoints ENABLE TRIGGER USER")
                return rows
        finally:
            await conn.close()

    return await trio.to_thread.run_sync(asyncio.run, run())


async def query(database_url: str, statement: str) -> list[Any]:
    return await tamper(database_url, statement)


async def first_seq(database_url: str) -> int:
    rows = await query(database_url, "SELECT min(seq) FROM audit_log")
    return int(rows[0][0])


async def entries(server: Harness, who: Session, path: str, query: str = "") -> list[Any]:
    """Every entry behind a paged audit endpoint, in seq order."""
    found: list[Any] = []
    after = 0
    while True:
        separator = "&" if query else ""
        response = await server.client.get(
            f"{path}?after={after}&limit=7{separator}{query}", headers=who.headers
        )
        assert response.status_code == 200, response.text
        page = response.json()
        found += page["entries"]
        if page["next_after"] is None:
            return found
        after = page["next_after"]


def actions(found: list[Any]) -> list[str]:
    return [e["action"] for e in found]


async def test_every_hooked_action_leaves_one_entry_with_ids_only(
    server: Harness, database_url: str
) -> None:
    owner = await server.create_org()
    bob = await server.add_member(owner, "bob")
    org_path = f"/v1/orgs/{owner.org_id}/audit"
    start = len(await entries(server, owner, org_path))

    def login_body(email: str, password: str) -> dict[str, Any]:
        device = {"name": "x", "platform": "ios", "public_key": "A" * 43}
        return {"email": email, "password": password, "device": device}

    wrong = await server.client.post(
        "/v1/login", json=login_body("bob@members.example", "Wrong-Guess-77")
    )
    assert_error(wrong, 401, "bad_credentials")
    nobody = await server.client.post(
        "/v1/login", json=login_body("nobody@members.example", "Wrong-Guess-77")
    )
    assert_error(nobody, 401, "bad_credentials")  # no account: nothing to record
    await server.grant(bob, "location_share", "media_share")
    await server.grant(bob, "location_share")  # granted already: nothing new
    withdrawn = await server.client.delete("/v1/me/consents/location_share", headers=bob.headers)
    assert withdrawn.status_code == 200
    refused = await server.client.delete("/v1/me/consents/contacts_sync", headers=bob.headers)
    assert_error(refused, 409, "consent_not_granted")  # refused: no entry
    for _ in range(2):  # switching off what is off records nothing
        off = await server.client.put(
            f"/v1/orgs/{owner.org_id}/purposes/media_share/off", headers=owner.headers
        )
        assert off.status_code == 204
    member = f"/v1/orgs/{owner.org_id}/members/{bob.id}"
    promoted = await server.client.patch(member, headers=owner.headers, json={"role": "admin"})
    assert promoted.status_code == 200, promoted.text
    corrected = await server.client.patch(member, headers=owner.headers, json={"phone": PHONE})
    assert corrected.status_code == 200, corrected.text
    assert (await server.client.get(member, headers=owner.headers)).status_code == 200
    listed = await server.client.get(f"/v1/orgs/{owner.org_id}/consents", headers=owner.headers)
    assert listed.status_code == 200
    published = await server.client.post(
        f"/v1/orgs/{owner.org_id}/policies",
        headers=owner.headers,
        json={"version": "2026.1", "language": "id", "material": False, "text": "Kebijakan"},
    )
    assert published.status_code == 201, published.text
    for _ in range(2):  # accepting again records nothing
        accepted = await server.client.post(
            "/v1/me/policy/accept", headers=bob.headers, json={"version": "2026.1"}
        )
        assert accepted.status_code == 200, accepted.text
    today = server.clock().date()
    teen = await server.client.post(
        f"/v1/orgs/{owner.org_id}/members",
        headers=owner.headers,
        json={
            "account_name": "dewi",
            "work_email": "dewi@members.example",
            "display_name": "Dewi",
            "initial_password": INITIAL_PASSWORD,
            "birth_date": date(today.year - 16, today.month, 1).isoformat(),
        },
    )
    assert teen.status_code == 201, teen.text
    dewi = teen.json()["id"]
    guardian_path = f"/v1/orgs/{owner.org_id}/members/{dewi}/guardian-consents"
    recorded = await server.client.post(guardian_path, headers=owner.headers, json=GUARDIAN)
    assert recorded.status_code == 201, recorded.text
    consent_id = recorded.json()["consent"]["id"]
    assert (await server.client.get(guardian_path, headers=owner.headers)).status_code == 200
    await create_site(server, owner, HQ)
    await server.grant(bob, "attendance")
    assert (await check(server, bob, "in", AT_HQ)).status_code == 201
    attendance = await server.client.get(
        f"/v1/orgs/{owner.org_id}/attendance", headers=owner.headers
    )
    assert attendance.status_code == 200

    mine = await entries(server, bob, "/v1/me/audit")
    assert (await server.client.post("/v1/logout", headers=bob.headers)).status_code == 204
    deactivated = await server.client.post(f"{member}/deactivate", headers=owner.headers)
    assert deactivated.status_code == 200

    found = (await entries(server, owner, org_path))[start:]
    assert actions(found) == [
        "login_failed",
        "consent_granted",
        "consent_granted",
        "consent_withdrawn",
        "purpose_switched",
        "consent_withdrawn",
        "role_changed",
        "member_corrected",
        "admin_read",
        "admin_read",
        "policy_published",
        "policy_accepted",
        "guardian_consent_recorded",
        "admin_read",
        "consent_granted",
        "admin_read",
        "logout",
        "member_deactivated",
    ]
    by_bob = {"kind": "account", "account_id": bob.id, "device_id": bob.device["id"]}
    by_owner = {"kind": "account", "account_id": owner.id, "device_id": owner.device["id"]}
    by_owner_account = {"kind": "account", "account_id": owner.id, "device_id": None}
    expected = [
        ({"kind": "anonymous", "account_id": None, "device_id": None}, bob.id),
        (by_bob, bob.id),
        (by_bob, bob.id),
        (by_bob, bob.id),
        (by_owner_account, None),
        (by_owner_account, bob.id),
        (by_owner, bob.id),
        (by_owner, bob.id),
        (by_owner, bob.id),
        (by_owner, bob.id),
        (by_owner_account, None),
        (by_bob, bob.id),
        (by_owner_account, dewi),
        (by_owner, dewi),
        (by_bob, bob.id),
        (by_owner, bob.id),
        (by_bob, bob.id),
        (by_owner, bob.id),
    ]
    assert [(e["actor"], e["subject_id"]) for e in found] == expected
    assert {e["org_id"] for e in found} == {owner.org_id}
    details = [e["detail"] for e in found]
    assert details[0]["reason"] == "bad_password" and isinstance(details[0]["login_record_id"], int)
    assert details[1:4] == [
        {"purpose": "location_share"},
        {"purpose": "media_share"},
        {"purpose": "location_share"},
    ]
    assert details[4] == {"purpose": "media_share", "off": True, "withdrawn": 1}
    assert details[5] == {"purpose": "media_share", "reason": "org_switched_off"}
    assert details[6] == {"from_role": "member", "to_role": "admin", "admin_department_id": None}
    assert details[7] == {"fields": ["phone"]}
    assert details[8:10] == [{"what": "profile", "count": 1}, {"what": "consents", "count": 1}]
    policy_id = details[10]["policy_id"]  # the version's row id (not shown by the API)
    assert isinstance(policy_id, int)
    assert details[10] == {"policy_id": policy_id, "version": "2026.1", "material": False}
    assert details[11] == {"policy_id": policy_id, "version": "2026.1"}
    assert details[12] == {"consent_id": consent_id}
    assert details[13] == {"what": "guardian_consents", "count": 1}
    assert details[15] == {"what": "attendance", "count": 1}
    assert details[16] == {} and details[17] == {}
    assert all(e["seq"] < f["seq"] for e, f in itertools.pairwise(found))

    # Never personal data: no email, name, phone, address, coordinate, guardian or policy text.
    text = json.dumps(found)
    for needle in (
        "members.example",
        "Bob",
        PHONE,
        "127.0.0.1",
        str(AT_HQ[0]),
        "Siti",
        "DOC-2024",
        "Kebijakan",
    ):
        assert needle not in text, needle

    # Bob's own view: what was done to him or by him, and nobody else's entries.
    assert {e["seq"] for e in mine} >= {e["seq"] for e in found[:16] if e["subject_id"] == bob.id}
    assert all(bob.id in (e["subject_id"], e["actor"]["account_id"]) for e in mine)
    assert actions(mine)[:2] == ["login", "login_failed"]
    assert mine[0]["detail"]["login_record_id"] > 0
    assert mine[0]["actor"] == by_bob

    code, output = await verify(server, database_url)
    assert code == 0, output
    assert "audit log OK" in output


async def test_people_and_admins_read_only_what_is_theirs(server: Harness) -> None:
    owner = await server.create_org()
    maria = await server.add_member(owner, "maria")
    other = await server.create_org("Other", "oscar")
    await server.grant(maria, "location_share")
    org_path = f"/v1/orgs/{owner.org_id}/audit"
    assert_error(await server.client.get(org_path, headers=maria.headers), 403, "forbidden")
    assert_error(await server.client.get(org_path, headers=other.headers), 403, "forbidden")
    assert_error(await server.client.get(org_path), 401, "unauthenticated")
    assert_error(await server.client.get("/v1/me/audit"), 401, "unauthenticated")
    bad_account = await server.client.get(f"{org_path}?account=bob", headers=owner.headers)
    assert assert_error(bad_account, 422, "invalid_request")["details"][0]["field"] == "account"
    bad_after = await server.client.get("/v1/me/audit?after=-1", headers=maria.headers)
    assert assert_error(bad_after, 422, "invalid_request")["details"][0]["field"] == "after"
    too_many = await server.client.get("/v1/me/audit?limit=201", headers=maria.headers)
    assert_error(too_many, 422, "invalid_request")

    everything = await entries(server, owner, org_path)
    marias = await entries(server, owner, org_path, f"account={maria.id}")
    assert marias == [
        e for e in everything if maria.id in (e["subject_id"], e["actor"]["account_id"])
    ]
    assert actions(marias) == ["login", "consent_granted"]
    assert await entries(server, maria, "/v1/me/audit") == marias
    assert all(e["org_id"] == owner.org_id for e in everything)
    theirs = await entries(server, other, f"/v1/orgs/{other.org_id}/audit")
    assert actions(theirs) == ["login"] and theirs[0]["actor"]["account_id"] == other.id
    first = await server.client.get("/v1/me/audit?limit=1", headers=maria.headers)
    assert [e["seq"] for e in first.json()["entries"]] == [marias[0]["seq"]]
    assert first.json()["next_after"] == marias[0]["seq"]
    # A member browsing the directory sees directory fields only: no admin read.
    directory = await server.client.get(f"/v1/orgs/{owner.org_id}/members", headers=maria.headers)
    assert directory.status_code == 200
    assert "admin_read" not in actions(await entries(server, owner, org_path))
    # An admin's page of the directory is an admin read of each other member on it.
    directory = await server.client.get(f"/v1/orgs/{owner.org_id}/members", headers=owner.headers)
    reads = [e for e in await entries(server, owner, org_path) if e["action"] == "admin_read"]
    assert [(e["subject_id"], e["detail"]) for e in reads] == [
        (maria.id, {"what": "directory", "count": 1})
    ]


async def test_concurrent_consent_changes_form_one_unbroken_chain(
    server: Harness, database_url: str
) -> None:
    owner = await server.create_org()
    members = [await server.add_member(owner, f"m{i:02}") for i in range(25)]
    org_path = f"/v1/orgs/{owner.org_id}/audit"
    before = len(await entries(server, owner, org_path))

    async def grant(who: Session, purpose: str) -> None:
        response = await server.client.put(f"/v1/me/consents/{purpose}", headers=who.headers)
        assert response.status_code == 200, response.text

    async with trio.open_nursery() as nursery:
        for who in members:
            for purpose in ("location_share", "media_share"):
                nursery.start_soon(grant, who, purpose)
    found = (await entries(server, owner, org_path))[before:]
    assert len(found) == 50 and set(actions(found)) == {"consent_granted"}
    assert {(e["subject_id"], e["detail"]["purpose"]) for e in found} == {
        (m.id, p) for m in members for p in ("location_share", "media_share")
    }
    seqs = [e["seq"] for e in found]
    assert seqs == list(range(seqs[0], seqs[0] + 50))  # nothing else happened meanwhile
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(found))
    code, output = await verify(server, database_url)
    assert code == 0, output


async def some_history(server: Harness, org: str = "Acme", member: str = "bob") -> Session:
    """Eight entries in a new organization (two logins, four grants, two withdrawals)."""
    owner = await server.create_org(org)
    bob = await server.add_member(owner, member)
    for purpose in ("location_share", "media_share", "attendance", "contacts_sync"):
        await server.grant(bob, purpose)
    for purpose in ("location_share", "media_share"):
        response = await server.client.delete(f"/v1/me/consents/{purpose}", headers=bob.headers)
        assert response.status_code == 200
    return owner


async def test_verify_names_the_row_that_was_edited_deleted_or_reordered(
    server: Harness, database_url: str
) -> None:
    await some_history(server)
    code, output = await audit_cli(database_url, server.settings.data_dir, "checkpoint")
    assert code == 0 and "checkpoint signed at seq" in output, output
    code, output = await verify(server, database_url)
    assert code == 0, output
    count = (await query(database_url, "SELECT count(*) FROM audit_log"))[0][0]
    assert f"{count} entries (seq 1-{count})" in output

    # Edited: one row's detail changed.
    original = (await query(database_url, "SELECT detail FROM audit_log WHERE seq = 5"))[0][0]
    assert json.loads(original) == {"purpose": "attendance"}
    await tamper(
        database_url, """UPDATE audit_log SET detail = '{"purpose": "media_share"}' WHERE seq = 5"""
    )
    code, output = await verify(server, database_url)
    assert code == 1, output
    assert "BROKEN at seq 5 (edited): hash mismatch" in output
    await tamper(database_url, f"UPDATE audit_log SET detail = '{original}' WHERE seq = 5")
    assert (await verify(server, database_url))[0] == 0  # put back as it was: intact again

    # Deleted: one row gone.
    row = (await query(database_url, "SELECT * FROM audit_log WHERE seq = 7"))[0]
    await tamper(database_url, "DELETE FROM audit_log WHERE seq = 7")
    code, output = await verify(server, database_url)
    assert code == 1, output
    assert "BROKEN at seq 7 (deleted): seq 7 is missing" in output

    async def put_back() -> None:
        async def run() -> None:
            conn = await asyncpg.connect(database_url)
            try:
                async with conn.transaction():
                    await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
                    await conn.execute(
                        "INSERT INTO audit_log VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, "
                        "$10, $11)",
                        *row.values(),
                    )
                    await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")
            finally:
                await conn.close()

        await trio.to_thread.run_sync(asyncio.run, run())

    await put_back()
    assert (await verify(server, database_url))[0] == 0

    # Reordered: two rows' sequence numbers swapped.
    await tamper(
        database_url,
        "UPDATE audit_log SET seq = 1000003 WHERE seq = 3",
        "UPDATE audit_log SET seq = 3 WHERE seq = 4",
        "UPDATE audit_log SET seq = 4 WHERE seq = 1000003",
    )
    code, output = await verify(server, database_url)
    assert code == 1, output
    assert "BROKEN at seq 3 (reordered): out of order: the entry at seq 3 was written as seq 4" in (
        output
    )


async def test_the_server_signs_checkpoints_and_a_forged_one_is_caught(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with start_harness(nursery, database_url, tmp_path, audit_checkpoint_entries=5) as server:
        await some_history(server)
        with trio.fail_after(30):  # the server signs by itself within a second or so
            # (another process's table has no event to wait on)
            while not await query(database_url, "SELECT seq FROM audit_checkpoints"):  # noqa: ASYNC110
                await trio.sleep(0.05)
        code, output = await verify(server, database_url)
        assert code == 0, output
        seq = (await query(database_url, "SELECT min(seq) FROM audit_checkpoints"))[0][0]
        await tamper(
            database_url,
            f"UPDATE audit_checkpoints SET signature = '\\x{'ab' * 64}' WHERE seq = {seq}",
        )
        code, output = await verify(server, database_url)
        assert code == 1, output
        assert f"BROKEN at seq {seq} (forged_checkpoint)" in output
        # A key the auditor does not trust: nothing verifies either.
        stranger = "A" * 43
        code, output = await audit_cli(database_url, tmp_path, "verify", "--public-key", stranger)
        assert code == 1 and "forged_checkpoint" in output, output
        code, output = await audit_cli(database_url, tmp_path, "verify", "--public-key", "x")
        assert code == 2 and "--public-key must be" in output, output


async def test_an_export_verifies_offline_and_tampering_with_it_shows(
    server: Harness, database_url: str, tmp_path: Path
) -> None:
    await some_history(server)
    data_dir = server.settings.data_dir
    assert (await audit_cli(database_url, data_dir, "checkpoint"))[0] == 0
    await some_history(server, "Beta", "bea")  # an unsigned tail after the checkpoint
    out = tmp_path / "audit.jsonl"
    code, output = await audit_cli(database_url, data_dir, "export", "--out", str(out))
    assert code == 0, output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["type"] == "header"
    assert lines[0]["public_key"] == server.server_key.hex()
    entry_lines = [line for line in lines if line["type"] == "entry"]
    assert f"{len(entry_lines)} entries and 1 checkpoints written" in output
    assert set(entry_lines[0]) == {
        "type",
        "seq",
        "at",
        "actor",
        "subject_id",
        "org_id",
        "action",
        "detail",
        "prev_hash",
        "hash",
    }

    report = verify_export(out, server.server_key)
    code, output = await verify(server, database_url)
    assert report.ok and code == 0, (report.describe(), output)
    assert report.describe() in output  # the same walk, offline and online
    assert report.checkpoints == 1 and report.unsigned_tail > 0

    slice_file = tmp_path / "slice.jsonl"
    code, output = await audit_cli(
        database_url, data_dir, "export", "--from", "4", "--to", "9", "--out", str(slice_file)
    )
    assert code == 0, output
    part = verify_export(slice_file, server.server_key)
    assert part.ok and (part.first_seq, part.last_seq) == (4, 9), part.describe()

    edited = [json.loads(line) for line in out.read_text().splitlines()]
    target = next(line for line in edited if line.get("seq") == 6 and line["type"] == "entry")
    assert target["detail"] == {"purpose": "contacts_sync"}
    target["detail"] = {"purpose": "media_share"}
    out.write_text("".join(json.dumps(line) + "\n" for line in edited))
    broken = verify_export(out, server.server_key)
    assert broken.broken is not None and (broken.broken.seq, broken.broken.kind) == (6, "edited")
    other = tmp_path / "other.jsonl"
    other.write_text('{"type": "header", "format": "something-else"}\n')
    with pytest.raises(ValueError, match="not an obrol-audit-export-v1 file"):
        verify_export(other)


async def test_pruning_by_the_sweeper_keeps_the_chain_verifiable(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with start_harness(nursery, database_url, tmp_path, sweep_interval_s=0.1) as server:
        owner = await some_history(server)
        assert (await audit_cli(database_url, tmp_path, "checkpoint"))[0] == 0
        signed = (await query(database_url, "SELECT max(seq) FROM audit_checkpoints"))[0][0]
        server.clock.advance(366 * 24 * 3600)  # past the default retention of 365 days
        with trio.fail_after(30):
            while await first_seq(database_url) <= signed:  # noqa: ASYNC110 (no event)
                await trio.sleep(0.05)
        owner = await server.login("olivia@acme.example")  # tokens aged with the clock
        kept = await entries(server, owner, f"/v1/orgs/{owner.org_id}/audit")
        assert actions(kept) == ["login"]  # the pruning's own entry names no org
        code, output = await verify(server, database_url)
        assert code == 0, output
        assert f"verified from checkpoint {signed}" in output
        pruned = await query(
            database_url, "SELECT detail FROM audit_log WHERE action = 'audit_pruned'"
        )
        assert json.loads(pruned[0][0])["through_seq"] == signed
        # Deleting past what the pruning recorded is a deletion all the same.
        first = (await query(database_url, "SELECT min(seq) FROM audit_log"))[0][0]
        await tamper(database_url, f"DELETE FROM audit_log WHERE seq = {first}")
        code, output = await verify(server, database_url)
        assert code == 1 and f"BROKEN at seq {first}" in output, output


def test_the_audit_retention_is_at_least_six_months(tmp_path: Path) -> None:
    assert load_settings(None, data_dir=tmp_path).audit_retention_days == 365
    assert load_settings(None, audit_retention_days=183).audit_retention_days == 183
    with pytest.raises(SettingsError, match=r"audit_retention_days: .*at least 183 days"):
        load_settings(None, audit_retention_days=182)
