"""Gateway fuzzer: real sockets, a valid handshake, then mutated batches and frames over the
real encrypted channel; every outcome must be an `err` frame or a documented close.

    python -m loadtest.fuzz --connections 5000            # against a server of its own
    python -m loadtest.fuzz --url http://127.0.0.1:8400 --seconds 600 --seed 7

Each connection runs the steps `FrameFuzzer.steps` draws (valid requests racing refusals,
mutated frames and batches, text messages, garbage ciphertext, a FINAL of its own), then,
if still open, proves the server still answers it (`ping` -> `pong`) and ends the session
with FINAL + close. A violation is: a close code of 1011 or an `err` with `internal`, a drop
without a WebSocket close frame (1006), a close without the FINAL batch PROTOCOL.md promises
or whose `err` does not match the close code, a batch the client cannot decode, or no answer
within `answer_timeout_s`. Between rounds a second device checks that normal traffic still
flows, and without `--url` the server process must still be running at the end.
"""

from __future__ import annotations

import contextlib
import random
import ssl
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError as WsprotoLocalError
from wsproto.utilities import RemoteProtocolError as WsprotoRemoteError

from loadtest.client import DeviceIdentity, tls_handshake
from loadtest.fuzz_frames import FrameFuzzer, Step, pack
from protocol import (
    CLOSE_CODE_FOR,
    ClientHandshake,
    CloseCode,
    Err,
    ErrorCode,
    ObrolError,
    Pong,
    SecureChannel,
    decode_server_batch,
)

RECV_BYTES = 65536
# Closes that are not answers to an `err` in a FINAL batch.
_WITHOUT_FINAL = {CloseCode.NORMAL, CloseCode.UNSUPPORTED_DATA}


class Violation(ObrolError):
    """The server answered in a way PROTOCOL.md does not allow."""


class _Closed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FuzzTarget:
    """Where to fuzz: the gateway, the fuzzing device, and a conversation it is in; for a
    wss:// gateway, the context that verifies its certificate (None: system trust)."""

    gateway_url: str
    device: DeviceIdentity
    conv: bytes
    ssl_context: ssl.SSLContext | None = None


@dataclass
class FuzzReport:
    connections: int = 0
    steps: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    def summary(self) -> str:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        return (
            f"{self.connections} connections, {self.steps} steps; outcomes: {outcomes}; "
            f"{len(self.violations)} violations"
        )


class FuzzConnection:
    """The fuzzer's own end of a gateway connection: wsproto, the handshake and the channel,
    with every step PROTOCOL.md allows a client - and many it does not."""

    def __init__(self, stream: trio.abc.Stream, answer_timeout_s: float) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.channel: SecureChannel | None = None
        self.answer_timeout_s = answer_timeout_s
        self.saw_final = False
        self.final_errors: list[Err] = []
        self.errors: list[Err] = []
        self.pong = trio.Event()
        self._partial = bytearray()
        self._messages: list[bytes] = []
        self.closed_with: _Closed | None = None
        self._close: _Closed | None = None
        self.violation: Violation | None = None

    @classmethod
    async def open(cls, target: FuzzTarget, answer_timeout_s: float) -> FuzzConnection:
        parts = urlsplit(target.gateway_url)
        host, port = parts.hostname or "", parts.port or 0
        tcp = await trio.open_tcp_stream(host, port)
        stream: trio.abc.Stream = tcp
        try:
            if parts.scheme == "wss":
                stream = await tls_handshake(tcp, host, target.ssl_context)
            conn = cls(stream, answer_timeout_s)
            await conn._handshake(target, host, port, parts.path or "/")
        except BaseException:
            await stream.aclose()
            raise
        return conn

    async def _handshake(self, target: FuzzTarget, host: str, port: int, path: str) -> None:
        await self.stream.send_all(self.ws.send(Request(host=f"{host}:{port}", target=path)))
        while True:
            events = await self._events()
            if any(isinstance(e, RejectConnection) for e in events):
                raise Violation("the WebSocket upgrade was refused")
            if any(isinstance(e, AcceptConnection) for e in events):
                break
        hs = ClientHandshake(
            server_public_key=target.device.server_key,
            device_id=target.device.device_id.bytes,
            device_secret_key=target.device.secret_key,
        )
        await self._send(hs.client_hello())
        auth, self.channel = hs.receive_server_hello(await self._next_message())
        # A fuzzer must be able to send what an honest client never would: batches past
        # the server's limit too.
        self.channel._max_seal_bytes = 1 << 24
        await self._send(auth)

    async def _events(self) -> list[object]:
        with trio.fail_after(self.answer_timeout_s):
            data = await self.stream.receive_some(RECV_BYTES)
        if not data:
            raise _Closed(1006, "dropped without a close frame")
        self.ws.receive_data(bytes(data))
        return list(self.ws.events())

    async def _next_message(self) -> bytes:
        """The next binary message; a close is raised only after what arrived before it."""
        while not self._messages:
            if self._close is not None:
                raise self._close
            for event in await self._events():
                if isinstance(event, BytesMessage):
                    self._partial += event.data
                    if event.message_finished:
                        self._messages.append(bytes(self._partial))
                        self._partial.clear()
                elif isinstance(event, CloseConnection):
                    self._close = _Closed(event.code, event.reason or "")
                elif isinstance(event, Ping):
                    await self.stream.send_all(self.ws.send(event.response()))
        return self._messages.pop(0)

    async def _send(self, data: bytes) -> None:
        await self.stream.send_all(self.ws.send(BytesMessage(data=data)))

    def _seal(self, plaintext: bytes, final: bool = False) -> bytes:
        assert self.channel is not None
        return self.channel.seal(plaintext, final=final)

    async def do(self, step: Step) -> None:
        """Perform one step (writes only; answers are read by `read_batch`)."""
        if step.kind == "batch":
            await self._send(self._seal(step.data))
        elif step.kind == "final":
            await self._send(self._seal(step.data, final=True))
        elif step.kind == "together":
            data = b"".join(
                self.ws.send(BytesMessage(data=self._seal(part))) for part in step.parts
            )
            await self.stream.send_all(data)
        elif step.kind == "raw":
            await self._send(step.data)
        elif step.kind == "text":
            await self.stream.send_all(self.ws.send(TextMessage(data=step.data.decode())))
        elif step.kind == "ws_ping":
            await self.stream.send_all(self.ws.send(Ping(payload=b"fz")))

    async def read_batch(self) -> None:
        """Read and check the next batch from the server."""
        assert self.channel is not None
        ciphertext = await self._next_message()
        if self.saw_final:
            raise Violation("a message after the server's FINAL")
        try:
            frames = decode_server_batch(self.channel.open(ciphertext))
        except ObrolError as error:
            raise Violation(f"an unreadable batch from the server: {error}") from error
        self.saw_final = self.channel.peer_finished
        for frame in frames:
            if isinstance(frame, Err):
                if frame.code is ErrorCode.INTERNAL:
                    raise Violation(f"err internal: {frame.message}")
                self.errors.append(frame)
                if self.saw_final:
                    self.final_errors.append(frame)
            elif isinstance(frame, Pong):
                self.pong.set()

    async def read_until_closed(self, done: trio.CancelScope) -> None:
        """Read and check every batch until the server closes; record how, then `done`."""
        try:
            while True:
                await self.read_batch()
        except _Closed as closed:
            self.closed_with = closed
        except (trio.BrokenResourceError, OSError) as error:
            self.closed_with = _Closed(1006, f"reset ({error})")
        except (WsprotoRemoteError, WsprotoLocalError) as error:
            self.violation = Violation(f"broken WebSocket from the server: {error}")
        except Violation as violation:
            self.violation = violation
        done.cancel()

    async def aclose(self) -> None:
        with trio.move_on_after(2) as scope:
            scope.shield = True
            with contextlib.suppress(
                trio.BrokenResourceError, trio.ClosedResourceError, WsprotoLocalError
            ):
                await self.stream.send_all(self.ws.send(CloseConnection(code=1000)))
            await self.stream.aclose()


def check_close(conn: FuzzConnection, closed: _Closed, client_ended: bool) -> str:
    """The outcome name of a close, or raise `Violation` if PROTOCOL.md does not allow it."""
    code = closed.code
    if code == 1006:
        raise Violation("the connection dropped without a WebSocket close frame")
    if code == CloseCode.INTERNAL_ERROR:
        raise Violation(f"closed 1011 {closed.reason}")
    if code == CloseCode.NORMAL:
        if not client_ended:
            raise Violation("closed 1000 although the client did not end the session")
        return "ended by the client"
    if code not in _WITHOUT_FINAL:
        if not conn.saw_final or not conn.final_errors:
            raise Violation(f"closed {code} {closed.reason} without a FINAL err batch")
        last = conn.final_errors[-1]
        if CLOSE_CODE_FOR[last.code] != code or closed.reason != last.code.value:
            raise Violation(f"closed {code} {closed.reason} after FINAL err {last.code}")
    return f"closed {code} {closed.reason}"


async def fuzz_one(target: FuzzTarget, steps: list[Step], answer_timeout_s: float) -> str:
    """One connection: handshake, `steps`, a liveness probe; returns the outcome.

    Raises `Violation` for an answer PROTOCOL.md does not allow."""
    conn = await FuzzConnection.open(target, answer_timeout_s)
    client_ended = False
    hung = False
    try:
        with trio.move_on_after(answer_timeout_s + len(steps)) as overall:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.read_until_closed, nursery.cancel_scope)
                try:
                    for step in steps:
                        await conn.do(step)
                        if step.kind == "final":
                            client_ended = True
                            break
                        await trio.lowlevel.checkpoint()
                    if not client_ended:
                        # Still open: the server must still answer; then end the session.
                        conn.pong = trio.Event()
                        await conn.do(Step("batch", pack({"t": "ping"})))
                        with trio.move_on_after(answer_timeout_s) as probe:
                            await conn.pong.wait()
                        hung = probe.cancelled_caught
                        await conn.do(Step("final", pack({"t": "ping"})))
                        client_ended = True
                except (trio.BrokenResourceError, trio.ClosedResourceError, WsprotoLocalError):
                    pass  # the server closed: the reader says how
                await trio.sleep_forever()  # until the reader sees the end
    finally:
        await conn.aclose()
    if conn.violation is not None:
        raise conn.violation
    if hung or overall.cancelled_caught or conn.closed_with is None:
        raise Violation("no answer in time (a hang)")
    return check_close(conn, conn.closed_with, client_ended)


async def run_fuzz(
    target: FuzzTarget,
    *,
    seed: int,
    connections: int | None = None,
    seconds: float | None = None,
    concurrency: int = 4,
    answer_timeout_s: float = 10.0,
    message_ids: list[bytes] | None = None,
) -> FuzzReport:
    """Fuzz until `connections` have run or `seconds` have passed (whichever comes first),
    `concurrency` connections at a time. Connection i uses `random.Random(f"{seed}:{i}")`,
    so a violation's line names what reproduces it."""
    report = FuzzReport()
    deadline = trio.current_time() + seconds if seconds is not None else float("inf")
    limit = connections if connections is not None else 2**62
    counter = iter(range(limit))

    async def worker() -> None:
        for index in counter:
            if trio.current_time() >= deadline:
                return
            rng = random.Random(f"{seed}:{index}")  # noqa: S311 - reproducible, not secret
            steps = FrameFuzzer(rng, target.conv, message_ids or []).steps()
            try:
                outcome = await fuzz_one(target, steps, answer_timeout_s)
            except Violation as violation:
                report.violations.append(f"seed {seed}:{index}: {violation}")
                outcome = "violation"
            report.connections += 1
            report.steps += len(steps)
            report.outcomes[outcome] += 1

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return report
