"""Encryption at rest over the real server and PostgreSQL: what is stored is ciphertext and
everything still works; destroying a person's key erases exactly their data; a wrong or
missing master key stops the server with one clear line."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import trio

from protocol import (
    Consent,
    Err,
    ErrorCode,
    FileBody,
    Msg,
    Send,
    Sent,
    Synced,
    SystemBody,
    TextBody,
)
from storage.keyring import MasterKey, MasterKeyError, unwrap
from storage.sealing import BLOB_MAGIC, MESSAGE_BODY, UnreadableError, ad, is_sealed, open_sealed
from tests.harness import Harness, Session, assert_error, start_harness
from tests.privacy_search import capture_logs, find_everywhere
from tests.processes import Process

# Values no other test uses, searched for in every table, file and log.
SECRET_TEXT = "teh-botol-8812 rahasia dapur"
FILE_TEXT = b"isi-berkas-5523 " * 9000  # 144 kB: three sealed frames
FILE_NAME = "catatan-7741.txt"
PHONE = "+62 812 5550 7788"
BIRTH_DATE = "1987-04-23"


async def raw(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """Rows as PostgreSQL holds them, read past the server."""

    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return await trio.to_thread.run_sync(asyncio.run, fetch())


def url_of(server: Harness) -> str:
    assert server.settings.database_url is not None
    return server.settings.database_url.get_secret_value()


def text(conv: uuid.UUID, words: str) -> Send:
    return Send(cid=f"t-{uuid.uuid4()}", conv=conv.bytes, body=TextBody(text=words))


async def upload(server: Harness, who: Session, conv: uuid.UUID, name: str, data: bytes) -> str:
    response = await server.client.post(
        f"/v1/conversations/{conv}/files?name={name}",
        headers={**who.headers, "Content-Type": "text/plain"},
        content=data,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def share(conv: uuid.UUID, file_id: str, name: str, size: int) -> Send:
    return Send(
        cid=f"f-{uuid.uuid4()}",
        conv=conv.bytes,
        body=FileBody(file_id=uuid.UUID(file_id).bytes, name=name, size=size, mime="text/plain"),
        consent=Consent(purpose="media_share", scope="conversation", retention="default"),
    )


async def sent(server: Harness, who: Session, frame: Send) -> Sent:
    answer = await server.answer(who, frame)
    assert isinstance(answer, Sent), answer
    return answer


async def caught_up(server: Harness, who: Session) -> list[Msg]:
    """Every message a fresh catch-up of `who` delivers."""
    async with await server.connect(who) as client:
        await client.sync(0)
        messages: list[Msg] = []
        with trio.fail_after(10):
            while True:
                for frame in await client.receive():
                    if isinstance(frame, Msg):
                        messages.append(frame)
                    elif isinstance(frame, Synced):
                        return messages


async def history(server: Harness, who: Session, conv: uuid.UUID) -> list[dict[str, Any]]:
    response = await server.client.get(f"/v1/conversations/{conv}/messages", headers=who.headers)
    assert response.status_code == 200, response.text
    return list(reversed(response.json()["messages"]))


async def download(server: Harness, who: Session, file_id: str) -> bytes:
    response = await server.client.get(f"/v1/files/{file_id}", headers=who.headers)
    assert response.status_code == 200, response.text
    return response.content


async def member(server: Harness, admin: Session, who: Session) -> dict[str, Any]:
    response = await server.client.get(
        f"/v1/orgs/{admin.org_id}/members/{who.id}", headers=admin.headers
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture
def quiet_test_client() -> Iterator[None]:
    """The test's own HTTP client logs the URLs it asks for (an upload's name is in it):
    the server's log is what is searched."""
    loggers = [logging.getLogger(name) for name in ("httpx", "httpcore")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    yield
    for lg, level in zip(loggers, levels, strict=True):
        lg.setLevel(level)


@pytest.mark.usefixtures("quiet_test_client")
async def test_what_is_stored_is_ciphertext_and_everything_still_works(server: Harness) -> None:
    with capture_logs() as logs:
        ann = await server.create_org()
        bob = await server.add_member(ann, "bob", phone=PHONE, birth_date=BIRTH_DATE)
        await server.grant(ann, "media_share")
        conv = await server.group(ann, bob)
        said = await sent(server, ann, text(conv, SECRET_TEXT))
        file_id = await upload(server, ann, conv, FILE_NAME, FILE_TEXT)
        await sent(server, ann, share(conv, file_id, FILE_NAME, len(FILE_TEXT)))

        # Everything reads back as it was given.
        assert (await history(server, bob, conv))[0]["body"] == {"text": SECRET_TEXT}
        delivered = await caught_up(server, bob)
        assert delivered[0].body == TextBody(text=SECRET_TEXT)
        assert isinstance(delivered[1].body, FileBody) and delivered[1].body.name == FILE_NAME
        assert await download(server, bob, file_id) == FILE_TEXT
        record = await member(server, ann, bob)
        assert (record["phone"], record["birth_date"]) == (PHONE, BIRTH_DATE)

        findings = await find_everywhere(
            server,
            [
                SECRET_TEXT,
                FILE_TEXT[:32],
                FILE_NAME,
                PHONE,
                BIRTH_DATE,
                hashlib.sha256(FILE_TEXT).digest(),
            ],
            logs,
        )
    assert findings.found == [], findings.found

    # Stored sealed, in the database and on disk.
    (row,) = await raw(
        url_of(server), "SELECT body FROM messages WHERE id = $1", uuid.UUID(bytes=said.id)
    )
    assert is_sealed(bytes(row["body"]))
    blob = server.services.blobs.path(uuid.UUID(file_id)).read_bytes()
    assert blob.startswith(BLOB_MAGIC) and len(blob) > len(FILE_TEXT)


async def test_destroying_a_key_erases_exactly_that_persons_data(server: Harness) -> None:
    ann = await server.create_org()
    bob = await server.add_member(ann, "bob", phone=PHONE, birth_date=BIRTH_DATE)
    await server.grant(bob, "media_share")
    conv = await server.group(ann, bob)
    bobs = await sent(server, bob, text(conv, "bob-geheim-3391"))
    file_id = await upload(server, bob, conv, "bob.txt", b"bob-berkas-1177")
    await sent(server, bob, share(conv, file_id, "bob.txt", 15))
    await sent(server, ann, text(conv, "ann-tetap-2210"))
    url = url_of(server)
    (stored,) = await raw(url, "SELECT body FROM messages WHERE id = $1", uuid.UUID(bytes=bobs.id))

    keyring = server.services.keyring
    now = datetime.now(UTC)
    assert await keyring.destroy(bob.account_uuid, now) is True
    assert await keyring.destroy(bob.account_uuid, now) is False  # a second time changes nothing

    # Others see bob's messages as erased, in their place; ann's stay.
    erased = {"event": "erased", "text": ""}
    shown = [(m["sender_id"], m["kind"], m["body"]) for m in await history(server, ann, conv)]
    assert shown == [
        (bob.id, "system", erased),
        (bob.id, "system", erased),
        (ann.id, "text", {"text": "ann-tetap-2210"}),
    ]
    delivered = await caught_up(server, ann)
    assert [(m.sender, m.body) for m in delivered] == [
        (bob.account_uuid.bytes, SystemBody(event="erased", text="")),
        (bob.account_uuid.bytes, SystemBody(event="erased", text="")),
        (ann.account_uuid.bytes, TextBody(text="ann-tetap-2210")),
    ]
    assert all(m.consent is None for m in delivered)

    # Their file is gone, their personal fields read as unset.
    response = await server.client.get(f"/v1/files/{file_id}", headers=ann.headers)
    assert_error(response, 410, "gone")
    record = await member(server, ann, bob)
    assert (record["phone"], record["birth_date"]) == (None, None)
    # Nothing new is sealed for them: a send or an upload is refused, nothing stored.
    refused = await server.answer(bob, text(conv, "after"))
    assert isinstance(refused, Err) and refused.code is ErrorCode.ACCOUNT_DEACTIVATED
    response = await server.client.post(
        f"/v1/conversations/{conv}/files?name=x.txt",
        headers={**bob.headers, "Content-Type": "text/plain"},
        content=b"x",
    )
    assert_error(response, 403, "account_deactivated")
    assert len(await raw(url, "SELECT 1 FROM messages WHERE conversation_id = $1", conv)) == 3

    # The key is gone from the database (a tombstone stays), and no key the server holds
    # opens what bob wrote.
    (tombstone,) = await raw(
        url, "SELECT wrapped, destroyed_at FROM data_keys WHERE account_id = $1", bob.account_uuid
    )
    assert tombstone["wrapped"] is None and tombstone["destroyed_at"] is not None
    master = MasterKey(keyring.master.version, server.settings.master_key_path.read_bytes())
    live = await raw(url, "SELECT account_id, wrapped FROM data_keys WHERE wrapped IS NOT NULL")
    assert live  # ann's
    for row in live:
        key = unwrap(master, row["account_id"], bytes(row["wrapped"]))
        with pytest.raises(UnreadableError):
            open_sealed(key, bytes(stored["body"]), ad(MESSAGE_BODY, uuid.UUID(bytes=bobs.id)))


async def failed_start(database_url: str, data_dir: Path, **overrides: Any) -> str:
    """The one error a server start ends with."""
    with pytest.raises(BaseException) as caught:
        async with (
            trio.open_nursery() as nursery,
            start_harness(nursery, database_url, data_dir, **overrides),
        ):
            pass
    error = caught.value
    while isinstance(error, BaseExceptionGroup):
        (error,) = error.exceptions
    assert isinstance(error, MasterKeyError), repr(error)
    message = str(error)
    assert "\n" not in message
    return message


async def test_a_wrong_or_missing_master_key_stops_the_server(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        trio.open_nursery() as nursery,
        start_harness(nursery, database_url, tmp_path) as server,
    ):
        ann = await server.create_org()
        await server.add_member(ann, "bob", phone=PHONE)  # a data key wrapped by the master key
    key_file = tmp_path / "master.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    right = key_file.read_bytes()

    key_file.write_bytes(os.urandom(32))
    message = await failed_start(database_url, tmp_path)
    assert message.startswith(f"{key_file}: the master key does not match this database"), message

    key_file.unlink()
    message = await failed_start(database_url, tmp_path)
    assert message.startswith(f"there is no master key at {key_file}"), message
    assert not key_file.exists()  # no new key made over a database sealed with another

    key_file.write_bytes(right)
    key_file.chmod(0o640)
    message = await failed_start(database_url, tmp_path)
    assert "readable by other users" in message
    key_file.chmod(0o600)

    # The same key from another place works (master_key_file).
    elsewhere = tmp_path / "keys" / "obrol.key"
    elsewhere.parent.mkdir()
    key_file.rename(elsewhere)
    async with (
        trio.open_nursery() as nursery,
        start_harness(nursery, database_url, tmp_path, master_key_file=elsewhere) as server,
    ):
        again = await server.login("bob@members.example")
        assert (await member(server, ann, again))["phone"] == PHONE


def test_the_command_line_says_so_in_one_line(database_url: str, tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"

    async def first_start() -> None:
        async with (
            trio.open_nursery() as nursery,
            start_harness(nursery, database_url, tmp_path) as server,
        ):
            ann = await server.create_org()
            await server.add_member(ann, "bob", phone=PHONE)

    trio.run(first_start)
    key_file.write_bytes(os.urandom(32))
    args = ["serve", "--port", "0", "--data-dir", str(tmp_path), "--database-url", database_url]
    process = Process([sys.executable, "-m", "server.cli", *args], tmp_path)
    try:
        assert process.finish() == 2, process.output
        errors = [line for line in process.lines if line.startswith("obrol: error")]
        assert errors == [
            f"obrol: error: {key_file}: the master key does not match this database, whose "
            "data keys are wrapped by another master key (version 1): restore the right key "
            "file, or point master_key_file at it\n"
        ], process.output
        assert "Traceback" not in process.output
    finally:
        process.close()
