"""WebSocket fan-out benchmark: quart-trio on hypercorn against a lean trio + wsproto listener.

One publisher connection sends 100-byte binary messages on an open-loop schedule; the server
fans every message out to all N client connections. Each payload carries its sequence number
and its *intended* send time (CLOCK_MONOTONIC, shared by every process on Linux), so latency
is measured from the intended send time to receipt (no coordinated omission).

Processes (every side in its own process):
- server: quart-trio app served by ``hypercorn.trio.serve`` (``--server quart``), or the lean
  trio listener (``--server lean``); one trio thread, so at most one core;
- clients: ``--client-procs`` processes (default 1), each with a raw-socket epoll loop holding
  its share of the N WebSockets (handshake by hand; server frames parsed with strided slices,
  no per-frame Python work while the run lasts);
- publisher: one process, a raw-socket client sending masked frames at the offered rate.

Server CPU seconds are read from /proc/<pid>/stat (utime+stime) at the start and the end of
the run. Run::

    .venv/bin/python -m loadtest.bench_fanout --clients 500 --rate 50000 --duration 10 \\
        --server both

quart-trio fan-out shape: ``--quart-shape direct`` (default) awaits each client's
``websocket.send`` in the publisher's handler; ``channel`` gives each client a bounded memory
channel and a sender (its handler). On the 2-core dev machine direct was the faster of the two
(~26k vs ~15k deliveries per server CPU-second), so it is the default.

``--rate`` is offered *deliveries* per second (messages/s x clients) and accepts several
values; ``--repeats`` repeats every (rate, server) pair and the summary prints medians.
"""

from __future__ import annotations

import argparse
import array
import base64
import contextlib
import gc
import json
import multiprocessing as mp
import os
import select
import socket
import statistics
import struct
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve as hypercorn_serve
from quart import websocket
from quart_trio import QuartTrio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import FrameProtocol

HOST = "127.0.0.1"
PAYLOAD_SIZE = 100
# seq (u64), intended send time (f64, CLOCK_MONOTONIC seconds), padding up to 100 bytes.
PAYLOAD = struct.Struct("<Qd84x")
FRAME_SIZE = 2 + PAYLOAD_SIZE  # server -> client: unmasked binary frame, 7-bit length
TS_OFFSET = 2 + 8  # where the intended send time starts inside one frame
MAX_FRAMES_PER_READ = (1 << 18) // FRAME_SIZE + 2
HDR0 = b"\x82" * MAX_FRAMES_PER_READ
HDR1 = bytes([PAYLOAD_SIZE]) * MAX_FRAMES_PER_READ
HIST_RES = 1e-5  # latency histogram bucket: 10 us
SERVER_LIFETIME = 900.0  # every server loop runs under this cancel scope
READ_SIZE = 1 << 18


def system_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    # user nice system idle iowait irq softirq steal
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait: float, threshold: float) -> tuple[float, float]:
    """Wait (bounded) until other work on the machine uses < threshold cores over 1 s.

    Returns (seconds waited, cores busy in the last sample)."""
    start = time.monotonic()
    load = 0.0
    for _ in range(int(max_wait) + 1):
        b0 = system_busy_seconds()
        time.sleep(1.0)
        load = system_busy_seconds() - b0
        if load < threshold or time.monotonic() - start >= max_wait:
            break
    return time.monotonic() - start, load


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------
# Server A: quart-trio on hypercorn
# --------------------------------------------------------------------------------------------

SendFn = Callable[[str | bytes], Awaitable[None]]


def make_quart_app(shape: str, queue_size: int) -> QuartTrio:
    """The fan-out hub, the quart way.

    ``direct``: the publisher's handler awaits ``websocket.send`` of every client in turn.
    ``channel``: each client handler owns a bounded trio memory channel and sends what arrives
    on it; the publisher ``send_nowait``s into every channel (awaiting only when one is full).
    """
    app = QuartTrio("bench_fanout")
    direct: set[SendFn] = set()
    channels: set[trio.MemorySendChannel[bytes]] = set()

    @app.websocket("/ws")
    async def client_ws() -> None:
        await websocket.accept()
        if shape == "direct":
            send = websocket.send  # bound to this connection's Websocket object
            direct.add(send)
            try:
                while True:  # ends when the client goes (quart-trio cancels the handler)
                    await websocket.receive()
            finally:
                direct.discard(send)
        else:
            send_ch, recv_ch = trio.open_memory_channel[bytes](queue_size)
            channels.add(send_ch)
            try:
                async with recv_ch:
                    async for data in recv_ch:
                        await websocket.send(data)
            finally:
                channels.discard(send_ch)

    @app.websocket("/pub")
    async def publisher_ws() -> None:
        await websocket.accept()
        while True:  # ends when the publisher goes
            data = await websocket.receive()
            raw = data if isinstance(data, bytes) else data.encode()
            if shape == "direct":
                for send in tuple(direct):
                    try:
                        await send(raw)
                    except Exception:
                        direct.discard(send)
            else:
                for ch in tuple(channels):
                    try:
                        ch.send_nowait(raw)
                    except trio.WouldBlock:
                        await ch.send(raw)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        channels.discard(ch)

    return app


async def serve_quart(pipe: Connection, shape: str, queue_size: int) -> None:
    config = HyperConfig()
    config.bind = [f"{HOST}:0"]
    config.backlog = 4096
    config.accesslog = None
    config.loglevel = "WARNING"
    app = make_quart_app(shape, queue_size)
    with trio.move_on_after(SERVER_LIFETIME):
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(partial(hypercorn_serve, app, config))
            pipe.send(int(binds[0].rsplit(":", 1)[1]))


# --------------------------------------------------------------------------------------------
# Server B: lean trio + wsproto listener
# --------------------------------------------------------------------------------------------


class LeanConn:
    __slots__ = ("closed", "dirty", "is_pub", "out", "sock", "writer", "writing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out = bytearray()  # outbound bytes not yet taken by the kernel
        self.dirty = False  # queued for the flusher
        self.writing = False  # the writer owns the remainder (waiting for writability)
        self.writer: trio.lowlevel.Task | None = None  # set while the writer is parked
        self.closed = False
        self.is_pub = False


class LeanHub:
    """Fan-out appends the once-built frame to each buffer; one flusher sends per tick."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.clients: dict[LeanConn, None] = {}
        self.dirty: list[LeanConn] = []
        self.flusher_task: trio.lowlevel.Task | None = None  # set while the flusher is parked
        self.framer = FrameProtocol(client=False, extensions=[])

    # -- buffers -------------------------------------------------------------------------
    def queue(self, c: LeanConn, data: bytes | bytearray) -> None:
        c.out += data
        if not (c.dirty or c.writing):
            c.dirty = True
            self.dirty.append(c)
        self.wake_flusher()

    def fan_out(self, payload: bytes) -> None:
        frame = bytes(self.framer.send_data(payload, fin=True))  # framed once
        cap = self.cap
        dirty = self.dirty
        over: list[LeanConn] = []
        for c in self.clients:
            out = c.out
            out += frame
            if not (c.dirty or c.writing):
                c.dirty = True
                dirty.append(c)
            if len(out) > cap:
                over.append(c)
        for c in over:
            self.close(c)
        self.wake_flusher()

    def close(self, c: LeanConn) -> None:
        if c.closed:
            return
        c.closed = True
        self.clients.pop(c, None)
        trio.lowlevel.notify_closing(c.sock)
        c.sock.close()
        c.out = bytearray()
        self.wake_writer(c)

    # -- flusher -------------------------------------------------------------------------
    def wake_flusher(self) -> None:
        task = self.flusher_task
        if task is not None:
            self.flusher_task = None
            trio.lowlevel.reschedule(task)

    def _abort_flusher(self, _raise_cancel: Any) -> trio.lowlevel.Abort:
        self.flusher_task = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def flusher(self) -> None:
        while True:  # bounded by the server's lifetime scope
            if not self.dirty:
                self.flusher_task = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(self._abort_flusher)
                continue
            batch, self.dirty = self.dirty, []
            for c in batch:
                c.dirty = False
                if c.closed or not c.out:
                    continue
                try:
                    n = c.sock.send(c.out)  # direct non-blocking send
                except BlockingIOError:
                    n = 0
                except OSError:
                    self.close(c)
                    continue
                del c.out[:n]
                if c.out:  # the kernel did not take everything: the writer keeps the rest
                    c.writing = True
                    self.wake_writer(c)

    # -- per-connection tasks ------------------------------------------------------------
    def wake_writer(self, c: LeanConn) -> None:
        task = c.writer
        if task is not None:
            c.writer = None
            trio.lowlevel.reschedule(task)

    async def writer(self, c: LeanConn) -> None:
        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            c.writer = None
            return trio.lowlevel.Abort.SUCCEEDED

        while not c.closed:
            if not c.writing:
                c.writer = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(abort)
                continue
            try:
                await trio.lowlevel.wait_writable(c.sock)
                n = c.sock.send(c.out)
            except BlockingIOError:
                continue
            except (trio.ClosedResourceError, OSError):
                self.close(c)
                return
            del c.out[:n]
            if not c.out:
                c.writing = False

    def handle_events(self, c: LeanConn, ws: WSConnection, partial_msg: bytearray) -> bool:
        """Process wsproto events; False when the connection should close."""
        for ev in ws.events():
            if isinstance(ev, Request):
                self.queue(c, ws.send(AcceptConnection()))
                if ev.target.startswith("/pub"):
                    c.is_pub = True
                else:
                    self.clients[c] = None
            elif isinstance(ev, BytesMessage | TextMessage):
                if c.is_pub:
                    chunk = ev.data.encode() if isinstance(ev.data, str) else ev.data
                    partial_msg += chunk
                    if ev.message_finished:
                        self.fan_out(bytes(partial_msg))
                        partial_msg.clear()
            elif isinstance(ev, Ping):
                self.queue(c, ws.send(ev.response()))
            elif isinstance(ev, CloseConnection):
                self.queue(c, ws.send(ev.response()))
                return False
        return True

    async def reader(self, c: LeanConn) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        partial_msg = bytearray()
        while not c.closed:
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_readable(c.sock)
                except (trio.ClosedResourceError, OSError):
                    break
                continue
            except OSError:
                break
            if not data:
                break
            ws.receive_data(data)
            if not self.handle_events(c, ws, partial_msg):
                break
            await trio.lowlevel.checkpoint()  # let the flusher run between reads
        self.close(c)


async def serve_lean(pipe: Connection, cap: int) -> None:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((HOST, 0))
    lsock.listen(4096)
    lsock.setblocking(False)
    hub = LeanHub(cap)
    with trio.move_on_after(SERVER_LIFETIME):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.flusher)
            pipe.send(lsock.getsockname()[1])
            while True:  # bounded by the lifetime scope
                await trio.lowlevel.wait_readable(lsock)
                for _ in range(1024):
                    try:
                        sock, _addr = lsock.accept()
                    except BlockingIOError:
                        break
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    c = LeanConn(sock)
                    nursery.start_soon(hub.reader, c)
                    nursery.start_soon(hub.writer, c)


def server_main(kind: str, pipe: Connection, quart_shape: str, queue_size: int, cap: int) -> None:
    if kind == "quart":
        trio.run(serve_quart, pipe, quart_shape, queue_size)
    else:
        trio.run(serve_lean, pipe, cap)


# --------------------------------------------------------------------------------------------
# Load generator: raw-socket WebSocket clients and publisher
# --------------------------------------------------------------------------------------------


def ws_connect(port: int, path: str) -> tuple[socket.socket, bytes]:
    """Blocking connect + opening handshake; returns the socket and bytes read past it."""
    sock = socket.create_connection((HOST, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    buf = b""
    for _ in range(64):
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
        if b"\r\n\r\n" in buf:
            break
    head, _, rest = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        sock.close()
        raise RuntimeError(f"handshake failed: {head[:80]!r}")
    return sock, rest


def parse_slow(data: bytes) -> tuple[array.array[float], bytes, bool]:
    """Generic frame parser (any header); returns send times, the unparsed tail, closed."""
    times: array.array[float] = array.array("d")
    pos = 0
    end = len(data)
    closed = False
    for _ in range(end):  # bounded: every pass consumes at least 2 bytes
        if pos + 2 > end:
            break
        b0, b1 = data[pos], data[pos + 1]
        length = b1 & 0x7F
        hlen = 2
        if length == 126:
            hlen = 4
            if pos + 4 > end:
                break
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        elif length == 127:
            hlen = 10
            if pos + 10 > end:
                break
            length = int.from_bytes(data[pos + 2 : pos + 10], "big")
        if b1 & 0x80:
            hlen += 4  # servers do not mask; tolerated, payload is then unusable
        if pos + hlen + length > end:
            break
        opcode = b0 & 0x0F
        if opcode == 2 and length == PAYLOAD_SIZE and not b1 & 0x80:
            times.append(struct.unpack_from("<d", data, pos + hlen + 8)[0])
        elif opcode == 8:
            closed = True
        pos += hlen + length
    return times, data[pos:], closed


def parse_frames(data: bytes) -> tuple[array.array[float], bytes, bool]:
    """Fast path: n whole 102-byte binary frames, checked and decoded with strided slices."""
    n = len(data) // FRAME_SIZE
    end = n * FRAME_SIZE
    if (
        0 < n <= MAX_FRAMES_PER_READ
        and data[0:end:FRAME_SIZE] == HDR0[:n]
        and data[1:end:FRAME_SIZE] == HDR1[:n]
    ):
        raw = bytearray(8 * n)
        for k in range(8):
            raw[k::8] = data[TS_OFFSET + k : end : FRAME_SIZE]
        times: array.array[float] = array.array("d")
        times.frombytes(raw)
        if sys.byteorder != "little":
            times.byteswap()
        return times, data[end:], False
    return parse_slow(data)


@dataclass
class ClientConn:
    sock: socket.socket
    rest: bytes = b""
    count: int = 0
    closed: bool = False


def connect_clients(port: int, n: int) -> list[ClientConn]:
    conns: list[ClientConn] = []
    for _ in range(n):
        sock, rest = ws_connect(port, "/ws")
        sock.setblocking(False)
        conns.append(ClientConn(sock, rest))
    return conns


def receive_loop(
    conns: list[ClientConn], expected: int, deadline: float
) -> list[tuple[float, array.array[float]]]:
    """Read until every expected delivery arrived or the deadline; (recv time, send times)."""
    chunks: list[tuple[float, array.array[float]]] = []
    by_fd = {c.sock.fileno(): c for c in conns}
    ep = select.epoll()
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)
    received = 0
    while received < expected:  # also bounded by the deadline
        now = time.monotonic()
        if now >= deadline:
            break
        for fd, _ev in ep.poll(min(0.05, deadline - now)):
            c = by_fd[fd]
            try:
                data = c.sock.recv(READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            rt = time.monotonic()
            if not data:
                ep.unregister(fd)
                c.closed = True
                continue
            if c.rest:
                data = c.rest + data
            times, c.rest, closed = parse_frames(data)
            if closed:
                ep.unregister(fd)
                c.closed = True
            if times:
                chunks.append((rt, times))
                c.count += len(times)
                received += len(times)
    ep.close()
    return chunks


def summarize_chunks(
    chunks: list[tuple[float, array.array[float]]], window_end: float
) -> dict[str, Any]:
    hist: Counter[int] = Counter()
    in_window = 0
    max_lat = 0.0
    last_rt = 0.0
    inv = 1.0 / HIST_RES
    for rt, times in chunks:
        hist.update([int((rt - t) * inv) for t in times])
        if rt <= window_end:
            in_window += len(times)
        max_lat = max(max_lat, rt - min(times))
        last_rt = max(last_rt, rt)
    return {"hist": dict(hist), "in_window": in_window, "max": max_lat, "last_rt": last_rt}


def client_main(port: int, n: int, pipe: Connection) -> None:
    gc.disable()  # the load generator must not pause; it allocates little per read
    conns = connect_clients(port, n)
    pipe.send(("ready", len(conns)))
    if not pipe.poll(120):
        return
    _go, t0, duration, planned, deadline = pipe.recv()
    chunks = receive_loop(conns, planned * len(conns), deadline)
    pipe.send(("stopped", time.monotonic()))
    summary = summarize_chunks(chunks, t0 + duration)
    summary.update(
        received=sum(c.count for c in conns),
        lost=sum(max(0, planned - c.count) for c in conns),
        closed=sum(1 for c in conns if c.closed),
        clients=len(conns),
    )
    pipe.send(("result", summary))
    pipe.poll(60)  # keep the sockets open until the server is stopped
    for c in conns:
        c.sock.close()


def publisher_main(port: int, pipe: Connection) -> None:
    sock, _rest = ws_connect(port, "/pub")
    sock.setblocking(False)
    pipe.send(("ready", 1))
    if not pipe.poll(120):
        return
    _go, t0, msg_rate, total, deadline = pipe.recv()
    mask = b"\x37\xfa\x21\x3d"
    mask_int = int.from_bytes(mask * (PAYLOAD_SIZE // 4), "big")
    header = bytes([0x82, 0x80 | PAYLOAD_SIZE]) + mask
    interval = 1.0 / msg_rate
    pending = bytearray()
    i = 0
    while i < total or pending:  # also bounded by the deadline
        now = time.monotonic()
        if now >= deadline:
            break
        while i < total and t0 + i * interval <= now:
            payload = PAYLOAD.pack(i, t0 + i * interval)
            pending += header
            pending += (int.from_bytes(payload, "big") ^ mask_int).to_bytes(PAYLOAD_SIZE, "big")
            i += 1
        if pending:
            with contextlib.suppress(BlockingIOError):
                del pending[: sock.send(pending)]
        if pending:
            select.select([], [sock], [], 0.001)
        elif i < total:
            time.sleep(max(0.0, min(0.05, t0 + i * interval - time.monotonic())))
    pipe.send(("published", i, len(pending)))
    pipe.poll(120)  # stay connected until the clients are done
    sock.close()


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------


def wait_msg(pipe: Connection, timeout: float, what: str) -> Any:
    if not pipe.poll(timeout):
        raise RuntimeError(f"timed out waiting for {what}")
    return pipe.recv()


def percentiles(hist: Counter[int], total: int) -> dict[str, float]:
    """Upper edge of the bucket holding each percentile, in ms."""
    marks = {"p50": 0.50, "p99": 0.99, "p99.9": 0.999}
    out: dict[str, float] = {}
    if total == 0:
        return {k: float("nan") for k in marks}
    cum = 0
    todo = sorted(marks.items(), key=lambda kv: kv[1])
    for key in sorted(hist):
        cum += hist[key]
        while todo and cum >= todo[0][1] * total:
            out[todo[0][0]] = (key + 1) * HIST_RES * 1000.0
            todo.pop(0)
        if not todo:
            break
    return out


def stop_process(proc: mp.process.BaseProcess) -> None:
    proc.join(5)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


@dataclass
class RunSpec:
    server: str
    clients: int
    rate: float  # offered deliveries per second
    duration: float
    drain: float
    client_procs: int
    quart_shape: str
    queue_size: int
    cap: int


def run_one(spec: RunSpec) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    srv_pipe, srv_child = ctx.Pipe()
    server = ctx.Process(
        target=server_main,
        args=(spec.server, srv_child, spec.quart_shape, spec.queue_size, spec.cap),
        daemon=True,
    )
    server.start()
    procs: list[mp.process.BaseProcess] = []
    pipes: list[Connection] = []
    try:
        port: int = wait_msg(srv_pipe, 30, "server port")
        shares = [spec.clients // spec.client_procs] * spec.client_procs
        shares[0] += spec.clients - sum(shares)
        for share in shares:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_main, args=(port, share, child), daemon=True)
            proc.start()
            procs.append(proc)
            pipes.append(parent)
            wait_msg(parent, 120, "clients")
        pub_pipe, pub_child = ctx.Pipe()
        pub = ctx.Process(target=publisher_main, args=(port, pub_child), daemon=True)
        pub.start()
        procs.append(pub)
        wait_msg(pub_pipe, 30, "publisher")
        load_pids = [p.pid or 0 for p in procs]
        return drive(spec, server.pid or 0, load_pids, pipes, pub_pipe)
    finally:
        server.terminate()
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send("bye")
        for child_proc in procs:
            stop_process(child_proc)
        stop_process(server)


def drive(
    spec: RunSpec,
    server_pid: int,
    load_pids: list[int],
    pipes: list[Connection],
    pub_pipe: Connection,
) -> dict[str, Any]:
    msg_rate = spec.rate / spec.clients
    planned = round(msg_rate * spec.duration)
    t0 = time.monotonic() + 0.3
    deadline = t0 + spec.duration + spec.drain
    cpu0 = proc_cpu_seconds(server_pid)
    load0 = sum(proc_cpu_seconds(pid) for pid in load_pids)
    busy0 = system_busy_seconds()
    pub_pipe.send(("go", t0, msg_rate, planned, deadline))
    for pipe in pipes:
        pipe.send(("go", t0, spec.duration, planned, deadline))
    stops = [wait_msg(p, spec.duration + spec.drain + 30, "clients stop") for p in pipes]
    cpu1 = proc_cpu_seconds(server_pid)
    load_cpu = sum(proc_cpu_seconds(pid) for pid in load_pids) - load0
    busy = system_busy_seconds() - busy0
    end = max(s[1] for s in stops)
    results = [wait_msg(p, 300, "client results")[1] for p in pipes]
    published = wait_msg(pub_pipe, 30, "publisher")
    pub_pipe.send("bye")
    hist: Counter[int] = Counter()
    for r in results:
        hist.update(r["hist"])
    received = sum(r["received"] for r in results)
    cpu = cpu1 - cpu0
    return {
        "server": spec.server,
        "clients": sum(r["clients"] for r in results),
        "offered_per_s": spec.rate,
        "planned_msgs": planned,
        "published_msgs": published[1],
        "delivered_per_s": sum(r["in_window"] for r in results) / spec.duration,
        "received": received,
        "lost": sum(r["lost"] for r in results),
        "closed_conns": sum(r["closed"] for r in results),
        **percentiles(hist, received),
        "max_ms": max(r["max"] for r in results) * 1000.0,
        "server_cpu_s": cpu,
        "deliveries_per_cpu_s": received / cpu if cpu > 0 else float("nan"),
        "load_cpu_s": load_cpu,
        # machine busy time not charged to the server or the load processes: softirq of the
        # loopback traffic, and any other work running on the machine at the same time.
        "other_cpu_s": busy - cpu - load_cpu,
        "elapsed_s": end - t0,
    }


COLUMNS = [
    ("server", "{}"),
    ("offered_per_s", "{:.0f}"),
    ("delivered_per_s", "{:.0f}"),
    ("p50", "{:.1f}"),
    ("p99", "{:.1f}"),
    ("p99.9", "{:.1f}"),
    ("max_ms", "{:.1f}"),
    ("server_cpu_s", "{:.2f}"),
    ("deliveries_per_cpu_s", "{:.0f}"),
    ("lost", "{}"),
    ("closed_conns", "{}"),
    ("load_cpu_s", "{:.2f}"),
    ("other_cpu_s", "{:.2f}"),
]


def format_row(row: dict[str, Any]) -> str:
    return " | ".join(fmt.format(row[k]) for k, fmt in COLUMNS)


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(rows[0])
    for key, _fmt in COLUMNS[1:]:
        value = statistics.median(r[key] for r in rows)
        out[key] = round(value) if isinstance(rows[0][key], int) else value
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--rate", type=float, nargs="+", default=[50000.0], help="offered deliveries/s")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--drain", type=float, default=5.0, help="seconds to wait after the run")
    ap.add_argument("--server", choices=["quart", "lean", "both"], default="both")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--client-procs", type=int, default=1)
    ap.add_argument("--quart-shape", choices=["direct", "channel"], default="direct")
    ap.add_argument("--queue-size", type=int, default=1024, help="quart channel shape")
    ap.add_argument("--cap", type=int, default=4 << 20, help="lean per-connection buffer cap")
    ap.add_argument(
        "--quiet-wait", type=float, default=30.0, help="max seconds to wait for a quiet machine"
    )
    ap.add_argument("--quiet-threshold", type=float, default=0.3, help="cores busy elsewhere")
    ap.add_argument("--json", help="write every run's figures here")
    args = ap.parse_args(argv)
    servers = ["quart", "lean"] if args.server == "both" else [args.server]
    print(
        f"cores: {os.cpu_count()}; server: 1 process (one trio thread); load: "
        f"{args.client_procs} client process(es) + 1 publisher process",
        flush=True,
    )
    print(
        "server | offered/s | delivered/s | p50 ms | p99 ms | p99.9 ms | max ms | "
        "server CPU s | deliveries/CPU-s | lost | closed | load CPU s | other CPU s",
        flush=True,
    )
    runs: list[dict[str, Any]] = []
    for rep in range(args.repeats):
        for rate in args.rate:
            for server in servers:
                spec = RunSpec(
                    server,
                    args.clients,
                    rate,
                    args.duration,
                    args.drain,
                    args.client_procs,
                    args.quart_shape,
                    args.queue_size,
                    args.cap,
                )
                waited, load = wait_for_quiet(args.quiet_wait, args.quiet_threshold)
                row = run_one(spec)
                row["quiet_wait_s"], row["background_cores"] = waited, load
                row["repeat"] = rep
                runs.append(row)
                print(format_row(row), flush=True)
    if args.repeats > 1:
        print(f"medians of {args.repeats}:")
        for rate in args.rate:
            for server in servers:
                rows = [r for r in runs if r["server"] == server and r["offered_per_s"] == rate]
                print(format_row(median_row(rows)), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
