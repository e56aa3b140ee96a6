"""The access summary and data exports over the real server and PostgreSQL: the archive
holds every category the summary lists (files byte for byte), a fresh re-authentication is
required, nobody sees another's export, a link works once and until it expires, the
archive on disk is sealed and private, an export interrupted by a crash or a restart
finishes, and the sweeper deletes archives whose link was used or expired."""

from __future__ import annotations

import io
import json
import os
import uuid
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import trio

from protocol import Send, Sent, TextBody
from storage.exports import org_exported_since
from storage.personal_data import ORGANIZATION, PERSON
from tests.harness import Harness, Session, assert_error
from tests.server.sweeps import DAY_S, sql, sweep_pass, sweeping_server

SECRET_TEXT = "kopi-tubruk-6630 pesan rahasia"
FILE_TEXT = b"berkas-ekspor-4471 " * 10_000  # 190 kB: several sealed frames
FILE_NAME = "laporan-9921.txt"


@asynccontextmanager
async def export_server(
    nursery: trio.Nursery, database_url: str, data_dir: Path, **overrides: Any
) -> AsyncIterator[Harness]:
    async with sweeping_server(
        nursery, database_url, data_dir, export_poll_interval_s=0.05, **overrides
    ) as server:
        yield server


def text(conv: uuid.UUID, words: str) -> Send:
    return Send(cid=f"t-{uuid.uuid4()}", conv=conv.bytes, body=TextBody(text=words))


async def say(server: Harness, who: Session, conv: uuid.UUID, words: str) -> None:
    answer = await server.answer(who, text(conv, words))
    assert isinstance(answer, Sent), answer


async def upload(server: Harness, who: Session, conv: uuid.UUID, name: str, data: bytes) -> str:
    response = await server.client.post(
        f"/v1/conversations/{conv}/files?name={name}",
        headers={**who.headers, "Content-Type": "text/plain"},
        content=data,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def ask_export(server: Harness, who: Session, org: str | None = None) -> dict[str, Any]:
    path = "/v1/me/exports" if org is None else f"/v1/orgs/{org}/exports"
    response = await server.client.post(path, headers=who.headers)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    assert job["status"] == "queued"
    return job


async def until_ready(server: Harness, who: Session, export_id: str) -> dict[str, Any]:
    with trio.fail_after(60):
        while True:
            response = await server.client.get(f"/v1/me/exports/{export_id}", headers=who.headers)
            assert response.status_code == 200, response.text
            job: dict[str, Any] = response.json()
            assert job["status"] != "failed", job
            if job["status"] == "ready":
                return job
            await trio.sleep(0.05)


async def fetch_archive(server: Harness, job: dict[str, Any]) -> zipfile.ZipFile:
    response = await server.client.get(job["download"]["url"])
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/zip"
    return zipfile.ZipFile(io.BytesIO(response.content))


def entries(archive: zipfile.ZipFile, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(archive.read(f"{name}.json"))
    return items


async def person_with_data(server: Harness) -> tuple[Session, Session, uuid.UUID, str]:
    """Olivia (owner) and Bob in a group; Bob sent two messages and shared a file."""
    olivia = await server.create_org()
    bob = await server.add_member(olivia, "bob", phone="+62 811 000 4321")
    conv = await server.group(olivia, bob)
    await say(server, bob, conv, SECRET_TEXT)
    await say(server, bob, conv, "kedua")
    await say(server, olivia, conv, "balasan olivia")
    await server.grant(bob, "media_share")
    file_id = await upload(server, bob, conv, FILE_NAME, FILE_TEXT)
    await server.reauth(bob)
    return olivia, bob, conv, file_id


async def test_the_archive_holds_every_category_the_summary_lists(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with export_server(nursery, database_url, tmp_path) as server:
        _olivia, bob, _conv, file_id = await person_with_data(server)
        response = await server.client.get("/v1/me/data", headers=bob.headers)
        assert response.status_code == 200, response.text
        summary = {c["name"]: c for c in response.json()["categories"]}
        assert list(summary) == [c.name for c in PERSON]
        assert summary["messages"]["count"] == 2
        assert (summary["files"]["count"], summary["files"]["bytes"]) == (1, len(FILE_TEXT))
        assert summary["profile"]["count"] == 1 and summary["devices"]["count"] >= 1
        assert summary["login_records"]["count"] >= 2
        for category in summary.values():
            assert category["retention"] and all(r["period"] for r in category["retention"])
        assert "3 calendar months" in summary["login_records"]["retention"][0]["period"]

        job = await ask_export(server, bob)
        ready = await until_ready(server, bob, job["id"])
        progress = ready["progress"]
        assert progress["items_done"] == progress["items_total"] > 0
        assert progress["bytes_done"] == progress["bytes_total"] == len(FILE_TEXT)

        # Counted again now: the export's own request and audit entry are new since.
        response = await server.client.get("/v1/me/data", headers=bob.headers)
        now = {c["name"]: c["count"] for c in response.json()["categories"]}
        archive = await fetch_archive(server, ready)
        manifest = json.loads(archive.read("manifest.json"))
        assert [c["name"] for c in manifest["categories"]] == list(summary)
        for name, count in now.items():
            assert len(entries(archive, name)) == count, name
        bodies = [m["body"] for m in entries(archive, "messages")]
        assert bodies == [{"text": SECRET_TEXT}, {"text": "kedua"}]
        assert entries(archive, "profile")[0]["phone"] == "+62 811 000 4321"
        (shared,) = entries(archive, "files")
        assert (shared["id"], shared["name"]) == (file_id, FILE_NAME)
        assert archive.read(shared["archive_path"]) == FILE_TEXT
        assert manifest["missing_files"] == []

        # The request is tracked and answered; the audit log has both events.
        requests = (await server.client.get("/v1/me/requests", headers=bob.headers)).json()
        (request,) = requests["requests"]
        assert (request["kind"], request["status"], request["id"]) == (
            "export",
            "done",
            ready["request_id"],
        )
        audit = (await server.client.get("/v1/me/audit", headers=bob.headers)).json()
        actions = [e["action"] for e in audit["entries"]]
        assert "export_requested" in actions and "export_downloaded" in actions

        # The link worked once: again, or any other link of the job, is gone.
        again = await server.client.get(ready["download"]["url"])
        assert_error(again, 410, "gone")
        listed = (await server.client.get("/v1/me/exports", headers=bob.headers)).json()
        (seen,) = listed["exports"]
        assert seen["downloaded_at"] is not None and seen["download"] is None
        assert_error(await server.client.get("/v1/exports/" + "x" * 43), 404, "not_found")


async def test_no_fresh_reauthentication_no_data(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with export_server(nursery, database_url, tmp_path) as server:
        olivia = await server.create_org()
        server.clock.advance(server.settings.reauth_window_s + 1)
        for method, path in (
            ("GET", "/v1/me/data"),
            ("POST", "/v1/me/exports"),
            ("POST", f"/v1/orgs/{olivia.org_id}/exports"),
        ):
            response = await server.client.request(method, path, headers=olivia.headers)
            assert_error(response, 403, "reauth_required")
        listed = (await server.client.get("/v1/me/exports", headers=olivia.headers)).json()
        assert listed["exports"] == []
        requests = (await server.client.get("/v1/me/requests", headers=olivia.headers)).json()
        assert requests["requests"] == []
        await server.reauth(olivia)
        response = await server.client.get("/v1/me/data", headers=olivia.headers)
        assert response.status_code == 200, response.text


async def test_nobody_sees_or_asks_for_anothers_export(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with export_server(nursery, database_url, tmp_path) as server:
        olivia, bob, _conv, _file = await person_with_data(server)
        job = await ask_export(server, bob)
        response = await server.client.get(f"/v1/me/exports/{job['id']}", headers=olivia.headers)
        assert_error(response, 404, "not_found")
        assert (await server.client.get("/v1/me/exports", headers=olivia.headers)).json()[
            "exports"
        ] == []
        # A member may not export the organization; nobody exports another organization.
        response = await server.client.post(f"/v1/orgs/{bob.org_id}/exports", headers=bob.headers)
        assert_error(response, 403, "forbidden")
        other = await server.create_org("Globex", "gina")
        response = await server.client.post(
            f"/v1/orgs/{olivia.org_id}/exports", headers=other.headers
        )
        assert_error(response, 403, "forbidden")
        await until_ready(server, bob, job["id"])


async def test_an_expired_link_is_gone_and_the_sweeper_deletes_the_archive(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with export_server(nursery, database_url, tmp_path) as server:
        _olivia, bob, _conv, _file = await person_with_data(server)
        job = await ask_export(server, bob)
        ready = await until_ready(server, bob, job["id"])
        folder = tmp_path / "exports"
        (archive_file,) = folder.iterdir()

        # Sealed on disk and private: no message text, no file bytes, mode 0600.
        assert archive_file.stat().st_mode & 0o777 == 0o600
        assert folder.stat().st_mode & 0o777 == 0o700
        stored = archive_file.read_bytes()
        assert SECRET_TEXT.encode() not in stored and FILE_TEXT[:40] not in stored
        assert FILE_NAME.encode() not in stored and b"PK\x03\x04" not in stored

        # Still there a minute before the link expires; gone after.
        server.clock.advance(server.settings.export_link_ttl_s - 60)
        await sweep_pass(server)
        assert archive_file.exists()
        server.clock.advance(61)
        assert_error(await server.client.get(ready["download"]["url"]), 410, "gone")
        erased = await sweep_pass(server)
        assert erased["export_archives"] == {"rows": 1, "files": 1}
        assert list(folder.iterdir()) == []
        bob = await server.login("bob@members.example")  # a day later: a new session
        seen = (await server.client.get(f"/v1/me/exports/{job['id']}", headers=bob.headers)).json()
        assert (seen["status"], seen["download"]) == ("expired", None)


async def test_a_downloaded_archive_is_deleted_by_the_next_sweep(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with export_server(nursery, database_url, tmp_path) as server:
        _olivia, bob, _conv, _file = await person_with_data(server)
        ready = await until_ready(server, bob, (await ask_export(server, bob))["id"])
        await fetch_archive(server, ready)
        await sweep_pass(server)
        assert list((tmp_path / "exports").iterdir()) == []


async def test_an_export_whose_worker_died_is_taken_over_and_finishes(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    """A worker claimed the job, wrote part of it and died (its lease still runs): after the
    lease ends, another server process starts it over and finishes."""
    async with export_server(nursery, database_url, tmp_path, export_workers=0) as first:
        _olivia, bob, _conv, file_id = await person_with_data(first)
        job = await ask_export(first, bob)
        lease_until = first.clock() + timedelta(seconds=first.settings.export_lease_s)
    # What the dead worker left: its claim, and half a file.
    await sql(
        database_url,
        "UPDATE exports SET status = 'running', attempt = 1, lease_until = $2, items_done = 3"
        " WHERE id = $1",
        uuid.UUID(job["id"]),
        lease_until,
    )
    (tmp_path / "exports").mkdir(mode=0o700)
    (tmp_path / "exports" / f"{job['id']}-1").write_bytes(b"half an archive")

    async with export_server(nursery, database_url, tmp_path) as second:
        second.clock.offset = first.clock.offset
        bob = await second.login("bob@members.example")
        await trio.sleep(0.3)  # the worker polls meanwhile: the lease holds it off
        seen = (await second.client.get(f"/v1/me/exports/{job['id']}", headers=bob.headers)).json()
        assert seen["status"] == "running"
        second.clock.advance(second.settings.export_lease_s + 1)
        ready = await until_ready(second, bob, job["id"])
        # The dead worker's half file is gone; the new attempt wrote its own.
        assert [p.name for p in (tmp_path / "exports").iterdir()] == [f"{job['id']}-2"]
        archive = await fetch_archive(second, ready)
        (shared,) = entries(archive, "files")
        assert shared["id"] == file_id and archive.read(shared["archive_path"]) == FILE_TEXT


async def test_a_server_stopped_mid_export_gives_the_job_back_and_the_next_finishes(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    big = os.urandom(3 * 1024 * 1024)
    async with export_server(
        nursery, database_url, tmp_path, export_page_rows=1, max_upload_bytes=8 * 1024 * 1024
    ) as first:
        olivia = await first.create_org()
        conv = await first.group(olivia)
        for n in range(3):
            await upload(first, olivia, conv, f"big-{n}.txt", big)
        job = await ask_export(first, olivia)
        with trio.fail_after(30):
            while True:
                response = await first.client.get(
                    f"/v1/me/exports/{job['id']}", headers=olivia.headers
                )
                if response.json()["status"] != "queued":
                    break
                await trio.sleep(0.01)
    async with export_server(nursery, database_url, tmp_path) as second:
        olivia = await second.login(olivia.account["work_email"])
        ready = await until_ready(second, olivia, job["id"])
        archive = await fetch_archive(second, ready)
        shared = entries(archive, "files")
        assert len(shared) == 3
        assert all(archive.read(f["archive_path"]) == big for f in shared)


async def test_admins_export_their_organization(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with export_server(nursery, database_url, tmp_path) as server:
        olivia, _bob, conv, file_id = await person_with_data(server)
        await server.reauth(olivia)
        org = uuid.UUID(olivia.org_id)
        db = server.services.db
        assert not await org_exported_since(db, org, server.clock() - timedelta(days=30))
        job = await ask_export(server, olivia, olivia.org_id)
        assert job["scope"] == "org"
        ready = await until_ready(server, olivia, job["id"])
        archive = await fetch_archive(server, ready)
        manifest = json.loads(archive.read("manifest.json"))
        assert [c["name"] for c in manifest["categories"]] == [c.name for c in ORGANIZATION]
        assert entries(archive, "organization")[0]["name"] == "Acme"
        members = {m["account_name"]: m for m in entries(archive, "members")}
        assert set(members) == {"olivia", "bob"}
        assert members["bob"]["phone"] == "+62 811 000 4321"
        assert [c["id"] for c in entries(archive, "conversations")] == [str(conv)]
        assert len(entries(archive, "conversation_members")) == 2
        texts = [m["body"]["text"] for m in entries(archive, "messages")]
        assert texts == [SECRET_TEXT, "kedua", "balasan olivia"]
        (shared,) = entries(archive, "files")
        assert shared["id"] == file_id and archive.read(shared["archive_path"]) == FILE_TEXT

        requests = (await server.client.get("/v1/me/requests", headers=olivia.headers)).json()
        assert [(r["kind"], r["status"]) for r in requests["requests"]] == [("org_export", "done")]
        assert await org_exported_since(db, org, server.clock() - timedelta(days=30))
        assert not await org_exported_since(db, org, server.clock() + timedelta(seconds=DAY_S))
