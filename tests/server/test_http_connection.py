"""Keep-alive connections on the HTTP API, over raw sockets: a request answered before its body
was read (413 up front, 401 on an upload) ends its connection cleanly - never a hang."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import trio
from trio import fail_after

from tests.harness import Harness, assert_error, start_harness

BOUND_S = 10  # far longer than any answer takes; a hang fails the test instead of stalling it
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class RawConnection:
    """One TCP connection to the API that reads whole responses, and notices EOF."""

    stream: trio.SocketStream
    buffer: bytearray = field(default_factory=bytearray)
    closed: bool = False

    async def _fill(self) -> bool:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            self.closed = True
        self.buffer += chunk
        return bool(chunk)

    async def reply(self) -> Reply | None:
        """The next whole response, or None if the server closed the connection first."""
        while b"\r\n\r\n" not in self.buffer:
            if not await self._fill():
                assert not self.buffer, bytes(self.buffer)  # no half response before EOF
                return None
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines)}
        length = int(headers.get("content-length", "0"))
        self.buffer[:] = rest
        while len(self.buffer) < length:
            assert await self._fill(), "the connection closed inside a response body"
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return Reply(int(status_line.split()[1]), headers, body)

    async def closes(self) -> None:
        """The server closes the connection (EOF) without sending anything more."""
        while await self._fill():
            pass
        assert not self.buffer, bytes(self.buffer)


@asynccontextmanager
async def connect(server: Harness) -> AsyncIterator[RawConnection]:
    """A raw connection; everything done with it must end within BOUND_S."""
    parts = urlsplit(server.running.api_url or "")
    assert parts.hostname is not None and parts.port is not None
    with fail_after(BOUND_S):
        async with await trio.open_tcp_stream(parts.hostname, parts.port) as stream:
            yield RawConnection(stream)


def post(
    path: str, length: int, *, token: str = "", content_type: str = "application/json"
) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def answered_or_closed(connection: RawConnection) -> None:
    """The request after a refused one is answered, or the connection closes cleanly."""
    reply = await connection.reply()
    assert reply is None or reply.status == 200, reply


async def test_oversized_body_refused_up_front_closes_the_connection(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with start_harness(
        nursery, database_url, tmp_path, max_request_bytes=2048, max_upload_bytes=8192
    ) as server:
        owner = await server.create_org()
        conversation = await server.group(owner)
        upload = f"/v1/conversations/{conversation}/files?name=big.bin"
        for request in (
            post("/v1/login", 100_000),
            post(upload, 100_000, token=owner.access_token, content_type="text/plain"),
        ):
            # Headers only (a client that waits for an early answer before sending a body),
            # then the next request on the same connection.
            async with connect(server) as connection:
                await connection.stream.send_all(request + HEALTH)
                reply = await connection.reply()
                assert reply is not None and reply.status == 413, reply
                assert reply.headers["connection"] == "close"
                await connection.closes()
            # The whole body sent, then the next request: answered or closed, never a hang.
            async with connect(server) as connection:
                await connection.stream.send_all(request + b"x" * 3000 + HEALTH)
                reply = await connection.reply()
                assert reply is not None and reply.status == 413, reply
                await answered_or_closed(connection)


async def test_early_answer_on_an_upload_closes_the_connection(server: Harness) -> None:
    owner = await server.create_org()
    conversation = await server.group(owner)
    async with connect(server) as connection:
        # No token: refused (401) before a byte of the body is read.
        request = post(
            f"/v1/conversations/{conversation}/files?name=a.txt", 5000, content_type="text/plain"
        )
        await connection.stream.send_all(request + b"y" * 100)
        reply = await connection.reply()
        assert reply is not None and reply.status == 401, reply
        assert reply.headers["connection"] == "close"
        await connection.closes()


async def test_keep_alive_still_serves_many_requests(server: Harness) -> None:
    owner = await server.create_org()
    body = b'{"display_name": "Olive"}'
    patch = (
        f"PATCH /v1/me HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {owner.access_token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    async with connect(server) as connection:
        for request in (HEALTH, patch, HEALTH, patch, HEALTH):
            await connection.stream.send_all(request)
            reply = await connection.reply()
            assert reply is not None and reply.status == 200, reply
            assert "connection" not in reply.headers
        assert not connection.closed


async def test_an_httpx_client_carries_on_after_a_413(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with start_harness(nursery, database_url, tmp_path, max_request_bytes=2048) as server:
        api = server.running.api_url
        async with httpx.AsyncClient(base_url=api or "", timeout=BOUND_S) as client:
            with fail_after(BOUND_S):
                assert (await client.get("/healthz")).status_code == 200
                response = await client.post(
                    "/v1/login",
                    content=b"{" + b" " * 4096 + b"}",
                    headers={"Content-Type": "application/json"},
                )
                assert_error(response, 413, "payload_too_large")
                assert response.headers["Connection"] == "close"
                for _ in range(3):
                    assert (await client.get("/healthz")).status_code == 200
