"""Deleting an organization over the real server: only its owner, after a fresh password and
with its name typed, and only once its data was exported (or the export declined in so many
words); every account is cancelled at once, and the sweeper then leaves no row or blob of
the organization or its people anywhere but the audit log (ids only)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import trio

from protocol import CloseCode
from tests.harness import PASSWORD, Harness, Session, assert_error
from tests.server.sweeps import sweep_pass, sweeping_server
from tests.server.test_cancellation import rows_with, sent, text
from tests.server.test_encryption_at_rest import share, upload
from tests.server.test_export import ask_export, export_server, fetch_archive, until_ready
from tests.server.test_gateway_refusals import closed_with

ORG_NAME = "Toko-Kue-5521"
WORDS = "rapat-pagi-8830 di gudang"
FILE_NAME = "stok-gudang-3307.csv"


async def delete_org(server: Harness, who: Session, **fields: Any) -> httpx.Response:
    return await server.client.request(
        "DELETE",
        f"/v1/orgs/{who.org_id}",
        headers=who.headers,
        json={"confirm": ORG_NAME, **fields},
    )


async def test_an_owner_deletes_the_organization_and_the_purge_leaves_nothing(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with sweeping_server(nursery, database_url, tmp_path) as server:
        olivia = await server.create_org(ORG_NAME, "olivia")
        bob = await server.add_member(olivia, "bob", role="admin")
        ann = await server.add_member(olivia, "ann")
        await server.department(olivia, "Dapur")
        await server.grant(ann, "media_share")
        group = await server.group(olivia, bob, ann)
        await sent(server, bob, text(group, WORDS))
        file_id = await upload(server, ann, group, FILE_NAME, b"tepung,12\n" * 50)
        await sent(server, ann, share(group, file_id, FILE_NAME, 500))
        site = {"name": "Gudang", "circle": {"lat": -6.2, "lon": 106.8, "radius_m": 300}}
        response = await server.client.post(
            f"/v1/orgs/{olivia.org_id}/sites", headers=olivia.headers, json=site
        )
        assert response.status_code == 201, response.text
        live = await server.synced(ann)

        # An admin may not; an owner needs a fresh password, the name typed, and the export.
        assert_error(await delete_org(server, bob), 403, "forbidden")
        server.clock.advance(server.settings.reauth_window_s + 1)
        olivia = await server.login(olivia.account["work_email"], PASSWORD)
        server.clock.advance(server.settings.reauth_window_s + 1)
        assert_error(await delete_org(server, olivia), 403, "reauth_required")
        await server.reauth(olivia)
        wrong = await server.client.request(
            "DELETE", f"/v1/orgs/{olivia.org_id}", headers=olivia.headers, json={"confirm": "x"}
        )
        assert_error(wrong, 422, "invalid_request")
        assert_error(await delete_org(server, olivia), 409, "export_first")
        other = await server.create_org("Other", "oscar")
        response = await server.client.request(
            "DELETE",
            f"/v1/orgs/{other.org_id}",
            headers=olivia.headers,
            json={"confirm": "Other", "export": "declined"},
        )
        assert_error(response, 403, "forbidden")  # another organization's: never

        response = await delete_org(server, olivia, export="declined")
        assert response.status_code == 202, response.text
        assert response.json()["accounts_cancelled"] == 3

        # Everyone is out at once: live connections closed, tokens and passwords refused.
        closed = await closed_with(live)
        assert closed.code == CloseCode.DEVICE_REVOKED
        for who in (olivia, bob, ann):
            me = await server.client.get("/v1/me", headers=who.headers)
            assert_error(me, 403, "account_cancelled")
        # The other organization goes on.
        me = await server.client.get("/v1/me", headers=other.headers)
        assert me.status_code == 200, me.text

        blob = server.services.blobs.path(uuid.UUID(file_id))
        for _ in range(4):  # accounts first, then the organization's own rows
            await sweep_pass(server)
        needles = [
            olivia.org_id,
            *(who.id for who in (olivia, bob, ann)),
            *(who.account["work_email"] for who in (olivia, bob, ann)),
            ORG_NAME,
            WORDS,
            FILE_NAME,
            file_id,
            str(group),
        ]
        needles += [uuid.UUID(who.id).hex for who in (olivia, bob, ann)]
        assert await rows_with(server, needles, audit=False) == []
        assert not blob.exists()
        assert await rows_with(server, [ORG_NAME, WORDS, FILE_NAME], audit=True) == []


async def test_with_its_export_taken_the_organization_may_go_and_its_archive_with_it(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with export_server(nursery, database_url, tmp_path) as server:
        olivia = await server.create_org(ORG_NAME, "olivia")
        bob = await server.add_member(olivia, "bob")
        group = await server.group(olivia, bob)
        await sent(server, bob, text(group, WORDS))
        assert_error(await delete_org(server, olivia), 409, "export_first")
        job = await until_ready(
            server, olivia, (await ask_export(server, olivia, olivia.org_id))["id"]
        )
        archive = await fetch_archive(server, job)
        assert any(WORDS in archive.read(n).decode(errors="replace") for n in archive.namelist())
        archives = list(server.settings.data_dir.glob("exports/*"))
        assert archives

        response = await delete_org(server, olivia)
        assert response.status_code == 202, response.text
        assert_error(await delete_org(server, olivia), 403, "account_cancelled")
        for _ in range(4):
            await sweep_pass(server)
        needles = [olivia.org_id, olivia.id, bob.id, ORG_NAME, WORDS, str(group)]
        assert await rows_with(server, needles, audit=False) == []
        assert not any(p.exists() for p in archives)
