"""The HTTP API over TLS with certificates made at test time (trustme): login, REST and files
over https, HSTS, a client that does not trust the CA, plain HTTP and stalled handshakes on
the TLS port, SIGHUP reload (new certificate for new connections, old connections carry
on; an unparsable file changes nothing), a bad key at start-up, and X-Forwarded-* believed
only from trusted proxies."""

from __future__ import annotations

import os
import signal
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio
import trustme

from server.api.forwarded import TrustedProxies
from server.runner import is_loopback
from tests.harness import Harness, start_harness
from tests.server.test_auth import login_body
from tests.server.test_cli import obrol, workdir
from tests.storage.test_embedded import postgres_running_in

__all__ = ["workdir"]  # the fixture, for the CLI tests here

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 5000
HSTS = "max-age=31536000"


@dataclass
class Pki:
    """A test CA, the certificate files the server is given, and a client context trusting
    the CA."""

    ca: trustme.CA
    cert_file: Path
    key_file: Path
    client_context: ssl.SSLContext

    def install(self, common_name: str, key_type: trustme.KeyType = trustme.KeyType.RSA) -> None:
        """Write a new certificate (and key) for 127.0.0.1 with this subject."""
        cert = self.ca.issue_cert(
            "127.0.0.1", "localhost", common_name=common_name, key_type=key_type
        )
        self.cert_file.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(self.key_file))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    folder = tmp_path / "tls"
    folder.mkdir()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    made = Pki(ca, folder / "cert.pem", folder / "key.pem", context)
    made.install("obrol-first")
    return made


@asynccontextmanager
async def tls_server(
    nursery: trio.Nursery, database_url: str, data_dir: Path, pki: Pki, **overrides: Any
) -> AsyncIterator[Harness]:
    async with start_harness(
        nursery,
        database_url,
        data_dir,
        verify=pki.client_context,
        tls_cert_file=pki.cert_file,
        tls_key_file=pki.key_file,
        **overrides,
    ) as harness:
        yield harness


def api_port(server: Harness) -> int:
    assert server.running.api_url is not None
    port = urlsplit(server.running.api_url).port
    assert port is not None
    return port


async def served_subject(server: Harness, context: ssl.SSLContext) -> str:
    """The common name of the certificate a new connection to the API is shown."""
    stream = await trio.open_ssl_over_tcp_stream(
        "127.0.0.1", api_port(server), ssl_context=context, https_compatible=True
    )
    try:
        await stream.do_handshake()
        return common_name(stream.getpeercert())
    finally:
        await stream.aclose()


def common_name(cert: Any) -> str:
    names = [value for rdn in cert["subject"] for key, value in rdn if key == "commonName"]
    return str(names[0])


async def test_login_rest_and_files_over_https(
    nursery: trio.Nursery, database_url: str, tmp_path: Path, pki: Pki
) -> None:
    async with tls_server(nursery, database_url, tmp_path, pki) as server:
        assert server.running.api_url is not None
        assert server.running.api_url.startswith("https://127.0.0.1:")
        assert server.gateway_url.startswith("wss://127.0.0.1:")
        assert server.running.tls is not None and "CN=obrol-first" in server.running.tls
        assert "valid until" in server.running.tls

        owner = await server.create_org()  # sign-up and login over https
        maria = await server.add_member(owner, "maria")
        me = await server.client.get("/v1/me", headers=maria.headers)
        assert me.status_code == 200 and me.json()["account_name"] == "maria"
        assert me.headers["Strict-Transport-Security"] == HSTS
        conversation = await server.group(owner, maria)
        upload = await server.client.post(
            f"/v1/conversations/{conversation}/files?name=plan.png",
            headers={**owner.headers, "Content-Type": "image/png"},
            content=PNG,
        )
        assert upload.status_code == 201, upload.text
        download = await server.client.get(  # the uploader (sharing is test_files' part)
            f"/v1/files/{upload.json()['id']}", headers=owner.headers
        )
        assert download.status_code == 200 and download.content == PNG
        assert download.headers["Strict-Transport-Security"] == HSTS
        async with httpx.AsyncClient(
            base_url=str(server.client.base_url), verify=pki.client_context, http2=True
        ) as http2:
            response = await http2.get("/v1/me", headers=owner.headers)
            assert response.http_version == "HTTP/2" and response.status_code == 200
            assert response.headers["Strict-Transport-Security"] == HSTS
        # Errors carry it as well: every response does.
        missing = await server.client.get("/v1/no-such-thing")
        assert missing.status_code == 404
        assert missing.headers["Strict-Transport-Security"] == HSTS


async def test_plain_http_has_no_hsts(server: Harness) -> None:
    response = await server.client.get("/healthz", headers={"X-Forwarded-Proto": "https"})
    assert response.status_code == 200
    assert "Strict-Transport-Security" not in response.headers


async def test_a_client_that_does_not_trust_the_ca_is_refused(
    nursery: trio.Nursery, database_url: str, tmp_path: Path, pki: Pki
) -> None:
    async with tls_server(nursery, database_url, tmp_path, pki) as server:
        assert server.running.api_url is not None
        async with httpx.AsyncClient(base_url=server.running.api_url, timeout=10) as stranger:
            with pytest.raises(httpx.ConnectError) as refused:
                await stranger.get("/healthz")
        verification = [e for e in causes(refused.value) if isinstance(e, ssl.SSLError)]
        assert isinstance(verification[0], ssl.SSLCertVerificationError), verification
        assert "certificate verify failed" in str(verification[0])
        assert (await server.client.get("/healthz")).status_code == 200  # still serving


async def test_plain_http_and_stalled_handshakes_fail_cleanly(
    nursery: trio.Nursery, database_url: str, tmp_path: Path, pki: Pki
) -> None:
    async with tls_server(nursery, database_url, tmp_path, pki, handshake_timeout_s=1) as server:
        port = api_port(server)
        with trio.fail_after(5):
            async with httpx.AsyncClient(timeout=30) as plain:
                with pytest.raises(httpx.TransportError):
                    await plain.get(f"http://127.0.0.1:{port}/healthz")
        with trio.fail_after(5):  # garbage instead of a ClientHello: closed, not kept
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"\x00" * 64 + b"not a client hello\r\n\r\n")
                while await stream.receive_some(4096):
                    pass
        with trio.fail_after(5):  # a handshake that never starts is cut at the deadline
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                assert await stream.receive_some(4096) == b""
        assert (await server.client.get("/healthz")).status_code == 200


def refused_reloads(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "TLS reload refused" in r.getMessage()]


def causes(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


async def wait_for_subject(server: Harness, pki: Pki, expected: str) -> None:
    with trio.fail_after(10):
        while await served_subject(server, pki.client_context) != expected:  # noqa: ASYNC110 (a signal has no event to wait on)
            await trio.sleep(0.05)


async def test_sighup_reloads_the_certificate_for_new_connections(
    nursery: trio.Nursery,
    database_url: str,
    tmp_path: Path,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with tls_server(nursery, database_url, tmp_path, pki) as server:
        owner = await server.create_org()
        before = await server.client.get("/v1/me", headers=owner.headers)
        kept = before.extensions["network_stream"]
        assert common_name(kept.get_extra_info("ssl_object").getpeercert()) == "obrol-first"

        pki.install("obrol-second")
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for_subject(server, pki, "obrol-second")

        # The keep-alive connection opened before the reload carries on, on its old
        # certificate.
        after = await server.client.get("/v1/me", headers=owner.headers)
        assert after.status_code == 200
        assert after.extensions["network_stream"] is kept
        assert common_name(kept.get_extra_info("ssl_object").getpeercert()) == "obrol-first"

        # An unparsable file fails the reload alone: logged, the certificate in use stays.
        pki.cert_file.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
        os.kill(os.getpid(), signal.SIGHUP)
        with trio.fail_after(10):
            while not refused_reloads(caplog):  # noqa: ASYNC110 (a log line has no event)
                await trio.sleep(0.05)
        assert await served_subject(server, pki.client_context) == "obrol-second"
        async with httpx.AsyncClient(
            base_url=str(server.client.base_url), verify=pki.client_context
        ) as fresh:
            response = await fresh.get("/v1/me", headers=owner.headers)
            assert response.status_code == 200
            assert response.headers["Strict-Transport-Security"] == HSTS


async def test_x_forwarded_for_is_ignored_by_default(server: Harness) -> None:
    owner = await server.create_org()
    await server.client.post(
        "/v1/login",
        json=login_body("olivia@acme.example", "Wrong-Pass-123"),
        headers={"X-Forwarded-For": "203.0.113.9"},
    )
    records = (await server.client.get("/v1/me/logins", headers=owner.headers)).json()["logins"]
    assert {r["ip"] for r in records} == {"127.0.0.1"}


async def test_x_forwarded_for_is_believed_from_a_trusted_proxy(
    nursery: trio.Nursery, database_url: str, tmp_path: Path
) -> None:
    async with start_harness(
        nursery, database_url, tmp_path, trusted_proxies=["127.0.0.1", "10.0.0.0/8"]
    ) as server:
        owner = await server.create_org()
        for forwarded in (
            "198.51.100.7, 203.0.113.9",  # the client wrote the left one: not believed
            "203.0.113.10, 10.1.2.3",  # a second trusted proxy in the chain
        ):
            response = await server.client.post(
                "/v1/login",
                json=login_body("olivia@acme.example", "Wrong-Pass-123"),
                headers={"X-Forwarded-For": forwarded, "X-Forwarded-Proto": "https"},
            )
            assert response.status_code == 401, response.text
            assert response.headers["Strict-Transport-Security"] == HSTS
        logins = await server.client.get("/v1/me/logins", headers=owner.headers)
        ips = [r["ip"] for r in logins.json()["logins"]]
        assert "203.0.113.9" in ips and "203.0.113.10" in ips
        assert "198.51.100.7" not in ips and "10.1.2.3" not in ips


def test_trusted_proxies_walk_the_chain_from_the_right() -> None:
    proxies = TrustedProxies(["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"])
    origin = proxies.origin
    assert origin("192.0.2.1", "http", ["203.0.113.9"], ["https"]).ip == "192.0.2.1"
    untrusted = origin("192.0.2.1", "http", ["203.0.113.9"], ["https"])
    assert untrusted.scheme == "http"
    assert origin("127.0.0.1", "http", [], []).ip == "127.0.0.1"
    chained = origin("127.0.0.1", "http", ["1.1.1.1, 203.0.113.9", "10.0.0.2"], ["https"])
    assert chained.ip == "203.0.113.9" and chained.scheme == "https"
    assert origin("127.0.0.1", "http", ["10.0.0.3, 10.0.0.2"], []).ip == "10.0.0.3"
    assert origin("127.0.0.1", "http", ["1.1.1.1, bogus"], []).ip == "127.0.0.1"
    assert origin("127.0.0.1", "http", ["bogus, 203.0.113.9"], []).ip == "203.0.113.9"
    assert origin("127.0.0.1", "http", ["[2001:db8::5]:443, 192.0.2.7:5000"], []).ip == (
        "192.0.2.7"
    )
    assert origin("2001:db8::1", "http", ["2001:db9::5"], ["gopher"]) == origin(
        "2001:db8::1", "http", ["2001:db9::5"], []
    )
    assert TrustedProxies([]).origin(None, "http", ["203.0.113.9"], []).ip == "unknown"


def test_loopback_hosts() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("::")
    assert not is_loopback("example.org")


async def test_listening_beyond_loopback_without_tls_warns(
    nursery: trio.Nursery, database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with start_harness(nursery, database_url, tmp_path, host="0.0.0.0", serve_gateway=False):
        pass
    warnings = [r.getMessage() for r in caplog.records if "without TLS" in r.getMessage()]
    assert len(warnings) == 1, caplog.records
    assert "clear text" in warnings[0] and "--tls-cert" in warnings[0]
    assert "trusted_proxies" in warnings[0]


@pytest.fixture
def key_pair(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A certificate and the key of another certificate."""
    ca = trustme.CA()
    first = ca.issue_cert("127.0.0.1")
    other = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "other-key.pem"
    first.cert_chain_pems[0].write_to_path(str(cert))
    other.private_key_pem.write_to_path(str(key))
    yield cert, key


def test_a_mismatched_key_is_one_line_and_exit_2(
    workdir: Path, key_pair: tuple[Path, Path]
) -> None:
    cert, key = key_pair
    for args, expected in (
        (
            ["--tls-cert", str(cert), "--tls-key", str(key)],
            f"obrol: error: TLS certificate {cert} / key {key}: "
            "the key does not belong to the certificate\n",
        ),
        (
            ["--tls-cert", str(cert), "--tls-key", str(workdir / "missing.pem")],
            f"obrol: error: TLS file not found: {workdir / 'missing.pem'}\n",
        ),
    ):
        process = obrol(["serve", "--port", "0", *args], workdir)
        try:
            assert process.finish() == 2, process.output
            errors = [line for line in process.lines if line.startswith("obrol: error")]
            assert errors == [expected], process.output
            assert "Traceback" not in process.output
            assert not postgres_running_in(workdir / "obrol-data" / "postgres")
        finally:
            process.close()
    process = obrol(["serve", "--port", "0", "--tls-cert", str(cert)], workdir)
    try:
        assert process.finish() == 2, process.output
        assert "tls_cert_file and tls_key_file go together" in process.output
    finally:
        process.close()


def test_obrol_serve_with_tls_flags(workdir: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", common_name="obrol-cli")
    cert.cert_chain_pems[0].write_to_path(str(workdir / "cert.pem"))
    cert.private_key_pem.write_to_path(str(workdir / "key.pem"))
    ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
    process = obrol(
        ["serve", "--port", "0", "--tls-cert", "cert.pem", "--tls-key", "key.pem"], workdir
    )
    try:
        api = process.wait_for(r"API:\s+(https://127\.0\.0\.1:\d+)\s*$").group(1)
        process.wait_for(r"gateway:\s+wss://127\.0\.0\.1:\d+/\S+\s*$")
        process.wait_for(r"TLS:\s+CN=obrol-cli,.*, valid until \d{4}-\d\d-\d\d")
        process.wait_for(r"obrol API https://\S+, gateway wss://\S+ \(TLS certificate CN=obrol-cli")
        context = ssl.create_default_context(cafile=str(workdir / "ca.pem"))
        response = httpx.get(f"{api}/healthz", verify=context, timeout=10)
        assert response.json()["database"] == "ok"
        assert response.headers["Strict-Transport-Security"] == HSTS
        assert "without TLS" not in process.output
        process.popen.send_signal(signal.SIGHUP)
        process.wait_for(r"TLS certificate reloaded: CN=obrol-cli")
        process.popen.send_signal(signal.SIGTERM)
        assert process.finish() == 0, process.output
    finally:
        process.close()
