"""A data export of a large account: time to a ready archive and the server's memory.

Starts its own server on a fresh data folder, signs an organization up, then gives its
owner `--messages` text messages (sent over the gateway, `--batch` frames at a time) and
`--files` files of `--file-mb` MB each (random bytes, streamed up), confirms the password
and asks for an export of the owner's data. While the job runs it shows a progress bar
from the job's own progress and samples the server's resident memory (VmRSS) every 0.2 s;
it reports the time from the request to `ready`, the memory before and the peak during the
export, and then downloads the archive (streamed) and checks its size. The data folder
(over 2 GB at the defaults) is removed at the end unless `--keep`. Run::

    .venv/bin/python -m loadtest.bench_export                 # 100k messages, 1 GB of files
    .venv/bin/python -m loadtest.bench_export --messages 10000 --files 1   # a small one
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import trio
from nacl.signing import SigningKey

from loadtest import procstats
from loadtest.client import DeviceIdentity, connect
from loadtest.localserver import local_server
from loadtest.provision import b64url
from protocol import Send, Sent, TextBody

PASSWORD = "Sunny-Harbour-42"
CHUNK = 1024 * 1024
MB = 1_000_000


async def _owner(client: httpx.AsyncClient) -> tuple[dict[str, str], uuid.UUID, SigningKey]:
    email = "export@bench.example"
    response = await client.post(
        "/v1/orgs",
        json={
            "name": "Bench",
            "owner": {
                "account_name": "export",
                "work_email": email,
                "display_name": "Export",
                "password": PASSWORD,
            },
        },
    )
    if response.status_code != 202:
        raise SystemExit(f"sign-up refused: {response.text}")
    key = SigningKey.generate()
    device = {"name": "bench", "platform": "linux", "public_key": b64url(bytes(key.verify_key))}
    response = await client.post(
        "/v1/login", json={"email": email, "password": PASSWORD, "device": device}
    )
    response.raise_for_status()
    body = response.json()
    return (
        {"Authorization": f"Bearer {body['access_token']}"},
        uuid.UUID(body["device"]["id"]),
        key,
    )


async def _send_messages(
    url: str, identity: DeviceIdentity, conv: uuid.UUID, count: int, batch: int
) -> None:
    async with await connect(url, identity) as gateway:
        sent = 0
        while sent < count:
            n = min(batch, count - sent)
            frames = [
                Send(
                    cid=f"m{sent + i}",
                    conv=conv.bytes,
                    body=TextBody(text=f"benchmark message {sent + i}: " + "lorem ipsum " * 6),
                )
                for i in range(n)
            ]
            await gateway.send(*frames)
            acked = 0
            while acked < n:
                for frame in await gateway.receive():
                    if isinstance(frame, Sent):
                        acked += 1
                    elif type(frame).__name__ == "Err":
                        raise SystemExit(f"a message was refused: {frame}")
            sent += n
            _bar("messages", sent, count)
    print(file=sys.stderr)


def _bar(what: str, done: int, total: int, extra: str = "") -> None:
    width = 40
    filled = width * done // max(total, 1)
    line = f"\r{what:>9} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {extra}"
    print(line, end="", file=sys.stderr, flush=True)


async def _seed_files(
    client: httpx.AsyncClient, headers: dict[str, str], conv: uuid.UUID, args: argparse.Namespace
) -> None:
    file_bytes = args.file_mb * MB
    seed = os.urandom(CHUNK)

    async def content(n: int) -> AsyncIterator[bytes]:
        left = file_bytes
        while left:
            piece = min(CHUNK, left)
            yield n.to_bytes(4, "big") + os.urandom(28) + seed[32:piece]
            left -= piece

    began = time.perf_counter()
    for n in range(args.files):
        response = await client.post(
            f"/v1/conversations/{conv}/files?name=big-{n}.bin",
            headers={**headers, "Content-Type": "application/octet-stream"},
            content=content(n),
        )
        response.raise_for_status()
        _bar("files", n + 1, args.files)
    print(file=sys.stderr)
    print(f"seeded {args.files} files of {args.file_mb} MB in {time.perf_counter() - began:.1f} s")


async def _watch_export(
    client: httpx.AsyncClient, headers: dict[str, str], pid: int
) -> dict[str, Any]:
    """Ask for the export and follow it to the end, sampling the server's memory."""
    before = procstats.sample(pid)
    assert before is not None
    peak_rss = before.rss_mb
    began = time.perf_counter()
    response = await client.post("/v1/me/exports", headers=headers)
    response.raise_for_status()
    export_id = response.json()["id"]
    while True:
        job: dict[str, Any] = (
            await client.get(f"/v1/me/exports/{export_id}", headers=headers)
        ).json()
        now = procstats.sample(pid)
        if now is not None:
            peak_rss = max(peak_rss, now.rss_mb)
        p = job["progress"]
        total = (p["items_total"] or 0) + (p["bytes_total"] or 0) // CHUNK
        done = p["items_done"] + p["bytes_done"] // CHUNK
        _bar("export", done, total, f"{job['status']} rss {peak_rss:.0f} MB")
        if job["status"] in ("ready", "failed"):
            break
        await trio.sleep(0.2)
    took = time.perf_counter() - began
    after = procstats.sample(pid)
    assert after is not None
    print(file=sys.stderr)
    if job["status"] != "ready":
        raise SystemExit(f"the export failed: {job['error']}")
    print(
        f"export ready in {took:.1f} s: {job['archive_bytes'] / MB:.0f} MB archive, server "
        f"CPU {after.cpu_s - before.cpu_s:.1f} s; server RSS before {before.rss_mb:.0f} MB, "
        f"peak during the export {peak_rss:.0f} MB (+{peak_rss - before.rss_mb:.0f} MB)"
    )
    return job


async def run(args: argparse.Namespace) -> None:
    data_dir = args.folder / "data"
    file_bytes = args.file_mb * MB
    settings = {
        "OBROL_GATEWAY_FRAMES_PER_S": "1000000",
        "OBROL_GATEWAY_FRAME_BURST": "100000",
        "OBROL_MAX_UPLOAD_BYTES": str(file_bytes + CHUNK),
        "OBROL_EXPORT_POLL_INTERVAL_S": "0.2",
        "OBROL_REAUTH_WINDOW_S": "3600",
    }
    async with (
        local_server(data_dir, data_dir.parent / "server.log", settings=settings) as srv,
        httpx.AsyncClient(base_url=srv.api_url, timeout=600) as client,
    ):
        headers, device_id, key = await _owner(client)
        response = await client.post(
            "/v1/conversations",
            headers=headers,
            json={"kind": "group", "title": "b", "member_ids": []},
        )
        response.raise_for_status()
        conv = uuid.UUID(response.json()["id"])
        server_key = base64.urlsafe_b64decode(srv.server_key + "=")
        identity = DeviceIdentity(device_id, bytes(key) + bytes(key.verify_key), server_key)
        began = time.perf_counter()
        await _send_messages(srv.gateway_url, identity, conv, args.messages, args.batch)
        print(f"seeded {args.messages} messages in {time.perf_counter() - began:.1f} s")

        await _seed_files(client, headers, conv, args)

        response = await client.post("/v1/me/reauth", headers=headers, json={"password": PASSWORD})
        response.raise_for_status()
        job = await _watch_export(client, headers, srv.pid)
        began = time.perf_counter()
        got = 0
        async with client.stream("GET", job["download"]["url"]) as download:
            download.raise_for_status()
            async for chunk in download.aiter_bytes():
                got += len(chunk)
        assert got == job["archive_bytes"], (got, job["archive_bytes"])
        print(f"downloaded {got / MB:.0f} MB in {time.perf_counter() - began:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the data folder")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--file-mb", type=int, default=100)
    parser.add_argument("--batch", type=int, default=250)
    args = parser.parse_args()
    args.folder = Path(tempfile.mkdtemp(prefix="obrol-bench-export-"))
    try:
        trio.run(run, args)
    finally:
        if not args.keep:
            shutil.rmtree(args.folder, ignore_errors=True)


if __name__ == "__main__":
    main()
