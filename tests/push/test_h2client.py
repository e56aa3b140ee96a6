"""push/h2client.py against a real HTTP/2 server over TLS on 127.0.0.1 (trio + h2 here, so
each test can make the server misbehave exactly: drain with GOAWAY, refuse or reset a
stream, drop the connection, stall, answer too much)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
import trio
import trustme

from push.h2client import MAX_RESPONSE_BYTES, H2Client, H2ConnectionError


@dataclass
class Server:
    port: int
    client_context: ssl.SSLContext
    connections: int = 0
    requests: list[tuple[int, str, int]] = field(default_factory=list)  # conn, path, bytes
    goaway_once: bool = True


def _answer(server: Server, conn: h2.connection.H2Connection, sid: int, path: str) -> bytes | None:
    """What the server does once request `sid` is complete: the body to answer, or None."""
    if path == "/goaway" and server.goaway_once:
        server.goaway_once = False
        conn.close_connection(last_stream_id=sid - 2)  # this one not acted on
    elif path == "/refuse":
        conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
    elif path != "/hang":
        conn.send_headers(sid, [(":status", "200"), ("retry-after", "7")])
        size = MAX_RESPONSE_BYTES + 1 if path == "/big" else 0
        return b"x" * size or str(server.requests[-1][2]).encode()
    return None


def _send_answers(conn: h2.connection.H2Connection, outgoing: dict[int, bytes]) -> None:
    """Each answer's body as far as the client's flow-control window allows."""
    for sid in list(outgoing):
        body = outgoing.pop(sid)
        room = min(conn.local_flow_control_window(sid), 16384, len(body))
        while room > 0:
            conn.send_data(sid, body[:room], end_stream=room == len(body))
            body = body[room:]
            room = min(conn.local_flow_control_window(sid), 16384, len(body))
        if body:
            outgoing[sid] = body


async def _serve_connection(server: Server, tcp: trio.SocketStream, tls: ssl.SSLContext) -> None:
    server.connections += 1
    number = server.connections
    stream = trio.SSLStream(tcp, tls, server_side=True, https_compatible=True)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
    )
    conn.initiate_connection()
    paths: dict[int, str] = {}
    sizes: dict[int, int] = {}
    outgoing: dict[int, bytes] = {}  # answers not yet sent whole
    try:
        await stream.send_all(conn.data_to_send())
        while data := await stream.receive_some(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    headers = {str(k): str(v) for k, v in event.headers}  # utf-8: str
                    paths[event.stream_id] = headers[":path"]
                    sizes[event.stream_id] = 0
                elif isinstance(event, h2.events.DataReceived):
                    sizes[event.stream_id] += len(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    outgoing.pop(event.stream_id, None)
                elif isinstance(event, h2.events.StreamEnded):
                    sid = event.stream_id
                    server.requests.append((number, paths[sid], sizes[sid]))
                    if paths[sid] == "/drop":
                        return
                    body = _answer(server, conn, sid, paths[sid])
                    if body is not None:
                        outgoing[sid] = body
            _send_answers(conn, outgoing)
            await stream.send_all(conn.data_to_send())
    except (trio.BrokenResourceError, h2.exceptions.ProtocolError):
        return
    finally:
        await trio.aclose_forcefully(stream)


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[Server]:
    ca = trustme.CA()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    tls.set_alpn_protocols(["h2"])
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    client_context.set_alpn_protocols(["h2"])
    state = Server(0, client_context)
    serve = partial(trio.serve_tcp, host="127.0.0.1")
    listeners = await nursery.start(serve, lambda tcp: _serve_connection(state, tcp, tls), 0)
    state.port = listeners[0].socket.getsockname()[1]
    yield state


@pytest.fixture
async def client(server: Server) -> AsyncIterator[H2Client]:
    h2client = H2Client(
        "127.0.0.1",
        server.port,
        server.client_context,
        max_connections=2,
        streams_per_connection=50,
    )
    yield h2client
    await h2client.aclose()


async def test_many_concurrent_requests_share_few_connections(
    client: H2Client, server: Server
) -> None:
    answers: list[bytes] = []

    async def one(i: int) -> None:
        response = await client.post("/echo", [(b"x-n", str(i).encode())], b"a" * i)
        assert response.status == 200
        assert response.headers["retry-after"] == "7"
        answers.append(response.body)

    async with trio.open_nursery() as nursery:
        for i in range(300):
            nursery.start_soon(one, i)
    assert sorted(int(body) for body in answers) == list(range(300))
    assert server.connections <= 2


async def test_a_body_larger_than_the_flow_control_window_is_sent_whole(
    client: H2Client, server: Server
) -> None:
    response = await client.post("/echo", [], b"b" * 300_000)
    assert response.body == b"300000"


async def test_a_request_the_server_drained_unprocessed_is_sent_again_on_a_new_connection(
    client: H2Client, server: Server
) -> None:
    assert (await client.post("/echo", [], b"1")).status == 200
    response = await client.post("/goaway", [], b"2")
    assert response.status == 200
    assert [(conn, path) for conn, path, _ in server.requests] == [
        (1, "/echo"),
        (1, "/goaway"),
        (2, "/goaway"),
    ]


async def test_a_refused_stream_is_tried_once_more_then_reported(client: H2Client) -> None:
    with pytest.raises(H2ConnectionError, match="stream_reset_7") as failure:
        await client.post("/refuse", [], b"")
    assert failure.value.unprocessed


async def test_a_dropped_connection_fails_its_requests_and_the_next_one_reconnects(
    client: H2Client, server: Server
) -> None:
    with pytest.raises(H2ConnectionError) as failure:
        await client.post("/drop", [], b"")
    assert not failure.value.unprocessed  # the server may have acted on it
    assert (await client.post("/echo", [], b"abc")).body == b"3"
    assert server.connections == 2


async def test_a_cancelled_request_leaves_the_connection_usable(
    client: H2Client, server: Server
) -> None:
    with trio.move_on_after(0.2) as scope:
        await client.post("/hang", [], b"")
    assert scope.cancelled_caught
    assert (await client.post("/echo", [], b"ok")).body == b"2"
    assert server.connections == 1


async def test_an_oversized_answer_is_refused(client: H2Client) -> None:
    with pytest.raises(H2ConnectionError, match="response_too_large"):
        await client.post("/big", [], b"")


async def test_a_server_that_is_not_there_is_a_connection_error(server: Server) -> None:
    h2client = H2Client(
        "127.0.0.1", 1, server.client_context, max_connections=1, streams_per_connection=1
    )
    with pytest.raises(H2ConnectionError, match="connect_failed"):
        await h2client.post("/echo", [], b"")
    await h2client.aclose()
    with pytest.raises(H2ConnectionError, match="closed"):
        await h2client.post("/echo", [], b"")


async def test_an_untrusted_certificate_is_a_tls_failure(server: Server) -> None:
    h2client = H2Client(
        "127.0.0.1",
        server.port,
        ssl.create_default_context(),
        max_connections=1,
        streams_per_connection=1,
    )
    with pytest.raises(H2ConnectionError, match="tls_failed"):
        await h2client.post("/echo", [], b"")
    await h2client.aclose()
