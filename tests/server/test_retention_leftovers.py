"""What the retention schedule cleans up besides personal records, over the real server and
PostgreSQL under a controlled clock: expired sign-in tokens (a revoked refresh token kept
until its own expiry, so reuse still ends its family), blobs a crash left without their file
row (never a blob of an upload in progress), and receipts, which the database itself no
longer lets outlive their message."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import trio

from protocol import Receipt, ReceiptStatus
from server.sweeps import ORPHAN_WALK_EVERY_S
from storage.files import BlobStore
from tests.harness import Harness, Session, assert_error
from tests.server.sweeps import DAY_S, sql, sweep_pass, sweeping_server, until_stored
from tests.server.test_retention import PNG, send, share_file, text


async def tokens_of(database_url: str, who: Session) -> list[tuple[str, bool]]:
    """(kind, revoked) of every stored token of the account, in issue order."""
    rows = await sql(
        database_url,
        """SELECT kind, revoked_at IS NOT NULL AS revoked FROM auth_tokens
           WHERE account_id = $1 ORDER BY created_at, kind""",
        who.account_uuid,
    )
    return [(r["kind"], r["revoked"]) for r in rows]


async def refresh(server: Harness, refresh_token: str) -> Any:
    return await server.client.post("/v1/tokens/refresh", json={"refresh_token": refresh_token})


async def test_expired_tokens_go_after_n_days_and_a_rotated_away_refresh_token_still_trips(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with sweeping_server(nursery, database_url, tmp_path) as server:
        olivia = await server.create_org()
        rotated = await refresh(server, olivia.refresh_token)
        assert rotated.status_code == 200, rotated.text
        newest = rotated.json()["refresh_token"]
        assert sorted(await tokens_of(database_url, olivia)) == [
            ("access", False),
            ("access", True),
            ("refresh", False),
            ("refresh", True),
        ]
        days = server.settings.auth_tokens_retention_days
        access_ttl_s = server.settings.access_token_ttl_s

        # Both access tokens expired, less than N days ago: kept ("token_expired" still).
        server.clock.advance(access_ttl_s + (days - 1) * DAY_S)
        await sweep_pass(server)
        assert len(await tokens_of(database_url, olivia)) == 4

        # More than N days after their expiry the access tokens go, revoked or not; the
        # refresh tokens have not expired, and the rotated-away one stays with them.
        server.clock.advance(DAY_S + 60)
        erased = await sweep_pass(server)
        assert erased["auth_tokens"] == {"rows": 2, "files": 0}
        assert sorted(await tokens_of(database_url, olivia)) == [
            ("refresh", False),
            ("refresh", True),
        ]
        reused = await refresh(server, olivia.refresh_token)
        assert_error(reused, 401, "token_revoked")  # a thief's replay is still noticed ...
        assert_error(await refresh(server, newest), 401, "token_revoked")  # ... family ended

        # N days after the refresh tokens' own expiry, nothing of the session is left.
        server.clock.advance(server.settings.refresh_token_ttl_s)
        erased = await sweep_pass(server)
        assert erased["auth_tokens"] == {"rows": 2, "files": 0}
        assert await tokens_of(database_url, olivia) == []
        assert_error(await refresh(server, newest), 401, "unauthenticated")

        fresh = await server.login(olivia.account["work_email"])
        assert (await server.client.get("/v1/me", headers=fresh.headers)).status_code == 200
        schedule = (
            await server.client.get(f"/v1/orgs/{fresh.org_id}/retention", headers=fresh.headers)
        ).json()
        assert "auth_tokens" in str(schedule) and "orphan_blobs" in str(schedule)


def make_file(path: Path, age_s: float) -> Path:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(b"sealed bytes of nobody's file")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


async def test_blobs_without_a_row_go_after_the_grace_and_uploads_in_progress_stay(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with sweeping_server(nursery, database_url, tmp_path) as server:
        ann = await server.create_org()
        conv = await server.group(ann)
        await server.grant(ann, "media_share")
        kept_id = await share_file(server, ann, conv, "kept-file")
        blobs = BlobStore(server.settings.data_dir / "files")
        grace_s = server.settings.orphan_blob_grace_s
        old = grace_s + DAY_S
        kept = blobs.path(kept_id)
        os.utime(kept, (time.time() - old, time.time() - old))  # old, but it has its row
        # A crash after the commit that deleted these rows, before their blobs went:
        orphans = [make_file(blobs.path(uuid.uuid4()), old) for _ in range(3)]
        abandoned = make_file(blobs.path(uuid.uuid4()).with_name(f".{uuid.uuid4()}.part"), old)
        # An upload in progress: its blob is written, its row is about to be recorded.
        in_progress = make_file(blobs.path(uuid.uuid4()), 60)
        writing = make_file(blobs.path(uuid.uuid4()).with_name(f".{uuid.uuid4()}.part"), 1)
        not_ours = make_file(blobs.root / "ab" / "notes.txt", old)

        server.clock.advance(ORPHAN_WALK_EVERY_S + 1)  # the next walk of the folder is due
        erased = await sweep_pass(server)
        assert erased["orphan_blobs"] == {"rows": 0, "files": 4}
        assert [p.exists() for p in (*orphans, abandoned)] == [False] * 4
        assert kept.exists() and in_progress.exists() and writing.exists()
        assert not_ours.exists()
        ann = await server.login(ann.account["work_email"])  # an hour later
        download = await server.client.get(f"/v1/files/{kept_id}", headers=ann.headers)
        assert download.status_code == 200 and download.content == PNG

        # Once past the grace, a blob whose upload never recorded its row goes too.
        server.clock.advance(grace_s)
        erased = await sweep_pass(server)
        assert erased["orphan_blobs"] == {"rows": 0, "files": 2}
        assert not in_progress.exists() and not writing.exists() and kept.exists()


async def test_the_database_keeps_no_receipt_of_a_message_that_is_gone(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with sweeping_server(nursery, database_url, tmp_path) as server:
        ann = await server.create_org()
        bob = await server.add_member(ann, "bob")
        conv = await server.group(ann, bob)
        sent = await send(server, ann, text(conv, "read-me"))
        async with await server.connect(bob) as bobs_device:
            await bobs_device.send(Receipt(conv=conv.bytes, id=sent.id, status=ReceiptStatus.READ))
            await until_stored(database_url, "SELECT 1 FROM message_receipts")
        [receipt] = await sql(database_url, "SELECT * FROM message_receipts")
        # Whatever erases a message (a retention period, a tag's clock, a withdrawal, or a
        # path written later), its receipts go with it, in the same statement.
        await sql(database_url, "DELETE FROM messages WHERE id = $1", uuid.UUID(bytes=sent.id))
        assert await sql(database_url, "SELECT 1 FROM message_receipts") == []
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await sql(
                database_url,
                """INSERT INTO message_receipts (message_id, conversation_id, account_id,
                       device_id, status, at) VALUES ($1, $2, $3, $4, $5, $6)""",
                *(receipt[k] for k in ("message_id", "conversation_id", "account_id")),
                receipt["device_id"],
                receipt["status"],
                receipt["at"],
            )
