"""Clients that misbehave get a clean close and never stop the stand-in serving others; an
idle connection is closed the way Apple closes one; `/_standin/*` works over HTTP."""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import struct
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import trio

from push.standin import Fault, StandIn, running_standin
from tests.push.helpers import apns_headers, device_token

ALERT = {"aps": {"badge": 1}}


async def still_serves(standin: StandIn, client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{standin.url}/3/device/{device_token()}", json=ALERT, headers=apns_headers(standin)
    )
    assert response.status_code == 200


async def read_until_closed(stream: trio.abc.Stream) -> bytes:
    received = bytearray()
    with trio.fail_after(30):
        while True:
            try:
                chunk = await stream.receive_some()
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            received += chunk
    return bytes(received)


async def tls_stream(
    standin: StandIn, *, alpn: list[str] | None = None
) -> trio.SSLStream[trio.SocketStream]:
    context = ssl.create_default_context(cafile=str(standin.credentials.ca_file))
    if alpn:
        context.set_alpn_protocols(alpn)
    return await trio.open_ssl_over_tcp_stream("127.0.0.1", standin.port, ssl_context=context)


async def test_an_http1_client_gets_a_505_and_a_close(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    stream = await tls_stream(standin, alpn=["http/1.1"])
    async with stream:
        await stream.send_all(
            b"POST /3/device/abc HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        )
        answer = await read_until_closed(stream)
    assert answer.startswith(b"HTTP/1.1 505 ")
    async with httpx.AsyncClient(verify=standin.credentials.client_ssl_context(alpn=False)) as h1:
        response = await h1.get(f"{standin.url}/3/device/abc")
        assert response.status_code == 505
    await still_serves(standin, client)


async def test_random_bytes_inside_tls_are_closed_on(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    stream = await tls_stream(standin)
    async with stream:
        await stream.send_all(os.urandom(4096))
        assert await read_until_closed(stream) == b""
    await still_serves(standin, client)


async def test_random_bytes_instead_of_tls_are_closed_on(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", standin.port)
    async with stream:
        await stream.send_all(b"\x16\x03\x01" + os.urandom(2000))
        await read_until_closed(stream)
    await still_serves(standin, client)


async def test_garbage_after_the_preface_gets_a_goaway(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    stream = await tls_stream(standin)
    async with stream:
        # A SETTINGS frame whose length is not a multiple of 6: FRAME_SIZE_ERROR.
        bad_settings = b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"\x00" * 5
        await stream.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bad_settings)
        answer = await read_until_closed(stream)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    events = conn.receive_data(answer)
    assert any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
    await still_serves(standin, client)


async def test_a_silent_client_does_not_block_others(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    silent = await trio.open_tcp_stream("127.0.0.1", standin.port)
    async with silent:
        await still_serves(standin, client)


async def test_a_reset_mid_request_ends_that_connection_quietly(
    standin: StandIn, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer that resets (RST) while its answer is pending is an ordinary end, not a
    failure: no error is logged, and everyone else is served."""
    caplog.set_level(logging.INFO, logger="push.standin")
    standin.add_fault(Fault("apns", status=200, delay_s=3600))
    stream = await tls_stream(standin)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", f"/3/device/{device_token()}"),
        (":authority", "127.0.0.1"),
        *apns_headers(standin).items(),
    ]
    conn.send_headers(1, headers)
    conn.send_data(1, b'{"aps":{}}', end_stream=True)
    await stream.send_all(conn.data_to_send())
    with trio.fail_after(30):
        while not standin.received:  # noqa: ASYNC110 - the stand-in has no event for it
            await trio.sleep(0.01)
    sock = stream.transport_stream.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    with trio.fail_after(30):
        while not any("ended" in r.getMessage() for r in caplog.records):  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    await still_serves(standin, client)


async def test_an_idle_connection_gets_apples_goaway(tmp_path: Path) -> None:
    async with running_standin(tmp_path / "s", idle_timeout_s=0.2) as standin:
        stream = await tls_stream(standin)
        async with stream:
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            await stream.send_all(conn.data_to_send())
            events = conn.receive_data(await read_until_closed(stream))
        [goaway] = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
        assert goaway.additional_data is not None
        assert json.loads(goaway.additional_data) == {"reason": "IdleTimeout"}


async def test_the_control_api_over_http(standin: StandIn, client: httpx.AsyncClient) -> None:
    control = f"{standin.url}/_standin"
    token = device_token()
    await still_serves(standin, client)

    fault = {"service": "apns", "status": 429, "count": 1, "token": token, "retry_after_s": 3}
    response = await client.post(f"{control}/faults", json=fault)
    assert response.status_code == 201
    assert [f["status"] for f in (await client.get(f"{control}/faults")).json()] == [429]
    url = f"{standin.url}/3/device/{token}"
    response = await client.post(url, json=ALERT, headers=apns_headers(standin))
    assert (response.status_code, response.json()["reason"]) == (429, "TooManyRequests")

    response = await client.post(f"{control}/unregister", json={"service": "apns", "token": token})
    assert response.status_code == 200
    response = await client.post(url, json=ALERT, headers=apns_headers(standin))
    assert response.status_code == 410

    records = (await client.get(f"{control}/received")).json()
    assert [r["status"] for r in records] == [200, 429, 410]
    assert records[1]["headers"]["authorization"] == "bearer …"
    later = (await client.get(f"{control}/received", params={"since": 2})).json()
    assert [r["status"] for r in later] == [410]

    assert (await client.delete(f"{control}/received")).json() == {"cleared": 3}
    assert standin.received == []

    await client.post(f"{control}/faults", json={"service": "fcm", "count": None})
    assert (await client.delete(f"{control}/faults")).status_code == 200
    assert standin.faults() == []

    response = await client.put(f"{control}/latency", json={"latency_s": 0.01})
    assert (response.status_code, standin.latency_s) == (200, 0.01)

    described = (await client.get(f"{control}/credentials")).json()
    assert described["url"] == standin.url
    assert described["apns_key_id"] == standin.credentials.apns_key_id
    assert described["fcm_service_account_file"] == str(
        standin.credentials.fcm_service_account_file
    )


async def test_the_control_api_refuses_malformed_faults(
    standin: StandIn, client: httpx.AsyncClient
) -> None:
    control = f"{standin.url}/_standin"
    for bad in (
        {"service": "gcm"},
        {"service": "apns", "status": "500"},
        {"service": "apns", "count": 0},
        {"service": "apns", "colour": "red"},
        ["apns"],
    ):
        response = await client.post(f"{control}/faults", json=bad)
        assert response.status_code == 400, bad
        assert response.json()["error"]
    assert (await client.get(f"{control}/nothing")).status_code == 404
    assert standin.faults() == []


async def test_an_error_in_the_callers_block_comes_out_unwrapped(tmp_path: Path) -> None:
    with pytest.raises(LookupError):
        async with running_standin(tmp_path / "s"):
            raise LookupError("the caller's own")
