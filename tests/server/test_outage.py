"""A database outage under live traffic: PostgreSQL stopped (`pg_ctl stop -m immediate`)
while devices send, then started again. The server stays up, sends are answered
`unavailable` (and retried with their cid), HTTP answers 503 `database_unavailable`,
/healthz follows the database, and no acknowledged message is lost or stored twice."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
import trio
from nacl.signing import SigningKey

from loadtest.client import ConnectionClosedError, GatewayClient
from protocol import Ack, Err, ErrorCode, Msg, Send, Sent, Synced, TextBody
from server.app import as_api_error
from server.errors import ApiErrorCode
from storage.errors import DatabaseUnavailableError, NotFoundError
from tests.harness import PASSWORD, Harness, Session, assert_error, b64, start_harness
from tests.stoppable import stoppable_postgres

WINDOW = 4  # sends a device keeps in flight
PACE_S = 0.02  # at most one new send per device this often
RETRY_AFTER_S = 0.2  # an `unavailable` send is retried (same cid) after this


@dataclass
class Sender:
    """A device sending continuously as an app would: a few sends in flight, each one
    retried with its cid after `unavailable` until acknowledged."""

    name: str
    client: GatewayClient
    conv: uuid.UUID
    device_id: uuid.UUID
    progress: Progress
    sends: dict[str, Send] = field(default_factory=dict)
    in_flight: set[str] = field(default_factory=set)
    retry_at: dict[str, float] = field(default_factory=dict)
    acked: dict[str, bytes] = field(default_factory=dict)  # cid -> message id
    conflicting_acks: list[str] = field(default_factory=list)
    unavailable: int = 0
    other_errors: list[Err] = field(default_factory=list)
    closed: ConnectionClosedError | None = None
    highest_pos: int = 0
    received: list[Msg] = field(default_factory=list)  # live `msg` frames, as they came

    @property
    def settled(self) -> bool:
        return not self.in_flight and not self.retry_at

    async def run(self, no_new_sends: trio.Event, stop: trio.Event) -> None:
        """Send until `no_new_sends`, then retry until every send is acknowledged; receive
        until `stop`."""
        try:
            while not stop.is_set():
                await self._send_due(new=not no_new_sends.is_set())
                with trio.move_on_after(PACE_S):
                    for frame in await self.client.receive():
                        self._accept(frame)
                    self.progress.changed()
        except ConnectionClosedError as closed:
            self.closed = closed
            raise  # fails the test at once, with the close code and reason

    async def _send_due(self, *, new: bool) -> None:
        now = trio.current_time()
        due = [cid for cid, at in self.retry_at.items() if at <= now]
        for cid in due:
            del self.retry_at[cid]
        if new and len(self.in_flight) + len(self.retry_at) + len(due) < WINDOW:
            cid = f"{self.name}-{len(self.sends):05}"
            self.sends[cid] = Send(cid=cid, conv=self.conv.bytes, body=TextBody(text=cid))
            due.append(cid)
        if due:
            self.in_flight.update(due)
            frames = [self.sends[cid] for cid in due]
            await self.client.send(Ack(pos=self.highest_pos), *frames)

    def _accept(self, frame: object) -> None:
        if isinstance(frame, Sent):
            if self.acked.setdefault(frame.cid, frame.id) != frame.id:
                self.conflicting_acks.append(frame.cid)
            self.in_flight.discard(frame.cid)
        elif isinstance(frame, Err) and frame.code is ErrorCode.UNAVAILABLE and frame.ref:
            self.unavailable += 1
            self.in_flight.discard(frame.ref)
            self.retry_at[frame.ref] = trio.current_time() + RETRY_AFTER_S
        elif isinstance(frame, Err):
            self.other_errors.append(frame)
        elif isinstance(frame, Msg) and frame.pos is not None:
            self.received.append(frame)
            self.highest_pos = max(self.highest_pos, frame.pos)


class Progress:
    """Wakes a test waiting for a condition on the senders whenever one of them changes."""

    def __init__(self) -> None:
        self._changed = trio.Event()

    def changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, condition: Callable[[], bool], timeout_s: float = 20) -> None:
        with trio.fail_after(timeout_s):
            while not condition():
                await self._changed.wait()


async def healthy_again(server: Harness, timeout_s: float) -> None:
    """Poll /healthz until it answers 200 "ok" (the database, and the bus, back)."""
    with trio.fail_after(timeout_s):
        while True:
            health = await server.client.get("/healthz")
            if health.status_code == 200 and health.json()["status"] == "ok":
                return
            await trio.sleep(0.1)


async def everything_stored(server: Harness, session: Session) -> list[Msg]:
    """Every message of the account, as a new device's catch-up delivers them."""
    state = server.device(session)
    async with await state.reconnect(server.gateway_url) as client:
        with trio.fail_after(30):
            synced = False
            while not synced:
                for frame in await client.receive():
                    state.accept(frame)
                    synced = synced or isinstance(frame, Synced)
    assert state.duplicates == 0
    return state.messages


async def every_endpoint_says_unavailable(server: Harness, ann: Session, conv: uuid.UUID) -> None:
    """Reads, writes, logins and token refreshes: 503 `database_unavailable`, never 500."""
    key = b64(bytes(SigningKey.generate().verify_key))
    device = {"name": "laptop", "platform": "linux", "public_key": key}
    client, headers = server.client, ann.headers
    with trio.fail_after(30):
        for response in (
            await client.get(f"/v1/conversations/{conv}/messages", headers=headers),
            await client.get("/v1/me", headers=headers),
            await client.post(
                "/v1/conversations", headers=headers, json={"kind": "group", "title": "T"}
            ),
            await client.post(
                "/v1/login",
                json={"email": "olivia@acme.example", "password": PASSWORD, "device": device},
            ),
            await client.post("/v1/tokens/refresh", json={"refresh_token": ann.refresh_token}),
            await client.patch("/v1/me", headers=headers, json={"display_name": "Ann"}),
        ):
            assert_error(response, 503, "database_unavailable")


async def test_the_server_survives_a_database_outage_under_traffic(tmp_path: Path) -> None:
    async with (
        stoppable_postgres(durable=True) as pg,  # durable: a stop keeps what was committed
        trio.open_nursery() as server_nursery,
        start_harness(server_nursery, pg.url, tmp_path, bus="postgres") as server,
    ):
        ann = await server.create_org()
        bob = await server.add_member(ann, "bob")
        ann_phone = await server.login("olivia@acme.example")
        conv = await server.group(ann, bob)
        senders = []
        progress = Progress()
        for name, session in (("ann", ann), ("bob", bob), ("phone", ann_phone)):
            client = await server.connect(session)
            await client.sync(0)
            device_id = uuid.UUID(session.device["id"])
            senders.append(Sender(name, client, conv, device_id, progress))
        no_new_sends, stop = trio.Event(), trio.Event()

        def all_acked() -> set[bytes]:
            return {message_id for s in senders for message_id in s.acked.values()}

        async with trio.open_nursery() as traffic:
            for sender in senders:
                traffic.start_soon(sender.run, no_new_sends, stop)
            await progress.until(lambda: all(len(s.acked) >= 20 for s in senders))

            await pg.stop_immediately_async()
            await progress.until(lambda: all(s.unavailable for s in senders))
            with trio.fail_after(8):  # bounded, and quick when the database refuses
                health = await server.client.get("/healthz")
            assert health.status_code == 503
            body = health.json()
            assert body.pop("bus") in ("ok", "down")  # its connection goes with the database
            assert body == {
                "status": "degraded",
                "database": "unavailable",
                "push": {"apns": "off", "fcm": "off"},
            }
            await every_endpoint_says_unavailable(server, ann, conv)
            # A device connecting now is told to come back later (1013), and nothing breaks.
            try:
                late = await server.connect(bob)
            except ConnectionClosedError as refused:
                assert refused.code == 1013, refused
            else:
                await late.aclose()  # a handshake that needs no database is fine too
            await trio.sleep(2)  # the outage goes on under traffic

            await pg.start_async()
            await healthy_again(server, 10)  # within seconds of the database being back
            marks = {s.name: len(s.acked) for s in senders}
            await progress.until(lambda: all(len(s.acked) >= marks[s.name] + 20 for s in senders))
            no_new_sends.set()
            # Every device retries until all its sends are acknowledged.
            await progress.until(lambda: all(s.settled for s in senders), 30)
            # Every device, live all along, receives every acknowledged message.
            with trio.move_on_after(10):
                await progress.until(
                    lambda: all(all_acked() <= {m.id for m in s.received} for s in senders)
                )
            stop.set()

        for sender in senders:
            assert sender.closed is None, f"{sender.name}: {sender.closed}"
            assert sender.other_errors == [], sender.name
            assert sender.unavailable > 0, sender.name
            assert sender.conflicting_acks == [], sender.name
            assert set(sender.acked) == set(sender.sends), sender.name
            live = [m.id for m in sender.received]
            missing = all_acked() - set(live)
            assert not missing, f"{sender.name} never got {len(missing)} acknowledged messages"
            assert len(live) == len(set(live)), f"{sender.name} got duplicates"
            positions = [m.pos or 0 for m in sender.received]
            assert positions == sorted(positions), f"{sender.name}: not in pos order"
            await sender.client.aclose()

        # Every acknowledged message is stored exactly once, under the id its ack gave.
        stored = await everything_stored(server, await server.login("olivia@acme.example"))
        by_sender: dict[tuple[bytes | None, str | None], list[bytes]] = {}
        for message in stored:
            by_sender.setdefault((message.sender_device, message.cid), []).append(message.id)
        expected = {
            (s.device_id.bytes, cid): [message_id]
            for s in senders
            for cid, message_id in s.acked.items()
        }
        assert by_sender == expected
        health = await server.client.get("/healthz")
        assert health.json() == {
            "status": "ok",
            "database": "ok",
            "bus": "ok",
            "push": {"apns": "off", "fcm": "off"},
        }


async def admin_sql(database_url: str, sql: str) -> None:
    """Run one statement on the test's database, as its owner, from a worker thread."""

    async def run() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    await trio.to_thread.run_sync(asyncio.run, run())


async def answers(client: GatewayClient, cids: set[str]) -> dict[str, object]:
    """The answer (`sent` or `err`) to each of `cids`."""
    found: dict[str, object] = {}
    with trio.fail_after(20):
        while not cids <= set(found):
            for frame in await client.receive():
                if isinstance(frame, Sent):
                    found[frame.cid] = frame
                elif isinstance(frame, Err) and frame.ref:
                    found[frame.ref] = frame
    return found


async def test_a_commit_failing_for_any_other_reason_is_answered_and_the_server_goes_on(
    server: Harness, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    ann = await server.create_org()
    conv = await server.group(ann)
    client = await server.connect(ann)
    await client.sync(0)

    def send(cid: str) -> Send:
        return Send(cid=cid, conv=conv.bytes, body=TextBody(text=cid))

    # The database now refuses every new message: not an outage, a rule (as a bug would).
    await admin_sql(
        database_url, "ALTER TABLE messages ADD CONSTRAINT no_more CHECK (false) NOT VALID"
    )
    await client.send(send("a"), send("b"))
    refused = await answers(client, {"a", "b"})
    assert all(isinstance(e, Err) and e.code is ErrorCode.UNAVAILABLE for e in refused.values())
    # One line with its traceback per failed commit (the two sends may form two batches).
    failures = [r for r in caplog.records if r.name == "server.gateway.committer"]
    assert 1 <= len(failures) <= 2 and all(r.exc_info for r in failures)

    await admin_sql(database_url, "ALTER TABLE messages DROP CONSTRAINT no_more")
    await client.send(send("a"), send("b"), send("c"))  # retried with their cids
    acked = await answers(client, {"a", "b", "c"})
    assert all(isinstance(s, Sent) for s in acked.values())
    await client.aclose()
    history = await server.client.get(f"/v1/conversations/{conv}/messages", headers=ann.headers)
    assert sorted(m["client_id"] for m in history.json()["messages"]) == ["a", "b", "c"]


def test_an_outage_met_inside_a_nursery_is_still_503() -> None:
    down = DatabaseUnavailableError("the database is unavailable: refused")
    grouped = ExceptionGroup("tasks", [ValueError("other"), ExceptionGroup("inner", [down])])
    assert as_api_error(grouped).code is ApiErrorCode.DATABASE_UNAVAILABLE
    assert as_api_error(ExceptionGroup("one", [KeyError("x")])).code is ApiErrorCode.INTERNAL
    assert as_api_error(ExceptionGroup("one", [NotFoundError("gone")])).status == 404


async def test_a_resent_committed_cid_refused_once_is_not_fanned_out_again(
    server: Harness, database_url: str
) -> None:
    # "a" is committed and delivered; resent with "b" in a commit that fails, it is looked
    # up with the next commit that works - where it must not count as recovered (it would
    # reach the other members a second time, below positions they already have).
    ann = await server.create_org()
    bob = await server.add_member(ann, "bob")
    conv = await server.group(ann, bob)
    watcher = await server.connect(bob)
    await watcher.sync(0)
    client = await server.connect(ann)
    await client.sync(0)

    def send(cid: str) -> Send:
        return Send(cid=cid, conv=conv.bytes, body=TextBody(text=cid))

    await client.send(send("a"))
    assert isinstance((await answers(client, {"a"}))["a"], Sent)
    await admin_sql(
        database_url, "ALTER TABLE messages ADD CONSTRAINT no_more CHECK (false) NOT VALID"
    )
    await client.send(send("a"), send("b"))
    assert isinstance((await answers(client, {"b"}))["b"], Err)
    await admin_sql(database_url, "ALTER TABLE messages DROP CONSTRAINT no_more")
    await client.send(send("b"), send("c"))
    await answers(client, {"b", "c"})
    seen: list[str] = []
    with trio.fail_after(10):
        while "c" not in seen:
            seen += [f.cid or "" for f in await watcher.receive() if isinstance(f, Msg)]
    assert seen == ["a", "b", "c"]
    for c in (client, watcher):
        await c.aclose()
