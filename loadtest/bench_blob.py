"""One large file through the server: upload and download time, server CPU, peak memory.

Starts its own server on a fresh data folder, signs an organization up, then uploads a file
of `--megabytes` random bytes into a conversation and downloads it again, both streamed,
`--rounds` times. Reports the server's CPU time and its peak resident memory (VmHWM) after
start-up and after the transfers: with blobs sealed in frames, memory stays flat whatever
the file's size. Run::

    .venv/bin/python -m loadtest.bench_blob --megabytes 100
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import trio
from nacl.signing import SigningKey

from loadtest import procstats
from loadtest.localserver import local_server
from loadtest.provision import b64url

CHUNK = 1024 * 1024
PASSWORD = "Sunny-Harbour-42"


async def _session(client: httpx.AsyncClient) -> tuple[dict[str, str], str]:
    """An owner's auth headers and a group conversation of theirs."""
    email = "blob@bench.example"
    response = await client.post(
        "/v1/orgs",
        json={
            "name": "Bench",
            "owner": {
                "account_name": "blob",
                "work_email": email,
                "display_name": "Blob",
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
    headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
    response = await client.post(
        "/v1/conversations", headers=headers, json={"kind": "group", "title": "b", "member_ids": []}
    )
    response.raise_for_status()
    return headers, str(response.json()["id"])


async def run(args: argparse.Namespace) -> None:
    size = args.megabytes * CHUNK
    seed = os.urandom(CHUNK)

    async def content() -> AsyncIterator[bytes]:
        for i in range(args.megabytes):
            yield hashlib.sha256(i.to_bytes(4, "big")).digest() + seed[32:]

    data_dir = Path(tempfile.mkdtemp(prefix="obrol-bench-blob-")) / "data"
    async with (
        local_server(data_dir, data_dir.parent / "server.log") as srv,
        httpx.AsyncClient(base_url=srv.api_url, timeout=600) as client,
    ):
        headers, conv = await _session(client)
        started = procstats.sample(srv.pid)
        assert started is not None
        print(f"server after start-up: peak RSS {started.peak_rss_mb:.1f} MB")
        for _ in range(args.rounds):
            before = procstats.sample(srv.pid)
            began = time.perf_counter()
            response = await client.post(
                f"/v1/conversations/{conv}/files?name=big.bin",
                headers={**headers, "Content-Type": "application/octet-stream"},
                content=content(),
            )
            response.raise_for_status()
            uploaded = time.perf_counter()
            got = 0
            async with client.stream(
                "GET", f"/v1/files/{response.json()['id']}", headers=headers
            ) as download:
                async for chunk in download.aiter_bytes():
                    got += len(chunk)
            done = time.perf_counter()
            after = procstats.sample(srv.pid)
            assert before is not None and after is not None and got == size
            print(
                f"{args.megabytes} MB: upload {uploaded - began:.2f} s, download "
                f"{done - uploaded:.2f} s, server CPU {after.cpu_s - before.cpu_s:.2f} s, "
                f"peak RSS {after.peak_rss_mb:.1f} MB"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    trio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
