"""Server identity, health, and the error shape for requests no view handles."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import trio
from nacl.signing import SigningKey

from server.identity import KEY_FILE
from tests.harness import Harness, assert_error, start_harness


async def test_server_key_is_served_and_kept_private(server: Harness) -> None:
    response = await server.client.get("/.well-known/obrol/server-key")
    body = response.json()
    key_file = server.settings.data_dir / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    expected = bytes(SigningKey(key_file.read_bytes()).verify_key)
    assert base64.urlsafe_b64decode(body["public_key"] + "=") == expected
    assert body["algorithm"] == "ed25519"
    assert body["public_key"] == server.running.server_key


async def test_identity_survives_restart(database_url: str, tmp_path: Path) -> None:
    keys = []
    for _ in range(2):
        async with (
            trio.open_nursery() as nursery,
            start_harness(nursery, database_url, tmp_path) as harness,
        ):
            keys.append(harness.running.server_key)
    assert keys[0] == keys[1]


async def test_unknown_routes_and_methods(server: Harness) -> None:
    assert_error(await server.client.get("/v1/nope"), 404, "not_found")
    assert_error(await server.client.delete("/v1/login"), 405, "method_not_allowed")


async def test_oversized_body_is_refused(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    # A small limit keeps the body inside socket buffers: httpx writes a whole body
    # before it reads the (early) 413.
    async with start_harness(nursery, database_url, tmp_path, max_request_bytes=2048) as server:
        too_big = b"{" + b" " * 4096 + b"}"
        response = await server.client.post("/v1/login", content=too_big)
        assert_error(response, 413, "payload_too_large")
        assert (await server.client.get("/healthz")).status_code == 200


async def test_request_id_is_echoed_or_assigned(server: Harness) -> None:
    given = await server.client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert given.headers["X-Request-Id"] == "abc-123"
    assigned = await server.client.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})
    assert assigned.headers["X-Request-Id"] != "bad id with spaces"
    assert len(assigned.headers["X-Request-Id"]) == 16
