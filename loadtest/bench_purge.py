"""Delivery latency of a load test while the retention sweeper purges a large backlog, and
without the purge: the sweeper must not pause live traffic.

    .venv/bin/python -m loadtest.bench_purge --messages 1000000 --pairs 3 \\
        --dir /tmp/bench/ret -- --devices 500 --users 500 --groups 500:1 --rate 100 \\
        --arrival constant --duration 30 --workers 2 --quiet

Starts an embedded PostgreSQL (`--dir`/postgres) and `obrol serve` on it (open sign-up and
fast password hashing, as the tester's own server has), then seeds `--messages` messages
400 days old into one conversation of an organization of its own, straight with SQL (every
tenth with a read receipt), and runs the load test (`python -m loadtest --url ...` with the
arguments after `--`) in pairs: first with the backlog in place and no retention set
(baseline), then with that organization's retention set to 30 days as the load test starts,
so the sweeper purges the whole backlog while the devices send and receive. After each
purge run it waits for the backlog to be gone, deletes the tombstones the purge left (as
their retention would, later: they sit above every device's cursor, and each device's next
catch-up would step over all of them, minutes for the 500 devices; BENCHMARKS.md) and seeds
it again. The first run of all only provisions the load test's population and is not
counted.

With `--cancel` the backlog is instead the messages one account sent (a member of that
organization, with a device and a password), and the purge run cancels that account as the
load test starts: a password login (a fresh re-authentication) and `DELETE /v1/me`, after
which the sweeper's `cancelled_accounts` rule erases its messages in stream-locked batches,
each message leaving a tombstone, then the rest of the account. Every seed makes a new
such account (the purge deletes the old one).

Prints, per run, the delivery latency p50/p99, deliveries per second, the loss check, the
server's CPU, and for purge runs when the purge ran relative to the send phase; then the
medians and the ratio of the purge p99 to the baseline p99.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgpack
import trio
from nacl.pwhash import argon2id
from nacl.signing import SigningKey

from loadtest.localserver import LocalServer, local_server
from loadtest.procstats import tree_cpu_s
from storage.embedded import EmbeddedPostgres
from storage.stream import STREAM_LOCK_KEY

OPERATOR_TOKEN = "bench-purge-operator-token-0123456789"
BACKLOG_AGE_DAYS = 400
RETENTION_DAYS = 30
POLL_S = 0.25
PURGER_PASSWORD = "Purge-Bench-Password-42"


@dataclass
class Purger:
    """The account a `--cancel` backlog belongs to: it logs in and cancels itself."""

    account_id: uuid.UUID
    email: str
    key: SigningKey


@dataclass
class Backlog:
    org_id: uuid.UUID
    conversation_id: uuid.UUID
    first_pos: int = 0  # the backlog's stream positions start here (set by the first seed)
    purger: Purger | None = None  # --cancel: a new one every seed


@dataclass
class RunResult:
    kind: str  # "baseline" or "purge"
    p50_ms: float
    p99_ms: float
    deliveries_per_s: float
    loss_check: str
    server_cpu_s: float
    send_window_s: tuple[float, float] | None  # from the load test's launch
    purge_window_s: tuple[float, float] | None = None  # first and last erasure seen
    purged: int = 0
    purged_sending: int = 0  # of which while the load test was sending
    notes: list[str] = field(default_factory=list)


async def _sql(url: str, fn: Any, *args: Any) -> Any:
    def run() -> Any:
        async def inner() -> Any:
            conn = await asyncpg.connect(url)
            try:
                return await fn(conn, *args)
            finally:
                await conn.close()

        return asyncio.run(inner())

    return await trio.to_thread.run_sync(run)


async def _add_purger(conn: Any, backlog: Backlog) -> None:
    """--cancel: a member of the backlog's organization, with a password, one device (a key
    it can log in with) and a seat in the backlog's group; it sends the backlog."""
    account, device, key = uuid.uuid4(), uuid.uuid4(), SigningKey.generate()
    email = f"purger-{account}@bench.example"
    hashed = argon2id.str(PURGER_PASSWORD.encode(), argon2id.OPSLIMIT_MIN, argon2id.MEMLIMIT_MIN)
    async with conn.transaction():
        await conn.execute(
            """INSERT INTO accounts (id, org_id, account_name, work_email, display_name,
                   role, password_hash) VALUES ($1, $2, $3, $4, 'Purger', 'member', $5)""",
            account,
            backlog.org_id,
            f"purger-{account.hex[:12]}",
            email,
            hashed,
        )
        await conn.execute(
            """INSERT INTO devices (id, account_id, name, platform, public_key)
               VALUES ($1, $2, 'bench', 'linux', $3)""",
            device,
            account,
            bytes(key.verify_key),
        )
        await conn.execute(
            """INSERT INTO conversation_members (conversation_id, account_id, role,
                   joined_pos) VALUES ($1, $2, 'member', 0)""",
            backlog.conversation_id,
            account,
        )
    backlog.purger = Purger(account, email, key)


async def _seed(conn: Any, backlog: Backlog | None, messages: int, cancel: bool) -> Backlog:
    """An organization with one owner, device and group (first time), and `messages` text
    messages 400 days old in that group, a read receipt on every tenth: sent by the owner,
    or with `cancel` by a new member of its own (`_add_purger`). Seeding again puts them
    back at the stream positions of the first seed (purged, so free): below every device's
    cursor, as old messages are, so no device's catch-up has to step over them."""
    if backlog is None:
        backlog = Backlog(uuid.uuid4(), uuid.uuid4())
        account, device = uuid.uuid4(), uuid.uuid4()
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO orgs (id, name) VALUES ($1, 'purge backlog')", backlog.org_id
            )
            await conn.execute(
                """INSERT INTO accounts (id, org_id, account_name, work_email, display_name,
                       role, password_hash) VALUES ($1, $2, 'purger', $3, 'Purger', 'owner',
                       '\\x00'::bytea)""",
                account,
                backlog.org_id,
                f"purger-{account}@bench.example",
            )
            await conn.execute(
                """INSERT INTO devices (id, account_id, name, platform, public_key)
                   VALUES ($1, $2, 'bench', 'linux', $3)""",
                device,
                account,
                os.urandom(32),
            )
            await conn.execute(
                """INSERT INTO conversations (id, org_id, kind, title, created_by)
                   VALUES ($1, $2, 'group', 'backlog', $3)""",
                backlog.conversation_id,
                backlog.org_id,
                account,
            )
            await conn.execute(
                """INSERT INTO conversation_members (conversation_id, account_id, role,
                       joined_pos) VALUES ($1, $2, 'owner', 0)""",
                backlog.conversation_id,
                account,
            )
    if cancel:
        await _add_purger(conn, backlog)
    row = await conn.fetchrow(
        """SELECT c.last_seq, m.account_id, d.id AS device_id FROM conversations c
           JOIN conversation_members m ON m.conversation_id = c.id
           JOIN devices d ON d.account_id = m.account_id
           WHERE c.id = $1 AND (m.account_id = $2 OR ($2::uuid IS NULL AND m.role = 'owner'))""",
        backlog.conversation_id,
        backlog.purger.account_id if backlog.purger else None,
    )
    body = msgpack.packb({"text": "an old message the retention period has passed"})
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", STREAM_LOCK_KEY)
        await conn.execute(
            """INSERT INTO messages (id, conversation_id, seq, pos, sender_id,
                   sender_device_id, client_id, kind, body, sent_at)
               SELECT gen_random_uuid(), $1, $2 + i,
                      CASE WHEN $8 = 0 THEN nextval('stream_pos') ELSE $8 + i - 1 END,
                      $3, $4, 'seed-' || ($2 + i), 'text', $5,
                      now() - $6 * interval '1 day' + i * interval '1 millisecond'
               FROM generate_series(1, $7) AS i ORDER BY i""",
            backlog.conversation_id,
            row["last_seq"],
            row["account_id"],
            row["device_id"],
            body,
            BACKLOG_AGE_DAYS,
            messages,
            backlog.first_pos,
        )
        if backlog.first_pos == 0:
            backlog.first_pos = await conn.fetchval(
                "SELECT min(pos) FROM messages WHERE conversation_id = $1",
                backlog.conversation_id,
            )
        await conn.execute(
            """INSERT INTO message_receipts (message_id, conversation_id, account_id,
                   device_id, status, at)
               SELECT id, conversation_id, sender_id, sender_device_id, 'read', sent_at
               FROM messages WHERE conversation_id = $1 AND seq > $2 AND seq % 10 = 0""",
            backlog.conversation_id,
            row["last_seq"],
        )
        await conn.execute(
            "UPDATE conversations SET last_seq = last_seq + $2 WHERE id = $1",
            backlog.conversation_id,
            messages,
        )
    await conn.execute("VACUUM ANALYZE messages")
    await conn.execute("VACUUM ANALYZE message_receipts")
    return backlog


async def _left(conn: Any, backlog: Backlog) -> int:
    """Messages of the backlog still stored, plus 1 while a cancelled purger's account row
    is (its purge ends with it)."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM messages WHERE conversation_id = $1", backlog.conversation_id
    )
    if backlog.purger:
        count += await conn.fetchval(
            "SELECT count(*) FROM accounts WHERE id = $1", backlog.purger.account_id
        )
    return count


async def _drop_tombstones(conn: Any, backlog: Backlog) -> int:
    dropped: str = await conn.execute(
        "DELETE FROM tombstones WHERE conversation_id = $1", backlog.conversation_id
    )
    return int(dropped.rsplit(maxsplit=1)[-1])


async def _set_retention(conn: Any, backlog: Backlog, days: int | None) -> None:
    await conn.execute(
        "UPDATE orgs SET message_retention_days = $2 WHERE id = $1", backlog.org_id, days
    )


async def _erased_so_far(client: httpx.AsyncClient, rule: str) -> int:
    response = await client.get(
        "/v1/operator/retention", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    )
    response.raise_for_status()
    totals = response.json()["sweeper"]["erased_since_start"]
    rows: int = totals.get(rule, {}).get("rows", 0)
    return rows


async def _cancel(client: httpx.AsyncClient, purger: Purger) -> None:
    """The purger logs in with its password (a fresh re-authentication) and cancels its
    account (README, "Account cancellation")."""
    login = await client.post(
        "/v1/login",
        json={
            "email": purger.email,
            "password": PURGER_PASSWORD,
            "device": {
                "name": "bench",
                "platform": "linux",
                "public_key": base64.urlsafe_b64encode(bytes(purger.key.verify_key))
                .rstrip(b"=")
                .decode(),
            },
        },
    )
    login.raise_for_status()
    token = login.json()["access_token"]
    cancelled = await client.request(
        "DELETE",
        "/v1/me",
        json={"confirm": purger.email},
        headers={"Authorization": f"Bearer {token}"},
    )
    if cancelled.status_code != 202:
        raise RuntimeError(f"DELETE /v1/me: {cancelled.status_code} {cancelled.text}")


async def _run_loadtest(
    server: LocalServer, folder: Path, args: list[str], *, kind: str, url: str, backlog: Backlog
) -> RunResult:
    report_dir = folder / f"report-{kind}-{int(time.time())}"
    command = [
        sys.executable,
        "-m",
        "loadtest",
        "--url",
        server.api_url,
        "--gateway-url",
        server.gateway_url,
        "--cache",
        str(folder / "provisioning.json"),
        "--report",
        str(report_dir),
        *args,
    ]
    rule = "cancelled_accounts" if backlog.purger else "org_messages"
    erasures: list[tuple[float, int]] = []
    cpu_before = tree_cpu_s(server.pid) or 0.0
    launched = time.time()
    async with (
        httpx.AsyncClient(base_url=server.api_url, timeout=10) as client,
        trio.open_nursery() as nursery,
    ):
        done = trio.Event()

        async def watch() -> None:
            while not done.is_set():
                erasures.append((time.time() - launched, await _erased_so_far(client, rule)))
                with trio.move_on_after(POLL_S):
                    await done.wait()

        nursery.start_soon(watch)
        if kind == "purge" and backlog.purger:
            await _cancel(client, backlog.purger)
        elif kind == "purge":
            await _sql(url, _set_retention, backlog, RETENTION_DAYS)
        try:
            await trio.run_process(command, stdout=subprocess.DEVNULL, check=False)
        finally:
            done.set()
    cpu = (tree_cpu_s(server.pid) or 0.0) - cpu_before
    report = json.loads((report_dir / "report.json").read_text())
    timeline = report.get("timeline_s") or {}
    started = report.get("started_at")
    offset = 0.0
    if started:
        offset = datetime.fromisoformat(started).timestamp() - launched
    send = timeline.get("send")
    drain = timeline.get("drain")
    window = None if send is None or drain is None else (offset + send, offset + drain)
    result = RunResult(
        kind=kind,
        p50_ms=report["latency_ms"]["p50"],
        p99_ms=report["latency_ms"]["p99"],
        deliveries_per_s=report["deliveries_per_s"],
        loss_check=report["loss_check"],
        server_cpu_s=round(cpu, 1),
        send_window_s=window,
    )
    first = erasures[0][1] if erasures else 0
    moved = [t for (t, n), (_, before) in zip(erasures[1:], erasures, strict=False) if n > before]
    if moved:
        result.purge_window_s = (round(moved[0] - POLL_S, 1), round(moved[-1], 1))
    result.purged = (erasures[-1][1] - first) if erasures else 0
    if window and erasures:
        during = [n for t, n in erasures if window[0] <= t <= window[1]]
        if during:
            result.purged_sending = during[-1] - during[0]
    return result


def _show(r: RunResult) -> str:
    text = (
        f"{r.kind:<8} p50 {r.p50_ms:8.1f} ms  p99 {r.p99_ms:8.1f} ms  "
        f"{r.deliveries_per_s:9.0f} deliveries/s  {r.loss_check:<10} server CPU {r.server_cpu_s} s"
    )
    if r.send_window_s:
        text += f"  send {r.send_window_s[0]:.1f}-{r.send_window_s[1]:.1f} s"
    if r.kind == "purge":
        window = r.purge_window_s
        text += f"  purged {r.purged} ({r.purged_sending} while sending)" + (
            f" in {window[0]:.1f}-{window[1]:.1f} s" if window else " (nothing seen)"
        )
        if window and r.send_window_s:
            send_s = r.send_window_s[1] - r.send_window_s[0]
            overlap = min(window[1], r.send_window_s[1]) - max(window[0], r.send_window_s[0])
            text += f" ({max(overlap, 0) / send_s:.0%} of the send phase)"
    return text


def _prepare(folder: Path, fresh: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o711)  # as root, PostgreSQL runs as another user
    if fresh:
        for name in ("postgres", "clusters", "data", "provisioning.json"):
            path = folder / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


async def _until_gone(url: str, backlog: Backlog) -> None:
    while True:
        if not await _sql(url, _left, backlog):
            return
        await trio.sleep(1)


async def main(options: argparse.Namespace, loadtest_args: list[str]) -> int:
    folder: Path = options.dir
    await trio.to_thread.run_sync(_prepare, folder, options.fresh)
    pg = EmbeddedPostgres(folder / "postgres", shared_root=folder / "clusters")
    url = await trio.to_thread.run_sync(pg.start)
    try:
        settings = {
            "OBROL_DATABASE_URL": url,
            "OBROL_OPERATOR_TOKEN": OPERATOR_TOKEN,
            "OBROL_POSTGRES_SHARED_DIR": str(folder / "clusters"),
        }
        async with local_server(folder / "data", folder / "server.log", settings=settings) as srv:
            print(f"server {srv.api_url} (pid {srv.pid}); seeding {options.messages} messages")
            backlog = await _sql(url, _seed, None, options.messages, options.cancel)
            warm = await _run_loadtest(
                srv, folder, loadtest_args, kind="warm-up", url=url, backlog=backlog
            )
            print("(not counted)", _show(warm))
            results: list[RunResult] = []
            for _ in range(options.pairs):
                for kind in ("baseline", "purge"):
                    result = await _run_loadtest(
                        srv, folder, loadtest_args, kind=kind, url=url, backlog=backlog
                    )
                    results.append(result)
                    print(_show(result), flush=True)
                started = time.monotonic()
                await _until_gone(url, backlog)
                dropped = await _sql(url, _drop_tombstones, backlog)
                print(
                    f"(backlog gone {time.monotonic() - started:.0f} s after the run; "
                    f"{dropped} tombstones dropped)"
                )
                await _sql(url, _set_retention, backlog, None)
                await _sql(url, _seed, backlog, options.messages, options.cancel)
    finally:
        await trio.to_thread.run_sync(pg.stop)
    base = [r.p99_ms for r in results if r.kind == "baseline"]
    purge = [r.p99_ms for r in results if r.kind == "purge"]
    b, p = statistics.median(base), statistics.median(purge)
    print(f"median p99: baseline {b:.1f} ms, purge {p:.1f} ms, ratio {p / b:.2f}")
    return 0


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_purge", description=__doc__)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--pairs", type=int, default=3, help="baseline + purge runs")
    parser.add_argument("--dir", type=Path, required=True, help="e.g. /tmp/bench/ret")
    parser.add_argument("--fresh", action="store_true", help="a new database and population")
    parser.add_argument(
        "--cancel",
        action="store_true",
        help="the backlog is one account's messages, purged by cancelling that account",
    )
    if "--" in argv:
        split = argv.index("--")
        return parser.parse_args(argv[:split]), argv[split + 1 :]
    return parser.parse_args(argv), []


if __name__ == "__main__":
    opts, rest = parse(sys.argv[1:])
    sys.exit(trio.run(main, opts, rest))
