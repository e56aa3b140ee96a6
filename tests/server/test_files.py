"""File upload and download: membership, size limit, type checks, nothing kept on failure."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from tests.harness import Harness, Session, assert_error, start_harness

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200


async def group(server: Harness, owner: Session, *members: Session) -> str:
    response = await server.client.post(
        "/v1/conversations",
        headers=owner.headers,
        json={"kind": "group", "title": "Files", "member_ids": [m.id for m in members]},
    )
    return str(response.json()["id"])


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

    download = await server.client.get(f"/v1/files/{record['id']}", headers=maria.headers)
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
