"""`python -m loadtest.fuzz_cli`: the long, hand-run gateway fuzz (issue 14's "done when").

Without `--url` it starts `obrol serve` of its own (a separate process, fresh embedded
database) and, at the end, requires that process to still be running and its log to hold no
connection failure (`internal error`) and no traceback. With `--url` it fuzzes that server
(which must allow org sign-up: it provisions an org of its own over REST).

Rounds of `--round` connections run one after another; after each, a normal device sends a
message that a second device of the same account must receive. Exit status 0 only if no
violation was seen, every round's check passed, and (own server) the process survived.
"""

from __future__ import annotations

import argparse
import os
import secrets
import ssl
import sys
import tempfile
import uuid
from pathlib import Path

import httpx
import trio
from nacl.signing import SigningKey

from loadtest.client import DeviceIdentity, client_ssl_context, connect
from loadtest.fuzz import FuzzReport, FuzzTarget, run_fuzz
from loadtest.localserver import local_server
from loadtest.provision import b64url, new_password, unb64url
from protocol import Msg, Send, Synced, TextBody


async def _login(api: httpx.AsyncClient, email: str, password: str) -> tuple[str, DeviceIdentity]:
    key = SigningKey.generate()
    response = await api.post(
        "/v1/login",
        json={
            "email": email,
            "password": password,
            "device": {
                "name": "fuzz",
                "platform": "linux",
                "public_key": b64url(bytes(key.verify_key)),
            },
        },
    )
    response.raise_for_status()
    body = response.json()
    server_key = unb64url((await api.get("/.well-known/obrol/server-key")).json()["public_key"])
    identity = DeviceIdentity(
        uuid.UUID(body["device"]["id"]), bytes(key) + bytes(key.verify_key), server_key
    )
    return body["access_token"], identity


async def provision(api_url: str, ssl_context: ssl.SSLContext) -> tuple[FuzzTarget, DeviceIdentity]:
    """An org of our own, its owner on two devices, and a group: the fuzzing device and the
    device that watches normal traffic still flow (the target's gateway URL is left empty).
    `ssl_context` verifies an https:// API."""
    tag = secrets.token_hex(4)
    email, password = f"fuzz-{tag}@fuzz.example", new_password()
    async with httpx.AsyncClient(base_url=api_url, timeout=30, verify=ssl_context) as api:
        created = await api.post(
            "/v1/orgs",
            json={
                "name": f"Fuzz {tag}",
                "owner": {
                    "account_name": f"fuzz{tag}",
                    "work_email": email,
                    "display_name": "Fuzz",
                    "password": password,
                },
            },
        )
        if created.status_code not in (201, 202):  # 202: sign-up answers without ids
            sys.exit(f"fuzz: cannot create an org ({created.status_code}): sign-up must be on")
        token, device = await _login(api, email, password)
        _, observer = await _login(api, email, password)
        conv = await api.post(
            "/v1/conversations",
            headers={"Authorization": f"Bearer {token}"},
            json={"kind": "group", "title": "fuzz", "member_ids": []},
        )
        conv.raise_for_status()
    return FuzzTarget("", device, uuid.UUID(conv.json()["id"]).bytes), observer


async def still_served(target: FuzzTarget, observer: DeviceIdentity, round_no: int) -> bool:
    """A normal send from the fuzzing device reaches the account's other device."""
    cid = f"alive-{round_no}"
    with trio.move_on_after(20):
        async with await connect(
            target.gateway_url, observer, ssl_context=target.ssl_context
        ) as watcher:
            # From the end of the stream; `synced` first, or the message could be taken
            # for one before that end.
            await watcher.sync(2**53 - 1)
            while not any(isinstance(f, Synced) for f in await watcher.receive()):
                pass
            async with await connect(
                target.gateway_url, target.device, ssl_context=target.ssl_context
            ) as sender:
                await sender.send(Send(cid=cid, conv=target.conv, body=TextBody(text="ok")))
                while True:
                    for frame in await watcher.receive():
                        if isinstance(frame, Msg) and frame.cid == cid:
                            return True
    return False


async def fuzz(args: argparse.Namespace, api_url: str, gateway_url: str) -> tuple[FuzzReport, bool]:
    """Rounds of fuzzing, each followed by a check that normal traffic still flows."""
    ca_file: Path | None = args.ca_file
    provisioned, observer = await provision(api_url, client_ssl_context(ca_file))
    target = FuzzTarget(
        gateway_url, provisioned.device, provisioned.conv, client_ssl_context(ca_file)
    )
    total = FuzzReport()
    healthy = True
    deadline = trio.current_time() + args.seconds if args.seconds else float("inf")
    round_no = 0
    while total.connections < args.connections and trio.current_time() < deadline:
        round_no += 1
        report = await run_fuzz(
            target,
            seed=args.seed * 1_000_003 + round_no,
            connections=min(args.round, args.connections - total.connections),
            seconds=max(deadline - trio.current_time(), 0.001) if args.seconds else None,
            concurrency=args.concurrency,
        )
        total.connections += report.connections
        total.steps += report.steps
        total.outcomes.update(report.outcomes)
        total.violations += report.violations
        alive = await still_served(target, observer, round_no)
        healthy = healthy and alive
        print(f"round {round_no}: {report.summary()}; normal traffic {'ok' if alive else 'FAILED'}")
        if not alive:
            break
    return total, healthy


async def amain(args: argparse.Namespace) -> int:
    if args.url:
        report, healthy = await fuzz(args, args.url.rstrip("/"), args.gateway_url)
        survived = log_clean = True  # not ours to watch
    else:
        folder = Path(tempfile.mkdtemp(prefix="obrol-fuzz-"))
        log_path = folder / "server.log"
        async with local_server(None, log_path) as server:
            report, healthy = await fuzz(args, server.api_url, server.gateway_url)
            survived = _running(server.pid)
        log = log_path.read_text(encoding="utf-8", errors="replace")
        log_clean = "internal error" not in log and "Traceback" not in log
        print(f"server log: {log_path}")
        print(f"server process survived: {survived}; log free of internal errors: {log_clean}")
    print(f"total: {report.summary()}")
    for line in report.violations[:20]:
        print("  " + line)
    return 0 if (not report.violations and healthy and survived and log_clean) else 1


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.fuzz_cli", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--connections", type=int, default=5_000, help="in all (5000)")
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long")
    parser.add_argument("--round", type=int, default=500, help="connections between checks")
    parser.add_argument("--concurrency", type=int, default=8, help="connections at a time")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--url", help="the HTTP API of a running server, http:// or https:// (else our own)"
    )
    parser.add_argument(
        "--gateway-url", help="its gateway, ws:// or wss://host:port/v1/ws (with --url)"
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        help="CA certificate (PEM) to trust for https:// and wss:// (default: system trust)",
    )
    args = parser.parse_args(argv)
    if args.url and not args.gateway_url:
        parser.error("--url needs --gateway-url")
    if args.ca_file is not None and not args.ca_file.is_file():
        parser.error(f"--ca-file: {args.ca_file} is not a readable file")
    return trio.run(amain, args)


if __name__ == "__main__":
    sys.exit(main())
