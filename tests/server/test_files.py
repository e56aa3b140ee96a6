"""File upload and download: membership, size limit, type checks, nothing kept on failure."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import trio

from protocol import Consent, Err, ErrorCode, FileBody, Send, Sent
from tests.harness import Harness, Session, assert_error, start_harness

BAD_NAMES = (
    "a\u0000b",
    "a\u001b[31mb",
    "a\nb",
    "a\u0085b",
    "invoice\u202efdp.exe",
    "a/b",
    "x" * 256,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200


async def group(server: Harness, owner: Session, *members: Session) -> str:
    response = await server.client.post(
        "/v1/conversations",
        headers=owner.headers,
        json={"kind": "group", "title": "Files", "member_ids": [m.id for m in members]},
    )
    return str(response.json()["id"])


def share(conversation: str, file_id: str, *scope: Session) -> Send:
    """A `file` message sharing the uploaded file with the conversation (or `scope`)."""
    return Send(
        cid=f"share-{uuid.uuid4()}",
        conv=uuid.UUID(conversation).bytes,
        body=FileBody(
            file_id=uuid.UUID(file_id).bytes, name="plan.png", size=len(PNG), mime="image/png"
        ),
        consent=Consent(
            purpose="media_share",
            scope=tuple(m.account_uuid.bytes for m in scope) or "conversation",
            retention="default",
        ),
    )


def stored_blobs(server: Harness) -> list[Path]:
    root = server.settings.data_dir / "files"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


async def test_upload_and_download_by_members_only(server: Harness) -> None:
    owner = await server.create_org()
    maria = await server.add_member(owner, "maria")
    ian = await server.add_member(owner, "ian")
    conversation = await group(server, owner, maria)
    response = await server.client.post(
        f"/v1/conversations/{conversation}/files?name=plan%20v2.png",
        headers={**owner.headers, "Content-Type": "image/png"},
        content=PNG,
    )
    assert response.status_code == 201, response.text
    record = response.json()
    assert (record["name"], record["size"], record["mime"]) == (
        "plan v2.png",
        len(PNG),
        "image/png",
    )
    assert record["sha256"] == hashlib.sha256(PNG).hexdigest()

    file_id = record["id"]
    # Uploaded, not yet shared: only the uploader reaches it.
    assert_error(
        await server.client.get(f"/v1/files/{file_id}", headers=maria.headers), 404, "not_found"
    )
    await server.grant(owner, "media_share")
    assert isinstance(await server.answer(owner, share(conversation, file_id)), Sent)
    download = await server.client.get(f"/v1/files/{file_id}", headers=maria.headers)
    assert download.status_code == 200 and download.content == PNG
    assert download.headers["Content-Type"] == "image/png"
    assert "attachment" in download.headers["Content-Disposition"]
    assert_error(
        await server.client.get(f"/v1/files/{record['id']}", headers=ian.headers), 404, "not_found"
    )
    # Uploading into a conversation you are not in is refused, and nothing is stored.
    response = await server.client.post(
        f"/v1/conversations/{conversation}/files?name=x.png",
        headers={**ian.headers, "Content-Type": "image/png"},
        content=PNG,
    )
    assert_error(response, 404, "not_found")
    assert len(stored_blobs(server)) == 1


async def test_a_file_shared_with_a_scope_downloads_only_inside_it(server: Harness) -> None:
    owner = await server.create_org()
    maria = await server.add_member(owner, "maria")
    ian = await server.add_member(owner, "ian")
    conversation = await group(server, owner, maria, ian)
    response = await server.client.post(
        f"/v1/conversations/{conversation}/files?name=plan.png",
        headers={**owner.headers, "Content-Type": "image/png"},
        content=PNG,
    )
    file_id = response.json()["id"]
    refused = await server.answer(owner, share(conversation, file_id, maria))
    assert isinstance(refused, Err) and refused.code == ErrorCode.CONSENT_NOT_GRANTED
    await server.grant(owner, "media_share")
    assert isinstance(await server.answer(owner, share(conversation, file_id, maria)), Sent)
    download = await server.client.get(f"/v1/files/{file_id}", headers=maria.headers)
    assert download.status_code == 200 and download.content == PNG
    assert_error(
        await server.client.get(f"/v1/files/{file_id}", headers=ian.headers), 404, "not_found"
    )


async def test_bad_uploads_leave_nothing_behind(server: Harness) -> None:
    owner = await server.create_org()
    conversation = await group(server, owner)
    url = f"/v1/conversations/{conversation}/files"
    cases = [
        (
            "?name=a.exe",
            "application/x-msdownload",
            b"MZ" + b"\x00" * 100,
            415,
            "unsupported_media_type",
        ),
        ("?name=fake.png", "image/png", b"GIF89a" + b"\x00" * 100, 415, "unsupported_media_type"),
        ("?name=tiny.pdf", "application/pdf", b"%P", 415, "unsupported_media_type"),
        ("?name=a%2Fb.png", "image/png", PNG, 422, "invalid_request"),
        ("", "image/png", PNG, 422, "invalid_request"),
    ]
    for query, mime, content, status, code in cases:
        response = await server.client.post(
            url + query, headers={**owner.headers, "Content-Type": mime}, content=content
        )
        assert_error(response, status, code)
    assert stored_blobs(server) == []


async def test_upload_size_limit(nursery: trio.Nursery, database_url: str, tmp_path: Path) -> None:
    async with start_harness(nursery, database_url, tmp_path, max_upload_bytes=4096) as server:
        owner = await server.create_org()
        conversation = await group(server, owner)

        async def stream() -> AsyncIterator[bytes]:
            for _ in range(8):
                yield b"\x00" * 1024

        response = await server.client.post(
            f"/v1/conversations/{conversation}/files?name=big.bin",
            headers={**owner.headers, "Content-Type": "application/octet-stream"},
            content=stream(),  # chunked: no Content-Length to refuse up front
        )
        assert_error(response, 413, "payload_too_large")
        assert stored_blobs(server) == []
        ok = await server.client.post(
            f"/v1/conversations/{conversation}/files?name=ok.bin",
            headers={**owner.headers, "Content-Type": "application/octet-stream"},
            content=b"\x01" * 4096,
        )
        assert ok.status_code == 201


HTML = b"<!doctype html><html><body><script>alert(document.cookie)</script></body></html>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
FTYP = b"\x00\x00\x00\x18ftyp"
ACCEPTED = [
    ("image/png", PNG, "image/png"),
    ("image/jpeg", b"\xff\xd8\xff\xe0" + bytes(40), "image/jpeg"),
    ("image/jpg", b"\xff\xd8\xff\xe0" + bytes(40), "image/jpeg"),
    ("image/gif", b"GIF89a" + bytes(40), "image/gif"),
    ("image/webp", b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(40), "image/webp"),
    ("image/heic", FTYP + b"heic" + bytes(40), "image/heic"),
    ("application/pdf", b"%PDF-1.7\n" + bytes(40), "application/pdf"),
    ("text/plain; charset=utf-8", b"hello\n", "text/plain"),
    ("text/plain", HTML, "text/plain"),  # inert: served as a sandboxed text attachment
    ("text/csv", b"a,b\n1,2\n", "text/csv"),
    ("video/mp4", FTYP + b"isom" + bytes(40), "video/mp4"),
    ("audio/x-m4a", FTYP + b"M4A " + bytes(40), "audio/mp4"),
    ("audio/aac", b"\xff\xf1\x50\x80" + bytes(40), "audio/aac"),
    ("audio/ogg", b"OggS" + bytes(40), "audio/ogg"),
    ("application/zip", b"PK\x03\x04" + bytes(40), "application/zip"),
    (
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        b"PK\x03\x04" + bytes(40),
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ),
    ("application/msword", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(40), "application/msword"),
    ("application/octet-stream", SVG, "application/octet-stream"),
]
REFUSED = [
    ("image/svg+xml", SVG),
    ("text/plain-html", HTML),
    ("image/x-anything", HTML),
    ("text/html", HTML),
    ("application/xhtml+xml", HTML),
    ("text/xml", SVG),
    ("application/javascript", b"alert(1)"),
    ("image/png", HTML),  # a declared type whose signature the bytes lack
    ("image/heic", FTYP + b"isom" + bytes(40)),
    ("video/mp4", HTML),
    ("", b"hello"),
]


async def test_only_allow_listed_types_are_accepted(server: Harness) -> None:
    owner = await server.create_org()
    conversation = await group(server, owner)
    url = f"/v1/conversations/{conversation}/files?name=upload"
    for mime, content in REFUSED:
        response = await server.client.post(
            url, headers={**owner.headers, "Content-Type": mime}, content=content
        )
        assert_error(response, 415, "unsupported_media_type")
    assert stored_blobs(server) == []
    for mime, content, stored in ACCEPTED:
        response = await server.client.post(
            url, headers={**owner.headers, "Content-Type": mime}, content=content
        )
        assert response.status_code == 201, (mime, response.text)
        assert response.json()["mime"] == stored


async def test_downloads_are_sandboxed_attachments(server: Harness) -> None:
    owner = await server.create_org()
    conversation = await group(server, owner)
    name = 'Laporan "Q3" \u2013 ringkasan.txt'
    response = await server.client.post(
        f"/v1/conversations/{conversation}/files",
        params={"name": name},
        headers={**owner.headers, "Content-Type": "text/plain"},
        content=HTML,
    )
    assert response.status_code == 201, response.text
    download = await server.client.get(f"/v1/files/{response.json()['id']}", headers=owner.headers)
    assert download.content == HTML
    assert download.headers["Content-Type"].startswith("text/plain")
    assert download.headers["Content-Disposition"] == (
        'attachment; filename="Laporan _Q3_ _ ringkasan.txt"; '
        "filename*=UTF-8''Laporan%20%22Q3%22%20%E2%80%93%20ringkasan.txt"
    )
    assert download.headers["X-Content-Type-Options"] == "nosniff"
    assert download.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"


async def test_a_stored_type_no_longer_allowed_is_served_as_binary(
    server: Harness, database_url: str
) -> None:
    owner = await server.create_org()
    conversation = await group(server, owner)
    response = await server.client.post(
        f"/v1/conversations/{conversation}/files?name=old.svg",
        headers={**owner.headers, "Content-Type": "application/octet-stream"},
        content=SVG,
    )
    file_id = response.json()["id"]

    async def as_if_uploaded_before_the_allow_list() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "UPDATE files SET mime = 'image/svg+xml' WHERE id = $1::uuid", file_id
            )
        finally:
            await conn.close()

    await trio.to_thread.run_sync(asyncio.run, as_if_uploaded_before_the_allow_list())
    download = await server.client.get(f"/v1/files/{file_id}", headers=owner.headers)
    assert download.headers["Content-Type"] == "application/octet-stream"
    assert download.headers["Content-Disposition"].startswith("attachment;")
    assert download.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"


async def test_upload_name_is_one_line_of_text(server: Harness) -> None:
    owner = await server.create_org()
    conversation = await server.group(owner)
    for bad in BAD_NAMES:
        response = await server.client.post(
            f"/v1/conversations/{conversation}/files",
            params={"name": bad},
            headers={**owner.headers, "Content-Type": "text/plain"},
            content=b"hello",
        )
        error = assert_error(response, 422, "invalid_request")
        assert error["details"][0]["field"] == "name"
