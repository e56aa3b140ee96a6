"""The clients over TLS: `connect` to wss:// verifies the certificate and the host name,
says clearly when verification fails, and never hangs on a peer that does not speak TLS;
the load tester's --ca-file and its https:// -> wss:// gateway default.

Certificates are made at test time (trustme). The servers are tiny trio TLS servers on
127.0.0.1 (trio.SSLStream, server side) that answer like a WebSocket server would, and a
TLS terminator in front of the real gateway for the full flow.
"""

from __future__ import annotations

import contextlib
import random
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import httpx
import pytest
import trio
import trio.testing
import trustme

from loadtest.cli import build_parser, config_from_args
from loadtest.client import (
    ConnectError,
    ConnectionClosedError,
    DeviceState,
    TlsVerificationError,
    client_ssl_context,
    connect,
)
from loadtest.config import ConfigError
from loadtest.device import SimDevice, describe, is_permanent
from loadtest.fuzz import FuzzConnection, FuzzTarget, Violation
from loadtest.observe import Observations
from loadtest.target import Target, TargetError, check_reachable, default_gateway_url
from protocol import RemoteProtocolError, Synced
from tests.harness import Harness
from tests.loadtest.test_connect import answering, hang_up, serve, some_identity, upgrading

Handler = Callable[[trio.abc.Stream], Awaitable[None]]
NOT_TRUSTED = "certificate verify failed: unable to get local issuer certificate"


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def server_context(ca: trustme.CA, name: str = "127.0.0.1") -> ssl.SSLContext:
    """A server context with a certificate `ca` issued for `name`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    return context


def over_tls(
    context: ssl.SSLContext, handler: Handler
) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """A TCP handler that runs the server side of a TLS handshake, then `handler` on the
    TLS stream; a client refusing the certificate ends only that connection."""

    async def run(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, context, server_side=True, https_compatible=True)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError:  # the client did not trust us and hung up
            await stream.aclose()
            return
        await handler(tls)

    return run


def tls_upgrading(then: bytes | None) -> Handler:
    """test_connect's `upgrading` server (it only sends, receives and closes: any stream)."""
    return cast(Handler, upgrading(then))


def refusing(requests: list[bytes]) -> Handler:
    """Read the upgrade request (kept in `requests`) and refuse it with HTTP 404."""

    async def handler(stream: trio.abc.Stream) -> None:
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await stream.receive_some(65536)
            requests.append(request)
            await stream.send_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")

    return handler


def wss_url(port: int) -> str:
    return f"wss://127.0.0.1:{port}/v1/ws"


async def test_wss_runs_a_verified_tls_handshake_before_the_upgrade(
    nursery: trio.Nursery, ca: trustme.CA, ca_file: Path
) -> None:
    requests: list[bytes] = []
    port = await serve(nursery, over_tls(server_context(ca), refusing(requests)))
    with trio.fail_after(10), pytest.raises(ConnectionClosedError) as info:
        await connect(wss_url(port), some_identity(), ssl_context=client_ssl_context(ca_file))
    assert info.value.code == 404
    # The upgrade request travelled inside TLS (the server read it decrypted).
    assert requests[0].startswith(b"GET /v1/ws HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{port}".encode() in requests[0].lower()


async def test_wss_carries_the_websocket_after_the_handshake(
    nursery: trio.Nursery, ca: trustme.CA, ca_file: Path
) -> None:
    context = client_ssl_context(ca_file)
    # A hang-up after the upgrade (no close_notify, as browsers tolerate): a ConnectError.
    port = await serve(nursery, over_tls(server_context(ca), tls_upgrading(None)))
    with trio.fail_after(10), pytest.raises(ConnectError) as dropped:
        await connect(wss_url(port), some_identity(), ssl_context=context)
    assert dropped.value.reason == "dropped_during_handshake"
    # A binary message read through TLS reaches the secure handshake (which refuses junk).
    port = await serve(nursery, over_tls(server_context(ca), tls_upgrading(b"\xc1 junk")))
    with trio.fail_after(10), pytest.raises(RemoteProtocolError) as failed:
        await connect(wss_url(port), some_identity(), ssl_context=context)
    assert describe(failed.value) == "malformed_frame"


async def test_a_client_that_does_not_trust_the_ca_is_refused_with_a_clear_error(
    nursery: trio.Nursery, ca: trustme.CA, tmp_path: Path
) -> None:
    port = await serve(nursery, over_tls(server_context(ca), refusing([])))
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    # The system's trust store (the default) and a CA file of another CA alike.
    for context in (None, client_ssl_context(other)):
        with trio.fail_after(10), pytest.raises(TlsVerificationError) as info:
            await connect(wss_url(port), some_identity(), ssl_context=context)
        error = info.value
        assert error.reason == "tls_verify_failed" and error.host == "127.0.0.1"
        assert str(error) == (
            "could not connect (tls_verify_failed): the TLS certificate of 127.0.0.1 is not "
            f"trusted ({NOT_TRUSTED})"
        )
        assert isinstance(error, ConnectError) and is_permanent(error)
        assert describe(error) == "tls_verify_failed"


async def test_a_certificate_for_another_name_is_refused(
    nursery: trio.Nursery, ca: trustme.CA, ca_file: Path
) -> None:
    port = await serve(nursery, over_tls(server_context(ca, "chat.example"), refusing([])))
    with trio.fail_after(10), pytest.raises(TlsVerificationError) as info:
        await connect(wss_url(port), some_identity(), ssl_context=client_ssl_context(ca_file))
    assert "mismatch" in info.value.verify_message
    assert "127.0.0.1" in str(info.value)


@pytest.mark.parametrize(
    "handler",
    [answering(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"), hang_up],
    ids=["plain-http-answer", "hang-up"],
)
async def test_a_plain_tcp_peer_on_a_wss_url_is_a_connect_error_not_a_hang(
    nursery: trio.Nursery, ca_file: Path, handler: Callable[[trio.SocketStream], Awaitable[None]]
) -> None:
    port = await serve(nursery, handler)
    with trio.fail_after(10), pytest.raises(ConnectError) as info:
        await connect(wss_url(port), some_identity(), ssl_context=client_ssl_context(ca_file))
    assert info.value.reason == "tls_handshake_failed"
    assert not isinstance(info.value, TlsVerificationError) and not is_permanent(info.value)


async def test_a_device_gives_up_at_once_on_an_untrusted_certificate(
    nursery: trio.Nursery, ca: trustme.CA, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0.05
    port = await serve(nursery, over_tls(server_context(ca), refusing([])))
    obs = Observations("run", 0)
    device = SimDevice(0, DeviceState(some_identity()), wss_url(port), obs, random.Random(0))
    await device.run()
    assert device.failed == "tls_verify_failed"
    assert obs.counts.errors == {"connect:tls_verify_failed": 1}  # not retried


async def test_the_full_gateway_flow_through_a_tls_terminator(
    nursery: trio.Nursery, server: Harness, ca: trustme.CA, ca_file: Path
) -> None:
    host, gateway_port = server.gateway_url.removeprefix("ws://").split("/")[0].split(":")

    async def relay(stream: trio.abc.Stream) -> None:
        upstream = await trio.open_tcp_stream(host, int(gateway_port))
        async with stream, upstream, trio.open_nursery() as pipes:

            async def pipe(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    while data := await source.receive_some(65536):
                        await sink.send_all(data)
                pipes.cancel_scope.cancel()

            pipes.start_soon(pipe, stream, upstream)
            pipes.start_soon(pipe, upstream, stream)

    port = await serve(nursery, over_tls(server_context(ca), relay))
    ann = await server.create_org()
    identity = ann.identity(server.server_key)
    with trio.fail_after(30):
        async with await connect(
            wss_url(port), identity, ssl_context=client_ssl_context(ca_file)
        ) as client:
            await client.sync(0)
            while not any(isinstance(f, Synced) for f in await client.receive()):
                pass


async def test_the_fuzzer_speaks_tls_too(
    nursery: trio.Nursery, ca: trustme.CA, ca_file: Path
) -> None:
    requests: list[bytes] = []
    port = await serve(nursery, over_tls(server_context(ca), refusing(requests)))
    target = FuzzTarget(wss_url(port), some_identity(), bytes(16), client_ssl_context(ca_file))
    with trio.fail_after(10), pytest.raises(Violation, match="upgrade was refused"):
        await FuzzConnection.open(target, answer_timeout_s=5)
    assert requests[0].startswith(b"GET /v1/ws ")
    with trio.fail_after(10), pytest.raises(TlsVerificationError):
        await FuzzConnection.open(FuzzTarget(wss_url(port), some_identity(), bytes(16)), 5)


# -- the load tester's options and its check of the target ---------------------------------


def parse(*argv: str) -> object:
    return config_from_args(build_parser().parse_args(list(argv)))


def test_ca_file_and_tls_urls_parse(ca_file: Path) -> None:
    config = config_from_args(
        build_parser().parse_args(["--url", "https://127.0.0.1:8400", "--ca-file", str(ca_file)])
    )
    assert config.ca_file == ca_file and config.gateway_url is None
    explicit = config_from_args(
        build_parser().parse_args(
            [
                "--url",
                "http://h:8400",
                "--gateway-url",
                "wss://h:9000/v1/ws",
                "--ca-file",
                str(ca_file),
            ]
        )
    )
    assert explicit.gateway_url == "wss://h:9000/v1/ws"
    assert config_from_args(build_parser().parse_args(["--url", "https://h:8400"])).ca_file is None


def test_ca_file_errors_name_the_option(ca_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--ca-file is for a server given by --url https"):
        parse("--ca-file", str(ca_file))  # our own server speaks plain HTTP
    with pytest.raises(ConfigError, match="--ca-file is for a server given by --url https"):
        parse("--url", "http://h:8400", "--ca-file", str(ca_file))
    with pytest.raises(ConfigError, match=r"--ca-file: .* is not a readable file"):
        parse("--url", "https://h:8400", "--ca-file", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="--gateway-url must look like"):
        parse("--url", "https://h:8400", "--gateway-url", "https://h:8401/v1/ws")


def test_the_gateway_default_follows_the_api_scheme() -> None:
    assert default_gateway_url("https://chat.example:8400") == "wss://chat.example:8401/v1/ws"
    assert default_gateway_url("https://chat.example") == "wss://chat.example:444/v1/ws"
    assert default_gateway_url("http://127.0.0.1:8400") == "ws://127.0.0.1:8401/v1/ws"


def test_client_ssl_context_verifies_by_default(ca_file: Path, tmp_path: Path) -> None:
    for context in (client_ssl_context(None), client_ssl_context(ca_file)):
        assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    (tmp_path / "not.pem").write_text("not a certificate\n")
    with pytest.raises(ssl.SSLError):
        client_ssl_context(tmp_path / "not.pem")


def healthy(requests: list[bytes]) -> Handler:
    """An API that answers a request with 200 and closes. A connection that only shakes
    hands (the gateway check), or whose client refuses the certificate after the server's
    side of a TLS 1.3 handshake is done, just ends."""

    async def handler(stream: trio.abc.Stream) -> None:
        async with stream:
            request = b""
            with contextlib.suppress(trio.BrokenResourceError):
                while b"\r\n\r\n" not in request:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    request += data
            if b"\r\n\r\n" not in request:
                return
            requests.append(request)
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )

    return handler


async def test_the_target_check_says_in_one_line_when_a_certificate_is_not_trusted(
    nursery: trio.Nursery, ca: trustme.CA, ca_file: Path
) -> None:
    # One TLS port plays the API (GET /healthz) and the gateway (a TLS handshake).
    requests: list[bytes] = []
    port = await serve(nursery, over_tls(server_context(ca), healthy(requests)))
    api = f"https://127.0.0.1:{port}"
    target = Target(api, wss_url(port), None)
    trusted = client_ssl_context(ca_file)
    async with httpx.AsyncClient(base_url=api, verify=client_ssl_context(ca_file)) as client:
        with trio.fail_after(10):
            await check_reachable(client, target, trusted)
    assert requests[0].startswith(b"GET /healthz ")

    async with httpx.AsyncClient(base_url=api, verify=client_ssl_context(None)) as client:
        with trio.fail_after(10), pytest.raises(TargetError) as api_error:
            await check_reachable(client, target, trusted)
    assert str(api_error.value) == (
        f"the TLS certificate of the API at {api} is not trusted ({NOT_TRUSTED}); "
        "pass --ca-file with the CA certificate (PEM) that issued it"
    )

    async with httpx.AsyncClient(base_url=api, verify=trusted) as client:
        with trio.fail_after(10), pytest.raises(TargetError) as gateway_error:
            await check_reachable(client, target, client_ssl_context(None))
    assert str(gateway_error.value) == (
        f"the TLS certificate of the gateway at {wss_url(port)} is not trusted "
        f"({NOT_TRUSTED}); pass --ca-file with the CA certificate (PEM) that issued it"
    )
    assert "\n" not in str(api_error.value) + str(gateway_error.value)
