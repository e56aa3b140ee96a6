"""Values stored in plaintext before encryption at rest (migration 0013) are sealed by the
server in the background after it starts, and read the same before and after; those of a
person whose key was destroyed are cleared instead."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import trio

from protocol import TextBody
from protocol.codec import encode_body
from storage.sealing import BLOB_MAGIC, is_sealed
from tests.harness import start_harness
from tests.server.test_encryption_at_rest import (
    BIRTH_DATE,
    PHONE,
    download,
    history,
    member,
    raw,
    sent,
    share,
    text,
    upload,
)

CONTENT = b"lama-tapi-rahasia " * 5000


async def execute(database_url: str, *statements: tuple[str, tuple[object, ...]]) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            for query, args in statements:
                await conn.execute(query, *args)
        finally:
            await conn.close()

    await trio.to_thread.run_sync(asyncio.run, run())


async def test_plaintext_from_before_is_sealed_at_start(database_url: str, tmp_path: Path) -> None:
    async with (
        trio.open_nursery() as nursery,
        start_harness(nursery, database_url, tmp_path) as server,
    ):
        ann = await server.create_org()
        bob = await server.add_member(ann, "bob", phone=PHONE, birth_date=BIRTH_DATE)
        cat = await server.add_member(ann, "cat")
        await server.grant(ann, "media_share")
        conv = await server.group(ann, bob, cat)
        kept = await sent(server, ann, text(conv, "alt-1234"))
        file_id = await upload(server, ann, conv, "lama.txt", CONTENT)
        await sent(server, ann, share(conv, file_id, "lama.txt", len(CONTENT)))
        gone = await sent(server, cat, text(conv, "cat-alt-5678"))
        await server.services.keyring.destroy(cat.account_uuid, datetime.now(UTC))
        blob = server.services.blobs.path(uuid.UUID(file_id))

    # As an obrol before 0013 left them: plaintext everywhere, nothing sealed yet.
    def body(words: str) -> bytes:
        return encode_body(TextBody(text=words))

    await execute(
        database_url,
        (
            "UPDATE messages SET body = $2 WHERE id = $1",
            (uuid.UUID(bytes=kept.id), body("alt-1234")),
        ),
        (
            "UPDATE messages SET body = $2 WHERE id = $1",
            (uuid.UUID(bytes=gone.id), body("cat-alt-5678")),
        ),
        (
            "UPDATE accounts SET phone = $2, birth_date = $3 WHERE id = $1",
            (bob.account_uuid, PHONE.encode(), BIRTH_DATE.encode()),
        ),
        (
            "UPDATE files SET name = $2, sha256 = $3 WHERE id = $1",
            (uuid.UUID(file_id), b"lama.txt", hashlib.sha256(CONTENT).digest()),
        ),
        ("UPDATE legacy_sealing SET after = NULL, done_at = NULL", ()),
    )
    blob.write_bytes(CONTENT)

    async with (
        trio.open_nursery() as nursery,
        start_harness(nursery, database_url, tmp_path) as server,
    ):
        with trio.fail_after(30):
            unsealed = "SELECT 1 FROM legacy_sealing WHERE done_at IS NULL"
            while await raw(database_url, unsealed):  # noqa: ASYNC110 (the server's own task)
                await trio.sleep(0.05)
        ann = await server.login("olivia@acme.example")
        bob = await server.login("bob@members.example")

        (row,) = await raw(
            database_url, "SELECT body FROM messages WHERE id = $1", uuid.UUID(bytes=kept.id)
        )
        assert is_sealed(bytes(row["body"]))
        (row,) = await raw(
            database_url, "SELECT body FROM messages WHERE id = $1", uuid.UUID(bytes=gone.id)
        )
        assert bytes(row["body"]) == b""  # the erased person's plaintext is cleared
        (row,) = await raw(
            database_url, "SELECT phone, birth_date FROM accounts WHERE id = $1", bob.account_uuid
        )
        assert is_sealed(bytes(row["phone"])) and is_sealed(bytes(row["birth_date"]))
        (row,) = await raw(
            database_url, "SELECT name, sha256 FROM files WHERE id = $1", uuid.UUID(file_id)
        )
        assert is_sealed(bytes(row["name"])) and is_sealed(bytes(row["sha256"]))
        assert blob.read_bytes().startswith(BLOB_MAGIC)

        shown = [(m["kind"], m["body"]) for m in await history(server, ann, conv)]
        assert shown[0] == ("text", {"text": "alt-1234"})
        assert shown[2] == ("system", {"event": "erased", "text": ""})
        record = await member(server, ann, bob)
        assert (record["phone"], record["birth_date"]) == (PHONE, BIRTH_DATE)
        assert await download(server, bob, file_id) == CONTENT
        response = await server.client.get(f"/v1/files/{file_id}", headers=ann.headers)
        assert "filename*=UTF-8''lama.txt" in response.headers["Content-Disposition"]
